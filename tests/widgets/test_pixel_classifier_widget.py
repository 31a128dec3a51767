"""The forest's dock widget in a real viewer, taken the way users take it."""

import numpy as np
import pytest
import tifffile
from napari.layers import Labels
from qtpy.QtCore import Qt

from napari_dlvision.core.metrics import instance_f1, iou
from napari_dlvision.data.synthetic import NUCLEUS
from napari_dlvision.widgets.pixel_classifier import PixelClassifierWidget

from widget_helpers import brush_stroke, paint_scribbles, wait_idle

WIDGET = "Pixel classifier (random forest)"


@pytest.fixture
def widget(make_napari_viewer, sample2d):
    """An image opened first, the widget docked after (the usual order)."""
    viewer = make_napari_viewer()
    viewer.add_image(sample2d.image, name="nuclei")
    w = PixelClassifierWidget(viewer)
    viewer.window.add_dock_widget(w)
    yield w
    w.runner.stop()


def test_readme_path_sample_first_then_dock_then_live_update(qtbot, make_napari_viewer, errors_shown):
    """File > Open Sample, Plugins > Pixel classifier, tick Live update, paint."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-dlvision", "nuclei-2d")
    _, w = viewer.window.add_plugin_dock_widget("napari-dlvision", WIDGET)
    labels = viewer.layers["nuclei annotations"]
    # Start state: the strokes layer is picked, selected, visible, in paint mode with a visible brush.
    assert w.labels_combo.value is labels and w.image_combo.value is viewer.layers["nuclei"]
    assert viewer.layers.selection.active is labels and labels.mode == "paint" and labels.brush_size >= 3
    assert labels.visible and not viewer.layers["nuclei ground truth"].visible
    before = w.class_table.count(2)
    assert before == int((labels.data == 2).sum()) > 0  # counts of the strokes already there
    w.live_check.setChecked(True)
    gt = viewer.layers["nuclei ground truth"].data
    inside = np.argwhere(gt == np.bincount(gt.ravel())[1:].argmax() + 1)  # pixels of the largest nucleus
    row = inside[len(inside) // 2][0]
    brush_stroke(labels, [p for p in inside if p[0] == row], 2)
    qtbot.waitUntil(lambda: w.class_table.count(2) > before, timeout=5_000)  # counts follow the brush
    qtbot.waitUntil(lambda: "nuclei segmentation" in viewer.layers, timeout=60_000)  # live update retrained
    wait_idle(qtbot, w)
    seg = viewer.layers["nuclei segmentation"]
    assert iou(seg.data == NUCLEUS, gt > 0) > 0.85
    assert viewer.layers.selection.active is labels  # painting goes on where it was
    order = list(viewer.layers)
    assert order.index(labels) > max(order.index(seg), order.index(viewer.layers["nuclei instances"]))  # strokes on top
    assert errors_shown == [] and w.status.text().startswith("Trained and predicted")


def test_first_stroke_with_live_update_is_a_quiet_status(qtbot, widget, errors_shown):
    labels = widget.new_annotation_layer()
    assert widget.viewer.layers.selection.active is labels and labels.mode == "paint"
    widget.live_check.setChecked(True)
    brush_stroke(labels, [(20, x) for x in range(20, 40)], 1)
    qtbot.waitUntil(lambda: "only class 1" in widget.status.text(), timeout=10_000)
    assert errors_shown == []  # no red toast while painting
    brush_stroke(labels, [(120, x) for x in range(100, 120)], 2)
    qtbot.waitUntil(lambda: "nuclei segmentation" in widget.viewer.layers, timeout=60_000)
    wait_idle(qtbot, widget)
    assert errors_shown == []
    widget.live_check.setChecked(False)
    widget.train()  # a click is not painting: its problems are shown loudly
    wait_idle(qtbot, widget)
    labels.data = np.zeros_like(labels.data)
    widget.train()
    assert errors_shown and "nothing is painted" in errors_shown[-1]


def test_class_table_follows_the_layer_controls_and_shows_colours(qtbot, widget):
    labels = widget.new_annotation_layer()
    table = widget.class_table
    labels.selected_label = 2  # chosen in napari's layer controls
    assert table.table.currentRow() == 1
    table.table.setCurrentCell(0, 1)  # clicked in the table
    assert labels.selected_label == 1
    swatch = table.table.item(1, 0).background().color()
    expected = labels.colormap.map(2)
    assert abs(swatch.redF() - expected[0]) < 0.01 and abs(swatch.greenF() - expected[1]) < 0.01
    labels.selected_label = 4  # a class beyond the table appears when painted
    brush_stroke(labels, [(5, 5)], 4)
    qtbot.waitUntil(lambda: table.table.rowCount() == 4, timeout=5_000)
    assert table.names()[:2] == ["background", "foreground"]


def test_paint_train_and_default_outputs(qtbot, widget, sample2d):
    labels = widget.new_annotation_layer()
    paint_scribbles(labels, sample2d.scribbles)
    painted = labels.data.copy()
    n_before = len(widget.viewer.layers)
    qtbot.mouseClick(widget.train_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    viewer = widget.viewer
    # By default two layers: the segmentation and its instances, with short names.
    assert len(viewer.layers) == n_before + 2
    seg, inst = viewer.layers["nuclei segmentation"], viewer.layers["nuclei instances"]
    assert iou(seg.data == NUCLEUS, sample2d.foreground) > 0.9
    assert instance_f1(inst.data, sample2d.instances) > 0.75
    assert seg.colormap.map(1)[3] == 0  # the background class is transparent
    np.testing.assert_allclose(seg.colormap.map(2)[:3], labels.colormap.map(2)[:3], atol=1e-6)
    assert seg.opacity < labels.opacity  # strokes stay visible over their own class
    assert inst.contour > 0  # objects as outlines over the segmentation
    np.testing.assert_array_equal(labels.data, painted)  # annotations untouched
    assert widget.class_table.count(2) == int((painted == 2).sum())
    assert widget.progress.value() == 100
    # Probabilities and uncertainty are one tick away.
    widget.outputs.prob_check.setChecked(True)
    widget.train()
    wait_idle(qtbot, widget)
    prob = viewer.layers["nuclei p(foreground)"].data
    assert prob.shape == sample2d.image.shape and 0 <= prob.min() and prob.max() <= 1
    unc = viewer.layers["nuclei uncertainty"].data
    assert unc.max() <= 1 and unc.mean() < 0.5


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
    brush_stroke(labels, bg[:3], 1)
    brush_stroke(labels, fg[:3], 2)
    qtbot.waitUntil(lambda: "nuclei segmentation" in widget.viewer.layers, timeout=60_000)
    wait_idle(qtbot, widget)
    first = widget.classifier
    paint_scribbles(labels, sample2d.scribbles, step=5)
    qtbot.waitUntil(lambda: widget.classifier is not first and not widget.runner.busy, timeout=60_000)
    wait_idle(qtbot, widget)
    assert sum(widget.classifier.training["pixels_per_class"].values()) > 6
    assert iou(widget.viewer.layers["nuclei segmentation"].data == NUCLEUS, sample2d.foreground) > 0.85
    # Picking an image the strokes do not fit says so; picking theirs back retrains, no stale message.
    other = widget.viewer.add_image(np.zeros((30, 40), np.uint8), name="other")
    widget.image_combo.value = other
    qtbot.waitUntil(lambda: "annotations" in widget.status.text() and "shape" in widget.status.text(), timeout=10_000)
    widget.image_combo.value = widget.viewer.layers["nuclei"]
    qtbot.waitUntil(lambda: widget.status.text().startswith("Trained and predicted"), timeout=60_000)


def test_stop_ends_cleanly_and_training_works_again(qtbot, make_napari_viewer):
    from napari_dlvision.data.synthetic import nuclei

    big = nuclei((1024, 1024), seed=7)
    viewer = make_napari_viewer()
    viewer.add_image(big.image, name="big")
    viewer.add_labels(big.scribbles, name="big annotations")
    w = PixelClassifierWidget(viewer)
    w.train()
    assert w.stop_btn.isEnabled()
    qtbot.mouseClick(w.stop_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, w)
    assert w.last_error is None and w.status.text() == "Stopped."
    assert not w.stop_btn.isEnabled()
    w.train()
    wait_idle(qtbot, w)
    assert w.status.text().startswith("Trained and predicted")
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
def test_bad_input_gives_one_clear_message(qtbot, widget, sample2d, setup, message, errors_shown):
    layer = setup(widget.viewer, sample2d)
    before = None if layer is None else layer.data.copy()
    widget.train()
    wait_idle(qtbot, widget)
    assert widget.last_error is not None and message in widget.last_error
    assert message in widget.status.text() and len(errors_shown) == 1
    if layer is not None:
        np.testing.assert_array_equal(layer.data, before)


def test_nan_image_is_refused(qtbot, make_napari_viewer):
    viewer = make_napari_viewer()
    img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    img[3, 3] = np.nan
    viewer.add_image(img, name="nan")
    lab = np.zeros((64, 64), np.uint8)
    lab[5, 5], lab[40, 40] = 1, 2
    viewer.add_labels(lab, name="nan annotations")
    w = PixelClassifierWidget(viewer)
    w.train()
    wait_idle(qtbot, w)
    assert "NaN" in w.last_error


def test_save_load_apply_to_layer_and_folder(qtbot, widget, sample2d, tmp_path):
    labels = widget.new_annotation_layer()
    paint_scribbles(labels, sample2d.scribbles, step=3)
    widget.train()
    wait_idle(qtbot, widget)
    path = widget.save_model(tmp_path / "clf.dlv")
    assert path.is_file()
    # Names as typed in the save dialog: no suffix gets .dlv (the Load filter shows it);
    # an image's name is refused, the image kept; a failure names the file asked for.
    assert widget.save_model(tmp_path / "mymodel") == tmp_path / "mymodel.dlv" and (tmp_path / "mymodel.dlv").is_file()
    (tmp_path / "photo.png").write_bytes(b"mine")
    assert widget.save_model(tmp_path / "photo.png") is None and "a model file is written" in widget.last_error
    assert (tmp_path / "photo.png").read_bytes() == b"mine"
    assert widget.save_model(tmp_path / "gone" / "m.dlv") is None
    assert "m.dlv" in widget.last_error and "partial" not in widget.last_error

    other = PixelClassifierWidget(widget.viewer)
    assert other.load_model(path) is not None
    assert other.status.text().startswith("Loaded clf.dlv")
    widget.viewer.add_image(sample2d.image[:128, :160], name="crop")
    other.apply_to_layer(widget.viewer.layers["crop"])
    wait_idle(qtbot, other)
    assert other.last_error is None, other.last_error
    assert other.status.text().startswith("Predicted crop")
    np.testing.assert_array_equal(widget.viewer.layers["crop segmentation"].data,
                                  widget.classifier.predict(sample2d.image[:128, :160]))

    (tmp_path / "in").mkdir()
    for i in range(2):
        tifffile.imwrite(tmp_path / "in" / f"img{i}.tif", sample2d.image[i * 50:])
    (tmp_path / "in" / "broken.tif").write_bytes(b"not a tiff")
    other.apply_to_folder(tmp_path / "in", tmp_path / "out")
    wait_idle(qtbot, other)
    seg = tifffile.imread(tmp_path / "out" / "img1_segmentation.tif")
    assert seg.shape == sample2d.image[50:].shape and set(np.unique(seg)) <= {1, 2}
    assert "broken.tif" in other.last_error and "2 of 3" in other.status.text()  # the others were done

    bad = tmp_path / "bad.dlv"
    bad.write_bytes(b"garbage")
    assert other.load_model(bad) is None
    assert "not a readable" in other.last_error or "not a napari-dlvision" in other.last_error
    other.apply_to_folder(tmp_path / "missing", tmp_path / "out2")
    assert "folder not found" in other.last_error
    other.apply_to_folder(tmp_path / "in", tmp_path / "in")
    assert "input folder" in other.last_error


def test_model_for_rgb_refuses_grey_layer(qtbot, widget, sample2d):
    rgb = np.stack([sample2d.image // 256] * 3, axis=-1).astype(np.uint8)
    widget.viewer.add_image(rgb, name="rgb", rgb=True)
    widget.viewer.add_labels(sample2d.scribbles.copy(), name="rgb annotations")
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
    widget.labels_combo.value = mine  # the user corrects last run's result by hand
    widget.train()
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    np.testing.assert_array_equal(mine.data, sample2d.scribbles)
    ours = [la for la in viewer.layers if la.metadata.get("napari_dlvision_output") == "nuclei segmentation"]
    assert len(ours) == 1 and ours[0] is not mine


def test_instance_layer_as_annotations_gives_a_message(qtbot, widget, sample2d):
    viewer = widget.viewer
    viewer.add_labels(sample2d.instances.astype(np.uint32), name="nuclei annotations")
    widget.inputs.update_counts()
    assert widget.class_table.table.rowCount() <= 64
    widget.train()
    wait_idle(qtbot, widget)
    assert "instance mask" in widget.last_error
    # Fewer objects than the 64 classes a forest takes: still an instance mask, and said so.
    widget.labels_combo.value = viewer.add_labels(np.where(sample2d.instances <= 40, sample2d.instances, 0),
                                                  name="some nuclei")
    widget.train()
    wait_idle(qtbot, widget)
    assert "hold 40 ids covering" in widget.last_error and "instance mask" in widget.last_error
    # The user presses New: the fresh layer does not inherit the 64 rows the
    # instance mask added, and trains a 2-class model from 2 painted classes.
    fresh = widget.inputs.new_layer()
    assert widget.class_table.names() == ["background", "foreground"]
    paint_scribbles(fresh, sample2d.scribbles)
    widget.train()
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert widget.classifier.n_classes == 2
    # Strokes of ids 1 and 300: the instance-mask message, not "only class 1".
    odd = np.zeros(sample2d.scribbles.shape, np.int32)
    odd[sample2d.scribbles == 1], odd[sample2d.scribbles == 2] = 1, 300
    widget.labels_combo.value = viewer.add_labels(odd, name="odd ids")
    widget.train()
    wait_idle(qtbot, widget)
    assert "class ids up to 300" in widget.last_error


def test_closing_the_widget_lets_go_of_the_viewer(qtbot, make_napari_viewer, sample2d):
    viewer = make_napari_viewer()
    viewer.add_image(sample2d.image, name="nuclei")
    labels = viewer.add_labels(sample2d.scribbles.copy(), name="nuclei annotations")
    dock, w = viewer.window.add_plugin_dock_widget("napari-dlvision", WIDGET)
    assert w.labels_combo.value is labels
    w.live_check.setChecked(True)
    qtbot.waitUntil(lambda: "nuclei instances" in viewer.layers, timeout=60_000)
    wait_idle(qtbot, w)
    viewer.layers.remove("nuclei segmentation")
    viewer.layers.remove("nuclei instances")
    viewer.window.remove_dock_widget(dock)
    assert w._closed
    brush_stroke(labels, [(10, 10), (10, 11)], 2)
    viewer.add_image(sample2d.image, name="later")  # pickers no longer listen
    qtbot.wait(400)
    assert not w.runner.busy and "nuclei segmentation" not in viewer.layers
    assert w.image_combo.count() == 1
    assert isinstance(labels, Labels)


def test_instances_of_a_large_image_are_drawn_without_a_main_thread_stall(qtbot, make_napari_viewer):
    """napari computes outlines (and a colour modulo for int32 ids) on the main
    thread at every redraw: 0.9 s per live update of a 4096 x 4096 image."""
    from napari_dlvision.widgets.outputs import OUTLINE_MAX_PIXELS, PixelOutputs, instances_for_display

    assert instances_for_display(np.array([[0, 7]], np.int32)).dtype == np.uint16
    assert instances_for_display(np.array([[0, 70000]], np.int32)).dtype == np.int32
    viewer = make_napari_viewer()
    outputs = PixelOutputs(viewer)
    for side, outlined in ((64, True), (int(OUTLINE_MAX_PIXELS ** 0.5) + 1, False)):
        image = viewer.add_image(np.zeros((side, side), np.uint8), name=f"img{side}")
        ann = viewer.add_labels(np.zeros((side, side), np.uint8), name=f"ann{side}")
        outputs.begin(image, ["background", "foreground"], ann)
        inst = np.zeros((side, side), np.int32)
        inst[:8, :8], inst[20:30, 20:30] = 1, 2
        outputs.finish({"instances": inst})
        qtbot.waitUntil(lambda s=side: f"img{s} instances" in viewer.layers, timeout=10000)
        layer = viewer.layers[f"img{side} instances"]
        assert layer.data.dtype == np.uint16 and (layer.contour > 0) == outlined
        np.testing.assert_array_equal(layer.data, inst)


def test_in_the_3d_view_outputs_are_redrawn_once_at_the_end(qtbot, make_napari_viewer):
    """Block-by-block redraws of volume layers made live update 15x slower in the 3D view."""
    from napari_dlvision.widgets.outputs import PixelOutputs

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((6, 32, 32), np.uint8), name="vol")
    ann = viewer.add_labels(np.zeros((6, 32, 32), np.uint8), name="ann")
    viewer.dims.ndisplay = 3
    outputs = PixelOutputs(viewer, instances=False)
    outputs.begin(image, ["background", "foreground"], ann)
    prob = np.zeros((2, 6, 32, 32), np.float32)
    prob[1] = 1
    outputs._last_refresh = 0.0
    outputs.write_block((slice(0, 3),), prob)
    seg = viewer.layers["vol segmentation"]
    redraws = []
    seg.events.set_data.connect(lambda e: redraws.append(1))
    outputs._last_refresh = 0.0
    outputs.write_block((slice(3, 6),), prob)
    assert redraws == []  # not while predicting
    outputs.end()
    assert redraws and (seg.data == 2).all()


def test_docking_picks_the_image_the_annotations_fit(qtbot, make_napari_viewer, sample2d):
    """A smaller image opened first no longer becomes the default beside annotations of another size."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((30, 40), np.uint8), name="other")
    viewer.add_image(sample2d.image, name="nuclei")
    viewer.add_labels(sample2d.scribbles.copy(), name="nuclei annotations")
    w = PixelClassifierWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.image_combo.value.name == "nuclei" and w.labels_combo.value.name == "nuclei annotations"
    w.train()
    wait_idle(qtbot, w)
    assert w.last_error is None, w.last_error


