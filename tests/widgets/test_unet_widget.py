"""The U-Net dock widget in a real viewer: train, preview, stop, continue, files."""

import numpy as np
import pytest
import tifffile
from qtpy.QtCore import Qt
from widget_helpers import wait_idle

from napari_dlvision.core.metrics import iou
from napari_dlvision.data.synthetic import NUCLEUS, nuclei
from napari_dlvision.widgets.unet_trainer import FIELDS, UNetWidget

TIMEOUT_MS = 180_000


@pytest.fixture
def small():
    return nuclei((128, 128), radius=(7.0, 11.0), n_strokes=24, seed=11)


@pytest.fixture
def widget(make_napari_viewer, small):
    """The user's image and strokes opened first, the widget docked after."""
    viewer = make_napari_viewer()
    viewer.add_image(small.image, name="cells")
    viewer.add_labels(small.scribbles.copy(), name="cells annotations")
    w = UNetWidget(viewer)
    viewer.window.add_dock_widget(w)
    for name, value in (("steps", 120), ("patch_size", 64), ("batch_size", 4), ("preview_every", 40)):
        w.settings_form.set_value(name, value)
    yield w
    w.runner.stop()


def test_presets_match_the_model_code():
    from napari_dlvision.dl.unet import PRESETS as MODEL_PRESETS

    assert set(next(f for f in FIELDS if f.name == "preset").choices) == set(MODEL_PRESETS)


def test_train_previews_then_final_prediction(qtbot, widget, small):
    viewer = widget.viewer
    # One class list for both widgets: the forest's names, not "class 1 / class 2".
    assert widget.class_table.names() == ["background", "foreground"]
    assert widget.labels_combo.value is viewer.layers["cells annotations"]
    qtbot.mouseClick(widget.train_btn, Qt.MouseButton.LeftButton)
    # Preview layers appear while training runs.
    qtbot.waitUntil(lambda: "cells segmentation (U-Net)" in viewer.layers, timeout=TIMEOUT_MS)
    wait_idle(qtbot, widget)  # training, then the final prediction job
    qtbot.waitUntil(lambda: "cells instances (U-Net)" in viewer.layers, timeout=TIMEOUT_MS)
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert len(widget.plot.loss) == 120 and widget.plot.last_step == 120
    assert widget.status.text().startswith("Training finished after 120 steps")
    assert "Predicted cells" in widget.status.text()
    seg = viewer.layers["cells segmentation (U-Net)"].data
    assert iou(seg == NUCLEUS, small.foreground) > 0.6
    np.testing.assert_array_equal(viewer.layers["cells annotations"].data, small.scribbles)
    assert viewer.layers.selection.active is viewer.layers["cells annotations"]


def test_the_layer_the_user_selects_while_training_stays_selected(qtbot, widget):
    viewer = widget.viewer
    qtbot.mouseClick(widget.train_btn, Qt.MouseButton.LeftButton)
    viewer.layers.selection.active = viewer.layers["cells"]  # to change its contrast, say
    qtbot.waitUntil(lambda: "cells segmentation (U-Net)" in viewer.layers, timeout=TIMEOUT_MS)
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert "cells instances (U-Net)" in viewer.layers
    assert viewer.layers.selection.active is viewer.layers["cells"]


def test_class_names_are_shared_with_the_forest_widget(qtbot, widget):
    from napari_dlvision.widgets.pixel_classifier import PixelClassifierWidget

    forest = PixelClassifierWidget(widget.viewer)
    forest.class_table.table.item(1, 1).setText("nucleus")
    assert widget.class_table.names() == ["background", "nucleus"]


