"""Argument types and file handling every `dlvision` command shares."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def _number(text, cast, lo, hi, what):
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def int_in(lo, hi=10**9):
    what = f"a whole number from {lo}" + ("" if hi == 10**9 else f" to {hi}")
    return lambda text: _number(text, int, lo, hi, what)


def positive_float(text):
    return _number(text, float, 1e-12, math.inf, "a positive number")


def floats(text: str) -> list[float]:
    """Comma-separated positive numbers, e.g. a voxel size 2,1,1."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def class_names(text: str) -> list[str]:
    """--class-names: comma-separated, each named once and not empty."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"an empty class name in {text!r}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"class name {twice[0]!r} given twice")
    return names


def check_named_classes(names, labels) -> None:
    """Names for classes the strokes never paint would make classes the model
    cannot learn (and, last, the default foreground of --instances)."""
    if names is None:
        return
    from ..core.errors import UserInputError

    top = max(int(lab.max()) for lab in labels)
    if len(names) > top:
        raise UserInputError(f"{len(names)} class names given, but the strokes paint classes up to {top}: "
                             "name only the painted classes")


LOSSY_SUFFIXES = (".jpg", ".jpeg")


def check_lossless_labels(paths) -> None:
    from ..core.errors import UserInputError

    for path in paths:
        if Path(path).suffix.lower() in LOSSY_SUFFIXES:
            raise UserInputError(f"{path}: JPEG changes pixel values, so its class ids cannot be trusted; "
                                 "save labels as TIFF or PNG")


def image_options(p):
    p.add_argument("--channel-axis", type=int, default=None,
                   help="axis of the image holding channels (default: guessed from the shapes)")
    p.add_argument("--spacing", type=floats, default=None,
                   help="voxel size per spatial axis, e.g. 2,1,1 for z,y,x (anisotropic data)")


def training_options(p, steps: int):
    """Options of every trained-by-gradient model: steps, time limit, device, seed."""
    p.add_argument("--steps", type=int_in(1, 10_000_000), default=steps, help=f"training steps (default {steps})")
    p.add_argument("--time-limit", type=positive_float, default=None, metavar="SECONDS",
                   help="stop at this wall time and keep the weights chosen so far")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0)
    distributed_option(p)


def distributed_option(p):
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training under torchrun (one process per GPU or CPU slot); "
                        "rank 0 writes the model")


def model_path(text: str) -> Path:
    """--out of a train command: any name but that of an image, table or export (a model file is a zip)."""
    from ..core.errors import UserInputError
    from ..core.modelfile import check_model_name

    try:
        return check_model_name(text)
    except UserInputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def save_trained(model, path) -> None:
    """Write the trained model; under torchrun only rank 0 writes, once every
    rank is shown to hold the same weights."""
    from ..dl.process_group import ranks_train_together

    if ranks_train_together():  # a forest detector trains and saves without importing torch
        from ..dl import distributed

        if not distributed.check_identical(model.net):
            from ..core.errors import UserInputError

            raise UserInputError("the ranks' weights differ after training; no model was written")
        if not distributed.is_main():
            return
        print(f"weights identical on all {distributed.world_size()} ranks", flush=True)
    model.save(path)
    print(f"wrote {path}", flush=True)


def check_outputs(inputs, outputs):
    """Refuse, before any work, outputs that would destroy an input or each other."""
    from ..core.io import check_outputs as check

    check([Path(p) for p in inputs if p is not None], [Path(p) for p in outputs if p is not None])


def read_pairs(images, labels, channel_axis):
    """Read image/labels files; returns (images, labels, channel axis) with one
    channel layout for all (channels moved last when an image has them)."""
    import numpy as np

    from ..core.errors import UserInputError
    from ..core.io import channel_axis_for, read_image

    if len(images) != len(labels):
        raise UserInputError("give one --labels file per --image")
    check_lossless_labels(labels)
    imgs, labs, layouts = [], [], []
    for img_path, lab_path in zip(images, labels):
        img, lab = read_image(img_path), read_image(lab_path)
        if lab.ndim not in (2, 3):
            raise UserInputError(f"{lab_path}: labels must be a 2D or 3D image, got shape {lab.shape}")
        if lab.ndim > img.ndim:  # e.g. strokes saved as a colour picture
            raise UserInputError(f"{lab_path} has shape {lab.shape}, more axes than {img_path} {img.shape}: "
                                 "labels hold one class id per pixel, not colours")
        if channel_axis is not None and not -img.ndim <= channel_axis < img.ndim:
            raise UserInputError(f"--channel-axis {channel_axis} does not exist in {img_path} (shape {img.shape})")
        axis = channel_axis if channel_axis is not None else channel_axis_for(img.shape, lab.ndim)
        if axis is not None and img.ndim == lab.ndim:
            raise UserInputError(f"{img_path} has no channel axis to take as --channel-axis {axis}")
        if axis is not None:
            img = np.moveaxis(img, axis, -1)
        spatial = img.shape[:-1] if axis is not None else img.shape
        if tuple(spatial) != tuple(lab.shape):
            raise UserInputError(
                f"{lab_path} has shape {lab.shape} but {img_path} has spatial shape {tuple(spatial)}")
        layouts.append((img_path, 1 if axis is None else img.shape[-1]))
        imgs.append(img)
        labs.append(lab)
    if len({n for _, n in layouts}) > 1:
        (a, na), (b, nb) = layouts[0], next(x for x in layouts if x[1] != layouts[0][1])
        raise UserInputError(f"{b} has {nb} channel(s) but {a} has {na}: train on images of one kind")
    if all(img.ndim == lab.ndim for img, lab in zip(imgs, labs)):
        return imgs, labs, None
    # Some single-channel images carry an explicit channel axis: give all one.
    return [img if img.ndim > lab.ndim else img[..., None] for img, lab in zip(imgs, labs)], labs, -1
