"""Training targets for the deep pixel classifier.

Pure numpy: no torch here. Target arrays hold 0-based class indices with
IGNORE (-100, torch's default ignore_index) wherever nothing is known.

- sparse mode: user labels 0 = unlabelled, 1..K = classes -> index label-1.
- dense mode: instance masks (0 = background, each object its own id) ->
  0 background, 1 interior, 2 boundary, where boundary is each object's
  inner rim, including the line where two objects touch. A network trained
  on it draws the line between touching nuclei, which seeds the watershed.
"""

from __future__ import annotations

import numpy as np

from ..core.labels import as_label_array

IGNORE = -100
DENSE_CLASS_NAMES = ("background", "interior", "boundary")


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
