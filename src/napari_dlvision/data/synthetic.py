"""Synthetic nuclei with ground truth: offline sample data, tests, benchmarks.

Touching, unevenly lit, noisy ellipsoidal nuclei, their dense instance
labels, and sparse scribbles (1 = background, 2 = nucleus) like the few
strokes a user paints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

BACKGROUND, NUCLEUS = 1, 2


@dataclass
class SyntheticNuclei:
    image: np.ndarray  # uint16
    instances: np.ndarray  # int32, 0 = background
    scribbles: np.ndarray  # uint8, 0 = unlabelled, 1 = background, 2 = nucleus

    @property
    def foreground(self) -> np.ndarray:
        return self.instances > 0


def nuclei(shape=(512, 512), radius=(9.0, 15.0), density: float = 0.45,
           n_strokes: int = 20, seed: int = 0) -> SyntheticNuclei:
    """2D or 3D nuclei; `density` is the fraction of the area they roughly cover."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    mean_r = float(np.mean(radius))
    cell_volume = np.pi * mean_r**2 if ndim == 2 else 4 / 3 * np.pi * mean_r**3
    target = int(density * np.prod(shape) / cell_volume)
    axes = []
    centres, radii = np.zeros((0, ndim)), np.zeros(0)
    for _ in range(target * 30):
        if len(centres) >= target:
            break
        r = rng.uniform(*radius, size=ndim)
        c = rng.uniform(0, 1, ndim) * np.array(shape)
        # Allow overlap up to 25% of the radii so many nuclei touch.
        if np.all(np.linalg.norm(centres - c, axis=1) > 0.75 * (radii + r.mean())):
            centres = np.vstack([centres, c])
            radii = np.append(radii, r.mean())
            axes.append(r)
    best = np.full(shape, np.inf, np.float32)
    instances = np.zeros(shape, np.int32)
    brightness = np.zeros(shape, np.float32)
    for k, (c, r) in enumerate(zip(centres, axes), 1):
        # Work in the nucleus' bounding box only: generation stays linear in area.
        lo = np.maximum(np.floor(c - r.max()).astype(int), 0)
        hi = np.minimum(np.ceil(c + r.max()).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grid = np.indices(hi - lo, dtype=np.float32) + lo.reshape((ndim,) + (1,) * ndim)
        rot = _random_rotation(ndim, rng)
        d = np.tensordot(rot, grid - c.reshape((ndim,) + (1,) * ndim).astype(np.float32), axes=1)
        dist = np.sqrt(sum((d[i] / r[i]) ** 2 for i in range(ndim)))
        inside = (dist < 1) & (dist < best[box])
        best[box] = np.where(inside, dist, best[box])
        instances[box][inside] = k
        brightness[box][inside] = rng.uniform(0.55, 1.0) * (1 - 0.25 * dist[inside] ** 2)
    # Texture, blur, uneven illumination, background, noise.
    texture = 1 + 0.15 * ndi.gaussian_filter(rng.normal(size=shape), 1.5) * 3
    img = ndi.gaussian_filter(brightness * texture, 1.2)
    ramp = sum(np.indices(shape, dtype=np.float32)[i] / shape[i] for i in range(ndim)) / ndim
    img = img * (0.45 + 0.55 * ramp) + 0.08 + 0.05 * ramp
    img = img + rng.normal(0, 0.045, shape)
    image = np.clip(img * 3000, 0, 65535).astype(np.uint16)
    scribbles = _scribbles(instances, n_strokes, rng)
    return SyntheticNuclei(image, instances, scribbles)


def _random_rotation(ndim, rng):
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def _scribbles(instances, n_strokes, rng):
    """Short straight strokes: half inside nuclei, half in clear background."""
    shape = instances.shape
    fg = instances > 0
    clear_bg = ~ndi.binary_dilation(fg, iterations=3)
    out = np.zeros(shape, np.uint8)
    ids = np.unique(instances[instances > 0])
    rng.shuffle(ids)
    centres = ndi.center_of_mass(fg, instances, ids[: n_strokes // 2]) if len(ids) else []
    for c in centres:
        _stroke(out, np.array(c), instances == instances[tuple(np.round(c).astype(int))], NUCLEUS, rng, 6)
    bg_points = np.argwhere(clear_bg)
    for _ in range(n_strokes - len(centres)):
        if len(bg_points) == 0:
            break
        c = bg_points[rng.integers(len(bg_points))]
        _stroke(out, c.astype(float), clear_bg, BACKGROUND, rng, 12)
    return out


def _stroke(out, centre, allowed, value, rng, half_length):
    direction = rng.normal(size=out.ndim)
    direction /= np.linalg.norm(direction)
    for t in np.linspace(-half_length, half_length, 4 * half_length + 1):
        p = np.round(centre + t * direction).astype(int)
        if np.all(p >= 0) and np.all(p < out.shape) and allowed[tuple(p)]:
            out[tuple(p)] = value
