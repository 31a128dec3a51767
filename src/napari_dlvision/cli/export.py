"""Write a model file in another format that the field uses.

    dlvision export --model MODEL --format onnx --out MODEL.onnx
    dlvision export --model MODEL --format bioimageio --out PACKAGE.zip    # U-Net and denoiser

ONNX: the network of any torch model (U-Net, denoiser, image classifier,
centre-point detector), checked with onnxruntime against torch before it is
written; the model file's JSON rides along in the ONNX metadata.
bioimage.io: a model package (ONNX weights, description, test input and
output, the normalisation as pre-processing), checked by re-running its test
input before it is written. Both need the `export` extra
(`pip install 'napari-dlvision[export]'`).
"""

from __future__ import annotations

from pathlib import Path

FORMATS = ("onnx", "bioimageio")
SUFFIX = {"onnx": ".onnx", "bioimageio": ".zip"}


def add_arguments(p):
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, type=Path)


FORMAT_TITLES = {"onnx": "an ONNX", "bioimageio": "a bioimage.io"}


def run(args):
    from .. import kinds
    from ..core.errors import UserInputError
    from .common import check_outputs

    check_outputs([args.model], [args.out])
    if args.out.suffix.lower() != SUFFIX[args.format]:
        raise UserInputError(f"--out {args.out}: {FORMAT_TITLES[args.format]} export is named *{SUFFIX[args.format]}")
    kind = kinds.kind_of(args.model)
    if not kind.uses_torch:
        raise UserInputError(f"{args.model} is {kind.a_title}, not a network: export is for torch models")
    if kind.name == "object-detector":
        from ..core.modelfile import read_metadata
        from ..dl.detector_archs import FOREST, NOT_EXPORTED

        if read_metadata(args.model, kinds=(kind.name,)).get("arch") == FOREST:  # refused before torch is imported
            raise UserInputError(f"{args.model}: {NOT_EXPORTED}")
    if args.format == "bioimageio" and kind.name not in ("pixel-unet", "denoiser"):
        raise UserInputError(f"bioimage.io export is for U-Net and denoiser models; {args.model} is {kind.a_title}")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UserInputError("export needs onnx, onnxscript and onnxruntime: "
                             "pip install 'napari-dlvision[export]'") from None
    model = kind.load(args.model, device="cpu")
    if args.format == "bioimageio":
        from ..dl.export_bioimageio import export_bioimageio

        done = export_bioimageio(model, args.out, name=args.model.stem)
        checks = done["test"]
        print(f"wrote {done['path']}; its test input gives the plugin's output within {checks['package']:.1e}"
              f" (bioimageio.core's test: {checks['bioimageio.core']})")
        return
    from ..dl.export_onnx import export_onnx

    done = export_onnx(model, args.out)
    size = f"{done['bytes'] / 1e6:.1f} MB" if done["bytes"] >= 1e5 else f"{done['bytes'] / 1e3:.0f} kB"
    print(f"wrote {done['path']} ({size}); onnxruntime matches torch within "
          f"{done['max_abs_difference']:.1e} on an input of shape {tuple(done['checked_input_shape'])}")
