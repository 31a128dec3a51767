"""Prediction invariants and the model file of the U-Net pixel classifier."""

import io
import json
import zipfile

import numpy as np
import pytest
import torch

from napari_dlvision.core import modelfile
from napari_dlvision.core.errors import ModelFileError, UserInputError
from napari_dlvision.core.pixel_classifier import PixelClassifier
from napari_dlvision.data.synthetic import nuclei
from napari_dlvision.dl.segmenter import UNetSegmenter


@pytest.fixture(scope="module")
def wide():
    return nuclei((256, 192), seed=12).image


@pytest.mark.parametrize("tile_shape", [(64, 48), (50, 70), (256, 40)])
def test_tiled_prediction_equals_whole_image(sparse_run, wide, tile_shape):
    seg, _ = sparse_run
    # On the CPU: a GPU's TF32 convolutions differ by ~1e-3 between tile shapes (tests/test_cuda.py).
    whole = seg.predict_proba(wide, tile_shape=wide.shape, device="cpu")
    tiled = seg.predict_proba(wide, tile_shape=tile_shape, device="cpu")
    np.testing.assert_allclose(tiled, whole, atol=1e-4)
    np.testing.assert_allclose(seg.predict_proba(wide, device="cpu"), whole, atol=1e-4)  # default tiling


def test_default_tiling_follows_the_memory_budget(sparse_run, wide, monkeypatch):
    import napari_dlvision.dl.segmenter as module
    import napari_dlvision.dl.tiled as tiled

    seg, _ = sparse_run
    cpu = torch.device("cpu")
    assert seg.tile_plan(wide.shape, cpu) == (wide.shape, seg.halo)  # fits: one tile
    whole = seg.predict_proba(wide, tile_shape=wide.shape)
    per_voxel = module.BYTES_PER_VOXEL_PER_CHANNEL * seg.config["base_channels"]
    monkeypatch.setattr(tiled, "CPU_BUDGET_BYTES", per_voxel * 200**2)
    tiles, halo = seg.tile_plan(wide.shape, cpu)
    assert halo == seg.halo == 64 and tiles == (72, 72)  # exact halo, 200 px tiles with it
    np.testing.assert_allclose(seg.predict_proba(wide), whole, atol=1e-4)
    # A volume whose exact-halo tiles would not fit: halve the halo, keep tiles on the grid.
    monkeypatch.setattr(tiled, "CPU_BUDGET_BYTES", per_voxel * 100**3)
    assert seg.tile_plan((128, 128, 128), cpu) == ((32, 32, 32), 32)


def test_iter_predict_reports_tiles(sparse_run, wide):
    seg, _ = sparse_run
    img = seg.prepare(wide)
    out = np.full((2,) + wide.shape, np.nan, np.float32)
    steps = list(seg.iter_predict(img, out, tile_shape=(128, 96)))
    assert [s[:2] for s in steps] == [(i, 4) for i in range(1, 5)]
    assert np.isfinite(out).all()


def test_wrong_channels_or_dimensions(sparse_run):
    seg, _ = sparse_run
    with pytest.raises(UserInputError, match="1-channel"):
        seg.predict_proba(np.zeros((64, 64, 3)), channel_axis=-1)
    with pytest.raises(UserInputError, match="2D"):
        seg.predict_proba(np.zeros((8, 64, 64)))
    with pytest.raises(UserInputError, match="not trained"):
        UNetSegmenter().predict_proba(np.zeros((64, 64)))
    with pytest.raises(UserInputError):
        UNetSegmenter(preset="huge")
    with pytest.raises(UserInputError):
        UNetSegmenter(mode="boxes")


def test_save_load_round_trip_is_identical(sparse_run, test2d, tmp_path):
    seg, _ = sparse_run
    path = seg.save(tmp_path / "unet.dlv")
    loaded = UNetSegmenter.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(test2d.image), seg.predict_proba(test2d.image))
    assert (loaded.ndim, loaded.n_channels, loaded.n_classes, loaded.mode) == (2, 1, 2, "sparse")
    assert loaded.class_names == ["background", "nucleus"]
    assert loaded.training == seg.training and loaded.metrics == seg.metrics
    with zipfile.ZipFile(path) as zf:
        assert set(zf.namelist()) == {"model.json", "arrays.npz", "weights.pt"}
        meta = json.loads(zf.read("model.json"))
        weights = zf.read("weights.pt")
    assert meta["kind"] == "pixel-unet" and meta["classes"] == [1, 2]
    assert meta["architecture"]["depth"] == 3 and meta["normalisation"]["high"] == 99.8
    assert meta["training"]["settings"]["steps"] == 150
    # Plain tensors only: loadable without unpickling arbitrary objects.
    state = torch.load(io.BytesIO(weights), weights_only=True, map_location="cpu")
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    with pytest.raises(ModelFileError, match="pixel-unet"):
        PixelClassifier.load(path)


