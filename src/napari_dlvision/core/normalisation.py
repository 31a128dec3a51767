"""Input normalisation that travels in model files (pure numpy).

Networks see each channel scaled by its own percentiles, recomputed for every
image at training and prediction time alike: a model then copes with
exposure changes between images, and the model file stores the recipe, not
one image's numbers. Models whose output is an image (denoisers) map back
to the input's units with `invert`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import UserInputError


@dataclass
class Normalisation:
    """Per-image, per-channel percentile scaling: (x - p_low) / (p_high - p_low)."""

    low: float = 1.0
    high: float = 99.8
    mode: str = "percentile"
    max_samples: int = 1 << 22  # larger images use a regular subsample

    def __post_init__(self):
        if self.mode != "percentile":
            raise UserInputError(f"unknown normalisation mode {self.mode!r}")
        for v in (self.low, self.high):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise UserInputError("normalisation percentiles must be numbers")
        if not 0 <= self.low < self.high <= 100:
            raise UserInputError("normalisation percentiles must satisfy 0 <= low < high <= 100")
        if isinstance(self.max_samples, bool) or not isinstance(self.max_samples, int) or self.max_samples < 1:
            raise UserInputError("normalisation max_samples must be a positive integer")

    def params(self, image_cf: np.ndarray) -> np.ndarray:
        """(C, 2) array of (low value, scale) per channel: x_norm = (x - low) * scale."""
        out = np.empty((image_cf.shape[0], 2), np.float64)
        for c, ch in enumerate(image_cf):
            flat = ch.reshape(-1)
            if flat.dtype == bool:  # a mask given as the image (np.percentile refuses booleans)
                flat = flat.view(np.uint8)
            step = max(1, flat.size // self.max_samples)
            lo, hi = np.percentile(flat[::step], (self.low, self.high))
            out[c] = lo, 1.0 / max(hi - lo, 1e-6 * max(abs(hi), 1.0), 1e-12)
        return out

    def apply(self, image_cf: np.ndarray, params: np.ndarray | None = None) -> np.ndarray:
        """float32 (C, *spatial), roughly 0..1 per channel."""
        params = self.params(image_cf) if params is None else params
        out = np.empty(image_cf.shape, np.float32)
        for c, (lo, scale) in enumerate(params):
            np.multiply(np.subtract(image_cf[c], lo, dtype=np.float32), np.float32(scale), out=out[c])
        return out

    @staticmethod
    def invert(norm_cf: np.ndarray, params: np.ndarray) -> np.ndarray:
        """Back to the input's units (the inverse of `apply` with the same params)."""
        out = np.empty(norm_cf.shape, np.float32)
        for c, (lo, scale) in enumerate(params):
            np.add(norm_cf[c] / np.float32(scale), np.float32(lo), out=out[c])
        return out

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d) -> Normalisation:
        if not isinstance(d, dict):
            raise UserInputError("normalisation must be a JSON object")
        return cls(**{k: d[k] for k in ("low", "high", "mode", "max_samples") if k in d})
