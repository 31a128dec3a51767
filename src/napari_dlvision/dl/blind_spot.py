"""Noise2Void's blind spot: hide random pixels from the network (numpy only).

A network trained to predict a noisy pixel from an input that does not hold
that pixel's value can only learn the signal: pixel-wise independent,
zero-mean noise is unpredictable from the neighbours. Per patch we pick
pixels on a jittered grid (one per cell, so they spread evenly), replace each
by a value from its neighbourhood, and the loss looks at those pixels only.

The guarantee the tests check: a masked pixel's own value appears nowhere in
the masked input (neither at its place nor as another pixel's replacement),
so it cannot reach the network's output for that pixel. Replacements come
only from pixels that are not masked themselves (in that channel).

Channels are masked jointly (the same pixels in every channel, replaced from
the same neighbour) or independently (each channel its own pixels: the other
channels' values at a masked pixel stay visible, which helps when channels
share structure but not noise).
"""

from __future__ import annotations

import numpy as np

from ..core.errors import UserInputError

REPLACEMENTS = ("random", "median")
CHANNEL_MODES = ("independent", "joint")


def check_settings(fraction: float, radius: int, replacement: str, channels: str) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0005 <= fraction <= 0.25:
        raise UserInputError(f"masked fraction must be between 0.0005 and 0.25, got {fraction!r}")
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or not 1 <= radius <= 8:
        raise UserInputError(f"neighbourhood radius must be a whole number from 1 to 8, got {radius!r}")
    if replacement not in REPLACEMENTS:
        raise UserInputError(f"replacement must be one of {', '.join(REPLACEMENTS)}, got {replacement!r}")
    if channels not in CHANNEL_MODES:
        raise UserInputError(f"channels are masked {' or '.join(CHANNEL_MODES)}, not {channels!r}")


def grid_points(shape, fraction: float, rng) -> np.ndarray:
    """(n, ndim) pixel coordinates: one random pixel per cell of a grid whose
    cells hold about 1/fraction pixels (cells cut by the border included)."""
    ndim = len(shape)
    cell = max(1, int(round((1.0 / fraction) ** (1.0 / ndim))))
    counts = [-(-n // cell) for n in shape]
    origins = np.stack(np.meshgrid(*[np.arange(c) * cell for c in counts], indexing="ij"), -1).reshape(-1, ndim)
    points = origins + rng.integers(0, cell, origins.shape)
    inside = np.all(points < np.asarray(shape), axis=1)
    return points[inside]


def _offsets(ndim: int, radius: int) -> np.ndarray:
    """Every offset in the (2r+1)^ndim window except the centre."""
    r = np.arange(-radius, radius + 1)
    grid = np.stack(np.meshgrid(*([r] * ndim), indexing="ij"), -1).reshape(-1, ndim)
    return grid[np.any(grid != 0, axis=1)]


def _replace(channel: np.ndarray, points: np.ndarray, masked: np.ndarray, radius: int, replacement: str,
             rng) -> np.ndarray:
    """Replacement values for `points` of one channel, from unmasked neighbours only."""
    shape = np.asarray(channel.shape)
    offsets = _offsets(len(shape), radius)
    # Every neighbour of every point: (n, k, ndim), reflected back into the patch.
    nb = points[:, None, :] + offsets[None]
    nb = np.abs(nb)
    nb = np.where(nb >= shape, 2 * (shape - 1) - nb, nb)
    nb = np.clip(nb, 0, shape - 1)
    idx = tuple(nb[..., a] for a in range(len(shape)))
    values = channel[idx].astype(np.float32)  # (n, k)
    usable = ~masked[idx]
    # Reflection can land back on the point itself in a 1-pixel-wide axis.
    usable &= np.any(nb != points[:, None, :], axis=2)
    out = np.empty(len(points), np.float32)
    none = ~usable.any(axis=1)
    if none.any():  # no unmasked neighbour in reach (only in tiny or saturated patches)
        out[none] = float(np.mean(channel[~masked])) if (~masked).any() else 0.0
    rows = np.flatnonzero(~none)
    if not len(rows):
        return out
    if replacement == "median":
        v = np.where(usable[rows], values[rows], np.nan)
        out[rows] = np.nanmedian(v, axis=1)
        return out
    # A uniformly random usable neighbour: random keys, unusable ones never win.
    keys = np.where(usable[rows], rng.random(usable[rows].shape), -1.0)
    out[rows] = values[rows, np.argmax(keys, axis=1)]
    return out


def blind_spot(patch: np.ndarray, fraction: float, rng, radius: int = 2, replacement: str = "random",
               channels: str = "independent"):
    """(masked input, mask) for one channels-first patch (C, *spatial).

    mask is a float32 array of the patch's shape, 1 where the loss looks;
    masked input equals the patch except at those pixels, which hold a
    value of an unmasked neighbour within `radius` (random, or the median
    of the unmasked neighbours).
    """
    patch = np.asarray(patch, np.float32)
    c, spatial = patch.shape[0], patch.shape[1:]
    out = patch.copy()
    mask = np.zeros(patch.shape, np.float32)
    if channels == "joint" or c == 1:
        points = grid_points(spatial, fraction, rng)
        masked = np.zeros(spatial, bool)
        masked[tuple(points.T)] = True
        # One neighbour for all channels: draw its choice once, apply per channel.
        state = rng.bit_generator.state
        for k in range(c):
            rng.bit_generator.state = state
            out[k][tuple(points.T)] = _replace(patch[k], points, masked, radius, replacement, rng)
            mask[k][tuple(points.T)] = 1.0
        return out, mask
    for k in range(c):
        points = grid_points(spatial, fraction, rng)
        masked = np.zeros(spatial, bool)
        masked[tuple(points.T)] = True
        out[k][tuple(points.T)] = _replace(patch[k], points, masked, radius, replacement, rng)
        mask[k][tuple(points.T)] = 1.0
    return out, mask
