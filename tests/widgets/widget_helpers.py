"""Helpers for widget tests: waiting for jobs, strokes painted as a brush paints them."""

import numpy as np

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


def assert_denoised_alike(got, want):
    """Two denoisings of one image by one model, run in different threads (the
    widget's worker and the test): the network's sums may round differently
    there (another thread count), and the put-back's block matching ranks
    patches by those outputs, so at a near-tie a patch's group changes and a
    few pixels move a little. Nearly all pixels agree to float precision, the
    rest by well under 1% of the image's range; a real difference (units, the
    put-back on or off, a jump of tens of counts) fails both checks."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    diff, span = np.abs(got - want), float(np.ptp(want))
    assert np.mean(diff > 1e-4 * span) < 0.01, f"{np.mean(diff > 1e-4 * span):.2%} of the pixels differ"
    assert diff.max() < 0.005 * span, f"largest difference {diff.max():.3g} of a range of {span:.3g}"
