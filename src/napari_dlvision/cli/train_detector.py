"""Object detector: boxes from a CSV per image, scored boxes out.

    dlvision train detector --image IMG --boxes BOXES.csv --out MODEL [--image IMG2 --boxes BOXES2.csv ...]
        [--arch auto|centernet|forest|fcos-mobilenet|...] [--steps N] [--time-limit SECONDS] [--device auto|cpu|cuda|mps]

BOXES.csv: a header row and columns y0,x0,y1,x1,class in pixels (y1 and x1
exclusive), class names as text; a leading `index` column gives the plane
of a stack. A CSV with the header only marks an image without objects.
"""

from __future__ import annotations

from pathlib import Path

from .common import check_outputs, int_in, model_path, positive_float, save_trained, training_options


def add_arguments(p):
    from ..dl.detector_archs import ARCHS, DEFAULT_ARCH, PRETRAINED

    p.add_argument("--image", action="append", default=[], type=Path, help="image file; repeat with --boxes")
    p.add_argument("--boxes", action="append", default=[], type=Path, help="boxes CSV of the image before it")
    p.add_argument("--out", required=True, type=model_path, help="model file to write")
    p.add_argument("--arch", default=None, choices=ARCHS,
                   help=f"architecture (default {DEFAULT_ARCH}: forest for one class of objects apart, centernet "
                        "otherwise; forest: no network, trained in seconds; see the README for when to pick which)")
    p.add_argument("--pretrained", default="cache", choices=PRETRAINED,
                   help="torchvision detectors: ImageNet backbone weights from torch's cache only (default), "
                        "never, or downloaded if missing")
    p.add_argument("--init", type=Path, default=None, help="continue training this detector model file")
    p.add_argument("--val-image", action="append", default=[], type=Path,
                   help="validation image; repeat with --val-boxes (keeps the weights of the best validation mAP)")
    p.add_argument("--val-boxes", action="append", default=[], type=Path)
    p.add_argument("--empty-planes", default="skip", choices=["skip", "negative"],
                   help="stack planes without boxes: not annotated (skip, default) or empty of objects (negative)")
    p.add_argument("--patch-size", type=int_in(0, 4096), default=0, help="0 (default): from the largest object")
    p.add_argument("--batch-size", type=int_in(0, 4096), default=0, help="0 (default): the architecture's")
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate (default: the architecture's)")
    p.add_argument("--score-threshold", type=positive_float, default=None,
                   help="default score threshold stored in the model (0.3 unless given)")
    training_options(p, steps=400)
    p.add_argument("--channel-axis", type=int, default=None,
                   help="axis of the image holding colour channels (default: a last axis of 3 or 4)")


def read_image_and_boxes(image_path, boxes_path, channel_axis=None, class_names=None):
    """(image with any channels last, BoxTable, has channels) from files."""
    import numpy as np

    from ..core.boxes import BoxTable
    from ..core.errors import UserInputError
    from ..core.io import read_image
    from ..core.planes import guess_channel_axis

    table = BoxTable.read_csv(boxes_path, class_names)
    image = read_image(image_path)
    if channel_axis is None:
        spatial = 3 if table.is_stack else 2
        if image.ndim == spatial:
            axis = None
        elif image.ndim == spatial + 1:
            axis = guess_channel_axis(image.shape, None) if not table.is_stack else (
                image.ndim - 1 if image.shape[-1] <= 4 else 0)
            if axis is None:
                raise UserInputError(f"cannot tell the colour channels of {image_path} (shape {image.shape}); "
                                     "pass --channel-axis")
        else:
            what = "a stack of planes (the CSV has an index column)" if table.is_stack else "a 2D image"
            raise UserInputError(f"{image_path} has shape {image.shape}; {boxes_path} is for {what}")
    else:
        if not -image.ndim <= channel_axis < image.ndim:
            raise UserInputError(f"--channel-axis {channel_axis} does not exist in {image_path} (shape {image.shape})")
        axis = channel_axis
    if axis is not None:
        image = np.moveaxis(image, axis, -1)
    return image, table, axis is not None


def read_set(images, boxes, channel_axis, class_names=None):
    """Images (channels last where any has them) and tables, checked for one channel layout."""
    from ..core.errors import UserInputError

    if len(images) != len(boxes):
        raise UserInputError("give one --boxes CSV per --image")
    out_images, tables, coloured = [], [], []
    for image_path, boxes_path in zip(images, boxes):
        image, table, has_channels = read_image_and_boxes(image_path, boxes_path, channel_axis, class_names)
        out_images.append(image)
        tables.append(table)
        coloured.append(has_channels)
        class_names = list(dict.fromkeys([*(class_names or []), *table.class_names]))
    if any(coloured) and not all(coloured):
        # Grey images beside colour ones get a channel axis of one; the detector then refuses the mix.
        out_images = [im if c else im[..., None] for im, c in zip(out_images, coloured)]
    return out_images, tables, (-1 if any(coloured) else None)


def run(args):
    from ..core.errors import UserInputError

    if not args.image:
        raise UserInputError("give at least one --image with its --boxes CSV")
    if len(args.val_image) != len(args.val_boxes):
        raise UserInputError("give one --val-boxes CSV per --val-image")
    if args.score_threshold is not None and not 0 < args.score_threshold < 1:
        raise UserInputError("--score-threshold must be between 0 and 1")
    check_outputs([*args.image, *args.boxes, *args.val_image, *args.val_boxes, args.init], [args.out])

    from ..dl.detector import Detector  # torch-free: a network's imports come with its training (or its --init)
    from ..dl.detector_archs import DEFAULT_ARCH

    if args.init is not None:
        det = Detector.load(args.init, device=args.device)
        if args.arch not in (None, "auto", det.arch):
            raise UserInputError(f"{args.init} is a {det.arch} detector, not {args.arch}")
    else:
        det = Detector(args.arch or DEFAULT_ARCH, pretrained=args.pretrained, device=args.device)
    # Read (and refuse) the images and boxes before importing torch: a wrong file is told in a fraction of a
    # second, not 4-7.
    images, tables, axis = read_set(args.image, args.boxes, args.channel_axis, det.class_names)
    validation = None
    if args.val_image:
        val_images, val_tables, val_axis = read_set(args.val_image, args.val_boxes, args.channel_axis)
        if val_axis != axis:
            raise UserInputError("validation images must be grey or colour like the training images")
        validation = list(zip(val_images, val_tables))
    from ..dl.detect_train import DetectSettings, train_detector
    if args.score_threshold is not None:
        det.score_threshold = args.score_threshold
    settings = DetectSettings(steps=args.steps, patch_size=args.patch_size, batch_size=args.batch_size,
                              lr=args.lr or 0.0, empty_planes=args.empty_planes, device=args.device,
                              time_limit=args.time_limit, seed=args.seed)
    every = max(1, args.steps // 20)
    for ev in train_detector(det, images, tables, settings, validation, channel_axis=axis):
        if ev.stage in ("start", "done") or ev.message:
            print(ev.message, flush=True)
        elif ev.stage == "training" and ev.done % every == 0:  # the forest's tuning: its lines have messages
            scores = "".join(f"  {k} {v:.3f}" for k, v in ev.metrics.items())
            print(f"step {ev.done}/{ev.total}  loss {ev.smoothed_loss:.4f}{scores}  {ev.seconds:.0f} s", flush=True)
    save_trained(det, args.out)
