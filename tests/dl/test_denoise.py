"""The denoiser, trained for real on small synthetic images: Noise2Void from one
noisy image, Noise2Noise from pairs and frames, supervised from clean targets."""

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from napari_dlvision import kinds
from napari_dlvision.core.errors import ModelFileError, UserInputError
from napari_dlvision.data.noisy import add_noise, clean_cells, noisy_cells
from napari_dlvision.dl.denoise import Denoiser
from napari_dlvision.dl.denoise_train import DenoiseSettings, train_denoiser

SIGMA = 0.15
TINY = dict(depth=2, base_channels=16)  # the "small" preset is wider; this keeps tests fast


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These networks are tiny: one thread is as fast, and far faster on a busy shared machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def psnr(clean, x):
    return peak_signal_noise_ratio(clean, x, data_range=1.0)


def settings(**kw):
    return DenoiseSettings(**{"steps": 100, "patch_size": 32, "batch_size": 8, "lr": 3e-3, "seed": 0} | kw)


@pytest.fixture(scope="module")
def cells():
    return noisy_cells((96, 96), SIGMA, n=2, seed=3)


@pytest.fixture(scope="module")
def n2v_run(cells):
    clean, (noisy, _) = cells
    # Intensity units of a camera: the result must come back in them.
    raw = (noisy * 1000 + 300).astype(np.float32)
    d = Denoiser("n2v", **TINY)
    events = list(train_denoiser(d, raw, settings=settings(steps=100, preview_every=50)))
    return d, events, raw


def test_noise2void_from_one_noisy_image_raises_psnr(n2v_run, cells):
    d, events, raw = n2v_run
    clean, (noisy, _) = cells
    out = d.denoise(raw)
    assert out.dtype == np.float32 and out.shape == raw.shape
    before, after = psnr(clean, noisy), psnr(clean, (out - 300) / 1000)
    assert after > before + 4, (before, after)
    report = events[-1].payload["report"]
    assert report["stopped"] == "finished" and report["kept"] == "the averaged weights, as previewed"
    assert d.training["mode"] == "n2v" and d.training["steps_total"] == 100


def test_previews_show_the_asked_region_in_the_inputs_units(n2v_run):
    d, events, raw = n2v_run
    previews = [e.payload["preview"] for e in events if e.stage == "training" and e.payload]
    assert len(previews) == 2
    p = previews[-1]
    assert p["denoised"].shape == (1, 96, 96) and p["core"] == (slice(0, 96), slice(0, 96))
    assert abs(float(p["denoised"].mean()) - float(raw.mean())) < 0.1 * raw.std()
    # A region only: the part on screen, computed with context around it.
    view = {"box": ((10, 40), (50, 96))}
    settings_ = settings(steps=2, preview_every=1)
    ev = [e for e in train_denoiser(d, raw, settings=settings_, view=view) if e.stage == "training"]
    p = ev[0].payload["preview"]
    assert p["core"] == (slice(10, 40), slice(50, 96)) and p["denoised"].shape == (1, 30, 46)


def test_tiles_give_the_whole_image_result(n2v_run):
    d, _, raw = n2v_run
    img, params = d.prepare(raw)
    whole = np.empty_like(img)
    tiled = np.empty_like(img)
    for _ in d.iter_denoise_normalised(img, whole, device="cpu"):
        pass
    for _ in d.iter_denoise_normalised(img, tiled, device="cpu", tile_shape=(32, 32)):
        pass
    np.testing.assert_allclose(tiled, whole, atol=1e-4)


def test_model_file_round_trip_and_registry(n2v_run, tmp_path):
    d, _, raw = n2v_run
    path = d.save(tmp_path / "d.dlv")
    assert kinds.kind_of(path).task == kinds.IMAGE_TO_IMAGE
    back = kinds.load_model(path, device=d.device)  # the same device: a GPU's TF32 differs from a CPU by ~1e-3
    assert isinstance(back, Denoiser) and back.mode == "n2v" and back.ndim == 2 and back.n_channels == 1
    np.testing.assert_allclose(back.denoise(raw), d.denoise(raw), atol=1e-3)
    assert back.predict_outputs(raw)["denoised"].shape == raw.shape


