"""The dock widget in a real viewer: paint, train, live update, stop, files."""

import numpy as np
import pytest
import tifffile
from qtpy.QtCore import Qt

from napari_dlvision.core.metrics import instance_f1, iou
from napari_dlvision.data.synthetic import NUCLEUS
from napari_dlvision.widgets.pixel_classifier import PixelClassifierWidget

TIMEOUT_MS = 90_000


@pytest.fixture
def widget(make_napari_viewer, sample2d):
    viewer = make_napari_viewer()
    viewer.add_image(sample2d.image, name="nuclei")
    w = PixelClassifierWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.reset_choices()
    yield w
    if w.worker is not None:
        w.worker.quit()
        w.worker.await_workers() if hasattr(w.worker, "await_workers") else None


def paint_scribbles(layer, scribbles, step=3):
    """Paint every `step`-th scribbled pixel with a small brush, as a user would."""
    layer.brush_size = 3
    for coord in np.argwhere(scribbles > 0)[::step]:
        layer.paint(tuple(coord), int(scribbles[tuple(coord)]))


def wait_idle(qtbot, w):
    qtbot.waitUntil(lambda: w.worker is None, timeout=TIMEOUT_MS)


def test_paint_train_and_predict(qtbot, widget, sample2d):
    labels = widget.new_annotation_layer()
    assert widget.labels_combo.value is labels
    paint_scribbles(labels, sample2d.scribbles)
    painted = labels.data.copy()
    qtbot.mouseClick(widget.train_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    viewer = widget.viewer
    seg = viewer.layers["nuclei segmentation"].data
    assert iou(seg == NUCLEUS, sample2d.foreground) > 0.9
    inst = viewer.layers["nuclei instances"].data
    assert instance_f1(inst, sample2d.instances) > 0.75
    prob = viewer.layers["nuclei probability foreground"].data
    assert prob.shape == sample2d.image.shape and 0 <= prob.min() and prob.max() <= 1
    unc = viewer.layers["nuclei uncertainty"].data
    assert unc.max() <= 1 and unc.mean() < 0.5
    np.testing.assert_array_equal(labels.data, painted)  # annotations untouched
    assert widget.class_table.item(1, 1).text() == str(int((painted == 2).sum()))
    assert widget.progress.value() == 100


def test_outputs_update_in_place(qtbot, widget, sample2d):
    labels = widget.new_annotation_layer()
    paint_scribbles(labels, sample2d.scribbles, step=4)
    widget.train()
    wait_idle(qtbot, widget)
    n_layers = len(widget.viewer.layers)
    seg_layer = widget.viewer.layers["nuclei segmentation"]
    widget.train()
    wait_idle(qtbot, widget)
    assert len(widget.viewer.layers) == n_layers
    assert widget.viewer.layers["nuclei segmentation"] is seg_layer


def test_live_update_retrains_after_each_stroke(qtbot, widget, sample2d):
    labels = widget.new_annotation_layer()
    widget.live_check.setChecked(True)
    fg = np.argwhere(sample2d.scribbles == 2)
    bg = np.argwhere(sample2d.scribbles == 1)
    labels.paint(tuple(bg[0]), 1)
    labels.paint(tuple(fg[0]), 2)
    qtbot.waitUntil(lambda: "nuclei segmentation" in widget.viewer.layers, timeout=TIMEOUT_MS)
    wait_idle(qtbot, widget)
    first = widget.classifier
    paint_scribbles(labels, sample2d.scribbles, step=5)
    qtbot.waitUntil(lambda: widget.classifier is not first and widget.worker is None, timeout=TIMEOUT_MS)
    assert sum(widget.classifier.training["pixels_per_class"].values()) > 2
    seg = widget.viewer.layers["nuclei segmentation"].data
    assert iou(seg == NUCLEUS, sample2d.foreground) > 0.85


def test_stop_ends_cleanly_and_training_works_again(qtbot, make_napari_viewer):
    from napari_dlvision.data.synthetic import nuclei

    big = nuclei((1024, 1024), seed=7)
    viewer = make_napari_viewer()
    viewer.add_image(big.image, name="big")
    viewer.add_labels(big.scribbles, name="big annotations")
    w = PixelClassifierWidget(viewer)
    w.reset_choices()
    w.train()
    assert w.stop_btn.isEnabled()
    qtbot.mouseClick(w.stop_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, w)
    assert w.last_error is None
    assert not w.stop_btn.isEnabled()
    w.train()
    wait_idle(qtbot, w)
    assert w.status.text().startswith("Done")
    np.testing.assert_array_equal(viewer.layers["big annotations"].data, big.scribbles)


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda v, s: None, "add an annotation layer"),
        (lambda v, s: v.add_labels(np.zeros(s.image.shape, np.uint8), name="a"), "nothing is painted"),
        (lambda v, s: v.add_labels((s.scribbles > 0).astype(np.uint8), name="a"), "only class 1"),
        (lambda v, s: v.add_labels(np.ones((10, 10), np.uint8), name="a"), "shape"),
    ],
)
def test_bad_input_gives_one_clear_message(qtbot, widget, sample2d, setup, message):
    layer = setup(widget.viewer, sample2d)
    before = None if layer is None else layer.data.copy()
    widget.reset_choices()
    widget.train()
    wait_idle(qtbot, widget)
    assert widget.last_error is not None and message in widget.last_error
    assert message in widget.status.text()
    if layer is not None:
        np.testing.assert_array_equal(layer.data, before)


