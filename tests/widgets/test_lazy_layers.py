"""A layer too big for memory (dask or Zarr data, a multiscale pyramid) is
predicted block by block into a file-backed output layer, the blocks in view
first, and saved to Zarr or TIFF on request; the result is the in-memory one."""

import dask.array as da
import numpy as np
import pytest
import tifffile
from widget_helpers import assert_denoised_alike, wait_idle

from napari_dlvision.core.lazy import block_regions
from napari_dlvision.core.pixel_classifier import PixelClassifier
from napari_dlvision.data.synthetic import nuclei
from napari_dlvision.widgets.pixel_classifier import PixelClassifierWidget


@pytest.fixture
def trained():
    s = nuclei((160, 200), seed=3)
    return s, PixelClassifier(n_trees=10).fit(s.image, s.scribbles)


def test_blocks_in_view_come_first():
    arr = da.zeros((4096, 4096), chunks=1024)
    regions = block_regions(arr, focus=((2100, 2200), (3000, 3100)))
    # the box straddles two blocks: both first, the one holding more of it ahead
    assert regions[:2] == [(slice(2048, 3072), slice(2048, 3072)), (slice(2048, 3072), slice(3072, 4096))]
    assert len({tuple((r.start, r.stop) for r in region) for region in regions}) == 16


def test_a_dask_layer_is_predicted_block_by_block_and_saved(make_napari_viewer, qtbot, trained, tmp_path):
    zarr = pytest.importorskip("zarr")
    s, clf = trained
    big = np.tile(s.image, (8, 8))  # 1280 x 1600: two blocks a side
    viewer = make_napari_viewer()
    layer = viewer.add_image(da.from_array(big, chunks=512), name="slide", scale=(0.5, 0.5), translate=(10, 20),
                             units="um")
    strokes = viewer.add_labels(np.zeros(big.shape, np.uint8), name="strokes", scale=(0.5, 0.5), translate=(10, 20))
    w = PixelClassifierWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model = clf
    assert not w.lazy.save_btn.isVisible()
    assert w.apply_to_layer(layer) is not None
    wait_idle(qtbot, w)
    out = viewer.layers["slide segmentation"]
    assert isinstance(out.data, np.memmap)  # on disk, not in memory
    np.testing.assert_array_equal(np.asarray(out.data), clf.predict(big))
    assert "block by block" in w.panel.status.text() and w.lazy.save_btn.isEnabled()
    # Instances (ticked by default) are split strip by strip from the file,
    # into another file, with the ids of the in-memory path.
    inst = viewer.layers["slide instances"]
    assert isinstance(inst.data, np.memmap) and inst.data.dtype == np.uint16
    whole = clf.instances_from_segmentation(clf.predict(big))
    assert whole.max() > 50
    np.testing.assert_array_equal(np.asarray(inst.data), whole)
    assert f", {whole.max()} objects in" in w.panel.status.text()
    assert "Segmentation only" not in w.panel.status.text()
    assert viewer.layers.selection.active is strokes  # painting goes on
    assert not strokes.data.any()

    assert w.lazy.save(tmp_path / "seg.zarr") is not None
    wait_idle(qtbot, w)
    # An OME-Zarr that lies where the image does: its pixel size, offset and units (they were lost).
    saved = zarr.open_group(str(tmp_path / "seg.zarr"), mode="r")
    np.testing.assert_array_equal(saved["0"][:], np.asarray(out.data))
    ms = saved.attrs["ome"]["multiscales"][0]
    assert [(a["name"], a.get("unit")) for a in ms["axes"]] == [("y", "micrometer"), ("x", "micrometer")]
    assert ms["datasets"][0]["coordinateTransformations"] == [{"type": "scale", "scale": [0.5, 0.5]},
                                                              {"type": "translation", "translation": [10.0, 20.0]}]
    assert "Saved seg.zarr" in w.panel.status.text()
    job = w.lazy.save(tmp_path / "seg.png")
    assert job is None and ".zarr or .tif" in w.last_error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.zarr"]

    # A large layer opened after the strokes lies above them: its outputs go
    # straight above it (under it, it hid them), the strokes stay selected.
    top = viewer.add_image(da.from_array(s.image, chunks=64), name="top")
    viewer.layers.selection.active = strokes
    assert w.apply_to_layer(top) is not None
    wait_idle(qtbot, w)
    names = [lay.name for lay in viewer.layers]
    assert names[-3:] == ["top", "top segmentation", "top instances"] and viewer.layers.selection.active is strokes

    w.outputs.prob_check.setChecked(True)  # probabilities need the whole image: said, not shown
    w.outputs.instances_check.setChecked(False)
    assert w.apply_to_layer(layer) is not None
    wait_idle(qtbot, w)
    assert "No probabilities (they need the whole image in memory)" in w.panel.status.text()
    assert "objects" not in w.panel.status.text()
    folder = w.lazy._temporary_folder()
    assert len(list(folder.iterdir())) == 4  # each layer's segmentation and instances
    viewer.close()  # deletes the dock without closing it: the files (a slide's are gigabytes) go too
    qtbot.waitUntil(lambda: not folder.exists(), timeout=10_000)


