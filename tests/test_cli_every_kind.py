"""Every registered model kind goes through the same CLI: train, info, predict, load, export.

A new kind registered in kinds.py fails here until it has a recipe below,
so the platform's promise (train / info / predict / load for free) is
checked for each kind, in subprocesses, on real files.
"""

import zipfile

import pytest
from cli_helpers import dlvision

from napari_dlvision import kinds


@pytest.fixture(scope="module")
def data(tmp_path_factory, every_kind_files):
    return every_kind_files(tmp_path_factory.mktemp("kinds"), 64, n_strokes=8, n_per_class=12)


# kind name -> (train arguments after `train <command>`, predict arguments, output file)
BIOIMAGEIO_KINDS = ("pixel-unet", "denoiser")  # the kinds bioimage.io packages take

RECIPES = {
    "pixel-random-forest": (["--image", "{d}/img.tif", "--labels", "{d}/strokes.tif", "--trees", "5"],
                            ["--image", "{d}/img.tif"], "seg.tif"),
    "pixel-unet": (["--image", "{d}/img.tif", "--labels", "{d}/strokes.tif", "--steps", "2", "--batch-size", "2",
                    "--patch-size", "32", "--device", "cpu"],
                   ["--image", "{d}/img.tif"], "seg.tif"),
    "image-classifier": (["--data", "{d}/classes", "--arch", "logreg", "--epochs", "1", "--device", "cpu"],
                         ["--data", "{d}/classes"], "pred.csv"),
    "object-detector": (["--image", "{d}/img.tif", "--boxes", "{d}/boxes.csv", "--steps", "2", "--device", "cpu"],
                        ["--image", "{d}/img.tif"], "found.csv"),
    "denoiser": (["--image", "{d}/img.tif", "--steps", "2", "--patch-size", "32", "--batch-size", "2",
                  "--no-tta", "--device", "cpu"],
                 ["--image", "{d}/img.tif"], "denoised.tif"),
}


def test_every_registered_kind_has_a_recipe_here():
    assert set(kinds.KINDS) == set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_train_info_predict_and_load(name, data, tmp_path):
    kind = kinds.get(name)
    train, predict, out_name = RECIPES[name]
    fill = lambda args: [a.format(d=data) for a in args]  # noqa: E731
    model = tmp_path / "model.dlv"
    # Export below needs a network: the detector's default (auto) would choose the forest on these nuclei
    # (tests/test_cli_detector.py takes that path).
    network = ["--arch", "centernet"] if name == "object-detector" else []
    # Train and predict start fresh interpreters, as a user's shell does: each kind's
    # commands import what they need themselves (the other CLI tests share one import).
    r = dlvision("train", kind.command, *fill(train), *network, "--out", model, fresh=True)
    assert r.returncode == 0, r.stderr
    assert model.is_file()

    r = dlvision("info", model)
    assert r.returncode == 0, r.stderr
    assert name in r.stdout

    out = tmp_path / out_name
    before = (data / "img.tif").read_bytes()
    r = dlvision("predict", "--model", model, *fill(predict), "--out", out, fresh=True)
    assert r.returncode == 0, r.stderr
    assert out.is_file() and out.stat().st_size > 0
    assert (data / "img.tif").read_bytes() == before  # inputs untouched

    # The registry loads the file into the kind's own class, which writes it back the same.
    loaded = kinds.load_model(model, device="cpu")
    assert type(loaded) is kind.model_class() and kinds.kind_of(model) is kind
    again = tmp_path / "again.dlv"
    loaded.save(again)
    assert kinds.load_model(again, device="cpu").metadata() == loaded.metadata()

    package, exported = tmp_path / "model.zip", tmp_path / "model.onnx"
    if name not in BIOIMAGEIO_KINDS:
        r = dlvision("export", "--model", model, "--format", "onnx", "--out", exported)
        if not kind.uses_torch:
            assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "not a network" in r.stderr
            assert not exported.exists()
            return
        assert r.returncode == 0, r.stderr
        check_onnx_matches_torch(exported, loaded)
        r = dlvision("export", "--model", model, "--format", "bioimageio", "--out", package)
        assert r.returncode == 1 and "U-Net and denoiser" in r.stderr and not package.exists()
        return
    short = tmp_path / "n2v.dlv"  # bioimage.io wants names of 5 characters or more
    short.write_bytes(model.read_bytes())
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    r = dlvision("export", "--model", short, "--format", "bioimageio", "--out", package, TMPDIR=str(private_tmp))
    assert r.returncode == 0, r.stderr
    # bioimage.io drew covers into temporary folders it never removed (two per export). Libraries'
    # caches (torch's inductor folder, a session id) are theirs to keep.
    left = [p.name for p in private_tmp.iterdir() if p.name.startswith("tmp") or p.suffix == ".png"]
    assert not left and not list(private_tmp.rglob("*.png")), left
    described = check_bioimageio_package(package, loaded)
    assert described.name == f"n2v napari-dlvision {name}" and len(described.covers) == 1
    # The package's weights are `export --format onnx`'s file (the same export, not run twice here: 15 s each).
    with zipfile.ZipFile(package) as z:
        exported.write_bytes(z.read("model.onnx"))
    check_onnx_matches_torch(exported, loaded)


