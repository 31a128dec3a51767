"""Label conventions shared by every model kind: 0 = unlabelled, 1..K = classes."""

from __future__ import annotations

import numpy as np

from .errors import UserInputError

MAX_CLASSES = 64  # more is almost surely an instance mask picked by mistake


def as_label_array(labels, name: str = "labels") -> np.ndarray:
    """Integer labels, refusing fractions, NaNs and negative ids."""
    lab = np.asarray(labels)
    if lab.dtype == bool:
        return lab.astype(np.uint8)
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise UserInputError(f"{name} must be whole numbers (0 = unlabelled, 1..K = classes)")
        if lab.size and (lab.max() > np.iinfo(np.int64).max or lab.min() < 0):
            raise UserInputError(f"{name} hold ids out of range")
        lab = lab.astype(np.int64)
    if lab.dtype.kind not in "iu":
        raise UserInputError(f"{name} must be integers, got dtype {lab.dtype}")
    if lab.size and lab.min() < 0:
        raise UserInputError(f"{name} must not be negative (0 = unlabelled, 1..K = classes)")
    return lab


INSTANCE_LIKE_IDS, INSTANCE_LIKE_COVER = 16, 0.05


def as_strokes(labels, name: str = "labels") -> np.ndarray:
    """as_label_array, refusing an instance mask given as strokes.

    Above MAX_CLASSES ids check_classes says so; below it, an instance mask
    (blobs' 64 objects, say) trained as that many classes without a word.
    Strokes use a few ids painted thinly; more than INSTANCE_LIKE_IDS ids
    covering INSTANCE_LIKE_COVER of the pixels or more are objects.
    """
    lab = as_label_array(labels, name)
    if lab.size and lab.max() > INSTANCE_LIKE_IDS:
        painted = lab[lab > 0]
        n_ids, cover = len(np.unique(painted)), painted.size / lab.size
        if n_ids > INSTANCE_LIKE_IDS and cover >= INSTANCE_LIKE_COVER:
            raise UserInputError(
                f"the {name} hold {n_ids} ids covering {cover:.0%} of the image: is this an instance mask? "
                "Strokes use a few class ids (1..K), painted where each class is; a U-Net trains on "
                "instance masks in dense mode")
    return lab


def check_classes(present, n_named: int = 0) -> int:
    """Number of classes K for painted ids `present` (sorted, without 0).

    Raises the message a painter needs: nothing painted, only one class, or
    ids so high the layer is probably an instance mask.
    """
    present = [int(p) for p in present if p > 0]
    if not present:
        raise UserInputError("nothing is painted: paint some pixels of each class first")
    if len(present) < 2:
        raise UserInputError(f"only class {present[0]} is painted: paint at least two classes")
    n_classes = max(max(present), n_named)
    if n_classes > MAX_CLASSES:
        raise UserInputError(
            f"the labels use class ids up to {n_classes}: is this an instance mask? "
            f"Paint strokes with a few classes (at most {MAX_CLASSES})"
        )
    return n_classes


def class_names_for(names, n_classes: int) -> list[str]:
    """`names` cut or extended with "class k" to exactly n_classes entries."""
    names = [str(n) for n in (names or [])]
    names += [f"class {k}" for k in range(len(names) + 1, n_classes + 1)]
    return names[:n_classes]