def docked(make_napari_viewer, clf, data, name, **layer_kw):
    """A viewer holding `data` as layer `name`, the forest widget docked after, holding `clf`."""
    viewer = make_napari_viewer()
    layer = viewer.add_image(data, name=name, **layer_kw)
    w = PixelClassifierWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model = clf
    return viewer, layer, w


def applied(make_napari_viewer, qtbot, clf, data, name, **layer_kw):
    """docked, then applied to the layer."""
    viewer, layer, w = docked(make_napari_viewer, clf, data, name, **layer_kw)
    assert w.apply_to_layer(layer) is not None
    wait_idle(qtbot, w)
    return viewer, w


def test_stop_keeps_the_blocks_done_and_saves_nothing(make_napari_viewer, qtbot, trained, tmp_path):
    s, clf = trained
    big = np.tile(s.image, (26, 21))  # 4160 x 4200: 25 blocks
    viewer, layer, w = docked(make_napari_viewer, clf, da.from_array(big, chunks=1024), "slide")
    assert w.apply_to_layer(layer) is not None
    qtbot.waitUntil(lambda: "slide segmentation" in viewer.layers and 0 < w.panel.progress.value() < 50,
                    timeout=60_000)
    w.stop()
    wait_idle(qtbot, w)
    assert "Stopped; the blocks done so far are shown" in w.panel.status.text()
    done = np.asarray(viewer.layers["slide segmentation"].data)
    assert 0 < (done > 0).mean() < 1  # some blocks, not all
    assert not w.lazy.save_btn.isEnabled()
    assert w.lazy.save(tmp_path / "seg.zarr") is None and "let it finish" in w.last_error


def test_stop_while_objects_are_split_keeps_the_segmentation_and_no_half_split_file(make_napari_viewer, qtbot,
                                                                                       trained):
    s, clf = trained
    big = np.tile(s.image, (16, 8))  # 2560 x 1600: the objects are split in two strips
    viewer, layer, w = docked(make_napari_viewer, clf, da.from_array(big, chunks=1024), "slide")
    assert w.apply_to_layer(layer) is not None
    qtbot.waitUntil(lambda: "Splitting touching objects" in w.panel.status.text(), timeout=60_000)
    w.stop()
    wait_idle(qtbot, w)
    assert "Stopped while splitting the objects: the segmentation is complete" in w.panel.status.text()
    np.testing.assert_array_equal(np.asarray(viewer.layers["slide segmentation"].data), clf.predict(big))
    assert "slide instances" not in viewer.layers
    assert [p.name.split("-")[0] for p in w.lazy._temporary_folder().iterdir()] == ["segmentation"]


def test_a_zarr_array_layer_is_read_by_blocks_too(make_napari_viewer, qtbot, trained):
    zarr = pytest.importorskip("zarr")
    s, clf = trained
    z = zarr.create_array(zarr.storage.MemoryStore(), shape=s.image.shape, chunks=(64, 64), dtype=s.image.dtype)
    z[:] = s.image
    viewer, _ = applied(make_napari_viewer, qtbot, clf, z, "z")
    np.testing.assert_array_equal(np.asarray(viewer.layers["z segmentation"].data), clf.predict(s.image))


def test_a_multiscale_layer_uses_its_full_resolution(make_napari_viewer, qtbot, trained, tmp_path):
    s, clf = trained
    pyramid = [da.from_array(s.image, chunks=64), da.from_array(s.image[::2, ::2], chunks=64)]
    viewer, w = applied(make_napari_viewer, qtbot, clf, pyramid, "pyr", multiscale=True)
    np.testing.assert_array_equal(np.asarray(viewer.layers["pyr segmentation"].data), clf.predict(s.image))
    assert w.lazy.save(tmp_path / "seg.tif") is not None
    wait_idle(qtbot, w)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "seg.tif"), clf.predict(s.image))