def test_dense_model_round_trip(dense_run, tmp_path):
    seg, _ = dense_run
    loaded = UNetSegmenter.load(seg.save(tmp_path / "dense.dlv"))
    assert loaded.mode == "dense" and loaded.class_names == ["background", "interior", "boundary"]
    img = np.random.default_rng(0).random((40, 40))
    np.testing.assert_array_equal(loaded.predict_proba(img), seg.predict_proba(img))


class Payload:  # not a tensor: weights_only loading must refuse it
    def __reduce__(self):
        return (print, ("this must never run",))


def _rewrite(src, dst, weights: bytes | None = None, meta_update: dict | None = None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "weights.pt":
                if weights is None:
                    continue
                data = weights
            if name == "model.json" and meta_update:
                meta = json.loads(data)
                meta.update(meta_update)
                data = json.dumps(meta).encode()
            zout.writestr(name, data)
    return dst


def _torch_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_damaged_weights_are_model_file_errors(sparse_run, tmp_path, capsys):
    seg, _ = sparse_run
    good = seg.save(tmp_path / "good.dlv")
    bad_cases = {
        "garbage": b"definitely not a torch file",
        "truncated": _torch_bytes(seg.net.state_dict())[:200],
        "pickled object": _torch_bytes({"weights": Payload()}),
        "wrong shapes": _torch_bytes({k: v[..., :1].clone() if v.ndim else v
                                      for k, v in seg.net.state_dict().items()}),
        "missing keys": _torch_bytes({"head.weight": seg.net.state_dict()["head.weight"]}),
    }
    for name, data in bad_cases.items():
        path = _rewrite(good, tmp_path / f"{name}.dlv", weights=data)
        with pytest.raises(ModelFileError, match="weights.pt"):
            UNetSegmenter.load(path)
    assert "this must never run" not in capsys.readouterr().out
    with pytest.raises(ModelFileError, match="no weights.pt"):
        UNetSegmenter.load(_rewrite(good, tmp_path / "none.dlv"))
    with zipfile.ZipFile(good) as zf:
        weights = zf.read("weights.pt")
    with pytest.raises(ModelFileError, match="damaged U-Net model"):
        UNetSegmenter.load(_rewrite(good, tmp_path / "meta.dlv", weights, meta_update={"n_channels": 4}))
    with pytest.raises(ModelFileError, match="damaged U-Net model"):
        UNetSegmenter.load(_rewrite(good, tmp_path / "arch.dlv", weights, meta_update={"architecture": {}}))
    with pytest.raises(ModelFileError):
        UNetSegmenter.load(tmp_path / "missing.dlv")
    (tmp_path / "junk.dlv").write_bytes(b"PK\x03\x04 junk")
    with pytest.raises(ModelFileError):
        UNetSegmenter.load(tmp_path / "junk.dlv")
    assert modelfile.read_metadata(good)["kind"] == "pixel-unet"


def test_save_before_training_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError, match="train"):
        UNetSegmenter().save(tmp_path / "x.dlv")


def test_dense_model_file_must_have_three_classes(sparse_run, tmp_path):
    seg, _ = sparse_run
    seg.save(tmp_path / "u.dlv")
    with zipfile.ZipFile(tmp_path / "u.dlv") as zf:
        meta, weights = json.loads(zf.read("model.json")), zf.read("weights.pt")
    meta["mode"] = "dense"  # a 2-class network claiming to be a dense (3-class) model
    with zipfile.ZipFile(tmp_path / "d.dlv", "w") as zf:
        zf.writestr("model.json", json.dumps(meta))
        zf.writestr("weights.pt", weights)
    with pytest.raises(ModelFileError, match="3 classes"):
        UNetSegmenter.load(tmp_path / "d.dlv")
