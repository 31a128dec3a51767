"""The CLI with hostile input: one line and exit status 1, inputs untouched, nothing half-written."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
from cli_helpers import dlvision, one_line_error


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from napari_dlvision.data.synthetic import nuclei

    d = tmp_path_factory.mktemp("cli")
    s = nuclei((96, 96), seed=3)
    tifffile.imwrite(d / "img.tif", s.image)
    tifffile.imwrite(d / "lab.tif", s.scribbles)
    r = dlvision("train", "rf", "--image", d / "img.tif", "--labels", d / "lab.tif", "--out", d / "m.dlv",
                 "--trees", 5)
    assert r.returncode == 0, r.stderr
    return d


@pytest.mark.parametrize("args,text", [
    (["predict", "--model", "{d}/m.dlv", "--image", "{d}/img.tif", "--out", "{d}/img.tif"], "img.tif"),
    (["predict", "--model", "{d}/m.dlv", "--image", "{d}/img.tif", "--out", "{d}/s.tif",
      "--probabilities", "{d}/img.tif"], "img.tif"),
    (["predict", "--model", "{d}/m.dlv", "--image", "{d}/img.tif", "--out", "{d}/m.dlv"], "m.dlv"),
    (["predict", "--model", "{d}/m.dlv", "--image", "{d}/img.tif", "--out", "{d}/./sub/../img.tif"], "img.tif"),
    (["predict", "--model", "{d}/m.dlv", "--image", "{d}/img.tif", "--out", "{d}/a.tif",
      "--instances", "{d}/a.tif"], "a.tif"),
    (["train", "rf", "--image", "{d}/img.tif", "--labels", "{d}/lab.tif", "--out", "{d}/lab.tif"], "lab.tif"),
    (["train", "unet", "--image", "{d}/img.tif", "--labels", "{d}/lab.tif", "--out", "{d}/img.tif"], "img.tif"),
    (["predict", "--model", "{d}/m.dlv", "--image", "{d}", "--out", "{d}"], "input folder"),
    (["predict", "--model", "{d}/m.dlv", "--image", "{d}/img.tif", "--out", "{d}/nodir/s.tif"], "nodir"),
    (["predict", "--model", "{d}/m.dlv", "--image", "{d}/img.tif", "--out", "{d}/s.tif",
      "--probabilities", "{d}/nodir/p.tif"], "nodir"),
    (["predict", "--model", "{d}/m.dlv", "--image", "{d}/img.tif", "--out", "{d}/s.xyz"], ".xyz"),
])
def test_outputs_that_would_destroy_inputs_are_refused(files, args, text):
    (files / "sub").mkdir(exist_ok=True)
    before = {p.name: digest(p) for p in files.iterdir() if p.is_file()}
    r = dlvision(*[a.format(d=files) for a in args])
    one_line_error(r, text)
    after = {p.name: digest(p) for p in files.iterdir() if p.is_file()}
    assert after == before  # nothing written, nothing changed


@pytest.mark.parametrize("args,text", [
    (["train", "rf", "--trees", "0"], "--trees"),
    (["train", "rf", "--scales", "1,100"], "to 32 pixels, got 100"),
    (["train", "rf", "--trees", "-3"], "--trees"),
    (["train", "rf", "--max-depth", "-1"], "--max-depth"),
    (["train", "rf", "--channel-axis", "5"], "channel"),
    (["train", "rf", "--spacing", "0,0"], "--spacing"),
    (["train", "unet", "--lr", "inf"], "--lr"),
    (["train", "unet", "--time-limit", "nan"], "--time-limit"),
    (["train", "unet", "--spacing", "0,0"], "--spacing"),
    (["train", "unet", "--channel-axis", "5"], "channel"),
    (["train", "unet", "--batch-size", "100000"], "--batch-size"),
    (["train", "unet", "--batch-size", "4096", "--patch-size", "512"], "GiB"),
    (["train", "unet", "--steps", "0"], "--steps"),
    (["train", "rf", "--class-names", "a,b,c,d"], "strokes paint classes up to 2"),
    (["train", "unet", "--class-names", "a,b,c"], "strokes paint classes up to 2"),
    (["train", "rf", "--class-names", "a,a"], "given twice"),
    (["train", "rf", "--class-names", "a,"], "empty class name"),
    (["train", "rf", "--spacing", "1e-300,1"], "differ more than 1000-fold"),
    (["train", "rf", "--spacing", "2,1,1"], "voxel size must be 2 positive numbers, got 2,1,1"),
])
def test_bad_arguments_are_one_line(files, args, text):
    kind = args[1]
    base = ["--image", files / "img.tif", "--labels", files / "lab.tif", "--out", files / f"new_{kind}.dlv"]
    r = dlvision(*args[:2], *base, *args[2:])
    one_line_error(r, text)
    assert not (files / f"new_{kind}.dlv").exists()


def test_scales_alone_apply_to_every_family(files, tmp_path):
    r = dlvision("train", "rf", "--image", files / "img.tif", "--labels", files / "lab.tif",
                 "--out", tmp_path / "s.dlv", "--trees", 3, "--scales", "1,3.5")
    assert r.returncode == 0, r.stderr
    import json

    features = json.loads(dlvision("info", tmp_path / "s.dlv").stdout)["features"]
    assert {f.split("@")[1] for f in features} == {"1", "3.5"}
    assert {f.split("@")[0] for f in features} == {"gaussian", "log", "gradient", "dog", "structure_tensor",
                                                   "hessian"}


def test_masks_dir_beside_strokes_needs_dense(files, tmp_path):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", tifffile.imread(files / "img.tif"))
    tifffile.imwrite(tmp_path / "masks" / "a.tif", (tifffile.imread(files / "lab.tif") > 0).astype(np.uint8))
    r = dlvision("train", "unet", "--masks-dir", tmp_path, "--image", files / "img.tif", "--labels",
                 files / "lab.tif", "--out", tmp_path / "u.dlv")
    one_line_error(r, "--dense")


def test_strokes_given_as_dense_masks_are_refused(files, tmp_path):
    """Each stroke class became one scattered 'object': trained without a word."""
    r = dlvision("train", "unet", "--image", files / "img.tif", "--labels", files / "lab.tif", "--dense",
                 "--out", tmp_path / "u.dlv", "--steps", 2)
    one_line_error(r, "lab.tif: label ")  # which file, with --masks-dir or several --labels
    one_line_error(r, "dense training needs instance masks")
    assert not (tmp_path / "u.dlv").exists()


def test_png_output_is_a_png_and_a_broken_file_does_not_stop_a_folder(files, tmp_path):
    r = dlvision("predict", "--model", files / "m.dlv", "--image", files / "img.tif", "--out", tmp_path / "s.png")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.tif", "c.tif"):
        tifffile.imwrite(src / name, tifffile.imread(files / "img.tif"))
    (src / "b.tif").write_bytes(b"II*\x00 broken")
    r = dlvision("predict", "--model", files / "m.dlv", "--image", src, "--out", tmp_path / "out")
    assert r.returncode == 1 and "b.tif" in r.stderr + r.stdout
    assert r.stderr.strip().count("\n") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_segmentation.tif", "c_segmentation.tif"]


def test_a_reader_that_quits_early_does_not_stop_the_work(files, tmp_path):
    """`dlvision predict ... | head -1`: the run used to stop at its first progress line, exit 0."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.tif", "b.tif", "c.tif"):
        tifffile.imwrite(src / name, tifffile.imread(files / "img.tif"))
    p = subprocess.Popen([sys.executable, "-m", "napari_dlvision.cli", "predict", "--model", files / "m.dlv",
                          "--image", src, "--out", tmp_path / "out"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader has left before the first line
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0 and not err, err
    assert sorted(q.name for q in (tmp_path / "out").iterdir()) == [f"{n}_segmentation.tif" for n in "abc"]


def test_hostile_model_is_one_line_at_info_and_predict(files, tmp_path):
    import io
    import json
    import zipfile

    with zipfile.ZipFile(files / "m.dlv") as zf:
        meta = json.loads(zf.read("model.json"))
        arrays = dict(np.load(io.BytesIO(zf.read("arrays.npz"))))
    arrays["left_child"] = arrays["left_child"].copy()
    arrays["left_child"][0] = 0  # the root points to itself: a loop
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with zipfile.ZipFile(tmp_path / "evil.dlv", "w") as zf:
        zf.writestr("model.json", json.dumps(meta))
        zf.writestr("arrays.npz", buf.getvalue())
    one_line_error(dlvision("info", tmp_path / "evil.dlv"), "evil.dlv")
    one_line_error(dlvision("predict", "--model", tmp_path / "evil.dlv", "--image", files / "img.tif",
                            "--out", tmp_path / "s.tif"), "evil.dlv")
    assert not (tmp_path / "s.tif").exists()


def test_interrupted_prediction_leaves_the_old_output_or_a_whole_new_one(tmp_path, files):
    """Ctrl-C at some moment of a run: never a half-written file under the real name."""
    from napari_dlvision.data.synthetic import nuclei

    big = nuclei((1536, 1536), seed=5).image
    tifffile.imwrite(tmp_path / "big.tif", big)
    out = tmp_path / "seg.tif"
    tifffile.imwrite(out, np.ones((4, 4), np.uint8))
    old = digest(out)
    for delay in (1.0, 3.0, 6.0):
        p = subprocess.Popen([sys.executable, "-m", "napari_dlvision.cli", "predict", "--model", files / "m.dlv",
                              "--image", tmp_path / "big.tif", "--out", out, "--probabilities", tmp_path / "p.tif"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=300)
        assert p.returncode in (0, 130), err
        seg = tifffile.imread(out)  # readable either way
        assert digest(out) == old or seg.shape == big.shape
        assert [f for f in os.listdir(tmp_path) if f.startswith(".")] == []  # no temporary left behind


def test_sigterm_during_a_tiled_prediction_leaves_no_temporary_output(tmp_path, files):
    """kill, a batch scheduler or systemd send SIGTERM: unwound like Ctrl-C."""
    from napari_dlvision.data.synthetic import nuclei

    tifffile.imwrite(tmp_path / "big.tif", nuclei((1536, 1536), seed=5).image)
    p = subprocess.Popen([sys.executable, "-m", "napari_dlvision.cli", "predict", "--model", files / "m.dlv",
                          "--image", tmp_path / "big.tif", "--out", tmp_path / "seg.tif", "--probabilities",
                          tmp_path / "p.tif", "--chunk", "256"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().startswith("predicting")  # blocks are being written (not start-up)
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert p.returncode in (0, 143), err
    if p.returncode == 143:
        assert err.strip().splitlines()[-1] == "dlvision: terminated; no partial output was left behind"
        assert sorted(os.listdir(tmp_path)) == ["big.tif"]
    assert [f for f in os.listdir(tmp_path) if f.startswith(".")] == []


def test_jpeg_strokes_are_refused(files, tmp_path):
    """JPEG's compression turns stroke edges into further 'classes'."""
    import imageio.v3 as iio

    lab = tifffile.imread(files / "lab.tif").astype(np.uint8)
    iio.imwrite(tmp_path / "lab.jpg", lab)
    r = dlvision("train", "rf", "--image", files / "img.tif", "--labels", tmp_path / "lab.jpg", "--out",
                 tmp_path / "m.dlv")
    one_line_error(r, "save labels as TIFF or PNG")
    assert not (tmp_path / "m.dlv").exists()


def test_messages_name_what_is_wrong(files, tmp_path):
    """Colour strokes, a volume given to a 2D model, a missing --masks-dir."""
    import imageio.v3 as iio

    lab = tifffile.imread(files / "lab.tif").astype(np.uint8)
    iio.imwrite(tmp_path / "colour.png", np.stack([lab * 100] * 3, -1))
    one_line_error(dlvision("train", "rf", "--image", files / "img.tif", "--labels", tmp_path / "colour.png",
                            "--out", tmp_path / "m.dlv"), "one class id per pixel, not colours")
    # An instance mask of 30 objects, under the 64 classes a forest takes: refused too.
    objects = np.zeros((96, 96), np.uint16)
    for k in range(30):
        y, x = divmod(k, 6)
        objects[y * 16 + 3:y * 16 + 13, x * 16 + 3:x * 16 + 13] = k + 1
    tifffile.imwrite(tmp_path / "objects.tif", objects)
    one_line_error(dlvision("train", "rf", "--image", files / "img.tif", "--labels", tmp_path / "objects.tif",
                            "--out", tmp_path / "m.dlv"), "labels of objects.tif hold 30 ids covering 33%")
    assert not (tmp_path / "m.dlv").exists()
    tifffile.imwrite(tmp_path / "vol.tif", np.zeros((9, 20, 20), np.float32))
    one_line_error(dlvision("predict", "--model", files / "m.dlv", "--image", tmp_path / "vol.tif", "--out",
                            tmp_path / "s.tif"), "the model expects 2D images")
    one_line_error(dlvision("train", "unet", "--masks-dir", tmp_path / "nowhere", "--out", tmp_path / "u.dlv"),
                   "folder not found")
