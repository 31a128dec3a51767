"""Checks and conversions every model kind applies to an input image.

The core works on channels-first float32 arrays, (C, *spatial); callers say
where the channels are (`channel_axis`), nothing guesses here.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import UserInputError

# float32 holds values up to ~3.4e38; larger finite values become inf when
# cast, which downstream code (scikit-learn) reports as "contains infinity".
FLOAT32_MAX = float(np.finfo(np.float32).max)


def as_channels_first(image, channel_axis: int | None, ndims=(2, 3), float32: bool = True) -> np.ndarray:
    """Return (C, *spatial) float32, validating what pixel models need.

    With `float32=False` the checks are the same but the array keeps its
    type (a view where possible), for callers that convert it piece by
    piece: a big image is then never held twice.
    """
    img = np.asarray(image)
    if img.dtype == bool:
        img = img.astype(np.uint8)
    if not np.issubdtype(img.dtype, np.number) or np.iscomplexobj(img):
        raise UserInputError(f"image must be real numbers, got dtype {img.dtype}")
    if channel_axis is None:
        img = img[None]
    else:
        if isinstance(channel_axis, bool) or not -img.ndim <= int(channel_axis) < img.ndim:
            raise UserInputError(
                f"channel axis {channel_axis} does not exist in an image of shape {img.shape}"
            )
        img = np.moveaxis(img, int(channel_axis), 0)
    if img.ndim - 1 not in ndims:
        wanted = " or ".join(f"{n}D" for n in ndims)
        raise UserInputError(
            f"expected a {wanted} image (plus optional channels), got shape {np.shape(image)}"
        )
    if img.size == 0 or min(img.shape[1:]) < 2:
        raise UserInputError(f"image of shape {np.shape(image)} is too small")
    if img.shape[0] > 64:
        raise UserInputError(
            f"image of shape {np.shape(image)} would have {img.shape[0]} channels: "
            "is the channel axis right?"
        )
    if img.dtype.kind == "f" or img.dtype.itemsize > 4:
        _check_values(img)
    return img.astype(np.float32, copy=False) if float32 else img


def _check_values(img: np.ndarray, rows: int = 256) -> None:
    """NaN, infinity or values too large for float32 work: one clear error.

    Checked a slab at a time, so a big image needs no full-size temporaries.
    """
    big = 0.0
    for lead in np.ndindex(img.shape[:-2]):
        plane = img[lead]
        for start in range(0, plane.shape[0], rows):
            part = plane[start:start + rows]
            if part.dtype.kind == "f" and not np.all(np.isfinite(part)):
                raise UserInputError("image contains NaN or infinite values; replace them first")
            big = max(big, float(np.max(np.abs(part))))
    if big > FLOAT32_MAX / 16:
        raise UserInputError(
            f"image values reach {big:.3g}, too large to compute with; rescale the image first"
        )


def check_spacing(spacing, ndim: int):
    """None, or a tuple of `ndim` positive finite voxel sizes."""
    if spacing is None:
        return None
    try:
        s = np.asarray(spacing, dtype=float).ravel()
    except (TypeError, ValueError):
        raise UserInputError(f"voxel size must be {ndim} positive numbers, got {spacing!r}") from None
    if s.shape != (ndim,) or not np.all(np.isfinite(s)) or not np.all(s > 0):
        raise UserInputError(f"voxel size must be {ndim} positive numbers, got {','.join(f'{v:g}' for v in s)}")
    if s.max() > MAX_SPACING_RATIO * s.min():  # filter scales in pixels would overflow
        raise UserInputError(f"voxel sizes {','.join(f'{v:g}' for v in s)} differ more than "
                             f"{MAX_SPACING_RATIO}-fold between axes")
    return tuple(float(v) for v in s)


MAX_SPACING_RATIO = 1000


def spatial_shape(shape, channel_axis: int | None) -> tuple[int, ...]:
    shape = tuple(shape)
    if channel_axis is None:
        return shape
    axis = int(channel_axis) % len(shape)
    return shape[:axis] + shape[axis + 1:]


_LIMIT: int | None = None  # set by limit_threads (dask workers run one block per core)
_BLAS = None  # threadpoolctl's limiter while limited
_TORCH_BEFORE: int | None = None  # torch's thread count before the limit, given back after it


def n_threads() -> int:
    """CPU cores this process may use."""
    if _LIMIT is not None:
        return _LIMIT
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def limit_threads(n: int | None) -> None:
    """Use at most `n` threads from now on in this process (None: as many as
    there are cores again): our own pools, OpenCV's, BLAS's and torch's.
    Cheap to repeat: blocks call it each time, as torch may be imported
    after the first call."""
    global _LIMIT, _BLAS, _TORCH_BEFORE
    import sys

    changed = _LIMIT != n
    torch = sys.modules.get("torch")
    if torch is not None and n is not None and _TORCH_BEFORE is None:
        _TORCH_BEFORE = torch.get_num_threads()  # before threadpoolctl limits OpenMP, torch's too
    if changed:
        _LIMIT = None if n is None else int(n)
        import cv2

        cv2.setNumThreads(n_threads())
        if _BLAS is not None:
            _BLAS.restore_original_limits()
            _BLAS = None
        if n is not None:
            try:
                from threadpoolctl import threadpool_limits

                _BLAS = threadpool_limits(_LIMIT)
            except ImportError:  # scikit-learn brings it; without it BLAS keeps its pool
                pass
    if torch is None:
        return
    if _LIMIT is not None:
        if torch.get_num_threads() != _LIMIT:
            torch.set_num_threads(_LIMIT)
    elif _TORCH_BEFORE is not None:
        # As it was (OMP_NUM_THREADS, the user's own setting), not one thread per core.
        torch.set_num_threads(_TORCH_BEFORE)
        _TORCH_BEFORE = None
