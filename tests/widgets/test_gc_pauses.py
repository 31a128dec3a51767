"""Freezing long-lived objects (short garbage collections) must not leak the
user's layers: a layer removed after a freeze is still freed."""

import gc
import weakref

import numpy as np

from napari_dlvision.widgets import gc_pauses
from napari_dlvision.widgets.pixel_classifier import PixelClassifierWidget


def test_docking_freezes_and_a_removed_layer_is_still_freed(qtbot, make_napari_viewer, monkeypatch):
    monkeypatch.setattr(gc_pauses, "REFREEZE_AFTER_MS", 50)
    gc.unfreeze()
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((512, 512), np.float32), name="big")
    gone = weakref.ref(layer)
    viewer.window.add_dock_widget(PixelClassifierWidget(viewer))
    assert gc.get_freeze_count() > 10_000  # napari's objects (and the layer) are out of the collector's sight
    del layer
    viewer.layers.remove("big")
    assert gc.get_freeze_count() == 0  # thawed at once: the layer's cycles can be collected
    qtbot.waitUntil(lambda: gc.get_freeze_count() > 10_000, timeout=5000)  # collected, then frozen again
    assert gone() is None, "the removed layer was kept alive"


def test_closing_a_widget_drops_its_model_and_caches(qtbot, make_napari_viewer, monkeypatch):
    monkeypatch.setattr(gc_pauses, "REFREEZE_AFTER_MS", 50)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-dlvision", "nuclei-2d")
    w = PixelClassifierWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.train()
    qtbot.waitUntil(lambda: not w.runner.busy and w.model is not None, timeout=120_000)
    assert w._tiles is not None  # features kept for the next stroke
    model = weakref.ref(w.model)
    w.close()
    assert w.model is None and w._tiles is None
    assert gc.get_freeze_count() == 0  # thawed: a closed widget's cycles can go
    qtbot.waitUntil(lambda: gc.get_freeze_count() > 10_000, timeout=5000)
    assert model() is None