def test_noise2void_puts_the_noisy_value_back_and_its_file_says_so(n2v_run, cells, tmp_path):
    d, _, raw = n2v_run
    clean = cells[0]
    assert d.reinclude and Denoiser("n2n").reinclude is False
    n2n = Denoiser("n2n")
    n2n.reinclude = True  # the other networks see the pixel: the model keeps it off
    assert n2n.reinclude is False
    put_back = d.denoise(raw, tta=False)
    d.reinclude = False
    try:
        plain = d.denoise(raw, tta=False)
        assert not Denoiser.load(d.save(tmp_path / "off.dlv"), device="cpu").reinclude
    finally:
        d.reinclude = True
    assert np.abs(put_back - plain).max() > 1.0  # camera units: it changed the result...
    # ...and not for the worse, even at this high noise (where it adds little).
    assert psnr(clean, (put_back - 300) / 1000) > psnr(clean, (plain - 300) / 1000) - 0.1
    back = Denoiser.load(d.save(tmp_path / "on.dlv"), device=d.device)
    assert back.reinclude
    np.testing.assert_allclose(back.denoise(raw, tta=False), put_back, atol=1e-3)


def test_noise2noise_from_pairs_and_from_frames(cells):
    clean, (a, b) = cells
    d = Denoiser("n2n", **TINY)
    list(train_denoiser(d, a, pairs=b, settings=settings(steps=80)))
    assert psnr(clean, d.denoise(a)) > psnr(clean, a) + 5
    # A stack of 4 repeated frames trains the same way; the result keeps the frame's layout.
    stack = np.stack([add_noise(clean, np.random.default_rng(k), gaussian=SIGMA) for k in range(4)])
    d2 = Denoiser("n2n", **TINY)
    events = list(train_denoiser(d2, stack, frames=True, settings=settings(steps=60)))
    assert "4 noisy acquisitions of 1 field" in events[0].message
    assert psnr(clean, d2.denoise(stack[0])) > psnr(clean, stack[0]) + 4


def test_supervised_from_clean_targets(cells):
    clean, (a, _) = cells
    d = Denoiser("supervised", **TINY)
    list(train_denoiser(d, a, targets=clean, settings=settings(steps=80)))
    assert psnr(clean, d.denoise(a)) > psnr(clean, a) + 6


def test_multichannel_and_3d_keep_the_layout():
    rng = np.random.default_rng(0)
    clean = np.stack([clean_cells((48, 48), seed=s) for s in (1, 2)], axis=-1)  # channels last
    noisy = add_noise(clean, rng, gaussian=0.1)
    for channels in ("joint", "independent"):
        d = Denoiser("n2v", **TINY)
        list(train_denoiser(d, noisy, channel_axis=-1, settings=settings(steps=3, channels=channels)))
        assert d.n_channels == 2 and d.net.n_classes == 2
        assert d.denoise(noisy, channel_axis=-1).shape == noisy.shape
    vol = add_noise(clean_cells((12, 40, 40), seed=4), rng, gaussian=0.1)
    d = Denoiser("n2v", **TINY)
    events = list(train_denoiser(d, vol, settings=settings(steps=3, patch_size=16)))
    assert d.ndim == 3 and "3D" in events[0].message
    assert d.denoise(vol).shape == vol.shape


def test_continue_training_adds_steps(n2v_run):
    d, _, raw = n2v_run
    total = d.training["steps_total"]
    list(train_denoiser(d, raw, settings=settings(steps=5)))
    assert d.training["steps_total"] == total + 5


def test_training_runs_in_bfloat16_where_the_cpu_has_it(cells):
    """bfloat16 gives Noise2Void 1.6x the steps in a time budget on such CPUs;
    elsewhere (emulated, slow) training stays in float32."""
    import torch

    from napari_dlvision.dl.loop import cpu_bf16_supported

    clean, (noisy, _) = cells
    d = Denoiser("n2v", **TINY)
    seen = []
    gen = train_denoiser(d, noisy, settings=settings(steps=2, device="cpu"))
    for ev in gen:
        if ev.stage == "start":  # the network exists now: watch its first convolution's output
            conv = next(m for m in d.net.modules() if isinstance(m, torch.nn.Conv2d))
            conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    assert seen, "the hook saw no training step"
    assert seen[0] == (torch.bfloat16 if cpu_bf16_supported() else torch.float32)
    assert d.denoise(noisy).dtype == np.float32  # prediction stays in float32
    assert d.training["settings"]["cpu_amp"] is True


