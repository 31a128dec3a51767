"""Random augmentation of image patches and the targets that go with them.

Geometry (flips, 90-degree rotations, elastic deformation) moves the image
and every target alike; intensity changes touch the image only. Arrays are
channels-first: the image (C, *spatial); each target either (*spatial) or
(K, *spatial); `ndim` says how many trailing axes are spatial.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass
class Augmentation:
    flips: bool = True
    rot90: bool = True  # in the last two axes, when the patch is square there
    intensity: bool = True  # random per-channel scale and shift
    elastic: bool = False  # smooth random deformation (CPU, costs time)

    def __call__(self, x, targets, ndim: int, rng):
        """(augmented x, list of augmented targets), all contiguous."""
        targets = list(targets)
        if self.flips:
            for ax in range(1, ndim + 1):
                if rng.random() < 0.5:
                    x = np.flip(x, -ax)
                    targets = [np.flip(t, -ax) for t in targets]
        if self.rot90 and x.shape[-1] == x.shape[-2]:
            k = int(rng.integers(4))
            if k:
                x = np.rot90(x, k, axes=(-2, -1))
                targets = [np.rot90(t, k, axes=(-2, -1)) for t in targets]
        if self.elastic:
            coords = elastic_coordinates(x.shape[-ndim:], rng)
            x = warp(x, coords, ndim, order=1)
            targets = [warp(t, coords, ndim, order=0 if t.dtype.kind in "iub" else 1) for t in targets]
        x = np.ascontiguousarray(x, np.float32)
        if self.intensity:
            c = x.shape[0]
            shape = (c,) + (1,) * (x.ndim - 1)
            scale = rng.uniform(0.75, 1.25, c).astype(np.float32).reshape(shape)
            shift = rng.uniform(-0.15, 0.15, c).astype(np.float32).reshape(shape)
            x = x * scale + shift
        return x, [np.ascontiguousarray(t) for t in targets]


def elastic_coordinates(shape, rng, control: int = 4, strength: float = 3.0) -> np.ndarray:
    """Sampling coordinates displaced smoothly by about `strength` pixels."""
    coords = np.indices(shape, dtype=np.float32)
    for ax in range(len(shape)):
        coarse = rng.normal(0, strength, (control,) * len(shape)).astype(np.float32)
        fine = ndi.zoom(coarse, [n / control for n in shape], order=3, mode="nearest")
        coords[ax] += fine[tuple(slice(0, n) for n in shape)]
    return coords


def warp(a: np.ndarray, coords: np.ndarray, ndim: int, order: int) -> np.ndarray:
    """Resample the trailing `ndim` axes of `a` at `coords` (leading axes kept)."""
    mode = "mirror" if order else "nearest"
    if a.ndim == ndim:
        return ndi.map_coordinates(a, coords, order=order, mode=mode)
    lead = a.shape[:-ndim]
    flat = a.reshape((-1,) + a.shape[-ndim:])
    out = np.stack([ndi.map_coordinates(ch, coords, order=order, mode=mode) for ch in flat])
    return out.reshape(lead + out.shape[1:])


def patch_edges(setting, ndim: int, default: int, lo: int = 1) -> tuple[int, ...]:
    """A patch-size setting (None or 0 for the default, one number, or one per axis) as `ndim` checked edges."""
    from ..core.errors import UserInputError

    if setting is None or (isinstance(setting, (int, np.integer)) and not isinstance(setting, bool) and setting == 0):
        setting = default
    if isinstance(setting, (int, np.integer)) and not isinstance(setting, bool):
        setting = (int(setting),) * ndim
    try:
        setting = tuple(int(s) for s in setting)
    except (TypeError, ValueError):
        raise UserInputError(f"patch size {setting!r} is not a whole number per axis") from None
    if len(setting) != ndim or min(setting) < lo or max(setting) > 4096:
        raise UserInputError(f"patch size {setting} does not fit {ndim}D images ({lo} to 4096 per axis)")
    return setting
