"""The detector dock widget in a real viewer, on the user's path: draw, train, review, accept, evaluate."""

import subprocess
import sys

import numpy as np
import pytest
from qtpy.QtCore import Qt
from widget_helpers import wait_idle

from napari_dlvision.core.boxes import boxes_from_labels, boxes_to_rectangles
from napari_dlvision.data.synthetic import nuclei
from napari_dlvision.widgets.detector import FIELDS, DetectorWidget

TIMEOUT_MS = 900_000


@pytest.fixture(scope="module")
def scene():
    s = nuclei((128, 128), radius=(7.0, 11.0), seed=11)
    return s, boxes_from_labels(s.instances)


def _dock(viewer, steps=40, preview_every=20, arch="centernet"):
    w = DetectorWidget(viewer)
    viewer.window.add_dock_widget(w)
    for name, value in (("arch", arch), ("steps", steps), ("preview_every", preview_every), ("scale", 1.0)):
        w.settings_form.set_value(name, value)
    return w


@pytest.fixture
def drawn(make_napari_viewer, scene):
    """The user's image and a Shapes layer opened first, the widget docked after, boxes drawn."""
    s, truth = scene
    viewer = make_napari_viewer()
    viewer.add_image(s.image, name="cells")
    boxes = viewer.add_shapes(None, ndim=2, name="my boxes")
    w = _dock(viewer)
    assert w.image_picker.value is viewer.layers["cells"] and w.boxes_picker.value is boxes
    boxes.mode = "add_rectangle"
    boxes.add_rectangles(np.asarray(boxes_to_rectangles(truth)))  # as the user draws them, one by one in effect
    yield w, boxes, truth
    w.runner.stop()


def test_arch_choices_match_the_model_code():
    from napari_dlvision.dl.detector import ARCHS

    assert tuple(next(f for f in FIELDS if f.name == "arch").choices) == ARCHS


def test_draw_train_review_accept_evaluate(qtbot, drawn, scene, tmp_path):
    w, boxes, truth = drawn
    viewer = w.viewer
    drawn_data = [d.copy() for d in boxes.data]
    assert w.class_table.count(1) == len(truth)
    qtbot.mouseClick(w.train_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "cells detections" in viewer.layers, timeout=TIMEOUT_MS)  # a preview while training
    wait_idle(qtbot, w, TIMEOUT_MS)  # training, then the final prediction
    assert w.last_error is None, w.last_error
    assert w.status.text().startswith("Training finished after 40 steps") and "Predicted cells" in w.status.text()
    assert len(w.plot.loss) == 40
    out = viewer.layers["cells detections"]
    assert set(out.shape_type) <= {"rectangle"} and {"class", "score"} <= set(out.features)
    assert viewer.layers.selection.active is boxes  # drawing goes on in the user's layer
    # The user's layer is untouched by training and prediction.
    assert len(boxes.data) == len(drawn_data) and all(np.array_equal(a, b) for a, b in zip(boxes.data, drawn_data))

    # The threshold slider filters the shown boxes without running the network.
    w.review.threshold.setValue(5)
    # The slider is debounced: wait for its refresh, not for boxes (some are shown at 0.3 already).
    qtbot.waitUntil(lambda: "score >= 0.05" in w.status.text(), timeout=5000)
    assert out.nshapes > 0
    assert set(out.features["class"]) == {"object"} and out.features["score"].min() >= 0.05
    many, scores = out.nshapes, out.features["score"].to_numpy()
    w.review.threshold.setValue(60)
    qtbot.waitUntil(lambda: out.nshapes == int((scores >= 0.6).sum()), timeout=5000)
    assert out.nshapes == 0 or out.features["score"].min() >= 0.6
    assert not w.runner.busy  # no job ran for the slider
    w.review.threshold.setValue(5)
    qtbot.waitUntil(lambda: out.nshapes == many, timeout=5000)
    assert "Showing boxes with score >= 0.05" in w.status.text()
    # The NMS IoU slider too: a stricter overlap limit never shows more boxes.
    w.review.nms.setValue(10)
    qtbot.waitUntil(lambda: "NMS at IoU 0.10" in w.status.text(), timeout=5000)
    strict = out.nshapes
    w.review.nms.setValue(90)
    qtbot.waitUntil(lambda: "NMS at IoU 0.90" in w.status.text(), timeout=5000)
    assert 0 < strict <= out.nshapes and not w.runner.busy
    w.review.nms.setValue(50)
    qtbot.waitUntil(lambda: out.nshapes == many, timeout=5000)
    # Each box is drawn in its class's colour (the class table's swatch) with its score as text.
    swatch = w.class_table.colours()[0]
    np.testing.assert_allclose(out.edge_color, np.tile(swatch, (out.nshapes, 1)), atol=1e-6)
    shown = [str(t) for t in out.text.view_text(np.arange(out.nshapes))]
    assert shown == [f"{v:.2f}" for v in out.features["score"]]

    # Evaluate against the instance labels the boxes came from.
    gt = viewer.add_labels(scene[0].instances, name="truth")
    w.gt_picker.value = gt
    w.apply_picker.value = viewer.layers["cells"]
    scores = w.evaluate()
    assert scores["true boxes"] == len(truth) and 0 <= scores["mAP@0.5"] <= 1
    assert "mAP@0.5" in w.review.result.text() and "precision" in w.review.result.text()

    # Accept: boxes that overlap a drawn one are not added again.
    w.accept()
    assert w.accept() == 0  # accepted boxes overlap drawn ones now: nothing is added twice
    boxes.data = boxes.data[:5]
    added = w.accept()
    assert added > 0 and boxes.nshapes == 5 + added

    path = w.save_model(tmp_path / "det.dlv")
    other = _dock(viewer)
    assert other.load_model(path) is not None and other.last_error is None
    assert other.class_table.names()[0] == "object"


