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

from ..core.errors import UserInputError
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
    check_instance_mask(inst)
    out = (inst > 0).astype(np.int64)
    # 'inner' marks object pixels next to anything else: background or another object.
    out[find_boundaries(inst, mode="inner") & (inst > 0)] = 2
    return out


SCATTERED_SHARE = 1 / 3  # labelled pixels away from their id's largest part beyond which ids are no objects


def check_instance_mask(inst: np.ndarray) -> None:
    """Refuse strokes, or a mask of several classes, given as instance masks.

    Both hold a few ids, each scattered over many separate parts; read as
    instances, each id became one object: touching objects lost the line
    between them and unpainted pixels became background, without a word.
    An id may still be cut in parts (a crop, stray pixels, an object split by
    another): refused only when the pixels away from their id's largest part
    are a third of the labelled pixels or more. One id (a binary mask of
    objects that do not touch) always passes.
    """
    from skimage.measure import label

    if not inst.any():
        return
    values, ids = np.unique(inst, return_inverse=True)  # ids 0..n-1: counts stay small whatever the values
    ids = ids.ravel()
    if values[0] != 0:  # every pixel labelled: no background among the ids
        values, ids = np.concatenate([[0], values]), ids + 1
    if len(values) <= 2:
        return
    parts, n = label(inst, background=0, connectivity=inst.ndim, return_num=True)  # same-id parts; diagonals connect
    parts = parts.ravel()
    id_of_part = np.zeros(n + 1, np.int64)
    id_of_part[parts] = ids  # every pixel of a part holds the part's id
    sizes = np.bincount(ids, minlength=len(values))
    sizes[0] = 0  # background
    largest = np.zeros(len(values), np.int64)
    np.maximum.at(largest, id_of_part[1:], np.bincount(parts, minlength=n + 1)[1:])
    if (sizes - largest).sum() >= SCATTERED_SHARE * sizes.sum():
        worst = int(np.argmax(sizes - largest))
        n_parts = int(np.count_nonzero(id_of_part[1:] == worst))
        raise UserInputError(f"label {values[worst]} is painted in {n_parts} separate parts: dense training needs "
                             "instance masks (one id per object, 0 = background), not strokes or a mask of classes; "
                             "train on strokes in sparse mode, or give each object its own id")


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
