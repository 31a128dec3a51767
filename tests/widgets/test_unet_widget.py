"""The U-Net dock widget in a real viewer: train, preview, stop, continue, files."""

import numpy as np
import pytest
import tifffile
from qtpy.QtCore import Qt

from napari_dlvision.core.metrics import iou
from napari_dlvision.data.synthetic import NUCLEUS, nuclei
from napari_dlvision.widgets.unet_trainer import PRESETS, UNetWidget

TIMEOUT_MS = 180_000


@pytest.fixture
def small():
    return nuclei((128, 128), radius=(7.0, 11.0), n_strokes=24, seed=11)


@pytest.fixture
def widget(make_napari_viewer, small):
    viewer = make_napari_viewer()
    viewer.add_image(small.image, name="cells")
    viewer.add_labels(small.scribbles.copy(), name="cells annotations")
    w = UNetWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.reset_choices()
    w.steps_spin.setValue(120)
    w.patch_spin.setValue(64)
    w.batch_spin.setValue(4)
    w.preview_spin.setValue(40)
    return w


def wait_idle(qtbot, w):
    qtbot.waitUntil(lambda: w.worker is None, timeout=TIMEOUT_MS)


def test_presets_match_the_model_code():
    from napari_dlvision.dl.unet import PRESETS as MODEL_PRESETS

    assert set(PRESETS) == set(MODEL_PRESETS)


def test_train_previews_then_final_prediction(qtbot, widget, small):
    qtbot.mouseClick(widget.train_btn, Qt.MouseButton.LeftButton)
    # Preview layers appear while training runs.
    qtbot.waitUntil(lambda: "cells U-Net segmentation" in widget.viewer.layers, timeout=TIMEOUT_MS)
    wait_idle(qtbot, widget)  # training, then the final prediction job
    wait_idle(qtbot, widget)
    qtbot.waitUntil(lambda: "cells U-Net instances" in widget.viewer.layers, timeout=TIMEOUT_MS)
    assert widget.last_error is None, widget.last_error
    assert len(widget.plot.loss) == 120
    seg = widget.viewer.layers["cells U-Net segmentation"].data
    assert iou(seg == NUCLEUS, small.foreground) > 0.6
    np.testing.assert_array_equal(widget.viewer.layers["cells annotations"].data, small.scribbles)


def test_stop_keeps_a_usable_model_and_continue_resumes(qtbot, widget, small, tmp_path):
    widget.steps_spin.setValue(5000)
    widget.preview_spin.setValue(0)
    widget.train()
    qtbot.waitUntil(lambda: len(widget.plot.loss) >= 5, timeout=TIMEOUT_MS)
    qtbot.mouseClick(widget.stop_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, widget)
    wait_idle(qtbot, widget)
    assert widget.segmenter is not None and widget.last_error is None
    stopped_at = widget.segmenter.training["steps_total"]
    assert 5 <= stopped_at < 5000
    widget.steps_spin.setValue(10)
    qtbot.mouseClick(widget.continue_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, widget)
    wait_idle(qtbot, widget)
    assert widget.segmenter.training["steps_total"] == stopped_at + 10
    assert widget.plot.steps[-1] >= stopped_at + 10  # the curve goes on

    path = widget.save_model(tmp_path / "unet.dlv")
    other = UNetWidget(widget.viewer)
    other.reset_choices()
    assert other.load_model(path) is not None
    other.predict_layer(widget.viewer.layers["cells"])
    wait_idle(qtbot, other)
    assert other.last_error is None
    np.testing.assert_allclose(
        widget.viewer.layers["cells U-Net probability class 2"].data,
        widget.segmenter.predict_proba(small.image)[1], atol=1e-5)

    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.tif", small.image[:100])
    other.predict_folder(tmp_path / "in", tmp_path / "out")
    wait_idle(qtbot, other)
    assert tifffile.imread(tmp_path / "out" / "a_segmentation.tif").shape == (100, 128)


def test_dense_training_from_a_folder(qtbot, widget, tmp_path):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for i in range(2):
        s = nuclei((96, 96), radius=(7.0, 11.0), seed=20 + i)
        tifffile.imwrite(tmp_path / "images" / f"n{i}.tif", s.image)
        tifffile.imwrite(tmp_path / "masks" / f"n{i}.tif", s.instances)
    assert widget.load_folder(tmp_path) is not None
    assert widget.mode() == "dense"
    widget.steps_spin.setValue(30)
    widget.train()
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert widget.segmenter.mode == "dense" and widget.segmenter.n_classes == 3


@pytest.mark.parametrize(
    "labels,message",
    [(np.zeros((128, 128), np.uint8), "nothing is painted"), ((np.ones((128, 128), np.uint8)), "only class 1")],
)
def test_bad_labels_give_a_message(qtbot, widget, labels, message):
    widget.viewer.layers["cells annotations"].data = labels
    widget.train()
    wait_idle(qtbot, widget)
    assert message in widget.last_error
    widget.continue_btn.click()
    assert widget.last_error is not None


def test_continue_without_model_and_corrupted_file(qtbot, widget, tmp_path):
    widget.train(resume=True)
    assert "before continuing" in widget.last_error
    bad = tmp_path / "bad.dlv"
    bad.write_bytes(b"\x00" * 50)
    assert widget.load_model(bad) is None
    assert "not a readable" in widget.last_error
