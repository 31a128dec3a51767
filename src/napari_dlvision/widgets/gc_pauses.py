"""Keeping Python's garbage collector from freezing the viewer.

A full collection walks every object the collector tracks. With napari,
vispy, torch and scikit-learn loaded that is ~600,000 objects, and each
full collection held the GIL for 0.15-0.36 s, in whichever thread
triggered it (the training thread included): the largest stalls left in
the paint-train-see loop, measured with gc.callbacks. Almost all of those
objects are modules, classes and functions that live as long as the
process, so they are frozen (gc.freeze: moved out of the collector's sight)
when a widget docks and after torch is imported. Full collections then walk
only what was made since, and take milliseconds.

A frozen object in a reference cycle is never collected, and napari layers
are such cycles: when a layer is removed from the viewer (or a widget
closes) everything is thawed, so the layer can go, and frozen again after
one full collection a moment later (a single pause, right after the user's
own deletion). Closing widgets also drop their models and caches, so what
they hold is freed by reference counting even if a cycle outlives a freeze.
"""

from __future__ import annotations

import gc

REFREEZE_AFTER_MS = 1000

_watched: set[int] = set()
_timer = None


def freeze_long_lived() -> None:
    """Move every object alive now out of the collector's sight (microseconds)."""
    gc.freeze()


def watch_layer_removals(viewer) -> None:
    """Thaw when a layer leaves `viewer`, then collect and freeze again."""
    layers = viewer.layers
    if id(layers) in _watched:
        return
    _watched.add(id(layers))
    layers.events.removed.connect(thaw_then_refreeze)


def thaw_then_refreeze(*_):
    """Let everything be collected again; collect and freeze once things settle."""
    global _timer
    from qtpy.QtCore import QTimer

    gc.unfreeze()
    if _timer is None:
        _timer = QTimer()
        _timer.setSingleShot(True)
        _timer.timeout.connect(_collect_and_freeze)
    _timer.start(REFREEZE_AFTER_MS)  # several removals in a row: one collection


def _collect_and_freeze():
    gc.collect()
    gc.freeze()
