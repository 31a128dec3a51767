"""Clean synthetic images and independent noisy acquisitions of them.

For tests, the sample data and benchmarks of the denoiser: the clean image
is known, so PSNR can be measured, and every call draws fresh, independent
noise (Noise2Noise pairs, stacks of repeated frames).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def clean_cells(shape=(256, 256), seed: int = 0, radius=(5.0, 12.0), density: float = 0.35) -> np.ndarray:
    """float32 in 0..1: blurred, textured cells of different brightness on a dim background."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    mean_r = float(np.mean(radius))
    volume = np.pi * mean_r**2 if ndim == 2 else 4 / 3 * np.pi * mean_r**3
    n = max(1, int(density * np.prod(shape) / volume))
    img = np.zeros(shape, np.float32)
    grid = np.indices(shape, dtype=np.float32)
    for _ in range(n):
        c = rng.uniform(0, 1, ndim) * np.array(shape)
        r = rng.uniform(*radius, size=ndim)
        d2 = sum(((grid[i] - c[i]) / r[i]) ** 2 for i in range(ndim))
        img = np.maximum(img, rng.uniform(0.4, 1.0) * (d2 < 1) * (1 - 0.3 * d2))
    texture = 1 + 0.25 * ndi.gaussian_filter(rng.normal(size=shape), 1.5) * 3
    img = ndi.gaussian_filter(img * texture, 1.0) + 0.1
    img -= img.min()
    return (img / img.max()).astype(np.float32)


def add_noise(clean: np.ndarray, rng, gaussian: float = 0.0, poisson_peak: float | None = None) -> np.ndarray:
    """One noisy acquisition: Poisson counts at `poisson_peak` photons for 1.0 (scaled
    back to 0..1), then Gaussian noise of standard deviation `gaussian`."""
    out = clean.astype(np.float64)
    if poisson_peak is not None:
        out = rng.poisson(np.clip(out, 0, None) * poisson_peak) / poisson_peak
    if gaussian:
        out = out + rng.normal(0, gaussian, clean.shape)
    return out.astype(np.float32)


def noisy_cells(shape=(256, 256), sigma: float = 0.15, n: int = 2, seed: int = 0):
    """(clean, [n independent noisy acquisitions with Gaussian noise sigma])."""
    clean = clean_cells(shape, seed)
    rng = np.random.default_rng(seed + 1000)
    return clean, [add_noise(clean, rng, gaussian=sigma) for _ in range(n)]