def test_stop_keeps_a_model_and_continue_goes_on(qtbot, drawn):
    w, boxes, _ = drawn
    w.settings_form.set_value("steps", 5000)
    w.settings_form.set_value("preview_every", 0)
    w.train()
    qtbot.waitUntil(lambda: len(w.plot.loss) >= 3, timeout=TIMEOUT_MS)
    qtbot.mouseClick(w.stop_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, w, TIMEOUT_MS)
    assert w.model is not None and w.last_error is None
    stopped = w.model.training["steps_total"]
    assert 3 <= stopped < 5000
    w.settings_form.set_value("steps", 4)
    qtbot.mouseClick(w.continue_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, w, TIMEOUT_MS)
    assert w.model.training["steps_total"] == stopped + 4 and w.plot.last_step == stopped + 4


def test_new_layer_classes_and_stack(qtbot, make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((3, 40, 50), np.uint8), name="stack")
    w = _dock(viewer)
    layer = w.new_boxes()
    assert layer.ndim == 3 and layer.mode == "add_rectangle" and w.boxes_picker.value is layer
    w.class_table.set_names(["cell", "dead"])
    w.class_table.table.setCurrentCell(1, 1)  # the user picks class 2, then draws on plane 2
    layer.add_rectangles(np.array([[2, 5, 5], [2, 15, 5], [2, 15, 20], [2, 5, 20]], float))
    assert layer.features["class"].tolist() == [2]
    assert w.class_table.count(2) == 1
    table, names = w._boxes_of(layer, viewer.layers["stack"])
    assert names == ["cell", "dead"] and table.index.tolist() == [2] and table.classes.tolist() == [2]