def test_stop_keeps_a_usable_model_and_continue_resumes(qtbot, widget, small, tmp_path):
    widget.settings_form.set_value("steps", 5000)
    widget.settings_form.set_value("preview_every", 0)
    widget.train()
    qtbot.waitUntil(lambda: len(widget.plot.loss) >= 5, timeout=TIMEOUT_MS)
    qtbot.mouseClick(widget.stop_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, widget)
    assert widget.segmenter is not None and widget.last_error is None
    stopped_at = widget.segmenter.training["steps_total"]
    assert 5 <= stopped_at < 5000
    widget.settings_form.set_value("steps", 10)
    qtbot.mouseClick(widget.continue_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, widget)
    assert widget.segmenter.training["steps_total"] == stopped_at + 10
    assert widget.plot.last_step == stopped_at + 10  # the curve goes on where it stopped

    path = widget.save_model(tmp_path / "unet.dlv")
    other = UNetWidget(widget.viewer)
    assert other.load_model(path) is not None
    other.outputs.prob_check.setChecked(True)
    other.predict_layer(widget.viewer.layers["cells"])
    wait_idle(qtbot, other)
    assert other.last_error is None
    assert other.status.text().startswith("Predicted cells")
    np.testing.assert_allclose(
        widget.viewer.layers["cells p(foreground) (U-Net)"].data,
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
        image = s.image if i else np.stack([s.image] * 2)  # channel-first beside grey: refused
        tifffile.imwrite(tmp_path / "images" / f"n{i}.tif", image)
        tifffile.imwrite(tmp_path / "masks" / f"n{i}.tif", s.instances)
    assert widget.load_folder(tmp_path) is None and "mix grey and colour" in widget.last_error
    tifffile.imwrite(tmp_path / "images" / "n0.tif", nuclei((96, 96), radius=(7.0, 11.0), seed=20).image)
    assert widget.load_folder(tmp_path) is not None
    assert widget.mode() == "dense" and not widget.class_table.isVisibleTo(widget)
    widget.settings_form.set_value("steps", 30)
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
    assert "not a" in widget.last_error
    forest_file = tmp_path / "rf.dlv"
    from napari_dlvision.core.pixel_classifier import PixelClassifier

    s = nuclei((64, 64), seed=1)
    PixelClassifier(n_trees=3).fit(s.image, s.scribbles).save(forest_file)
    assert widget.load_model(forest_file) is None and "random forest" in widget.last_error


def test_stop_while_the_forest_teacher_runs_keeps_no_model(qtbot, make_napari_viewer):
    """The teacher is the first stage: it shows progress, and Stop during it ends
    the run at once without an untrained model."""
    big = nuclei((1024, 1024), n_strokes=40, seed=4)
    viewer = make_napari_viewer()
    viewer.add_image(big.image, name="big")
    viewer.add_labels(big.scribbles.copy(), name="big annotations")
    w = UNetWidget(viewer)
    viewer.window.add_dock_widget(w)
    qtbot.mouseClick(w.train_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "forest" in w.status.text(), timeout=TIMEOUT_MS)
    qtbot.mouseClick(w.stop_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, w)
    assert w.last_error is None, w.last_error
    assert w.model is None and w.status.text() == "Stopped."
    assert not w.plot.loss and "big segmentation (U-Net)" not in viewer.layers


def test_export_run_is_trained_by_the_cli_and_loaded_back(widget, qtbot, tmp_path):
    import subprocess
    import sys

    widget.settings_form.set_value("steps", 3)
    widget.settings_form.set_value("batch_size", 2)
    widget.settings_form.set_value("patch_size", 32)
    widget.settings_form.set_value("device", "cpu")
    widget.settings_form.set_value("flips", False)
    labels = widget.viewer.layers["cells annotations"]
    before = np.array(labels.data)
    widget.export_run(tmp_path)
    wait_idle(qtbot, widget, TIMEOUT_MS)
    assert widget.last_error is None
    assert "run.json" in widget.status.text() and "dlvision run" in widget.status.text()
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "labels.tif"), before)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "image.tif"), widget.viewer.layers["cells"].data)
    assert (labels.data == before).all()  # the user's layer is only read

    widget.export_run(tmp_path)  # the folder is no longer empty: refused, nothing replaced
    assert "already holds image.tif" in widget.last_error

    r = subprocess.run([sys.executable, "-m", "napari_dlvision.cli", "run", tmp_path / "run.json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "unet.dlv").is_file()
    widget.load_model(tmp_path / "unet.dlv")
    wait_idle(qtbot, widget, TIMEOUT_MS)
    assert widget.model is not None and widget.model.training["steps"] == 3
    assert widget.model.training["settings"]["flips"] is False  # the widget's settings made it through
    assert widget.model.class_names == widget.class_table.names()[:2]  # and the class names
    assert "Loaded unet.dlv" in widget.status.text()


def test_docked_alone_after_the_sample_the_annotation_layer_is_ready_to_paint(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-dlvision", "nuclei-2d")
    viewer.window.add_plugin_dock_widget("napari-dlvision", "Deep pixel classifier (U-Net)")
    labels = viewer.layers["nuclei annotations"]
    assert viewer.layers.selection.active is labels and labels.mode == "paint" and labels.visible


def test_after_stop_the_user_can_go_back_to_any_preview_they_saw(qtbot, widget, small):
    """Stop keeps the averaged weights; the previews shown before stay in a list
    and "Go back to it" keeps the weights of the one picked, shows their
    prediction, and Continue training goes on from them."""
    viewer = widget.viewer
    widget.settings_form.set_value("steps", 5000)
    widget.settings_form.set_value("preview_every", 10)
    assert not widget.history.use_btn.isEnabled()  # nothing to go back to yet
    qtbot.mouseClick(widget.train_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(widget.history.entries) >= 3, timeout=TIMEOUT_MS)
    assert not widget.history.use_btn.isEnabled()  # not while training
    qtbot.mouseClick(widget.stop_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, widget)
    steps = [s for s, _ in widget.history.entries]
    assert steps[:3] == [10, 20, 30] and widget.history.combo.itemText(0) == f"step {steps[-1]}"  # newest first
    assert widget.history.use_btn.isEnabled()
    at_stop = {k: v.cpu().clone() for k, v in widget.segmenter.net.state_dict().items()}
    assert any(not np.array_equal(at_stop[k].numpy(), v.numpy()) for k, v in widget.history.entries[0][1].items())

    widget.history.choose(10)
    qtbot.mouseClick(widget.history.use_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    kept = {k: v.cpu() for k, v in widget.segmenter.net.state_dict().items()}
    for name, value in widget.history.entries[0][1].items():
        np.testing.assert_array_equal(kept[name].numpy(), value.numpy())
    assert widget.status.text().startswith("Went back to the weights previewed at step 10. Predicted cells")
    assert widget.segmenter.training["kept"] == "the weights previewed at step 10 (chosen)"
    np.testing.assert_array_equal(viewer.layers["cells segmentation (U-Net)"].data,
                                  widget.segmenter.predict(small.image))
    np.testing.assert_array_equal(viewer.layers["cells annotations"].data, small.scribbles)

    total = widget.segmenter.training["steps_total"]
    widget.settings_form.set_value("steps", 10)
    qtbot.mouseClick(widget.continue_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, widget)
    assert widget.segmenter.training["steps_total"] == total + 10
    assert [s for s, _ in widget.history.entries][-1] == total + 10  # the list goes on with the run

    import torch  # loaded by the worker already

    # Weights of another network (a failed run, another file) are refused in one line, not loaded.
    assert widget.go_back(5, {"other": torch.zeros(3)}) is None
    assert "previews were of another U-Net" in widget.last_error and not widget.history.entries


def test_closing_the_viewer_while_training_stops_the_job_first(qtbot, widget):
    """viewer.close() mid-run (a script, or Jupyter, goes on after it): the job is
    stopped and has ended before the window's Qt objects go. Its events used
    to meet a deleted status line and Python aborted (exit 134)."""
    viewer = widget.viewer
    widget.settings_form.set_value("steps", 5000)
    qtbot.mouseClick(widget.train_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "cells segmentation (U-Net)" in viewer.layers, timeout=TIMEOUT_MS)
    job = widget.runner.job
    assert widget.runner.busy and not job.ended.is_set()
    viewer.close()
    # The dock was deleted with the window: its job was stopped, and its thread was done with it.
    assert widget.runner.closed and job.stopped and job.ended.is_set()


def test_save_while_training_is_refused_before_the_file_dialog(qtbot, widget, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    from napari_dlvision.widgets.parts import ModelRow

    asked = []
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: asked.append(a) or ("", ""))
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: asked.append(a) or ("", ""))
    row = widget.findChildren(ModelRow)[0]
    qtbot.mouseClick(widget.train_btn, Qt.MouseButton.LeftButton)
    assert widget.runner.busy
    for btn in (row.save_btn, row.load_btn):
        qtbot.mouseClick(btn, Qt.MouseButton.LeftButton)
        assert widget.status.text() == "wait for the running job, or press Stop"
    assert asked == []  # the user picked no file only to be told no
    widget.runner.stop()
    wait_idle(qtbot, widget)
    qtbot.mouseClick(row.save_btn, Qt.MouseButton.LeftButton)
    assert len(asked) == 1


def test_continue_pressed_while_stopping_says_so_quietly(qtbot, widget):
    qtbot.mouseClick(widget.train_btn, Qt.MouseButton.LeftButton)
    qtbot.mouseClick(widget.panel.stop_btn, Qt.MouseButton.LeftButton)
    assert widget.runner.busy  # the job ends at its next step, seen by the event loop
    # Train and Continue are greyed out until it has; called anyway (a script), Continue says why.
    assert not widget.continue_btn.isEnabled() and not widget.train_btn.isEnabled()
    widget.train(True)
    assert widget.status.text() == "still stopping: try again in a moment"
    wait_idle(qtbot, widget)
    assert widget.continue_btn.isEnabled() and widget.train_btn.isEnabled()
