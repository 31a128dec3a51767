"""A U-Net or denoiser model file as a bioimage.io model package (zip).

The package holds the network as ONNX weights (dl.export_onnx), a resource
description (bioimage.io spec 0.5), a test input and the output this
plugin computes for it, and a README. Pre-processing is the model file's
normalisation, written as bioimage.io's `scale_range` (per channel, over the
spatial axes, the same percentiles); the U-Net's output gets `softmax` over
its classes, so it gives class probabilities as the plugin does. bioimage.io
has no step that maps a denoiser's output back to the input's units: the
denoiser's output stays normalised (0..1 between the input's percentiles),
which the package's description says.

Before anything is written the package's test input is run through the
package as described (scale_range, the ONNX graph in onnxruntime, softmax)
and must give the plugin's output within 1e-4; where bioimageio.core is
installed (and works with this environment's pydantic), its own test runs
too. bioimageio.spec builds and validates the description.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from ..core.errors import UserInputError
from ..core.io import atomic_output

KINDS = {"pixel-unet", "denoiser"}
CITES = {  # the methods these networks implement
    "pixel-unet": ("Ronneberger, Fischer and Brox: U-Net: Convolutional Networks for Biomedical Image "
                   "Segmentation, MICCAI 2015", "10.1007/978-3-319-24574-4_28"),
    "denoiser": ("Krull, Buchholz and Jug: Noise2Void - Learning Denoising From Single Noisy Images, "
                 "CVPR 2019", "10.1109/CVPR.2019.00223"),
}
AXES = ("z", "y", "x")


def test_image(model, side: int = 64) -> np.ndarray:
    """A small raw test input (1, C, *spatial), float32, with structure at several scales."""
    rng = np.random.default_rng(0)
    ndim = model.ndim
    shape = (side,) * ndim if ndim == 2 else (side // 2,) * ndim
    grids = np.meshgrid(*[np.linspace(0, 6, n) for n in shape], indexing="ij")
    base = sum(np.sin(g * (1 + i)) for i, g in enumerate(grids))
    img = np.stack([base + 0.3 * rng.standard_normal(shape) + c for c in range(model.n_channels)])
    return (100 + 40 * img).astype(np.float32)[None]


def plugin_output(model, x: np.ndarray) -> np.ndarray:
    """What the plugin's own pipeline gives for `x` (1, C, *spatial), in the package's terms."""
    norm = model.normalisation.apply(x[0])
    with torch.no_grad():
        y = model.net.to("cpu").eval()(torch.from_numpy(norm)[None])
        if model.metadata()["kind"] == "pixel-unet":
            y = torch.softmax(y, dim=1)
    return y.numpy().astype(np.float32)


def export_bioimageio(model, out, name: str | None = None) -> dict:
    """Write the package to `out` (atomically) after bioimage.io's own test passes."""
    try:
        from bioimageio.spec import save_bioimageio_package
        from bioimageio.spec.model import v0_5 as bio
    except ImportError:
        raise UserInputError("bioimage.io export needs bioimageio.spec: pip install 'napari-dlvision[export]'") \
            from None
    from .export_onnx import export_onnx

    kind = model.metadata()["kind"] if model.net is not None else None
    if kind not in KINDS:
        raise UserInputError("bioimage.io export is for trained U-Net and denoiser models")
    meta = model.metadata()
    m = model.net.multiple
    spatial = [bio.AxisId(a) for a in AXES[3 - model.ndim:]]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        export_onnx(model, d / "model.onnx")
        x = test_image(model)
        y = plugin_output(model, x)
        np.save(d / "test_input.npy", x)
        np.save(d / "test_output.npy", y)
        norm = model.normalisation
        in_id = bio.TensorId("raw")
        inputs = [bio.InputTensorDescr(
            id=in_id,
            axes=[bio.BatchAxis(),
                  bio.ChannelAxis(channel_names=[bio.Identifier(f"channel{c}") for c in range(model.n_channels)]),
                  *[bio.SpaceInputAxis(id=a, size=bio.ParameterizedSize(min=m, step=m)) for a in spatial]],
            test_tensor=bio.FileDescr(source=d / "test_input.npy"),
            data=bio.IntervalOrRatioDataDescr(type="float32"),
            preprocessing=[bio.ScaleRangeDescr(kwargs=bio.ScaleRangeKwargs(
                axes=spatial, min_percentile=float(norm.low), max_percentile=float(norm.high), eps=1e-6))],
        )]
        if kind == "pixel-unet":
            names = [str(n) for n in meta.get("class_names") or range(1, model.n_classes + 1)]
            out_id, post = bio.TensorId("probabilities"), [bio.SoftmaxDescr(kwargs=bio.SoftmaxKwargs(
                axis=bio.AxisId("channel")))]
            description = (f"U-Net pixel classifier ({meta.get('mode', 'sparse')} mode) trained with napari-dlvision: "
                           f"class probabilities for {', '.join(names)}.")
        else:
            names = [f"channel{c}" for c in range(model.n_channels)]
            out_id, post = bio.TensorId("denoised"), []
            description = (f"{model.title} denoiser trained with napari-dlvision. The output is normalised: "
                           f"0..1 spans the input's {norm.low:g}th to {norm.high:g}th percentile per channel "
                           "(the plugin maps it back to the input's units).")
            if model.reinclude:
                description += (" The plugin then puts each pixel's noisy value back where the network is unsure; "
                                "that step is not part of this package.")
        outputs = [bio.OutputTensorDescr(
            id=out_id,
            axes=[bio.BatchAxis(),
                  bio.ChannelAxis(channel_names=[bio.Identifier(_identifier(n, i)) for i, n in enumerate(names)]),
                  *[bio.SpaceOutputAxis(id=a, size=bio.SizeReference(tensor_id=in_id, axis_id=a)) for a in spatial]],
            test_tensor=bio.FileDescr(source=d / "test_output.npy"),
            postprocessing=post,
        )]
        # Our own cover: bioimage.io would otherwise draw one into a temporary
        # folder of its own that is never removed (two per export).
        write_cover(d / "cover.png", x, y)
        readme = d / "README.md"
        readme.write_text(f"# {name or kind}\n\n{description}\n\nExported by napari-dlvision from its model file; "
                          "the model file's description is in `config.napari_dlvision`.\n")
        text, doi = CITES[kind]
        from pydantic import ValidationError

        try:
            descr = bio.ModelDescr(
                name=package_name(name, kind),
                covers=[bio.FileDescr(source=d / "cover.png")],
                description=description,
                authors=[bio.Author(name="napari-dlvision user")],
                cite=[bio.CiteEntry(text=text, doi=doi)],
                license="BSD-3-Clause",
                documentation=bio.FileDescr(source=readme),
                inputs=inputs,
                outputs=outputs,
                weights=bio.WeightsDescr(onnx=bio.OnnxWeightsDescr(source=d / "model.onnx", opset_version=18)),
                config={"napari_dlvision": _jsonable(meta)},
            )
        except ValidationError as e:  # one line, not pydantic's report
            first = e.errors()[0] if e.errors() else {}
            where = ".".join(str(v) for v in first.get("loc", ()))
            raise UserInputError(f"bioimage.io refuses the package's description ({where}: "
                                 f"{first.get('msg', e)}); nothing was written") from None
        report = {"package": _check_package(d, kind, norm, len(spatial)), "bioimageio.core": _core_test(descr)}
        out = Path(out)
        with atomic_output(out) as tmp_zip:
            save_bioimageio_package(descr, output_path=tmp_zip)
    return {"path": str(out), "test": report}


NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")


def package_name(name: str | None, kind: str) -> str:
    """bioimage.io's model name (5 to 128 of letters, digits and "_+- ()") from
    the model file's name: other characters become "_", short names get the kind."""
    clean = " ".join("".join(ch if ch in NAME_CHARS else "_" for ch in (name or "")).split())
    if len(clean) < 5:
        clean = f"{clean} napari-dlvision {kind}".strip()
    return clean[:128].strip()


def write_cover(path: Path, x: np.ndarray, y: np.ndarray):
    """The test input beside the output's last channel (the middle plane of a volume), grey, 2:1."""
    from ..core.io import write_image

    def plane(a, channel):
        a = a[0, channel]
        a = a[a.shape[0] // 2] if a.ndim == 3 else a
        lo, hi = np.percentile(a, (1, 99))
        return (np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)

    write_image(path, np.hstack([plane(x, 0), plane(y, -1)]))


def _identifier(name: str, i: int) -> str:
    clean = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in str(name)).strip("_")
    return clean if clean and not clean[0].isdigit() else f"c{i}_{clean}" if clean else f"c{i}"


def _jsonable(meta: dict) -> dict:
    import json

    return json.loads(json.dumps(meta, default=str))


def _check_package(d: Path, kind: str, norm, n_spatial: int) -> float:
    """The package's test input through its described steps; largest difference to its test output."""
    import onnxruntime as ort

    x = np.load(d / "test_input.npy")
    axes = tuple(range(2, 2 + n_spatial))
    lo = np.percentile(x, norm.low, axis=axes, keepdims=True)
    hi = np.percentile(x, norm.high, axis=axes, keepdims=True)
    xn = ((x - lo) / (hi - lo + 1e-6)).astype(np.float32)  # bioimage.io's scale_range
    y = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": xn})[0]
    if kind == "pixel-unet":
        e = np.exp(y - y.max(axis=1, keepdims=True))
        y = e / e.sum(axis=1, keepdims=True)
    diff = float(np.abs(y - np.load(d / "test_output.npy")).max())
    if not diff <= 1e-4:
        raise UserInputError(f"the package's test input gives an output {diff:.2g} away from the plugin's; "
                             "nothing was written")
    return diff


def _core_test(descr) -> str:
    """bioimage.io's own test of the description, where bioimageio.core is installed."""
    try:
        from bioimageio.core import test_model
    except ImportError:
        return "not installed"
    summary = test_model(descr)
    if summary.status != "passed":
        failed = [d for d in summary.details if d.status != "passed"]
        first = failed[0] if failed else None
        why = f"{first.name}: {first.errors[0].msg if first and first.errors else ''}" if first else summary.status
        raise UserInputError(f"bioimage.io's test of the package failed ({why}); nothing was written")
    return summary.status