def test_after_the_sample_the_strokes_are_not_taken_for_boxes_nor_truth(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-dlvision", "nuclei-2d")  # image, painted strokes, hidden ground truth
    w = _dock(viewer)
    truth = viewer.layers["nuclei ground truth"]
    assert w.boxes_picker.value is truth and w.gt_picker.value is truth
    assert w.class_table.count(1) == len(np.unique(truth.data)) - 1  # one box per object
    drawn = w.new_boxes()
    assert w.boxes_picker.value is drawn and w.gt_picker.value is truth


def test_a_truth_layer_opened_after_docking_is_picked_as_truth_unless_the_user_chose(make_napari_viewer, scene):
    s, truth = scene
    viewer = make_napari_viewer()
    viewer.add_image(s.image, name="cells")
    boxes = viewer.add_shapes(np.asarray(boxes_to_rectangles(truth))[:4], shape_type="rectangle", name="my boxes")
    w = _dock(viewer)
    assert w.boxes_picker.value is boxes and w.gt_picker.value is boxes  # nothing better yet
    gt = viewer.add_labels(s.instances, name="ground truth")
    assert w.gt_picker.value is gt and w.boxes_picker.value is boxes
    w.gt_picker.value = boxes  # the user's choice stays
    viewer.add_labels(s.instances, name="truth 2")
    assert w.gt_picker.value is boxes


def test_boxes_clipped_or_dropped_are_told_in_a_notification(qtbot, make_napari_viewer, scene, monkeypatch):
    import napari_dlvision.widgets.detector as detector_widget

    told = []
    monkeypatch.setattr(detector_widget, "show_info", told.append)
    s, truth = scene
    viewer = make_napari_viewer()
    viewer.add_image(s.image, name="cells")
    boxes = viewer.add_shapes(None, ndim=2, name="my boxes")
    w = _dock(viewer, steps=2, preview_every=0)
    rects = boxes_to_rectangles(truth.select(slice(0, 4)))
    rects += [np.array([[-6, 10], [-6, 20], [6, 20], [6, 10]], float),  # half above the image
              np.array([[300, 10], [300, 20], [310, 20], [310, 10]], float)]  # wholly below it
    boxes.add_rectangles(np.asarray(rects))
    w.train()
    wait_idle(qtbot, w, TIMEOUT_MS)
    assert w.last_error is None, w.last_error
    assert len(told) == 1 and "clipped" in told[0] and "dropped" in told[0], told


def test_an_instance_labels_layer_trains_a_detector(qtbot, make_napari_viewer, scene):
    s, truth = scene
    viewer = make_napari_viewer()
    viewer.add_image(s.image, name="cells")
    seg = viewer.add_labels(s.instances, name="cells segmentation")
    w = _dock(viewer, steps=2, preview_every=0)
    assert w.boxes_picker.value is seg
    w.train()
    wait_idle(qtbot, w, TIMEOUT_MS)
    assert w.last_error is None, w.last_error
    assert w.model.training["boxes"] == len(truth)  # converted in the worker, one box per object
    np.testing.assert_array_equal(seg.data, s.instances)


def test_bad_boxes_give_one_message_and_leave_layers_alone(qtbot, make_napari_viewer, errors_shown):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.uint8), name="img")
    lines = viewer.add_shapes([np.array([[5, 5], [5, 40]], float)], shape_type="line", name="lines")
    w = _dock(viewer)
    w.train()
    wait_idle(qtbot, w, TIMEOUT_MS)
    assert "no boxes to learn from" in w.last_error and len(errors_shown) == 1
    assert lines.nshapes == 1 and lines.shape_type == ["line"]
    w.boxes_picker.value = None
    viewer.layers.remove(lines)
    w.train()
    assert "pick or make a boxes layer" in w.last_error
    w.evaluate()
    assert "pick an image" in w.last_error or "ground-truth" in w.last_error
    w.train(resume=True)
    assert "before continuing" in w.last_error


