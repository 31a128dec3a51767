"""Fixtures for widget tests."""

import pytest

from napari_dlvision.widgets.torch_import import import_torch

# torch as the plugin imports it in napari, before any viewer of this process draws: its
# first look for triton (whose LLVM segfaults on Mesa's llvmpipe once a viewer has drawn)
# is answered "absent". The forest detector no longer imports torch, and a test importing
# torchvision after a forest widget test had drawn crashed its pytest-xdist worker.
import_torch()


@pytest.fixture
def errors_shown(monkeypatch):
    """Messages shown as error notifications (red toasts) during the test."""
    shown = []
    import napari_dlvision.widgets.base as base

    real = base.show_error
    monkeypatch.setattr(base, "show_error", lambda m: (shown.append(m), real(m)))
    return shown