def test_unet_and_denoiser_widgets_predict_a_dask_layer_as_in_memory(make_napari_viewer, qtbot, trained, tmp_path):
    pytest.importorskip("torch")
    from napari_dlvision.widgets.torch_import import import_torch

    import_torch()  # as the widgets do: torch's library loaded first, without the GIL held
    from napari_dlvision.dl.denoise import Denoiser
    from napari_dlvision.dl.denoise_train import DenoiseSettings, train_denoiser
    from napari_dlvision.dl.pixel_train import TrainSettings, train_unet
    from napari_dlvision.dl.segmenter import UNetSegmenter
    from napari_dlvision.widgets.denoiser import DenoiserWidget
    from napari_dlvision.widgets.unet_trainer import UNetWidget

    s, _ = trained
    seg = UNetSegmenter(mode="sparse", device="cpu")
    for _ in train_unet(seg, s.image, s.scribbles, TrainSettings(steps=2, batch_size=2, patch_size=32, device="cpu",
                                                                 teacher=None)):
        pass
    den = Denoiser(device="cpu")
    for _ in train_denoiser(den, s.image, settings=DenoiseSettings(steps=2, batch_size=2, patch_size=32,
                                                                   device="cpu")):
        pass
    den.tta = False
    viewer = make_napari_viewer()
    layer = viewer.add_image(da.from_array(s.image, chunks=64), name="big")
    for widget, model, output in ((UNetWidget, seg, "big segmentation (U-Net)"), (DenoiserWidget, den, None)):
        w = widget(viewer)
        viewer.window.add_dock_widget(w)
        w.model = model
        if widget is DenoiserWidget:
            w.tta_check.setChecked(False)
            output = w.output_name(layer)
        assert w.predict_layer(layer) is not None
        wait_idle(qtbot, w)
        got = np.asarray(viewer.layers[output].data)
        if widget is DenoiserWidget:
            # The noisy values are put back with numbers fitted on each path's
            # own network output; those differ in float rounding (tiles against
            # blocks), so the results agree to float precision, not bit for bit.
            assert_denoised_alike(got, den.denoise(s.image))
        else:
            np.testing.assert_array_equal(got, seg.predict(s.image))
            np.testing.assert_array_equal(np.asarray(viewer.layers["big instances (U-Net)"].data),
                                          seg.instances(seg.predict_proba(s.image)))
        assert "block by block" in w.panel.status.text() and w.lazy.save_btn.isEnabled()
        noun = "denoised image" if widget is DenoiserWidget else "segmentation"
        assert f"writes the {noun} to Zarr" in w.panel.status.text()
        # Saved as the layer shows it: the denoised image was saved with the network's channel axis, (1, Y, X).
        saved = tmp_path / f"{widget.__name__}.tif"
        assert w.lazy.save(saved) is not None
        wait_idle(qtbot, w)
        np.testing.assert_array_equal(tifffile.imread(saved), got)


def test_stop_ends_the_denoisers_fitting_pass_before_any_block(make_napari_viewer, qtbot):
    """A dask layer's denoising first runs the network over a central region (to fit
    the put-back of noisy values, 8 views with test-time augmentation): seconds
    on a CPU in which Stop must work, and after which no block has started."""
    pytest.importorskip("torch")
    from napari_dlvision.widgets.torch_import import import_torch

    import_torch()
    from napari_dlvision.dl.denoise import Denoiser
    from napari_dlvision.dl.denoise_train import DenoiseSettings, train_denoiser
    from napari_dlvision.widgets.denoiser import DenoiserWidget

    rng = np.random.default_rng(0)
    image = nuclei((128, 128), seed=4).image
    den = Denoiser(device="cpu")
    for _ in train_denoiser(den, image, settings=DenoiseSettings(steps=2, batch_size=2, patch_size=32, device="cpu")):
        pass
    assert den.reinclude
    big = rng.normal(100, 10, (1024, 1024)).astype(np.float32)
    viewer = make_napari_viewer()
    layer = viewer.add_image(da.from_array(big, chunks=256), name="big")
    w = DenoiserWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model = den
    w.tta_check.setChecked(True)
    assert w.predict_layer(layer) is not None
    qtbot.waitUntil(lambda: "Fitting the put-back" in w.panel.status.text(), timeout=60_000)
    w.stop()
    wait_idle(qtbot, w, timeout=60_000)
    assert "Stopped before the first block" in w.panel.status.text()
    assert w.output_name(layer) not in viewer.layers
    assert not w.lazy.save_btn.isEnabled()
