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

A whole batch is masked in one vectorised pass (`blind_spot_batch`): done
patch by patch in Python it took about 1 ms a patch, which capped training
on a GPU at about 10 steps a second (batch 64, H200).
"""

from __future__ import annotations

import warnings

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
    points, inside = _jittered_grid(shape, fraction, rng, ())
    return points[inside]


def _jittered_grid(shape, fraction: float, rng, lead: tuple):
    """(points (*lead, n, ndim), inside (*lead, n)): one random pixel per grid
    cell for each of the `lead` patches; points of cells cut by the border may
    fall outside (inside is False there)."""
    ndim = len(shape)
    cell = max(1, int(round((1.0 / fraction) ** (1.0 / ndim))))
    counts = [-(-n // cell) for n in shape]
    origins = np.stack(np.meshgrid(*[np.arange(c) * cell for c in counts], indexing="ij"), -1).reshape(-1, ndim)
    points = origins + rng.integers(0, cell, tuple(lead) + origins.shape)
    return points, np.all(points < np.asarray(shape), axis=-1)


def _offsets(ndim: int, radius: int) -> np.ndarray:
    """Every offset in the (2r+1)^ndim window except the centre."""
    r = np.arange(-radius, radius + 1)
    grid = np.stack(np.meshgrid(*([r] * ndim), indexing="ij"), -1).reshape(-1, ndim)
    return grid[np.any(grid != 0, axis=1)]


def _reflect(nb: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Coordinates reflected back into the patch (edge pixel not repeated)."""
    nb = np.abs(nb)
    nb = np.where(nb >= shape, 2 * (shape - 1) - nb, nb)
    return np.clip(nb, 0, shape - 1)


def blind_spot(patch: np.ndarray, fraction: float, rng, radius: int = 2, replacement: str = "random",
               channels: str = "independent"):
    """(masked input, mask) for one channels-first patch (C, *spatial).

    mask is a float32 array of the patch's shape, 1 where the loss looks;
    masked input equals the patch except at those pixels, which hold a
    value of an unmasked neighbour within `radius` (random, or the median
    of the unmasked neighbours).
    """
    x, mask = blind_spot_batch(np.asarray(patch, np.float32)[None], fraction, rng, radius, replacement, channels)
    return x[0], mask[0]


def blind_spot_batch(patches: np.ndarray, fraction: float, rng, radius: int = 2, replacement: str = "random",
                     channels: str = "independent"):
    """`blind_spot` for a batch (B, C, *spatial) at once; every patch gets its own pixels."""
    x = np.asarray(patches, np.float32)
    b, c, spatial = x.shape[0], x.shape[1], x.shape[2:]
    shape = np.asarray(spatial)
    joint = channels == "joint" or c == 1
    groups = 1 if joint else c  # one set of hidden pixels per group: the patch, or each channel
    points, inside = _jittered_grid(spatial, fraction, rng, (b, groups))
    bi, gi, _ = np.nonzero(inside)  # one row per hidden pixel: its patch, its group...
    pts = points[inside]  # ...and its coordinates (m, ndim)
    masked = np.zeros((b, groups) + tuple(spatial), bool)
    masked[(bi, gi) + tuple(pts.T)] = True

    def at(coords, rows=slice(None)):
        """Index of coordinates (rows of pts) in x: joint takes every channel."""
        lead = (bi[rows], slice(None)) if joint else (bi[rows], gi[rows])
        return lead + tuple(np.moveaxis(coords, -1, 0))

    def usable(nb, rows=slice(None)):
        """Neighbours that are not hidden themselves and not the pixel itself (a reflection in a
        1-pixel-wide axis can land there)."""
        lead, own = (bi[rows], gi[rows]), pts[rows]
        if nb.ndim == 3:  # (n, k, ndim): every neighbour of each pixel
            lead, own = (lead[0][:, None], lead[1][:, None]), own[:, None]
        return ~masked[lead + tuple(np.moveaxis(nb, -1, 0))] & np.any(nb != own, axis=-1)

    offsets = _offsets(len(spatial), radius)
    values = np.empty((len(pts), c) if joint else len(pts), np.float32)
    todo = np.arange(len(pts))
    if replacement == "random":
        # A uniformly random usable neighbour: draw offsets and redraw the unusable
        # (hidden neighbours are about `fraction` of them), so each pixel costs O(1).
        for _ in range(8):
            if not len(todo):
                break
            nb = _reflect(pts[todo] + offsets[rng.integers(len(offsets), size=len(todo))], shape)
            ok = usable(nb, todo)
            values[todo[ok]] = x[at(nb[ok], todo[ok])]
            todo = todo[~ok]
    if len(todo):  # the median, and the rare pixels still without a neighbour: all neighbours at once
        nb = _reflect(pts[todo][:, None, :] + offsets[None], shape)  # (n, k, ndim)
        ok = usable(nb, todo)
        lead = (bi[todo][:, None], slice(None)) if joint else (bi[todo][:, None], gi[todo][:, None])
        v = x[lead + tuple(np.moveaxis(nb, -1, 0))]  # (n, k, C) joint, (n, k) independent
        if replacement == "median":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: filled below
                found = np.nanmedian(np.where(ok[..., None] if joint else ok, v, np.nan), axis=1)
        else:
            keys = np.where(ok, rng.random(ok.shape), -1.0)
            found = np.take_along_axis(v, np.argmax(keys, axis=1)[:, None, None] if joint
                                       else np.argmax(keys, axis=1)[:, None], axis=1)[:, 0]
        none = ~ok.any(axis=1)
        if none.any():  # no unmasked neighbour in reach (only in tiny or saturated patches)
            found[none] = _unmasked_means(x, masked, joint)[(bi[todo][none],) + (() if joint else (gi[todo][none],))]
        values[todo] = found
    out, mask = x.copy(), np.zeros(x.shape, np.float32)
    out[at(pts)] = values
    mask[at(pts)] = 1.0
    return out, mask


def _unmasked_means(x, masked, joint):
    """Mean of the visible pixels per patch and channel: (B, C) joint, (B, groups) otherwise."""
    hidden = masked[:, :1] if joint else masked
    visible = ~np.broadcast_to(hidden, x.shape)
    axes = tuple(range(2, x.ndim))
    n = visible.sum(axis=axes)
    return np.where(n > 0, (x * visible).sum(axis=axes) / np.maximum(n, 1), 0.0).astype(np.float32)
