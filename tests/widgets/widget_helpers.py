"""Helpers for widget tests: waiting for jobs, strokes painted as a brush paints them."""

import numpy as np
from checks import assert_denoised_alike  # noqa: F401 - the widget tests take it from here

TIMEOUT_MS = 180_000


def wait_idle(qtbot, w, timeout=TIMEOUT_MS):
    """Until the widget runs no job (and any job it chained has started and ended)."""
    qtbot.wait(10)
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=timeout)
    qtbot.wait(10)
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=timeout)


def brush_stroke(layer, points, label, size=3):
    """One brush stroke through `points`: one undo item and one paint event, as in napari."""
    layer.brush_size = size
    layer.selected_label = label
    with layer.block_history():
        for p in points:
            layer.paint(tuple(int(v) for v in p), label, refresh=True)


def paint_scribbles(layer, scribbles, step=3):
    """Paint every `step`-th scribbled pixel of each class, one stroke per class."""
    for label in np.unique(scribbles[scribbles > 0]):
        brush_stroke(layer, np.argwhere(scribbles == label)[::step], int(label))
