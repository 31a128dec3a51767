"""Training targets and input normalisation for the deep pixel classifier.

Pure numpy: no torch here. Target arrays hold 0-based class indices with
IGNORE (-100, torch's default ignore_index) wherever nothing is known.

- sparse mode: user labels 0 = unlabelled, 1..K = classes -> index label-1.
- dense mode: instance masks (0 = background, each object its own id) ->
  0 background, 1 interior, 2 boundary, where boundary is each object's
  inner rim, including the line where two objects touch. A network trained
  on it draws the line between touching nuclei, which seeds the watershed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..core.errors import UserInputError

IGNORE = -100
DENSE_CLASS_NAMES = ("background", "interior", "boundary")


def as_label_array(labels, name="labels") -> np.ndarray:
    lab = np.asarray(labels)
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise UserInputError(f"{name} must be whole numbers")
        lab = lab.astype(np.int64)
    if lab.dtype.kind not in "iub":
        raise UserInputError(f"{name} must be integers, got dtype {lab.dtype}")
    if lab.size and lab.min() < 0:
        raise UserInputError(f"{name} must not be negative (0 = unlabelled or background)")
    return lab


def sparse_targets(labels) -> np.ndarray:
    """User labels (0 unlabelled, 1..K) -> int64 class indices, IGNORE where 0."""
    lab = as_label_array(labels).astype(np.int64)
    return np.where(lab > 0, lab - 1, IGNORE)


def dense_targets(instances) -> np.ndarray:
    """Instance masks -> int64 targets: 0 background, 1 interior, 2 boundary."""
    from skimage.segmentation import find_boundaries

    inst = as_label_array(instances, "instance labels")
    out = (inst > 0).astype(np.int64)
    # 'inner' marks object pixels next to anything else: background or another object.
    out[find_boundaries(inst, mode="inner") & (inst > 0)] = 2
    return out


def class_counts(targets: list[np.ndarray], n_classes: int) -> np.ndarray:
    counts = np.zeros(n_classes, np.int64)
    for t in targets:
        t = t[t != IGNORE]
        counts += np.bincount(t.ravel(), minlength=n_classes)[:n_classes]
    return counts


def balanced_weights(counts: np.ndarray, power: float = 1.0) -> np.ndarray:
    """Per-class loss weights ~ 1 / frequency**power, mean 1 over present classes."""
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    w = np.zeros_like(counts)
    w[present] = (counts[present] / counts[present].sum()) ** -power
    w[present] /= w[present].mean()
    return w.astype(np.float32)


@dataclass
class Normalisation:
    """Per-image, per-channel percentile scaling: (x - p_low) / (p_high - p_low).

    The percentiles are recomputed for every image (training and prediction
    alike), which makes a model robust to exposure changes between images;
    the model file stores the recipe, not one image's numbers.
    """

    low: float = 1.0
    high: float = 99.8
    mode: str = "percentile"
    max_samples: int = 1 << 22  # larger images use a regular subsample

    def __post_init__(self):
        if self.mode != "percentile":
            raise ValueError(f"unknown normalisation mode {self.mode!r}")
        if not 0 <= self.low < self.high <= 100:
            raise ValueError("normalisation percentiles must satisfy 0 <= low < high <= 100")

    def params(self, image_cf: np.ndarray) -> np.ndarray:
        """(C, 2) array of (low value, high value) per channel."""
        out = np.empty((image_cf.shape[0], 2), np.float64)
        for c, ch in enumerate(image_cf):
            flat = ch.reshape(-1)
            step = max(1, flat.size // self.max_samples)
            out[c] = np.percentile(flat[::step], (self.low, self.high))
        return out

    def apply(self, image_cf: np.ndarray) -> np.ndarray:
        """float32 (C, *spatial), roughly 0..1 per channel."""
        params = self.params(image_cf)
        out = np.empty(image_cf.shape, np.float32)
        for c, (lo, hi) in enumerate(params):
            scale = 1.0 / max(hi - lo, 1e-6 * max(abs(hi), 1.0), 1e-12)
            np.multiply(np.subtract(image_cf[c], lo, dtype=np.float32), np.float32(scale), out=out[c])
        return out

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Normalisation:
        return cls(**{k: d[k] for k in ("low", "high", "mode", "max_samples") if k in d})
