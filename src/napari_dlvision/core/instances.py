"""Foreground masks to instance labels: split touching objects.

Seeded watershed on the distance transform: each object's seed is a
regional maximum of the (lightly smoothed) distance to the background that
stands at least `h` above its surroundings, so two touching round nuclei get
two seeds while a single elongated one keeps one.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def instances_from_mask(mask: np.ndarray, spacing=None, h: float = 1.5,
                        min_size: int = 8) -> np.ndarray:
    """Instance ids (0 = background) for a boolean foreground mask."""
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    mask = remove_small(np.asarray(mask, bool), min_size)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    dist = ndi.distance_transform_edt(mask, sampling=spacing)
    smooth = ndi.gaussian_filter(dist, 1.0)
    seeds, _ = ndi.label(h_maxima(smooth, h) & mask)
    labels = watershed(-smooth, seeds, mask=mask)
    # Objects too small to hold a seed of their own still count as objects.
    orphans, n = ndi.label(mask & (labels == 0))
    if n:
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    return labels.astype(np.int32)


def remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Mask without connected parts of fewer than min_size pixels."""
    if min_size <= 1 or not mask.any():
        return mask
    parts, _ = ndi.label(mask)
    sizes = np.bincount(parts.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[parts]


def instances_from_segmentation(seg: np.ndarray, foreground: int, spacing=None, **kw) -> np.ndarray:
    return instances_from_mask(np.asarray(seg) == foreground, spacing=spacing, **kw)


def instances_from_interior(p_background: np.ndarray, p_interior: np.ndarray, p_boundary: np.ndarray,
                            min_size: int = 8, threshold: float = 0.5) -> np.ndarray:
    """Instances from (background, interior, boundary) probabilities.

    Seeds are connected regions of interior probability > threshold, grown
    by watershed over the boundary probability inside the foreground: the
    pixels the segmentation (the most probable class) does not call
    background, so both outputs agree on what is an object.
    """
    from skimage.segmentation import watershed

    fg = remove_small(p_background < np.maximum(p_interior, p_boundary), min_size)
    if not fg.any():
        return np.zeros(fg.shape, np.int32)
    seeds, _ = ndi.label((p_interior > threshold) & fg)
    labels = watershed(p_boundary, seeds, mask=fg)
    # Foreground without any interior seed is still an object.
    orphans, n = ndi.label(fg & (labels == 0))
    if n:
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    if min_size > 1:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        if small.any():
            labels[small[labels]] = 0
    return labels.astype(np.int32)
