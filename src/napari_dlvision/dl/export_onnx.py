"""A model file's network as ONNX, checked against torch with onnxruntime.

What the ONNX graph holds is the network alone: it takes the input the
network takes here (normalised, channels first, batch first) and returns its
raw output (class logits, denoised normalised values, detection heat maps).
The model file's JSON (normalisation, classes, architecture) travels in the
ONNX file's metadata under "napari_dlvision", so a runtime elsewhere can do
the pre- and post-processing; the README says what each kind needs.

Fully convolutional networks (U-Net segmenter, denoiser, centre-point
detector) take any batch and any spatial size that is a multiple of
`multiple` (also in the metadata); image classifiers any batch of their
training size. torchvision's detectors (FCOS, Faster R-CNN) keep their
box decoding and non-maximum suppression inside the network: data-dependent
steps that torch.export cannot trace, so they go through torch's
TorchScript-based exporter instead; their graph takes one image (1, C, H, W)
of any size and returns boxes (x0, y0, x1, y1, input pixels), scores and
labels (1..K), as torchvision's detectors do.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch

from ..core.errors import UserInputError
from ..core.io import atomic_output
from .detector_archs import FOREST, NOT_EXPORTED

TOLERANCE = 1e-4  # largest |onnxruntime - torch| accepted, in the network's output units
METADATA_KEY = "napari_dlvision"


def input_spec(model) -> tuple[tuple[int, ...], bool, int]:
    """(example input shape, spatial axes dynamic?, spatial multiple) of this model's network."""
    if model.net is None:
        raise UserInputError("the model has no trained network to export")
    if getattr(model, "arch", None) == FOREST:
        raise UserInputError(NOT_EXPORTED)
    kind = model.metadata()["kind"]
    if kind == "image-classifier":
        return (2, model.n_channels, *model.size), False, 1
    if _is_torchvision_detector(model):
        return (1, model.n_channels, 192, 256), True, 1  # one image, any size
    ndim = 2 if kind == "object-detector" else model.ndim
    m = model.net.multiple
    # Two sizes per axis would do; 2 multiples (3 in the first axis) tell axes apart.
    return (2, model.n_channels, *[m * (3 if i == 0 else 2) for i in range(ndim)]), True, m


def _is_torchvision_detector(model) -> bool:
    return model.metadata()["kind"] == "object-detector" and model.arch != "centernet"


