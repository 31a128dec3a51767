"""The denoiser dock widget in a real viewer, on the user's path: the noisy image
is open first, the widget docked after, buttons pressed, results looked at."""

import numpy as np
import pytest
import tifffile
from napari.layers import Image
from qtpy.QtCore import Qt
from skimage.metrics import peak_signal_noise_ratio
from widget_helpers import TIMEOUT_MS, assert_denoised_alike, wait_idle

from napari_dlvision.data.noisy import noisy_cells
from napari_dlvision.widgets.denoiser import MODES, DenoiserWidget

UNITS = (1000.0, 100.0)  # camera counts: value = clean * 1000 + 100


def counts(x):
    return (x * UNITS[0] + UNITS[1]).astype(np.float32)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: one thread is as fast, and far faster on a busy shared machine."""
    from napari_dlvision.widgets.torch_import import import_torch

    import_torch()
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cells():
    return noisy_cells((96, 96), 0.15, n=2, seed=2)


@pytest.fixture
def widget(make_napari_viewer, cells):
    _, (a, _) = cells
    viewer = make_napari_viewer()
    viewer.add_image(counts(a), name="noisy", contrast_limits=(50, 900))
    w = DenoiserWidget(viewer)
    viewer.window.add_dock_widget(w)
    for name, value in (("steps", 60), ("patch_size", 32), ("batch_size", 4), ("preview_every", 10)):
        w.settings_form.set_value(name, value)
    yield w
    w.runner.stop()


def psnr(clean, layer_data):
    return peak_signal_noise_ratio(clean, (np.asarray(layer_data) - UNITS[1]) / UNITS[0], data_range=1)


def test_noise2void_previews_then_denoises_the_layer_beside_the_input(qtbot, widget, cells):
    clean, (a, _) = cells
    viewer = widget.viewer
    assert widget.noisy_picker.value is viewer.layers["noisy"] and widget.mode() == "n2v"
    assert not widget.second_picker.isEnabled()
    assert widget.reinclude_check.isEnabled() and widget.reinclude_check.isChecked()
    qtbot.mouseClick(widget.train_btn, Qt.MouseButton.LeftButton)
    # The preview of the region on screen fills the result layer while training runs.
    qtbot.waitUntil(lambda: "noisy denoised" in viewer.layers
                    and np.any(viewer.layers["noisy denoised"].data != 0) and widget.runner.busy,
                    timeout=TIMEOUT_MS)
    wait_idle(qtbot, widget)  # training, then denoising the whole layer
    assert widget.last_error is None, widget.last_error
    out = viewer.layers["noisy denoised"]
    assert isinstance(out, Image) and out.data.dtype == np.float32 and out.data.shape == (96, 96)
    assert tuple(out.contrast_limits) == (50, 900)  # the input's contrast, so both look alike
    assert viewer.grid.enabled  # side by side
    assert len(widget.plot.loss) == 60
    assert widget.status.text().startswith("Training finished after 60 steps")
    assert "Denoised noisy" in widget.status.text()
    assert psnr(clean, out.data) > psnr(clean, counts(a)) + 2
    np.testing.assert_array_equal(viewer.layers["noisy"].data, counts(a))  # the input is never written


def test_stop_keeps_a_model_continue_resumes_save_load_and_apply(qtbot, widget, cells, tmp_path):
    viewer = widget.viewer
    widget.settings_form.set_value("steps", 5000)
    widget.settings_form.set_value("preview_every", 0)
    widget.reinclude_check.setChecked(False)  # training (and its previews) follow the box
    widget.train()
    qtbot.waitUntil(lambda: len(widget.plot.loss) >= 3, timeout=TIMEOUT_MS)
    qtbot.mouseClick(widget.stop_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, widget)
    assert widget.model is not None and widget.last_error is None
    stopped_at = widget.model.training["steps_total"]
    # No preview was shown ("only at the end"), so the status does not say "as previewed".
    assert 3 <= stopped_at < 5000 and widget.model.training["kept"] == "the averaged weights"
    assert widget.model.reinclude is False
    widget.reinclude_check.setChecked(True)
    assert widget.status.text().startswith("Training stopped after")
    widget.settings_form.set_value("steps", 5)
    qtbot.mouseClick(widget.continue_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, widget)
    assert widget.model.training["steps_total"] == stopped_at + 5
    assert widget.plot.last_step == stopped_at + 5

    path = widget.save_model(tmp_path / "d.dlv")
    other = DenoiserWidget(viewer)
    assert other.load_model(path) is not None and other.last_error is None
    assert "Noise2Void" in other.status.text()
    viewer.add_image(counts(cells[1][1]), name="second")
    other.apply_picker.value = viewer.layers["second"]
    qtbot.mouseClick(other.apply_picker.parent().layer_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, other)
    assert other.last_error is None, other.last_error
    assert_denoised_alike(viewer.layers["second denoised"].data, other.model.denoise(counts(cells[1][1])))
    # Unticking "put each pixel's own value back" gives the network's prediction as it is.
    other.reinclude_check.setChecked(False)
    qtbot.mouseClick(other.apply_picker.parent().layer_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, other)
    assert other.model.reinclude is False
    assert_denoised_alike(viewer.layers["second denoised"].data, other.model.denoise(counts(cells[1][1])))

    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.tif", counts(cells[1][0])[:70])
    other.predict_folder(tmp_path / "in", tmp_path / "out")
    wait_idle(qtbot, other)
    assert tifffile.imread(tmp_path / "out" / "a_denoised.tif").shape == (70, 96)


def test_a_stop_at_once_keeps_no_untrained_model(qtbot, widget):
    widget.settings_form.set_value("steps", 5000)
    widget.train()
    widget.stop()  # pressed before the first step could end
    wait_idle(qtbot, widget)
    assert widget.model is None and widget.last_error is None
    assert widget.status.text() in ("Stopped.", "Stopped before the first training step ended: no denoiser was kept.")


def test_noise2noise_from_a_second_layer(qtbot, widget, cells):
    clean, (a, b) = cells
    viewer = widget.viewer
    viewer.add_image(counts(b), name="noisy again")
    widget.mode_combo.setCurrentText(next(k for k, v in MODES.items() if v == "n2n"))
    assert widget.second_picker.isEnabled()
    assert not widget.reinclude_check.isEnabled()  # this network sees the pixel already
    widget.second_picker.value = viewer.layers["noisy again"]
    widget.settings_form.set_value("steps", 40)
    qtbot.mouseClick(widget.train_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert widget.model.mode == "n2n"
    assert psnr(clean, viewer.layers["noisy denoised"].data) > psnr(clean, counts(a)) + 2


def test_bad_input_gives_one_message(qtbot, widget, errors_shown):
    viewer = widget.viewer
    widget.mode_combo.setCurrentText(next(k for k, v in MODES.items() if v == "supervised"))
    viewer.add_image(np.zeros((50, 50), np.float32), name="small clean")
    widget.second_picker.value = viewer.layers["small clean"]
    widget.train()
    assert "same field" in widget.last_error and len(errors_shown) == 1
    widget.mode_combo.setCurrentText(next(k for k, v in MODES.items() if v == "n2v"))
    viewer.add_image(np.full((40, 40), 3, np.uint16), name="flat")
    widget.noisy_picker.value = viewer.layers["flat"]
    widget.train()
    wait_idle(qtbot, widget)
    assert "constant" in widget.last_error and len(errors_shown) == 2
    assert widget.model is None
    # The refused image gets no empty "denoised" layer beside it.
    assert "flat denoised" not in viewer.layers
    nan = np.ones((40, 40), np.float32)
    nan[3, 4] = np.nan
    viewer.add_image(nan, name="holes")
    widget.noisy_picker.value = viewer.layers["holes"]
    widget.train()
    wait_idle(qtbot, widget)
    assert "NaN" in widget.last_error and len(errors_shown) == 3
    assert "holes denoised" not in viewer.layers
    widget.predict_layer(viewer.layers["noisy"])
    assert "train or load a denoiser first" in widget.last_error


def test_channels_first_and_a_stack_of_frames(qtbot, widget, cells):
    """A (C, Y, X) layer trains on its channels; a (T, Y, X) stack trains Noise2Noise on its frames."""
    clean, (a, b) = cells
    viewer = widget.viewer
    widget.settings_form.set_value("steps", 5)
    widget.tta_check.setChecked(False)
    viewer.add_image(counts(np.stack([a, b, a[::-1]])), name="three channels")
    widget.noisy_picker.value = viewer.layers["three channels"]
    widget.axis_combo.setCurrentText("channels")
    widget.train()
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert widget.model.n_channels == 3 and widget.model.ndim == 2
    assert viewer.layers["three channels denoised"].data.shape == (3, 96, 96)

    viewer.add_image(counts(np.stack([a, b, a])), name="frames")
    widget.noisy_picker.value = viewer.layers["frames"]
    widget.axis_combo.setCurrentText("repeated frames (Noise2Noise)")
    widget.train()  # still Noise2Void: refused
    assert "Noise2Noise" in widget.last_error
    widget.mode_combo.setCurrentText(next(k for k, v in MODES.items() if v == "n2n"))
    widget.train()
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert widget.model.mode == "n2n" and widget.model.n_channels == 1
    out = viewer.layers["frames denoised"].data
    assert out.shape == (3, 96, 96) and np.all(out.std(axis=(1, 2)) > 0)  # every frame denoised


def test_go_back_to_an_earlier_preview_after_training(qtbot, widget, cells):
    """The denoiser keeps every preview's weights too: going back to one
    denoises the layer again with them and says so."""
    viewer = widget.viewer
    widget.tta_check.setChecked(False)
    qtbot.mouseClick(widget.train_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert [s for s, _ in widget.history.entries] == [10, 20, 30, 40, 50, 60]
    final = np.asarray(viewer.layers["noisy denoised"].data).copy()
    widget.history.choose(10)
    qtbot.mouseClick(widget.history.use_btn, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert widget.status.text().startswith("Went back to the weights previewed at step 10. Denoised noisy")
    back = np.asarray(viewer.layers["noisy denoised"].data)
    assert_denoised_alike(back, widget.model.denoise(np.asarray(viewer.layers["noisy"].data), tta=False))
    assert not np.allclose(back, final, atol=1e-3)  # other weights, another result


def test_the_image_removed_while_training_keeps_the_model_and_says_so(qtbot, widget):
    viewer = widget.viewer
    widget.train()
    qtbot.waitUntil(lambda: widget.plot.last_step >= 2, timeout=TIMEOUT_MS)
    viewer.layers.remove(viewer.layers["noisy"])
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert widget.model is not None
    assert "The image 'noisy' was removed meanwhile: pick an image to predict." in widget.status.text()
