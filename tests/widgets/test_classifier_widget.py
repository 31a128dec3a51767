"""The image-classifier dock in a real viewer, on the user's path: a stack opened
first, the widget docked after, strokes painted on thumbnails, Train."""

import numpy as np
import pytest
from qtpy.QtCore import Qt
from widget_helpers import brush_stroke, wait_idle

from napari_dlvision.core.mosaic import Mosaic
from napari_dlvision.data.toy_classes import toy_classes
from napari_dlvision.widgets.classifier import ClassifierWidget

TIMEOUT_MS = 180_000


@pytest.fixture
def toy():
    return toy_classes(n_per_class=24, size=16, n_classes=3, seed=3)


@pytest.fixture
def widget(make_napari_viewer, toy):
    viewer = make_napari_viewer()
    images, _, _ = toy
    viewer.add_image(images, rgb=True, name="toys")
    w = ClassifierWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.settings_form.set_value("arch", "cnn-bn")
    w.settings_form.set_value("epochs", 40.0)
    yield w
    w.runner.stop()


def paint_thumbnails(layer, mosaic: Mosaic, indices, label):
    """A short diagonal stroke across each thumbnail, as a user would draw it."""
    for i in indices:
        y, x = mosaic.origin(i)
        pts = [(y + 4 + d, x + 4 + d) for d in range(6)]
        brush_stroke(layer, pts, label, size=2)


def test_paint_train_predict_and_confusion(qtbot, widget, toy):
    images, truth, names = toy
    viewer = widget.viewer
    assert widget.image_picker.value is viewer.layers["toys"]
    qtbot.mouseClick(widget.show_btn, Qt.MouseButton.LeftButton)
    assert "toys mosaic" in viewer.layers and "toys mosaic annotations" in viewer.layers
    ann = viewer.layers["toys mosaic annotations"]
    assert viewer.layers.selection.active is ann and ann.mode == "paint"
    mosaic = widget.mosaic
    labelled = []
    for k in range(3):
        idx = np.flatnonzero(truth == k)[:8]
        paint_thumbnails(ann, mosaic, idx, k + 1)
        labelled += list(idx)
    # The class table counts labelled images per class (a third row appears for class 3).
    qtbot.waitUntil(lambda: widget.class_table.count(3) == 8, timeout=5000)
    assert widget.class_table.count(1) == 8
    for k, name in enumerate(names):
        widget.class_table.table.item(k, 1).setText(name)
    painted = np.array(ann.data)
    qtbot.mouseClick(widget.train_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, widget, TIMEOUT_MS)  # training, then prediction of every image
    assert widget.last_error is None, widget.last_error
    assert "toys mosaic predictions" in viewer.layers
    assert "Predicted 72 images" in widget.status.text()
    pred = widget.prediction.labels
    unlabelled = np.setdiff1d(np.arange(len(truth)), labelled)
    assert np.mean(pred[unlabelled] == truth[unlabelled]) > 0.6  # chance is 1/3
    # The confusion matrix of the held-out images is drawn in the dock.
    assert widget.confusion.table.rowCount() == 3 and widget.confusion.evaluation.n >= 3
    assert widget.confusion.table.horizontalHeaderItem(0).text() == names[0]
    # The user's strokes are untouched and their layer still selected for painting.
    np.testing.assert_array_equal(ann.data, painted)
    assert viewer.layers.selection.active is ann
    # Label these next: unlabelled images only, the smallest margin first.
    widget.filter_bar.combo.setCurrentText("label these next")
    order = widget.filter_bar.indices
    assert set(order) == set(unlabelled)
    margins = widget.prediction.margins[order]
    assert np.all(np.diff(margins) >= 0)
    qtbot.mouseClick(widget.filter_bar.next_btn, Qt.MouseButton.LeftButton)
    assert widget.status.text().startswith(f"Image {order[0]}: predicted")
    widget.filter_bar.combo.setCurrentText("misclassified")
    assert all(widget.prediction.labels[i] != widget.labels[i] for i in widget.filter_bar.indices)


def test_stack_view_and_clear_messages(qtbot, widget, errors_shown):
    qtbot.mouseClick(widget.train_btn, Qt.MouseButton.LeftButton)
    assert "Label these images" in errors_shown[-1]
    widget.view_combo.setCurrentText("stack")
    ann = widget.prepare_view()
    assert ann.data.shape == (72, 16, 16)
    brush_stroke(ann, [(0, 5, 5), (0, 6, 6)], 1)
    widget.train()
    wait_idle(qtbot, widget)
    assert "only 'class 1' is labelled" in widget.last_error
    assert widget.model is None


