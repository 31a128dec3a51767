"""Denoiser (U-Net): Noise2Void from noisy images alone, Noise2Noise from pairs, supervised from clean targets.

    dlvision train denoiser --image NOISY --out MODEL                       # Noise2Void
    dlvision train denoiser --image NOISY --pair NOISY_B --out MODEL        # Noise2Noise
    dlvision train denoiser --image STACK --frames --out MODEL              # Noise2Noise from repeated frames
    dlvision train denoiser --image NOISY --target CLEAN --out MODEL        # supervised (CARE-style)

Repeat --image (with one --pair or --target each) to train on several
images; a folder given to --image takes every image in it, and its --pair or
--target folder the files of the same names. Then
`dlvision predict --model MODEL --image NOISY --out DENOISED.tif` writes the
denoised image as float32 in the input's intensity units.
"""

from __future__ import annotations

from pathlib import Path

from .common import check_outputs, floats, int_in, model_path, positive_float, save_trained, training_options


def add_arguments(p):
    p.add_argument("--image", action="append", default=[], type=Path, required=True,
                   help="noisy image file (or folder of images); repeat for several")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--pair", action="append", default=[], type=Path,
                       help="second, independent noisy acquisition of each --image: Noise2Noise")
    group.add_argument("--target", action="append", default=[], type=Path,
                       help="clean image of each --image: supervised training")
    group.add_argument("--frames", action="store_true",
                       help="the first axis of each --image holds repeated acquisitions: Noise2Noise")
    p.add_argument("--out", required=True, type=model_path, help="model file to write")
    p.add_argument("--init", type=Path, default=None, help="continue training this denoiser model file")
    p.add_argument("--preset", default="small", choices=["small", "medium"],
                   help="architecture: small (depth 2, 32 channels) or medium (depth 3, 32)")
    p.add_argument("--patch-size", type=int_in(8, 4096), default=None, help="default 64 in 2D, 32 in 3D")
    p.add_argument("--batch-size", type=int_in(0, 4096), default=0, help="0 (default): from the device's memory")
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate (default: the trainer's)")
    p.add_argument("--masked-fraction", type=positive_float, default=None,
                   help="Noise2Void: share of pixels hidden per patch (default 0.1)")
    p.add_argument("--channels", choices=["independent", "joint"], default="independent",
                   help="Noise2Void on multi-channel images: mask channels independently or jointly")
    p.add_argument("--no-tta", action="store_true",
                   help="predict in one pass instead of averaging 8 flips and rotations (8x faster, a little noisier)")
    p.add_argument("--no-reinclude", action="store_true",
                   help="Noise2Void: keep the network's prediction as it is instead of putting each pixel's own "
                        "value back where the network is unsure")
    training_options(p, steps=400)
    p.add_argument("--channel-axis", type=int, default=None,
                   help="axis of the image holding channels (default: guessed from the shapes)")
    p.add_argument("--spacing", type=floats, default=None, help="voxel size per spatial axis, e.g. 2,1,1")


def _expand(images, others, what):
    """Folders to their files; `others` (pairs or targets) matched by file name."""
    from ..core.errors import UserInputError
    from ..core.io import list_images, mask_for

    if others and len(others) != len(images):
        raise UserInputError(f"give one --{what} per --image ({len(images)} --image, {len(others)} --{what})")
    files, matched = [], []
    for i, image in enumerate(images):
        if image.is_dir():
            found = list_images(image)
            if others and not others[i].is_dir():
                raise UserInputError(f"--image {image} is a folder: give a folder to --{what} too")
            files += found
            matched += [mask_for(f, others[i], what) for f in found] if others else []
        else:
            if others and others[i].is_dir():
                raise UserInputError(f"--{what} {others[i]} is a folder but --image {image} is a file")
            files.append(image)
            matched += [others[i]] if others else []
    for f, m in zip(files, matched):
        if f.resolve() == Path(m).resolve():  # the same noise twice: the network would learn to copy it
            raise UserInputError(f"--{what} {m} is the --image itself: give "
                                 + ("a second noisy acquisition of the same field" if what == "pair"
                                    else "a clean image of the same field"))
    return files, matched


def _spatial_ndim(shape, frames: bool, channel_axis, model) -> int:
    """2 or 3: from the model when continuing, else from the file's shape."""
    if model is not None:
        return model.ndim
    n = len(shape) - frames
    if channel_axis is not None:
        return n - 1
    if n == 2:
        return 2
    if n == 3:
        return 2 if shape[-1] <= 4 else 3
    return 3


def read_noisy(files, others, channel_axis, frames: bool, model=None):
    """(noisy images, pairs or targets, channel axis): channels moved last for all."""
    import numpy as np

    from ..core.errors import UserInputError
    from ..core.io import channel_axis_for, read_image

    images, extra, layouts = [], [], set()
    for k, path in enumerate(files):
        img = read_image(path)
        if channel_axis is not None and not -img.ndim <= channel_axis < img.ndim:
            raise UserInputError(f"--channel-axis {channel_axis} does not exist in {path} (shape {img.shape})")
        if img.ndim - frames < 2:
            raise UserInputError(f"{path} has shape {img.shape}: " + (
                "a stack of repeated frames (--frames) needs 2D or 3D frames after its first axis" if frames
                else "the denoiser takes 2D or 3D images (with or without channels)"))
        ndim = _spatial_ndim(img.shape, frames, channel_axis, model)
        body = img.shape[1:] if frames else img.shape
        axis = channel_axis
        if axis is None:
            axis = channel_axis_for(body, ndim, None if model is None else model.n_channels)
        elif frames:
            axis = axis % img.ndim - 1
            if axis < 0:
                raise UserInputError("--channel-axis 0 is the frames axis of a stack of repeated frames")
        if axis is not None:
            img = np.moveaxis(img, axis + frames, -1)
        layouts.add(None if axis is None else img.shape[-1])
        images.append(img)
        if others:
            other = read_image(others[k])
            if axis is not None:
                if other.ndim != img.ndim:
                    raise UserInputError(f"{others[k]} has shape {other.shape} but {path} has {img.shape}")
                other = np.moveaxis(other, axis, -1)
            extra.append(other)
    if len(layouts) > 1:
        raise UserInputError("the images differ in their channels: train on images of one kind")
    return images, extra, (None if layouts == {None} else -1)


def _continued(path, mode: str, device: str):
    """The denoiser of --init, trained the same way (`mode`) as asked now."""
    from ..core.errors import UserInputError
    from ..dl.denoise import Denoiser

    model = Denoiser.load(path, device=device)
    if model.mode != mode:
        raise UserInputError(f"{path} was trained with {model.title}; continue it the same way")
    return model


def run(args):
    from ..core.errors import UserInputError

    mode = "n2n" if (args.pair or args.frames) else ("supervised" if args.target else "n2v")
    others = args.pair or args.target
    files, matched = _expand(args.image, others, "pair" if args.pair else "target")
    check_outputs(files + matched + [args.init], [args.out])

    model = _continued(args.init, mode, args.device) if args.init is not None else None
    # Read (and refuse) the images before importing torch: a wrong file is told in a fraction of a second, not 4-5.
    images, extra, axis = read_noisy(files, matched, args.channel_axis, args.frames, model)
    from ..dl.denoise import Denoiser
    from ..dl.denoise_train import DenoiseSettings, train_denoiser

    denoiser = model or Denoiser(mode, args.preset, device=args.device)
    denoiser.tta = not args.no_tta
    denoiser.reinclude = not args.no_reinclude  # Noise2Void only: the model keeps it off otherwise
    settings = DenoiseSettings(steps=args.steps, patch_size=args.patch_size, batch_size=args.batch_size,
                               channels=args.channels, device=args.device, time_limit=args.time_limit,
                               seed=args.seed)
    if args.lr is not None:
        settings.lr = args.lr
    if args.masked_fraction is not None:
        settings.masked_fraction = args.masked_fraction
    every = max(1, args.steps // 20)
    gen = train_denoiser(denoiser, images, extra if args.pair else None, extra if args.target else None,
                         settings, channel_axis=axis, frames=args.frames, spacing=args.spacing)
    for ev in gen:
        if ev.stage in ("start", "done") or ev.message:
            print(ev.message, flush=True)
        elif ev.done % every == 0:
            print(f"step {ev.done}/{ev.total}  loss {ev.smoothed_loss:.5f}  {ev.seconds:.0f} s", flush=True)
    if denoiser.training.get("steps", 0) == 0:
        raise UserInputError("training ended before its first step; no model was written")
    save_trained(denoiser, args.out)
