"""`dlvision`: the plugin's models, headless.

    dlvision train rf --image IMG --labels LBL --out MODEL [--features ...]
    dlvision train unet --image IMG --labels LBL --out MODEL [--steps N] [--time-limit S]
    dlvision predict --model MODEL --image IMG --out SEG.tif [--probabilities P.tif]
    dlvision info MODEL

Errors the user can fix end the program with status 1 and one line on
stderr; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import __version__


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dlvision", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"napari-dlvision {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model")
    tsub = train.add_subparsers(dest="model", required=True)
    rf = tsub.add_parser("rf", help="random-forest pixel classifier on filter features")
    rf.add_argument("--image", action="append", required=True, type=Path,
                    help="image file (TIFF, PNG, JPEG); repeat with --labels for several")
    rf.add_argument("--labels", action="append", required=True, type=Path,
                    help="labels TIFF/PNG, image shape without channels; 0 = unlabelled, 1..K = classes")
    rf.add_argument("--out", required=True, type=Path, help="model file to write")
    rf.add_argument("--features", default=None,
                    help="feature subset, e.g. 'gaussian@0.3,hessian@1.6,log' "
                         "(a bare family takes every --scales); default: all families at 0.7-5")
    rf.add_argument("--scales", default=None, help="scales for bare families, e.g. 1,1.6,3.5")
    rf.add_argument("--trees", type=int, default=50, help="number of trees (default 50)")
    rf.add_argument("--max-depth", type=int, default=None, help="maximum tree depth (default: none)")
    rf.add_argument("--class-names", default=None, help="comma-separated names of classes 1..K")
    _image_options(rf)

    unet = tsub.add_parser("unet", help="U-Net pixel classifier (deep), from strokes or instance masks")
    unet.add_argument("--image", action="append", default=[], type=Path, help="image file; repeat with --labels")
    unet.add_argument("--labels", action="append", default=[], type=Path,
                      help="strokes (0 = unlabelled, 1..K) or, with --dense, instance masks")
    unet.add_argument("--masks-dir", type=Path, default=None,
                      help="folder with images/ and masks/ (instance masks, same file names): dense training")
    unet.add_argument("--dense", action="store_true", help="--labels are dense instance masks")
    unet.add_argument("--out", required=True, type=Path, help="model file to write")
    unet.add_argument("--init", type=Path, default=None, help="continue training this U-Net model file")
    unet.add_argument("--preset", default="small", help="architecture preset: small or medium")
    unet.add_argument("--steps", type=int, default=500)
    unet.add_argument("--patch-size", type=int, default=None)
    unet.add_argument("--batch-size", type=int, default=0, help="0 (default): from the device's free memory")
    unet.add_argument("--lr", type=float, default=3e-3)
    unet.add_argument("--elastic", action="store_true", help="add elastic deformation to the augmentation")
    unet.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                      help="stop at this wall time and keep the best weights")
    unet.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    unet.add_argument("--seed", type=int, default=0)
    unet.add_argument("--channel-axis", type=int, default=None,
                      help="axis of the image holding channels (default: guessed from the shapes)")

    pred = sub.add_parser("predict", help="apply a model file to an image or a folder of images")
    pred.add_argument("--model", required=True, type=Path)
    pred.add_argument("--image", required=True, type=Path, help="image file, or a folder of images")
    pred.add_argument("--out", required=True, type=Path,
                      help="segmentation TIFF (class ids); a folder when --image is a folder")
    pred.add_argument("--probabilities", type=Path, help="write class probabilities (K, ...) here")
    pred.add_argument("--uncertainty", type=Path, help="write 1 - (p_max - p_second) here")
    pred.add_argument("--instances", type=Path, help="write instance labels of the foreground class here")
    pred.add_argument("--foreground", type=int, default=None,
                      help="class id split into instances (default: the highest class id)")
    _image_options(pred)

    info = sub.add_parser("info", help="print what a model file holds")
    info.add_argument("model", type=Path)
    return p


def _image_options(p):
    p.add_argument("--channel-axis", type=int, default=None,
                   help="axis of the image holding channels (default: guessed from the shapes)")
    p.add_argument("--spacing", type=_floats, default=None,
                   help="voxel size per spatial axis, e.g. 2,1,1 for z,y,x (anisotropic data)")


def _train_rf(args):
    from .core.features import FeatureSpec
    from .core.pixel_classifier import PixelClassifier

    spec = FeatureSpec.parse(args.features, args.scales) if args.features else FeatureSpec.default()
    names = [n.strip() for n in args.class_names.split(",")] if args.class_names else None
    clf = PixelClassifier(spec, args.trees, args.max_depth, names)
    images, labels, axis = _read_pairs(args.image, args.labels, args.channel_axis)
    t0 = time.perf_counter()
    clf.fit(images, labels, channel_axis=axis, spacing=args.spacing)
    clf.save(args.out)
    counts = ", ".join(f"class {k}: {n}" for k, n in clf.training["pixels_per_class"].items())
    print(f"trained on {counts} labelled pixels in {time.perf_counter() - t0:.1f} s; wrote {args.out}")


def _read_pairs(images, labels, channel_axis):
    """Read image/labels files, checking shapes; returns (images, labels, channel axis)."""
    import numpy as np

    from .core.errors import UserInputError
    from .core.io import channel_axis_for, read_image

    if len(images) != len(labels):
        raise UserInputError("give one --labels file per --image")
    imgs, labs, axis = [], [], channel_axis
    for img_path, lab_path in zip(images, labels):
        img, lab = read_image(img_path), read_image(lab_path)
        if lab.ndim not in (2, 3):
            raise UserInputError(f"{lab_path}: labels must be a 2D or 3D image, got shape {lab.shape}")
        if axis is None:
            axis = channel_axis_for(img.shape, lab.ndim)
        spatial = np.delete(np.array(img.shape), axis).tolist() if axis is not None else list(img.shape)
        if spatial != list(lab.shape):
            raise UserInputError(
                f"{lab_path} has shape {lab.shape} but {img_path} has spatial shape {tuple(spatial)}"
            )
        imgs.append(img)
        labs.append(lab)
    return imgs, labs, axis


def _train_unet(args):
    from .core.errors import UserInputError
    from .core.io import list_images, mask_for

    images, labels, dense = list(args.image), list(args.labels), args.dense
    if args.masks_dir is not None:
        dense = True
        for path in list_images(args.masks_dir / "images"):
            images.append(path)
            labels.append(mask_for(path, args.masks_dir / "masks"))
    if not images:
        raise UserInputError("give --image/--labels pairs or --masks-dir")
    imgs, labs, axis = _read_pairs(images, labels, args.channel_axis)
    from .dl.segmenter import UNetSegmenter
    from .dl.train import TrainSettings, train_unet

    mode = "dense" if dense else "sparse"
    if args.init is not None:
        seg = UNetSegmenter.load(args.init, device=args.device)
        if seg.mode != mode:
            raise UserInputError(f"{args.init} was trained on {seg.mode} labels, not {mode}")
    else:
        seg = UNetSegmenter(args.preset, mode, device=args.device)
    settings = TrainSettings(steps=args.steps, patch_size=args.patch_size, batch_size=args.batch_size,
                             lr=args.lr, elastic=args.elastic, device=args.device,
                             time_limit=args.time_limit, seed=args.seed)
    every = max(1, args.steps // 20)
    for ev in train_unet(seg, imgs, labs, settings, channel_axis=axis):
        if ev.stage == "start" or ev.stage == "done":
            print(ev.message, flush=True)
        elif ev.step % every == 0:
            print(f"step {ev.step}/{ev.total}  loss {ev.smoothed_loss:.4f}  {ev.seconds:.0f} s", flush=True)
    seg.save(args.out)
    print(f"wrote {args.out}")


def _predict(args):
    from .core.batch import iter_predict_folder, load_model, predict_file
    from .core.errors import UserInputError
    from .core.io import list_images, write_tif

    model = load_model(args.model)
    extra = {k: getattr(args, k) for k in ("probabilities", "uncertainty", "instances")}
    wanted = ["segmentation"] + [k for k, v in extra.items() if v is not None]
    if args.foreground is not None and not 1 <= args.foreground <= model.n_classes:
        raise UserInputError(f"--foreground must be a class id between 1 and {model.n_classes}")
    if args.image.is_dir():
        files = list_images(args.image)
        gen = iter_predict_folder(model, files, args.out, wanted, args.foreground,
                                  channel_axis=args.channel_axis, spacing=args.spacing)
        for done, total, path in gen:
            print(f"[{done}/{total}] {path.name}", flush=True)
        return
    results = predict_file(model, args.image, args.channel_axis, args.spacing, wanted, args.foreground)
    write_tif(args.out, results["segmentation"])
    for name, path in extra.items():
        if path is not None:
            write_tif(path, results[name])
    print(f"wrote {args.out}" + "".join(f", {p}" for p in extra.values() if p is not None))


def _info(args):
    from .core.modelfile import read_metadata

    print(json.dumps(read_metadata(args.model), indent=2, sort_keys=True))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .core.errors import UserInputError

    try:
        if args.command == "train":
            _train_rf(args) if args.model == "rf" else _train_unet(args)
        elif args.command == "predict":
            _predict(args)
        else:
            _info(args)
    except UserInputError as e:
        print(f"dlvision: error: {e}", file=sys.stderr)
        return 1
    except MemoryError:
        print("dlvision: error: out of memory; try a smaller image or fewer features", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"dlvision: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dlvision: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
