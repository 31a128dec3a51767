"""Reading images and labels from disk, writing results; readable errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import UserInputError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def read_image(path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise UserInputError(f"{path}: unsupported file type; use TIFF, PNG or JPEG")
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path)
        import imageio.v3 as iio

        img = iio.imread(path)
        if img.ndim == 3 and img.shape[-1] == 4:  # drop alpha: it is no image content
            img = img[..., :3]
        return img
    except Exception as e:  # any decoder failure means the same to the user
        raise UserInputError(f"cannot read {path}: {e}") from None


def write_tif(path, array: np.ndarray) -> Path:
    import tifffile

    path = Path(path)
    if path.parent and not path.parent.exists():
        raise UserInputError(f"output folder does not exist: {path.parent}")
    tifffile.imwrite(path, np.asarray(array), compression="zlib")
    return path


def channel_axis_for(shape, spatial_ndim: int, n_channels: int | None = None):
    """Channel axis of an image with this shape, or None for a plain image.

    Used only at the CLI boundary where no viewer tells us; the core always
    takes an explicit axis. An extra axis is taken as channels: the last one
    if it has n_channels entries (or at most 4 when unknown), else the first.
    """
    if len(shape) == spatial_ndim:
        return None
    if len(shape) != spatial_ndim + 1:
        raise UserInputError(
            f"image of shape {tuple(shape)} is neither {spatial_ndim}D nor {spatial_ndim}D with channels"
        )
    fits = (lambda n: n == n_channels) if n_channels else (lambda n: n <= 4)
    if fits(shape[-1]):
        return len(shape) - 1
    if fits(shape[0]):
        return 0
    if n_channels:
        raise UserInputError(
            f"the model expects {n_channels}-channel images; this image has shape {tuple(shape)}"
        )
    raise UserInputError(
        f"cannot tell the channel axis of an image of shape {tuple(shape)}; pass --channel-axis"
    )


def mask_for(image_path, masks_dir) -> Path:
    """The image file in masks_dir with the same stem as image_path."""
    masks_dir = Path(masks_dir)
    found = sorted(p for p in masks_dir.glob(Path(image_path).stem + ".*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise UserInputError(f"no mask for {Path(image_path).name} in {masks_dir}")
    return found[0]


def list_images(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserInputError(f"no TIFF, PNG or JPEG images in {folder}")
    return files