# -- bad input: one clear message, nothing trained on garbage -------------------
def _first_error(gen):
    with pytest.raises(UserInputError) as e:
        list(gen)
    return str(e.value)


def test_bad_inputs_are_refused_clearly(cells):
    clean, (a, b) = cells
    assert "constant" in _first_error(train_denoiser(Denoiser(**TINY), np.full((40, 40), 7, np.uint16)))
    nan = a.copy()
    nan[3, 3] = np.nan
    assert "NaN" in _first_error(train_denoiser(Denoiser(**TINY), nan))
    msg = _first_error(train_denoiser(Denoiser("n2n", **TINY), a, pairs=b[:90]))
    assert "shape (90, 96)" in msg and "same field" in msg
    assert "clean target" in _first_error(train_denoiser(Denoiser("supervised", **TINY), a))
    assert "second noisy" in _first_error(train_denoiser(Denoiser("n2n", **TINY), a))
    assert "alone" in _first_error(train_denoiser(Denoiser("n2v", **TINY), a, pairs=b))
    assert "masked fraction" in _first_error(train_denoiser(Denoiser(**TINY), a, settings=settings(masked_fraction=0.9)))
    with pytest.raises(UserInputError, match="mode"):
        Denoiser("n3v")


def test_integer_image_with_a_tiny_range_trains_without_blowing_up():
    """Mostly 0 with a few 1s: the percentiles coincide, min and max scale it instead."""
    rng = np.random.default_rng(0)
    img = (rng.random((48, 48)) < 0.004).astype(np.uint8)
    d = Denoiser(**TINY)
    events = list(train_denoiser(d, img, settings=settings(steps=5)))
    assert all(np.isfinite(e.loss) for e in events if e.stage == "training")
    out = d.denoise(img)
    assert np.isfinite(out).all() and -1 < out.min() and out.max() < 2


def test_a_patch_larger_than_the_image_is_clipped_and_said():
    img = add_noise(clean_cells((20, 28), seed=1), np.random.default_rng(0), gaussian=0.1)
    events = list(train_denoiser(Denoiser(**TINY), img, settings=settings(steps=2, patch_size=64)))
    assert "patches 20x28 (clipped to the image)" in events[0].message


def test_a_stop_during_the_first_step_leaves_no_trained_claim(cells):
    clean, (a, _) = cells
    d = Denoiser(**TINY)
    gen = train_denoiser(d, a, settings=settings(steps=50))
    assert next(gen).stage == "start"
    gen.close()  # the user pressed Stop before the first step ended
    assert d.training["steps"] == 0 and d.training["stopped"] == "stopped"


def test_prediction_passes_a_constant_image_through(n2v_run):
    d, _, _ = n2v_run
    out = d.denoise(np.full((30, 30), 5, np.uint8))
    np.testing.assert_array_equal(out, np.full((30, 30), 5, np.float32))


def test_prediction_refuses_images_of_another_kind(n2v_run):
    d, _, raw = n2v_run
    with pytest.raises(UserInputError, match="1-channel"):
        d.denoise(np.stack([raw, raw], -1), channel_axis=-1)
    with pytest.raises(UserInputError, match="2D"):
        d.denoise(np.zeros((4, 30, 30), np.float32) + np.arange(30))


def test_a_damaged_model_file_is_refused(n2v_run, tmp_path):
    import json
    import zipfile

    d, _, _ = n2v_run
    path = d.save(tmp_path / "d.dlv")
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    meta = json.loads(members["model.json"])
    for key, value in (("mode", "n3v"), ("architecture", {"name": "unet", "ndim": 2}), ("n_channels", 3)):
        bad = dict(meta, **{key: value})
        out = tmp_path / f"bad_{key}.dlv"
        with zipfile.ZipFile(out, "w") as zf:
            for n, data in members.items():
                zf.writestr(n, json.dumps(bad) if n == "model.json" else data)
        with pytest.raises(ModelFileError):
            Denoiser.load(out)