def test_docking_the_detector_does_not_import_torch():
    code = ("import sys, napari\n"
            "v = napari.Viewer(show=False)\n"
            "v.open_sample('napari-dlvision', 'nuclei-2d')\n"
            "v.window.add_plugin_dock_widget('napari-dlvision', 'Object detector (boxes)')\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "v.close()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_the_forest_trains_predicts_and_loads_in_the_dock_without_torch(tmp_path):
    """The default (auto) chooses the forest for nuclei apart: no 4-7 s of importing torch before it trains."""
    code = ("import sys, time, numpy as np, napari\n"
            "from qtpy.QtWidgets import QApplication\n"
            "from napari_dlvision.core.boxes import boxes_from_labels, boxes_to_rectangles\n"
            "from napari_dlvision.data.synthetic import nuclei\n"
            "s = nuclei((128, 128), radius=(6.0, 9.0), seed=3)\n"
            "v = napari.Viewer(show=False)\n"
            "v.add_image(s.image, name='cells')\n"
            "v.add_shapes(np.asarray(boxes_to_rectangles(boxes_from_labels(s.instances))), shape_type='rectangle',"
            " name='boxes')\n"
            "_, w = v.window.add_plugin_dock_widget('napari-dlvision', 'Object detector (boxes)')\n"
            "app = QApplication.instance()\n"
            "def settle(t0=time.monotonic()):\n"
            "    while w.runner.busy and time.monotonic() - t0 < 120:\n"
            "        app.processEvents(); time.sleep(0.01)\n"
            "w.train(); settle()\n"
            "assert w.model.arch == 'forest' and 'Predicted cells' in w.status.text(), w.status.text()\n"
            f"w.save_model({str(tmp_path / 'f.dlv')!r}); w.load_model({str(tmp_path / 'f.dlv')!r}); settle()\n"
            "w.predict_layer(v.layers['cells']); settle()\n"
            "assert w.last_error is None and 'Predicted cells' in w.status.text(), w.status.text()\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "v.close()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_auto_chooses_the_forest_which_trains_in_one_go_and_loads_back(qtbot, drawn, tmp_path):
    w, boxes, truth = drawn
    viewer = w.viewer
    w.settings_form.set_value("arch", "auto")  # the default
    editors = w.settings_form.editors
    assert editors["steps"].isEnabled() and not editors["pretrained"].isEnabled()  # auto may choose centernet
    qtbot.mouseClick(w.train_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, w, TIMEOUT_MS)
    assert w.last_error is None, w.last_error
    status = w.status.text()
    assert status.startswith("Forest trained in") and "kept a forest of 50 trees" in status, status
    assert "Predicted cells" in status and "steps" not in status
    # The forest's objects are separate regions: none is suppressed, and the NMS slider is greyed out.
    assert not w.review.nms.isEnabled() and not w.review.nms_title.isEnabled() and w.review.threshold.isEnabled()
    # Nothing to continue and no loss: Continue is greyed out and the empty plot says why.
    assert not w.continue_btn.isEnabled() and "no training loss" in w.plot.placeholder
    w.review.threshold.setValue(w.review.threshold.value() + 5)
    qtbot.waitUntil(lambda: w.status.text().startswith("Showing boxes with score >= 0.35:"), timeout=5000)
    out = viewer.layers["cells detections"]
    assert out.nshapes > len(truth) // 2 and set(out.features["class"]) == {"object"}
    assert viewer.layers.selection.active is boxes and len(boxes.data) == len(truth)
    path = w.save_model(tmp_path / "forest.dlv")
    assert w.model.arch == "forest" and "auto chose forest (objects apart" in " ".join(w.model.training["notes"])
    other = _dock(viewer, arch="auto")
    assert other.load_model(path) is not None and other.last_error is None
    assert other.settings_form.values()["arch"] == "forest" and "forest detector" in other.status.text()
    assert "a forest of 50 trees" in other.status.text() and "steps" not in other.status.text()
    assert not other.continue_btn.isEnabled() and "no training loss" in other.plot.placeholder
    assert not other.settings_form.editors["steps"].isEnabled() and not other.review.nms.isEnabled()
    other.settings_form.set_value("arch", "centernet")
    editors = other.settings_form.editors
    assert editors["steps"].isEnabled() and not editors["pretrained"].isEnabled()
