"""Write a model file in another format that the field uses.

    dlvision export --model MODEL --format onnx --out MODEL.onnx

ONNX: the network of any torch model (U-Net, denoiser, image classifier,
centre-point detector), checked with onnxruntime against torch before it is
written; the model file's JSON rides along in the ONNX metadata. Needs the
`export` extra (`pip install napari-dlvision[export]`).
"""

from __future__ import annotations

from pathlib import Path

FORMATS = ("onnx",)


def add_arguments(p):
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, type=Path)


def run(args):
    from .. import kinds
    from ..core.errors import UserInputError
    from .common import check_outputs

    check_outputs([args.model], [args.out])
    if args.out.suffix.lower() != ".onnx":
        raise UserInputError(f"--out {args.out}: an ONNX file is named *.onnx")
    kind = kinds.kind_of(args.model)
    if not kind.uses_torch:
        raise UserInputError(f"{args.model} is a {kind.title}, not a network: ONNX export is for torch models")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UserInputError("ONNX export needs onnx, onnxscript and onnxruntime: "
                             "pip install 'napari-dlvision[export]'") from None
    model = kind.load(args.model, device="cpu")
    from ..dl.export_onnx import export_onnx

    done = export_onnx(model, args.out)
    print(f"wrote {done['path']} ({done['bytes'] / 1e6:.1f} MB); onnxruntime matches torch within "
          f"{done['max_abs_difference']:.1e} on an input of shape {tuple(done['checked_input_shape'])}")