def check_bioimageio_package(path, model):
    """bioimage.io's validator accepts the package, and its test input, run as the
    package describes it, gives its test output."""
    import io

    import numpy as np
    import onnxruntime as ort
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    descr = load_description(path)
    assert isinstance(descr, ModelDescr), descr.validation_summary.format()
    assert descr.config.model_extra["napari_dlvision"]["kind"] == model.metadata()["kind"]
    kwargs = next(p for p in descr.inputs[0].preprocessing if p.id == "scale_range").kwargs
    with zipfile.ZipFile(path) as z:
        x = np.load(io.BytesIO(z.read("test_input.npy")))
        expected = np.load(io.BytesIO(z.read("test_output.npy")))
        onnx_bytes = z.read("model.onnx")
    axes = tuple(range(2, x.ndim))
    lo = np.percentile(x, kwargs.min_percentile, axis=axes, keepdims=True)
    hi = np.percentile(x, kwargs.max_percentile, axis=axes, keepdims=True)
    y = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"]).run(
        None, {"input": ((x - lo) / (hi - lo + kwargs.eps)).astype(np.float32)})[0]
    if any(p.id == "softmax" for p in descr.outputs[0].postprocessing):  # the U-Net
        y = np.exp(y - y.max(1, keepdims=True))
        y /= y.sum(1, keepdims=True)
    assert y.shape == expected.shape and np.abs(y - expected).max() <= 1e-4
    return descr


def check_onnx_matches_torch(path, model):
    """onnxruntime on the exported file gives the network's output (1e-4), on an input of a new size."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from napari_dlvision.dl.export_onnx import onnx_metadata

    meta = onnx_metadata(path)
    assert meta["kind"] == model.metadata()["kind"] and meta["onnx"]["input"].startswith("normalised")
    onnx = meta["onnx"]
    spatial = onnx["fixed_size"] or [onnx["spatial_multiple"] * k for k in (5, 4, 3)[:onnx["spatial_dims"]]]
    x = np.random.default_rng(1).random((2, model.n_channels, *spatial), dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x})[0]
    with torch.no_grad():
        expected = model.net.cpu().eval()(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4


def test_a_model_file_of_an_unknown_kind_is_refused_in_one_line(data, tmp_path):
    import json

    from napari_dlvision.core import modelfile

    path = tmp_path / "alien.dlv"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model.json", json.dumps({"format": modelfile.FORMAT, "format_version": 1, "kind": "alien-kind"}))
    for args in (["info", path], ["predict", "--model", path, "--image", data / "img.tif", "--out", tmp_path / "o.tif"]):
        r = dlvision(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and "alien-kind" in lines[0], r.stderr


def test_export_refuses_an_output_naming_the_model_or_not_named_onnx(data, tmp_path):
    model = tmp_path / "rf.dlv"
    assert dlvision("train", "rf", "--image", data / "img.tif", "--labels", data / "strokes.tif",
                    "--trees", "3", "--out", model).returncode == 0
    before = model.read_bytes()
    for out, words in ((model, "input"), (tmp_path / "m.zip", ".onnx")):
        r = dlvision("export", "--model", model, "--format", "onnx", "--out", out)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, r.stderr
    assert model.read_bytes() == before and not (tmp_path / "m.zip").exists()
