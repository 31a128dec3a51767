"""The `dlvision` command, run as a user would: a subprocess on real files."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from cli_helpers import dlvision

from napari_dlvision.core.metrics import iou


@pytest.fixture
def files(tmp_path, sample2d):
    tifffile.imwrite(tmp_path / "img.tif", sample2d.image)
    tifffile.imwrite(tmp_path / "lab.tif", sample2d.scribbles)
    return tmp_path


@pytest.fixture
def model(files):
    r = dlvision("train", "rf", "--image", files / "img.tif", "--labels", files / "lab.tif",
                 "--out", files / "m.dlv", "--trees", 30, "--class-names", "background,nucleus")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    return files / "m.dlv"


def test_train_then_predict_all_outputs(files, model, sample2d):
    r = dlvision("predict", "--model", model, "--image", files / "img.tif", "--out", files / "seg.tif",
                 "--probabilities", files / "p.tif", "--uncertainty", files / "u.tif",
                 "--instances", files / "i.tif")
    assert r.returncode == 0, r.stderr
    seg = tifffile.imread(files / "seg.tif")
    assert seg.shape == sample2d.image.shape and seg.dtype == np.uint8
    assert iou(seg == 2, sample2d.foreground) > 0.9
    assert tifffile.imread(files / "p.tif").shape == (2,) + sample2d.image.shape
    assert tifffile.imread(files / "u.tif").dtype == np.float32
    inst = tifffile.imread(files / "i.tif")
    assert inst.max() > 10


def test_info_prints_json(model):
    r = dlvision("info", model)
    meta = json.loads(r.stdout)
    assert meta["kind"] == "pixel-random-forest" and meta["class_names"] == ["background", "nucleus"]


def test_feature_subset_and_several_images(files, sample2d):
    tifffile.imwrite(files / "img2.png", (sample2d.image // 256).astype(np.uint8))
    r = dlvision("train", "rf", "--image", files / "img.tif", "--labels", files / "lab.tif",
                 "--image", files / "img2.png", "--labels", files / "lab.tif",
                 "--features", "gaussian@0.3,hessian,log", "--scales", "1,3.5",
                 "--out", files / "sub.dlv", "--trees", 10)
    assert r.returncode == 0, r.stderr
    meta = json.loads(dlvision("info", files / "sub.dlv").stdout)
    assert meta["features"] == ["gaussian@0.3", "hessian@1", "hessian@3.5", "log@1", "log@3.5"]


def test_predict_folder(files, model, sample2d):
    (files / "in").mkdir()
    for i in range(3):
        tifffile.imwrite(files / "in" / f"f{i}.tif", sample2d.image[: 100 + i])
    r = dlvision("predict", "--model", model, "--image", files / "in", "--out", files / "out",
                 "--probabilities", files / "out")
    assert r.returncode == 0, r.stderr
    assert tifffile.imread(files / "out" / "f2_segmentation.tif").shape == (102, 256)
    assert (files / "out" / "f0_probabilities.tif").is_file()
    tifffile.imwrite(files / "in" / "f1.tiff", sample2d.image[:50])  # f1.tif's outputs would be overwritten
    r = dlvision("predict", "--model", model, "--image", files / "in", "--out", files / "out2")
    assert r.returncode == 1 and "f1.tif and f1.tiff share a name" in r.stderr, r.stderr


def _rgb(tmp_path, sample2d):
    rgb = np.stack([sample2d.image // 256] * 3, axis=-1).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb)
    return tmp_path / "rgb.tif"


@pytest.mark.parametrize(
    "make_args,message",
    [
        (lambda p, m: ["predict", "--model", p / "nope.dlv", "--image", p / "img.tif", "--out", p / "s.tif"], "not found"),
        (lambda p, m: ["predict", "--model", p / "img.tif", "--image", p / "img.tif", "--out", p / "s.tif"], "not a readable"),
        (lambda p, m: ["predict", "--model", m, "--image", p / "missing.tif", "--out", p / "s.tif"], "file not found"),
        (lambda p, m: ["predict", "--model", m, "--image", p / "img.tif", "--out", p / "no" / "s.tif"], "folder does not exist"),
        (lambda p, m: ["predict", "--model", m, "--image", p / "img.tif", "--out", p / "s.tif", "--foreground", "7"], "--foreground"),
        (lambda p, m: ["train", "rf", "--image", p / "img.tif", "--labels", p / "zero.tif", "--out", p / "x.dlv"], "nothing is painted"),
        (lambda p, m: ["train", "rf", "--image", p / "img.tif", "--labels", p / "small.tif", "--out", p / "x.dlv"], "shape"),
        (lambda p, m: ["train", "rf", "--image", p / "img.tif", "--labels", p / "lab.tif", "--out", p / "x.dlv", "--features", "blur@2"], "unknown feature family"),
        (lambda p, m: ["train", "rf", "--image", p / "nan.tif", "--labels", p / "lab.tif", "--out", p / "x.dlv"], "NaN"),
        (lambda p, m: ["predict", "--model", m, "--image", p / "rgb.tif", "--out", p / "s.tif"], "1-channel"),
    ],
)
def test_errors_are_one_readable_line(files, model, sample2d, make_args, message):
    tifffile.imwrite(files / "zero.tif", np.zeros_like(sample2d.scribbles))
    tifffile.imwrite(files / "small.tif", sample2d.scribbles[:10])
    nan = sample2d.image.astype(np.float32)
    nan[0, 0] = np.nan
    tifffile.imwrite(files / "nan.tif", nan)
    _rgb(files, sample2d)
    r = dlvision(*make_args(files, model))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlvision: error:"), r.stderr
    assert message in lines[0]
    assert "Traceback" not in r.stderr


def test_train_unet_then_predict(files, sample2d):
    r = dlvision("train", "unet", "--image", files / "img.tif", "--labels", files / "lab.tif",
                 "--out", files / "u.dlv", "--steps", 40, "--patch-size", 64, "--batch-size", 4)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "step 40/40" in r.stdout
    meta = json.loads(dlvision("info", files / "u.dlv").stdout)
    assert meta["kind"] == "pixel-unet" and meta["mode"] == "sparse"
    r = dlvision("predict", "--model", files / "u.dlv", "--image", files / "img.tif", "--out", files / "s.tif",
                 "--probabilities", files / "p.tif", "--instances", files / "i.tif")
    assert r.returncode == 0, r.stderr
    assert tifffile.imread(files / "p.tif").shape == (2,) + sample2d.image.shape
    assert tifffile.imread(files / "s.tif").shape == sample2d.image.shape


def test_train_unet_dense_folder_with_time_limit(tmp_path, sample2d):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", sample2d.image)
    tifffile.imwrite(tmp_path / "masks" / "a.tif", sample2d.instances)
    r = dlvision("train", "unet", "--masks-dir", tmp_path, "--out", tmp_path / "d.dlv",
                 "--steps", 100000, "--time-limit", 3, "--patch-size", 64, "--batch-size", 2)
    assert r.returncode == 0, r.stderr
    meta = json.loads(dlvision("info", tmp_path / "d.dlv").stdout)
    assert meta["mode"] == "dense" and meta["training"]["stopped"] == "time limit"
    # Its instances come from interior and boundary probabilities, which the
    # tiled path does not keep: refused there in one line, before any block.
    r = dlvision("predict", "--model", tmp_path / "d.dlv", "--image", tmp_path / "images" / "a.tif",
                 "--out", tmp_path / "s.zarr", "--instances", tmp_path / "i.zarr")
    assert r.returncode == 1 and "instance masks" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s.zarr").exists()
    r = dlvision("train", "unet", "--masks-dir", tmp_path / "nothing", "--out", tmp_path / "x.dlv")
    assert r.returncode == 1 and r.stderr.startswith("dlvision: error:")


def test_mask_lookup_ignores_other_files(tmp_path):
    from napari_dlvision.core.errors import UserInputError
    from napari_dlvision.core.io import mask_for

    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(UserInputError, match="no mask"):
        mask_for(tmp_path / "img" / "a.tif", tmp_path)
    (tmp_path / "a.png").write_bytes(b"")
    assert mask_for("a.tif", tmp_path).name == "a.png"


def test_a_finished_command_skips_the_teardown_but_not_the_atexit_work(tmp_path):
    # The process ends right after the libraries' atexit hooks (those registered while
    # the command ran), without Python's teardown; stdout and the exit status survive.
    script = ("import atexit, sys\n"
              "from napari_dlvision.cli import main\n"
              f"atexit.register(lambda: open({str(tmp_path / 'teardown')!r}, 'w').close())\n"
              f"sys.argv = ['dlvision', 'info', {str(tmp_path / 'missing.dlv')!r}]\n"
              "print('x' * 100000)\n"  # buffered, not yet written
              "code = main()\n"
              f"atexit.register(lambda: open({str(tmp_path / 'hook')!r}, 'w').close())\n"
              "sys.exit(code)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "model file not found" in r.stderr and r.stdout == "x" * 100000 + "\n"
    assert (tmp_path / "hook").exists() and not (tmp_path / "teardown").exists()


def test_a_ctrl_c_after_the_work_is_done_prints_no_traceback(tmp_path):
    # Once the command has finished, a Ctrl-C during the interpreter's teardown
    # printed a KeyboardInterrupt traceback from torch's finalisers under exit 0.
    script = ("import os, signal, sys\n"
              "import torch  # its finalisers run at teardown\n"
              "from napari_dlvision.cli import main\n"
              f"sys.argv = ['dlvision', 'info', {str(tmp_path / 'missing.dlv')!r}]\n"
              "code = main()\n"
              "os.kill(os.getpid(), signal.SIGINT)\n"
              "sys.exit(code)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "KeyboardInterrupt" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [f"dlvision: error: model file not found: {tmp_path / 'missing.dlv'}"]
