"""Training folders on disk: FOLDER/images + FOLDER/masks with matching names."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import UserInputError


def image_mask_pairs(folder) -> list[tuple[Path, Path]]:
    """(image file, mask file) pairs of FOLDER/images and FOLDER/masks, by file stem."""
    from ..core.io import list_images, mask_for

    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"{folder}: folder not found" if not folder.exists() else f"{folder} is not a folder")
    if not (folder / "images").is_dir() or not (folder / "masks").is_dir():
        raise UserInputError(f"{folder} needs two sub-folders: images/ and masks/ (same file names)")
    return [(p, mask_for(p, folder / "masks")) for p in list_images(folder / "images")]


def read_image_mask_folder(folder):
    """(images, masks, channel axis): arrays read from a training folder.

    Channel axes are guessed per image from the mask's shape and moved last,
    so channel-first and channel-last files mix; grey and colour do not.
    """
    import numpy as np

    from ..core.io import channel_axis_for, read_image

    images, masks, channels = [], [], set()
    for image_path, mask_path in image_mask_pairs(folder):
        img, mask = read_image(image_path), read_image(mask_path)
        axis = channel_axis_for(img.shape, mask.ndim)
        if axis is not None:
            img = np.moveaxis(img, axis, -1)
        spatial = img.shape if axis is None else img.shape[:-1]
        if tuple(spatial) != tuple(mask.shape):
            raise UserInputError(f"{mask_path.name} has shape {mask.shape} but its image has {tuple(spatial)}")
        channels.add(1 if axis is None else img.shape[-1])
        images.append(img)
        masks.append(mask)
    if len(channels) > 1:
        raise UserInputError(f"the images in {folder} mix grey and colour: train on images of one kind")
    axis = None if all(i.ndim == m.ndim for i, m in zip(images, masks)) else -1
    if axis is not None:
        images = [i if i.ndim > m.ndim else i[..., None] for i, m in zip(images, masks)]
    return images, masks, axis
