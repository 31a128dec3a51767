"""ONNX export: the graph gives the network's answer, for 2D and 3D, or the export is refused whole."""

import numpy as np
import pytest
import torch

from napari_dlvision.core.errors import UserInputError
from napari_dlvision.dl.export_onnx import export_onnx, onnx_metadata

ort = pytest.importorskip("onnxruntime")


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def test_a_3d_unet_exports_with_free_batch_and_sizes(tmp_path):
    from napari_dlvision.dl.segmenter import UNetSegmenter

    seg = UNetSegmenter(depth=2, base_channels=4)
    torch.manual_seed(0)
    seg.build(2, 3, 3)
    done = export_onnx(seg, tmp_path / "seg.onnx")
    assert done["max_abs_difference"] <= 1e-4
    m = seg.net.multiple
    x = np.random.default_rng(0).random((1, 2, 3 * m, 2 * m, 5 * m), dtype=np.float32)
    with torch.no_grad():
        expected = seg.net.eval()(torch.from_numpy(x)).numpy()
    got = run_onnx(tmp_path / "seg.onnx", x)
    assert got.shape == (1, 3, 3 * m, 2 * m, 5 * m) and np.abs(got - expected).max() <= 1e-4
    meta = onnx_metadata(tmp_path / "seg.onnx")
    assert meta["kind"] == "pixel-unet" and meta["onnx"]["spatial_dims"] == 3 and meta["onnx"]["spatial_multiple"] == m
    assert meta["normalisation"] == seg.metadata()["normalisation"]


def test_an_untrained_model_is_refused_and_nothing_is_written(tmp_path):
    from napari_dlvision.dl.segmenter import UNetSegmenter

    with pytest.raises(UserInputError, match="no trained network"):
        export_onnx(UNetSegmenter(), tmp_path / "a.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("arch", ["fcos-mobilenet", "fasterrcnn-mobilenet"])
def test_torchvision_detectors_export_with_their_box_decoding(arch, tmp_path):
    from napari_dlvision.dl.detector import Detector
    from napari_dlvision.dl.export_onnx import _box_set_difference

    det = Detector(arch=arch, pretrained="none", device="cpu")
    torch.manual_seed(0)
    det.build(1, 2, np.array([[10.0, 12.0], [20.0, 16.0]]))
    done = export_onnx(det, tmp_path / "det.onnx")
    assert done["max_abs_difference"] <= 1e-4
    x = np.random.default_rng(1).random((1, 1, 160, 224), dtype=np.float32)
    with torch.no_grad():
        found = det.net.eval()(torch.from_numpy(x))[0]
    expected = [found[k].numpy() for k in ("boxes", "scores", "labels")]
    session = ort.InferenceSession(str(tmp_path / "det.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x})
    assert len(got[0]) == len(expected[0]) > 0
    assert _box_set_difference(got, expected) <= 1e-4
    meta = onnx_metadata(tmp_path / "det.onnx")
    assert meta["arch"] == arch and "x0, y0, x1, y1" in meta["onnx"]["outputs"]