def export_onnx(model, out) -> dict:
    """Write `model`'s network to `out` (atomically); return the check's figures."""
    import onnxruntime as ort

    shape, spatial, multiple = input_spec(model)
    net = model.net.to("cpu").eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g)
    if _is_torchvision_detector(model):
        return _export_torchvision_detector(model, net, x, out, g)
    batch = torch.export.Dim("batch", min=1, max=4096)
    axes = {0: batch}
    if spatial:
        for i in range(2, len(shape)):
            # A multiple of the U-Net's pooling factor: its padding branch is
            # then provably not taken, and the graph needs none.
            axes[i] = multiple * torch.export.Dim(f"size{i - 2}", min=1, max=65536 // multiple)
    quiet = io.StringIO()
    try:
        with torch.no_grad(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            program = torch.onnx.export(net, (x,), dynamo=True, dynamic_shapes=(axes,),
                                        input_names=["input"], output_names=["output"], verbose=False)
    except Exception as e:  # noqa: BLE001 - torch's export errors are many and long
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserInputError(f"ONNX export of this network failed: {first}") from None
    meta = {**model.metadata(), "onnx": {"input": "normalised, channels first, batch first",
                                          "spatial_dims": len(shape) - 2,
                                          "spatial_multiple": multiple if spatial else None,
                                          "fixed_size": None if spatial else list(shape[2:])}}
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    data = proto.SerializeToString()

    # Check before anything is written: the ONNX graph must give torch's
    # answer on a fresh input of another size and batch.
    check_shape = (3, *shape[1:2], *[s + multiple for s in shape[2:]]) if spatial else (3, *shape[1:])
    xc = torch.rand(check_shape, generator=g)
    with torch.no_grad():
        expected = net(xc).numpy()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": xc.numpy()})[0]
    diff = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("inf")
    return _write_checked(data, out, diff, check_shape)


def _write_checked(data: bytes, out, diff: float, checked_shape) -> dict:
    """Write the ONNX bytes (atomically) only if they gave torch's answer."""
    if not diff <= TOLERANCE:
        raise UserInputError(f"the ONNX graph differs from the network by {diff:.3g} (more than {TOLERANCE}); "
                             "nothing was written")
    out = Path(out)
    with atomic_output(out) as tmp:
        tmp.write_bytes(data)
    return {"path": str(out), "max_abs_difference": diff, "checked_input_shape": list(checked_shape),
            "bytes": len(data)}


class _Boxes(torch.nn.Module):
    """A torchvision detector as (boxes, scores, labels) of one image: ONNX has no dicts."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        found = self.net(x)[0]
        return found["boxes"], found["scores"], found["labels"]


def _export_torchvision_detector(model, net, x, out, g) -> dict:
    import warnings

    import onnxruntime as ort

    wrapped = _Boxes(net).eval()
    buffer, quiet = io.BytesIO(), io.StringIO()
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(quiet), \
                contextlib.redirect_stderr(quiet):
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, (x,), buffer, dynamo=False, opset_version=17, input_names=["input"],
                              output_names=["boxes", "scores", "labels"],
                              dynamic_axes={"input": {2: "height", 3: "width"}, "boxes": {0: "n"},
                                            "scores": {0: "n"}, "labels": {0: "n"}})
    except Exception as e:  # noqa: BLE001 - torch's export errors are many and long
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserInputError(f"ONNX export of this network failed: {first}") from None
    import onnx

    proto = onnx.load_from_string(buffer.getvalue())
    meta = {**model.metadata(), "onnx": {"input": "normalised, channels first, one image (1, C, H, W)",
                                          "outputs": "boxes (x0, y0, x1, y1 in input pixels), scores, "
                                                     "labels (1..K)",
                                          "spatial_dims": 2, "spatial_multiple": None, "fixed_size": None}}
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    data = proto.SerializeToString()
    # Checked on an image of another size: every box torch finds, onnxruntime
    # finds too (same label, score and corners within TOLERANCE, corners in
    # pixels scaled by 1/100), in whatever order equal scores come.
    xc = torch.rand((1, x.shape[1], x.shape[2] + 32, x.shape[3] - 64), generator=g)
    with torch.no_grad():
        expected = [v.numpy() for v in wrapped(xc)]
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": xc.numpy()})
    return _write_checked(data, out, _box_set_difference(got, expected), xc.shape)


def _box_set_difference(got, expected) -> float:
    """Largest difference between a box of one list and its nearest in the other
    (max of corner difference / 100 and score difference; another label does
    not match). Boxes scoring within 1e-3 of the lowest score returned may be
    in one list only: a rounding difference can move them across the score
    threshold or the cap on the number of boxes."""
    (gb, gs, gl), (eb, es, el) = got, expected
    if not len(eb) and not len(gb):
        return 0.0
    if not len(eb) or not len(gb):
        return float("inf") if max(len(es) and es.max(), len(gs) and gs.max()) > 1e-3 else 0.0
    floor = min(es.min(), gs.min()) + 1e-3
    d = np.maximum(np.abs(eb[:, None, :] - gb[None, :, :]).max(-1) / 100, np.abs(es[:, None] - gs[None, :]))
    d = np.where(el[:, None] == gl[None, :], d, np.inf)
    worst = [d.min(1)[es > floor], d.min(0)[gs > floor]]
    return float(max((w.max() for w in worst if len(w)), default=0.0))


def onnx_metadata(path) -> dict:
    """The model file's JSON stored in an exported ONNX file."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    raise UserInputError(f"{path} was not exported by napari-dlvision")