def test_renaming_the_image_renames_its_outputs_and_the_next_run_updates_them(qtbot, widget, sample2d):
    labels = widget.new_annotation_layer()
    paint_scribbles(labels, sample2d.scribbles, step=3)
    widget.train()
    wait_idle(qtbot, widget)
    before = [la.name for la in widget.viewer.layers]
    widget.viewer.layers["nuclei"].name = "cells"
    assert "cells segmentation" in widget.viewer.layers and "nuclei segmentation" not in widget.viewer.layers
    widget.train()
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    after = [la.name for la in widget.viewer.layers]
    # The outputs follow the image; the user's annotation layer keeps its name.
    assert before == ["nuclei", "nuclei segmentation", "nuclei instances", "nuclei annotations"]
    assert after == ["cells", "cells segmentation", "cells instances", "nuclei annotations"]


def test_the_segmentation_removed_during_a_run_comes_back_with_its_result(qtbot, widget, sample2d):
    labels = widget.new_annotation_layer()
    paint_scribbles(labels, sample2d.scribbles, step=3)
    viewer = widget.viewer
    widget.train()
    qtbot.waitUntil(lambda: "nuclei segmentation" in viewer.layers, timeout=60_000)
    assert widget.runner.busy  # instances are still being computed
    viewer.layers.remove("nuclei segmentation")
    wait_idle(qtbot, widget)
    assert widget.last_error is None and widget.status.text().startswith("Trained and predicted")
    # The status reports a segmentation: it is there (it was lost, the blocks going into the removed layer).
    seg = viewer.layers["nuclei segmentation"]
    assert iou(seg.data == NUCLEUS, sample2d.foreground) > 0.8
    assert viewer.layers.selection.active is labels
    assert list(viewer.layers).index(seg) == 1  # above the image, under the strokes as before
