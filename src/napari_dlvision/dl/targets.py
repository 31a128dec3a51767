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


SCATTERED_PARTS = 3  # an object id in this many separate parts or more is no object


def check_instance_mask(inst: np.ndarray) -> None:
    """Refuse strokes or a class mask given as instance masks.

    Both hold a few ids, each scattered over many separate parts; read as
    instances, each id became one huge object and the network learned
    boundaries that are not there, without a word. Objects that a crop or a
    neighbour cut into two parts still pass: the ids in SCATTERED_PARTS parts
    or more must hold at least half of the labelled pixels to be refused.
    """
    from skimage.measure import label

    if not inst.any():
        return
    ids = inst.ravel()
    parts, n = label(inst, background=0, connectivity=inst.ndim, return_num=True)  # same-id parts; diagonals connect
    id_of_part = np.zeros(n + 1, ids.dtype)
    id_of_part[parts.ravel()] = ids  # every pixel of a part holds the part's id
    sizes = np.bincount(ids)
    sizes[0] = 0  # background
    n_parts = np.bincount(id_of_part[1:], minlength=len(sizes))
    scattered = n_parts >= SCATTERED_PARTS
    if sizes[scattered].sum() * 2 >= sizes.sum():
        worst = int(np.argmax(n_parts))
        raise UserInputError(f"label {worst} is painted in {int(n_parts[worst])} separate parts: dense training "
                             "needs instance masks (one id per object, 0 = background), not strokes or a mask of "
                             "classes; train on strokes in sparse mode, or give each object its own id")


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
