"""`dlvision train denoiser` and `dlvision predict` on real files, in a subprocess."""

import json
from functools import partial

import cli_helpers
import numpy as np
import pytest
import tifffile
from cli_helpers import one_line_error
from skimage.metrics import peak_signal_noise_ratio

from napari_dlvision.data.noisy import add_noise, noisy_cells

# One thread: these trainings are tiny, and a busy machine makes more threads slower.
dlvision = partial(cli_helpers.dlvision, OMP_NUM_THREADS="1")


FAST = ["--steps", "60", "--patch-size", "32", "--batch-size", "4"]
BRIEF = ["--steps", "5", "--patch-size", "32", "--batch-size", "2", "--no-tta"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("denoise")
    clean, (a, b) = noisy_cells((80, 80), 0.15, n=2, seed=5)
    units = lambda x: np.clip(x * 4000 + 500, 0, 65535).astype(np.uint16)  # noqa: E731 - a camera's counts
    tifffile.imwrite(d / "a.tif", units(a))
    tifffile.imwrite(d / "b.tif", units(b))
    tifffile.imwrite(d / "clean.tif", units(clean))
    return d, clean


@pytest.fixture(scope="module")
def n2v_model(files):
    d, _ = files
    r = dlvision("train", "denoiser", "--image", d / "a.tif", "--out", d / "n2v.dlv", *FAST)
    assert r.returncode == 0, r.stderr
    assert "Noise2Void" in r.stdout and "wrote" in r.stdout
    return d / "n2v.dlv"


def test_noise2void_train_then_predict_float32_in_the_inputs_units(files, n2v_model):
    d, clean = files
    r = dlvision("predict", "--model", n2v_model, "--image", d / "a.tif", "--out", d / "a_denoised.tif")
    assert r.returncode == 0, r.stderr
    out = tifffile.imread(d / "a_denoised.tif")
    noisy = tifffile.imread(d / "a.tif")
    assert out.dtype == np.float32 and out.shape == noisy.shape
    # Counts in, counts out: output in normalised units would be ~1000 counts off; 60 steps of
    # training leave the mean within about 0.05 std of the input's, varying with the seed.
    assert abs(out.mean() - noisy.mean()) < 0.15 * noisy.std()
    before = peak_signal_noise_ratio(clean, (noisy - 500) / 4000, data_range=1)
    after = peak_signal_noise_ratio(clean, (out - 500) / 4000, data_range=1)
    assert after > before + 2, (before, after)
    meta = json.loads(dlvision("info", n2v_model).stdout)
    assert meta["kind"] == "denoiser" and meta["mode"] == "n2v" and meta["training"]["steps"] == 60


def test_predict_a_folder(files, n2v_model, tmp_path):
    d, _ = files
    (tmp_path / "in").mkdir()
    for name in ("x", "y"):
        tifffile.imwrite(tmp_path / "in" / f"{name}.tif", tifffile.imread(d / "a.tif")[:70])
    r = dlvision("predict", "--model", n2v_model, "--image", tmp_path / "in", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    out = tifffile.imread(tmp_path / "out" / "y_denoised.tif")
    assert out.shape == (70, 80) and out.dtype == np.float32


def test_noise2noise_and_supervised(files, tmp_path):
    d, _ = files
    r = dlvision("train", "denoiser", "--image", d / "a.tif", "--pair", d / "b.tif", "--out", tmp_path / "n2n.dlv",
                 *BRIEF)
    assert r.returncode == 0, r.stderr
    assert "Noise2Noise" in r.stdout
    r = dlvision("train", "denoiser", "--image", d / "a.tif", "--target", d / "clean.tif",
                 "--out", tmp_path / "sup.dlv", *BRIEF)
    assert r.returncode == 0, r.stderr
    meta = json.loads(dlvision("info", tmp_path / "sup.dlv").stdout)
    assert meta["mode"] == "supervised" and meta["test_time_augmentation"] is False


def test_frames_of_a_stack_train_noise2noise(files, tmp_path):
    _, clean = files
    rng = np.random.default_rng(0)
    stack = np.stack([add_noise(clean, rng, gaussian=0.15) for _ in range(3)])
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    r = dlvision("train", "denoiser", "--image", tmp_path / "stack.tif", "--frames", "--out", tmp_path / "f.dlv",
                 "--steps", "3", "--patch-size", "32", "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    assert "3 noisy acquisitions of 1 field" in r.stdout


def test_bad_inputs_give_one_line(files, n2v_model, tmp_path):
    d, _ = files
    tifffile.imwrite(tmp_path / "small.tif", tifffile.imread(d / "b.tif")[:50])
    tifffile.imwrite(tmp_path / "flat.tif", np.full((40, 40), 9, np.uint16))
    msg = one_line_error(dlvision("train", "denoiser", "--image", d / "a.tif", "--pair", tmp_path / "small.tif",
                                  "--out", tmp_path / "m.dlv", *FAST))
    assert "same field" in msg
    assert "constant" in one_line_error(dlvision("train", "denoiser", "--image", tmp_path / "flat.tif",
                                                 "--out", tmp_path / "m.dlv", *FAST))
    assert "a model file is written" in one_line_error(dlvision("train", "denoiser", "--image", d / "a.tif",
                                                                "--out", d / "a.tif", *FAST))
    # --pair and --target exclude each other.
    assert "not allowed with" in one_line_error(dlvision("train", "denoiser", "--image", d / "a.tif", "--pair",
                                                         d / "b.tif", "--target", d / "clean.tif",
                                                         "--out", tmp_path / "m.dlv"))
    assert "overwrite" in one_line_error(dlvision("predict", "--model", n2v_model, "--image", d / "a.tif",
                                                  "--out", d / "a.tif"))
    assert "pixel classifiers" in one_line_error(dlvision("predict", "--model", n2v_model, "--image", d / "a.tif",
                                                          "--out", tmp_path / "o.tif", "--instances",
                                                          tmp_path / "i.tif"))
    # Refused before predicting: PNG holds no float32.
    assert "float32, which PNG cannot hold" in one_line_error(dlvision("predict", "--model", n2v_model, "--image",
                                                                       d / "a.tif", "--out", tmp_path / "d.png"))
    tifffile.imwrite(tmp_path / "line.tif", np.arange(64, dtype=np.uint16))
    assert "takes 2D or 3D images" in one_line_error(dlvision("train", "denoiser", "--image", tmp_path / "line.tif",
                                                              "--out", tmp_path / "m.dlv", *FAST))
    assert "needs 2D or 3D frames" in one_line_error(dlvision("train", "denoiser", "--image", tmp_path / "flat.tif",
                                                              "--frames", "--out", tmp_path / "m.dlv", *FAST))
    # Continuing keeps the way a denoiser was trained.
    assert "continue it the same way" in one_line_error(dlvision("train", "denoiser", "--image", d / "a.tif",
                                                                 "--pair", d / "b.tif", "--init", n2v_model,
                                                                 "--out", tmp_path / "m.dlv", *FAST))
    assert not (tmp_path / "m.dlv").exists()


def test_noise2void_from_several_images_and_noise2noise_from_folder_pairs(files, tmp_path):
    d, _ = files
    r = dlvision("train", "denoiser", "--image", d / "a.tif", "--image", d / "b.tif",
                 "--out", tmp_path / "two.dlv", *BRIEF)
    assert r.returncode == 0, r.stderr
    assert "Noise2Void" in r.stdout and "on 2 noisy image" in r.stdout, r.stdout
    # Two folders of independent acquisitions, matched by file name.
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, name in ((first, "a.tif"), (second, "b.tif")):
        folder.mkdir()
        for field in ("f1.tif", "f2.tif"):
            (folder / field).write_bytes((d / name).read_bytes())
    r = dlvision("train", "denoiser", "--image", first, "--pair", second, "--out", tmp_path / "n2n.dlv", *BRIEF)
    assert r.returncode == 0, r.stderr
    assert "Noise2Noise" in r.stdout and "4 noisy acquisitions of 2 field" in r.stdout, r.stdout
    (second / "f2.tif").unlink()  # a file without its pair
    r = dlvision("train", "denoiser", "--image", first, "--pair", second, "--out", tmp_path / "n2n2.dlv", *BRIEF)
    line = one_line_error(r)
    assert "f2" in line and "no pair for f2" in line
    # The same noisy data as its own pair: the network would learn to copy the noise.
    for image, pair in ((d / "a.tif", d / "a.tif"), (first, first)):
        r = dlvision("train", "denoiser", "--image", image, "--pair", pair, "--out", tmp_path / "self.dlv", *BRIEF)
        assert "is the --image itself" in one_line_error(r)
    assert not (tmp_path / "self.dlv").exists()
    r = dlvision("train", "denoiser", "--image", first, "--pair", d / "b.tif", "--out", tmp_path / "x.dlv", *BRIEF)
    assert "give a folder to --pair too" in one_line_error(r)