def test_nan_image_is_refused(qtbot, make_napari_viewer):
    viewer = make_napari_viewer()
    img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    img[3, 3] = np.nan
    viewer.add_image(img, name="nan")
    viewer.add_labels(np.zeros((64, 64), np.uint8), name="nan annotations")
    w = PixelClassifierWidget(viewer)
    w.reset_choices()
    w.train()
    wait_idle(qtbot, w)
    assert "NaN" in w.last_error


def test_save_load_apply_to_layer_and_folder(qtbot, widget, sample2d, tmp_path):
    labels = widget.new_annotation_layer()
    paint_scribbles(labels, sample2d.scribbles, step=3)
    widget.train()
    wait_idle(qtbot, widget)
    path = widget.save_classifier(tmp_path / "clf.dlv")
    assert path.is_file()

    other = PixelClassifierWidget(widget.viewer)
    other.reset_choices()
    assert other.load_classifier(path) is not None
    widget.viewer.add_image(sample2d.image[:128, :160], name="crop")
    other.reset_choices()
    other.apply_to_layer(widget.viewer.layers["crop"])
    wait_idle(qtbot, other)
    assert other.last_error is None, other.last_error
    np.testing.assert_array_equal(
        widget.viewer.layers["crop segmentation"].data,
        widget.viewer.layers["nuclei segmentation"].data[:128, :160] * 0
        + widget.classifier.predict(sample2d.image[:128, :160]),
    )

    (tmp_path / "in").mkdir()
    for i in range(2):
        tifffile.imwrite(tmp_path / "in" / f"img{i}.tif", sample2d.image[i * 50:])
    other.apply_to_folder(tmp_path / "in", tmp_path / "out")
    wait_idle(qtbot, other)
    assert other.last_error is None, other.last_error
    seg = tifffile.imread(tmp_path / "out" / "img1_segmentation.tif")
    assert seg.shape == sample2d.image[50:].shape and set(np.unique(seg)) <= {1, 2}

    bad = tmp_path / "bad.dlv"
    bad.write_bytes(b"garbage")
    assert other.load_classifier(bad) is None
    assert "not a readable" in other.last_error
    other.apply_to_folder(tmp_path / "missing", tmp_path / "out2")
    assert "folder not found" in other.last_error


def test_model_for_rgb_refuses_grey_layer(qtbot, widget, sample2d):
    rgb = np.stack([sample2d.image // 256] * 3, axis=-1).astype(np.uint8)
    widget.viewer.add_image(rgb, name="rgb", rgb=True)
    widget.viewer.add_labels(sample2d.scribbles.copy(), name="rgb annotations")
    widget.reset_choices()
    widget.image_combo.value = widget.viewer.layers["rgb"]
    widget.labels_combo.value = widget.viewer.layers["rgb annotations"]
    widget.train()
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert widget.classifier.n_channels == 3
    widget.apply_to_layer(widget.viewer.layers["nuclei"])
    assert "3-channel" in widget.last_error


def test_user_layers_are_never_overwritten(qtbot, widget, sample2d):
    viewer = widget.viewer
    mine = viewer.add_labels(sample2d.scribbles.copy(), name="nuclei segmentation")
    widget.reset_choices()
    widget.labels_combo.value = mine  # the user corrects last run's result by hand
    widget.train()
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    np.testing.assert_array_equal(mine.data, sample2d.scribbles)
    assert any(layer.name.startswith("nuclei segmentation ") for layer in viewer.layers)


def test_instance_layer_as_annotations_gives_a_message(qtbot, widget, sample2d):
    viewer = widget.viewer
    viewer.add_labels(sample2d.instances.astype(np.uint32), name="nuclei annotations")
    widget.reset_choices()
    widget.update_counts()
    assert widget.class_table.rowCount() <= 64
    widget.train()
    wait_idle(qtbot, widget)
    assert "instance mask" in widget.last_error
