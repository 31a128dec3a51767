"""A 2D image or a stack of 2D planes, read tile by tile (pure numpy).

Detectors work on 2D planes: a grey or colour image, or every plane of a
stack (the leading axis is the plane index). `Planes` reads only the tile it
is asked for, so a lazy array (dask, zarr, a memory-mapped TIFF) larger than
memory is predicted with memory for one tile; values are checked per tile.
Normalisation parameters come from a regular subsample of each plane.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import UserInputError
from .normalisation import Normalisation

MAX_CHANNELS = 64


class Planes:
    def __init__(self, image, channel_axis: int | None = None):
        shape = tuple(int(n) for n in np.shape(image))
        dtype = np.dtype(getattr(image, "dtype", None) or np.asarray(image).dtype)
        if dtype == bool:
            dtype = np.dtype(np.uint8)
        if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
            raise UserInputError(f"image must be real numbers, got dtype {dtype}")
        if channel_axis is not None:
            if isinstance(channel_axis, bool) or not -len(shape) <= int(channel_axis) < len(shape):
                raise UserInputError(f"channel axis {channel_axis} does not exist in an image of shape {shape}")
            channel_axis = int(channel_axis) % len(shape)
        spatial = [i for i in range(len(shape)) if i != channel_axis]
        if len(spatial) not in (2, 3):
            taken = f" with axis {channel_axis} as channels" if channel_axis is not None else ""
            raise UserInputError(f"expected a 2D image or a stack of 2D planes (plus optional channels), "
                                 f"got shape {shape}{taken}")
        self.image, self.channel_axis, self.dtype = image, channel_axis, dtype
        self.stack = len(spatial) == 3
        self.plane_axis = spatial[0] if self.stack else None
        self.yx_axes = tuple(spatial[-2:])
        self.shape = tuple(shape[a] for a in self.yx_axes)  # (H, W)
        self.n_planes = shape[spatial[0]] if self.stack else 1
        self.n_channels = 1 if channel_axis is None else shape[channel_axis]
        if min(self.shape) < 2 or self.n_planes < 1:
            raise UserInputError(f"image of shape {shape} is too small")
        if self.n_channels > MAX_CHANNELS:
            raise UserInputError(f"image of shape {shape} would have {self.n_channels} channels: "
                                 "is the channel axis right?")

    def read(self, plane: int = 0, rows=slice(None), cols=slice(None)) -> np.ndarray:
        """(C, h, w) float32 of one plane's tile, checked to be finite."""
        index = [slice(None)] * np.ndim(self.image)
        if self.stack:
            index[self.plane_axis] = int(plane)
        index[self.yx_axes[0]], index[self.yx_axes[1]] = rows, cols
        tile = np.asarray(self.image[tuple(index)])
        if tile.dtype == bool:
            tile = tile.astype(np.uint8)
        if self.channel_axis is None:
            tile = tile[None]
        else:  # after dropping the plane axis the channel axis may have moved
            axis = self.channel_axis - (1 if self.stack and self.plane_axis < self.channel_axis else 0)
            tile = np.moveaxis(tile, axis, 0)
        tile = tile.astype(np.float32, copy=False)
        if tile.dtype.kind == "f" and not np.all(np.isfinite(tile)):
            raise UserInputError("image contains NaN or infinite values; replace them first")
        return tile

    def norm_params(self, normalisation: Normalisation, plane: int = 0, with_median: bool = False):
        """Normalisation parameters of one plane, from at most `max_samples` pixels of it.

        with_median: also the per-channel median of the normalised plane (its background)."""
        step = max(1, int(math.ceil(math.sqrt(math.prod(self.shape) / normalisation.max_samples))))
        sample = self.read(plane, slice(None, None, step), slice(None, None, step))
        params = normalisation.params(sample)
        if not with_median:
            return params
        flat = normalisation.apply(sample, params).reshape(sample.shape[0], -1)
        return params, np.median(flat[:, :: max(1, flat.shape[1] // 100_000)], axis=1).astype(np.float32)

    def plane_normalised(self, normalisation: Normalisation, plane: int = 0) -> np.ndarray:
        """A whole plane, normalised (C, H, W) float32 (training: planes are small enough)."""
        img = self.read(plane)
        return normalisation.apply(img, self.norm_params(normalisation, plane))


def guess_channel_axis(shape, n_channels: int | None) -> int | None:
    """Channel axis of a detector's input: 2D, 2D + channels, a stack, or a stack + channels.

    With a grey model (n_channels 1) a 3D array is a stack of planes; with a
    colour model its channels are the last or the first axis of that size;
    without a model (training files) a last axis of 3 or 4 is colour.
    """
    shape = tuple(shape)
    if len(shape) == 2:
        return None
    if len(shape) == 3:
        if n_channels == 1:
            if shape[-1] in (3, 4) and min(shape[:2]) > shape[-1]:  # not a stack of 3 or 4 pixel wide planes
                raise UserInputError(f"the model was trained on grey images; this image of shape {shape} is "
                                     "colour (RGB or RGBA): convert it to grey first")
            return None
        if n_channels:
            if shape[-1] == n_channels:
                return 2
            if shape[0] == n_channels:
                return 0
            raise UserInputError(f"the model expects {n_channels}-channel images; this image has shape {shape}")
        return 2 if shape[-1] in (3, 4) else None
    if len(shape) == 4:
        if n_channels and shape[-1] != n_channels:
            raise UserInputError(f"the model expects {n_channels}-channel images; this stack has shape {shape}")
        return 3
    raise UserInputError(f"expected a 2D image or a stack of 2D planes (plus channels), got shape {shape}")