def test_labels_painted_in_the_mosaic_count_in_the_stack_view(qtbot, widget, toy):
    _, truth, _ = toy
    viewer = widget.viewer
    qtbot.mouseClick(widget.show_btn, Qt.MouseButton.LeftButton)
    ann = viewer.layers["toys mosaic annotations"]
    # The whole mosaic is in view, not one thumbnail at the stack's zoom.
    from napari_dlvision.widgets.layers import visible_box

    mosaic_layer = viewer.layers["toys mosaic"]
    assert visible_box(viewer, mosaic_layer, ann.data.shape) == tuple((0, n) for n in ann.data.shape)
    for k in range(2):
        paint_thumbnails(ann, widget.mosaic, np.flatnonzero(truth == k)[:3], k + 1)
    qtbot.waitUntil(lambda: widget.class_table.count(2) == 3, timeout=5000)
    widget.view_combo.setCurrentText("stack")
    widget.prepare_view()
    assert widget.class_table.count(1) == 3 and widget.class_table.count(2) == 3
    np.testing.assert_array_equal(widget.current_labels()[np.flatnonzero(truth == 1)[:3]], 1)


def test_stop_mid_run_keeps_a_model_continue_and_filters(qtbot, widget, toy):
    """Stop pressed during a long run keeps usable weights and predicts; Continue
    goes on where the curve stopped; the unlabelled and low-confidence filters
    show what they say."""
    images, truth, _ = toy
    qtbot.mouseClick(widget.show_btn, Qt.MouseButton.LeftButton)
    ann = widget.annotations
    labelled = []
    for k in range(3):
        idx = np.flatnonzero(truth == k)[:6]
        paint_thumbnails(ann, widget.mosaic, idx, k + 1)
        labelled += list(idx)
    widget.settings_form.set_value("epochs", 100_000.0)
    qtbot.mouseClick(widget.train_btn, Qt.MouseButton.LeftButton)
    plot = widget.panel.plot
    qtbot.waitUntil(lambda: len(plot.loss) >= 3, timeout=TIMEOUT_MS)
    assert widget.panel.stop_btn.isEnabled()
    qtbot.mouseClick(widget.panel.stop_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert widget.model is not None
    stopped_at = widget.model.training["steps"]
    assert widget.status.text().startswith(f"Training stopped after {stopped_at} steps")
    assert "Predicted 72 images" in widget.status.text()
    assert not widget.panel.stop_btn.isEnabled()

    widget.settings_form.set_value("epochs", 1.0)
    qtbot.mouseClick(widget.panel.buttons["Continue training"], Qt.MouseButton.LeftButton)
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert plot.last_step > stopped_at  # the curve goes on where it stopped

    widget.filter_bar.combo.setCurrentText("unlabelled")
    assert set(widget.filter_bar.indices) == set(range(len(truth))) - set(labelled)
    widget.filter_bar.combo.setCurrentText("low confidence")
    shown = widget.filter_bar.indices
    scores = widget.prediction.scores
    assert set(shown) == set(np.flatnonzero(scores < 0.6))
    assert np.all(np.diff(scores[shown]) >= 0)  # the least confident first

    # The images' layer removed: the message says so (not "press 'Label these images' first").
    widget.viewer.layers.remove(widget.stack)
    widget.predict_images()
    assert "the images' layer 'toys' was removed: the classifier is kept" in widget.last_error


def test_class_folders_opened_from_the_plugin_menu_train_without_strokes(qtbot, make_napari_viewer, tmp_path, toy):
    """The user's path: the dock opened from the Plugins menu (napari hands it a
    proxy of the viewer), Open folder… on class folders, Train at once: the
    folders are the labels."""
    from napari_dlvision.data.toy_classes import write_class_folders

    images, labels, names = toy
    write_class_folders(tmp_path, images, labels, names)
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-dlvision", "Image classifier")
    w.open_folder(tmp_path)
    wait_idle(qtbot, w)
    assert w.last_error is None, w.last_error
    assert w.class_table.count(1) == 24  # the folder's labels are counted
    w.settings_form.set_value("arch", "logreg")
    w.settings_form.set_value("epochs", 5.0)
    qtbot.mouseClick(w.train_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, w)
    assert w.last_error is None, w.last_error
    assert "Predicted 72 images" in w.status.text()
    assert set(w.filter_bar.indices) == set(range(72))  # "all images"
