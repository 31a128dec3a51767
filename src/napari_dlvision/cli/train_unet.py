"""U-Net pixel classifier (deep), from sparse strokes or dense instance masks.

    dlvision train unet --image IMG --labels STROKES --out MODEL [--steps N] [--time-limit S]
    dlvision train unet --masks-dir FOLDER --out MODEL      # FOLDER/images + FOLDER/masks (instances)
"""

from __future__ import annotations

from pathlib import Path

from .common import (check_named_classes, check_outputs, class_names, floats, int_in, model_path, positive_float,
                     read_pairs, save_trained, training_options)


def add_arguments(p):
    p.add_argument("--image", action="append", default=[], type=Path, help="image file; repeat with --labels")
    p.add_argument("--labels", action="append", default=[], type=Path,
                   help="strokes (0 = unlabelled, 1..K) or, with --dense, instance masks")
    p.add_argument("--masks-dir", type=Path, default=None,
                   help="folder with images/ and masks/ (instance masks, same file names): dense training")
    p.add_argument("--dense", action="store_true", help="--labels are dense instance masks")
    p.add_argument("--out", required=True, type=model_path, help="model file to write")
    p.add_argument("--init", type=Path, default=None, help="continue training this U-Net model file")
    p.add_argument("--preset", default="small", choices=["small", "medium"], help="architecture preset")
    p.add_argument("--patch-size", type=int_in(8, 4096), default=None)
    p.add_argument("--batch-size", type=int_in(0, 4096), default=0, help="0 (default): from the device's memory")
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate (default: the trainer's)")
    p.add_argument("--class-names", type=class_names, default=None,
                   help="names of classes 1..K, comma-separated, e.g. background,nucleus (sparse strokes)")
    p.add_argument("--elastic", action="store_true", help="add elastic deformation to the augmentation")
    for name in ("flips", "rot90", "intensity"):
        p.add_argument(f"--no-{name}", action="store_true", help=f"no {name} in the augmentation")
    training_options(p, steps=500)
    p.add_argument("--channel-axis", type=int, default=None,
                   help="axis of the image holding channels (default: guessed from the shapes)")
    p.add_argument("--spacing", type=floats, default=None, help="voxel size per spatial axis, e.g. 2,1,1")


def run(args):
    from ..core.errors import UserInputError
    from ..data.folders import image_mask_pairs

    images, labels, dense = list(args.image), list(args.labels), args.dense
    if args.masks_dir is not None:
        if labels and not dense:
            raise UserInputError("--masks-dir holds instance masks: give --dense to add --labels masks beside it, "
                                 "or train on strokes without --masks-dir")
        dense = True
        for image, mask in image_mask_pairs(args.masks_dir):
            images.append(image)
            labels.append(mask)
    if not images:
        raise UserInputError("give --image/--labels pairs or --masks-dir")
    check_outputs(images + labels + [args.init], [args.out])
    imgs, labs, axis = read_pairs(images, labels, args.channel_axis)
    if not dense:
        check_named_classes(args.class_names, labs)
    else:
        _check_masks(labels, labs)

    from ..dl.pixel_train import TrainSettings, train_unet
    from ..dl.segmenter import UNetSegmenter

    mode = "dense" if dense else "sparse"
    if args.init is not None:
        seg = UNetSegmenter.load(args.init, device=args.device)
        if seg.mode != mode:
            raise UserInputError(f"{args.init} was trained on {seg.mode} labels, not {mode}")
    else:
        seg = UNetSegmenter(args.preset, mode, class_names=args.class_names, device=args.device)
    settings = TrainSettings(steps=args.steps, patch_size=args.patch_size, batch_size=args.batch_size,
                             elastic=args.elastic, flips=not args.no_flips, rot90=not args.no_rot90,
                             intensity=not args.no_intensity, device=args.device, time_limit=args.time_limit,
                             seed=args.seed)
    if args.lr is not None:
        settings.lr = args.lr
    every = max(1, args.steps // 20)
    for ev in train_unet(seg, imgs, labs, settings, channel_axis=axis, spacing=args.spacing):
        if ev.stage in ("start", "done") or ev.message:
            print(ev.message, flush=True)
        elif ev.stage == "training" and ev.done % every == 0:
            print(f"step {ev.done}/{ev.total}  loss {ev.smoothed_loss:.4f}  {ev.seconds:.0f} s", flush=True)
    save_trained(seg, args.out)


def _check_masks(paths, masks) -> None:
    """Each file given as instance masks is one (dl.targets.check_instance_mask),
    refused by its name: with --masks-dir or several --labels, which one."""
    from ..core.errors import UserInputError
    from ..core.labels import as_label_array
    from ..dl.targets import check_instance_mask

    for path, mask in zip(paths, masks):
        try:
            check_instance_mask(as_label_array(mask, "instance labels"))
        except UserInputError as e:
            raise UserInputError(f"{path}: {e}") from None


def run_command(settings: dict, mode: str, preset: str, channel_axis=None, spacing=None,
                class_names=None) -> list[str]:
    """The `train unet` command for the widget's settings, on image.tif and
    labels.tif beside the run file (what the widget's "Export run…" writes)."""
    cmd = ["train", "unet", "--image", "image.tif", "--labels", "labels.tif", "--out", "unet.dlv",
           "--preset", preset, "--steps", str(int(settings["steps"])),
           "--batch-size", str(int(settings["batch_size"])),
           "--lr", repr(float(settings["lr"])), "--device", settings["device"]]
    if settings.get("patch_size"):  # 0: automatic, as without the option
        cmd += ["--patch-size", str(int(settings["patch_size"]))]
    if mode == "dense":
        cmd.append("--dense")
    elif class_names:
        cmd += ["--class-names", ",".join(n.replace(",", " ") for n in class_names)]
    if settings.get("elastic"):
        cmd.append("--elastic")
    cmd += [f"--no-{k}" for k in ("flips", "rot90", "intensity") if not settings.get(k, True)]
    if channel_axis is not None:
        cmd += ["--channel-axis", str(int(channel_axis))]
    if spacing is not None:
        cmd += ["--spacing", ",".join(repr(float(s)) for s in spacing)]
    return cmd

