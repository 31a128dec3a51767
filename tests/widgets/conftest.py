"""Fixtures for widget tests."""

import pytest


@pytest.fixture
def errors_shown(monkeypatch):
    """Messages shown as error notifications (red toasts) during the test."""
    shown = []
    import napari_dlvision.widgets.base as base

    real = base.show_error
    monkeypatch.setattr(base, "show_error", lambda m: (shown.append(m), real(m)))
    return shown
