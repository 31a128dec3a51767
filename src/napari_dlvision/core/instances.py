"""Foreground masks to instance labels: split touching objects.

Seeded watershed on the distance transform: each object's seeds are the
regional maxima of its (lightly smoothed) distance to the background that
stand at least `h` above their surroundings within the object, so two
touching round nuclei get two seeds while a single elongated one keeps one.

Memory stays flat in the image size: the work runs in strips along the first
axis, each holding whole objects (connected parts of the mask) plus the rows
the smoothing reads around them. Seeds are searched within each object (the
smoothed distance is set to zero outside the mask), so nothing reaches from
one object into another and no strip depends on the others: about 15 bytes
a pixel plus the strip's working memory, where one pass over the whole image
took about 120 (scikit-image's h_maxima alone 102). A strip needs only a
window of rows of the mask (split_in_strips), so a segmentation on disk is
split without ever being read whole.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .events import Progress

SIGMA = 1.0  # smoothing of the distance transform, in pixels
RADIUS = int(4.0 * SIGMA + 0.5)  # reach of scipy's Gaussian (truncate=4)
STRIP_PIXELS = 1 << 21  # pixels of a strip's own rows: ~250 MB of working memory


def instances_from_mask(mask: np.ndarray, spacing=None, h: float = 1.5, min_size: int = 8,
                        strip_pixels: int = STRIP_PIXELS) -> np.ndarray:
    """Instance ids (0 = background) for a boolean foreground mask."""
    mask = remove_small(np.asarray(mask, bool), min_size)
    out = np.zeros(mask.shape, np.int32)
    if mask.any():
        split_in_strips(lambda lo, hi: mask[lo:hi], out, spacing, h, min_size=1, strip_pixels=strip_pixels)
    return out


def split_in_strips(rows, out, spacing=None, h: float = 1.5, min_size: int = 8,
                    strip_pixels: int = STRIP_PIXELS, on_strip=None) -> int:
    """Instances of a mask read strip by strip, written into `out`; the object
    count. on_strip(rows done, rows in all) reports progress (iter_strips)."""
    strips = iter_strips(rows, out, spacing, h, min_size, strip_pixels)
    while True:
        try:
            ev = next(strips)
        except StopIteration as end:
            return end.value
        if on_strip is not None:
            on_strip(ev.done, ev.total)


def iter_strips(rows, out, spacing=None, h: float = 1.5, min_size: int = 8, strip_pixels: int = STRIP_PIXELS):
    """split_in_strips as a generator of Progress events (stage "instances",
    rows done of rows in all) after each strip, so a caller can report
    progress and stop between strips; returns the object count.

    rows(lo, hi): the boolean mask of rows lo..hi-1 (first axis), e.g. read
    from a segmentation store on disk; out: any array sliced by rows (numpy,
    a memory-mapped TIFF, Zarr) of the mask's shape, zero at first. Neither
    needs to fit in memory: each strip reads a window of rows, grown until
    the objects that begin in the strip end inside it (with `reach` rows of
    context below), so memory is that of the strip unless one object is
    taller. Parts smaller than min_size are dropped, as remove_small does
    over the whole mask (see _window).
    """
    shape = out.shape
    n_rows = shape[0]
    per_row = int(np.prod(shape[1:], dtype=np.int64))
    reach = _reach(spacing, len(shape))
    # At least `reach` rows a strip: a window reads `reach` rows of context on
    # each side, which for a volume of large planes (one or two planes a strip)
    # made it read and split every plane 10 times over; this costs at most a
    # quarter more memory there.
    step = max(reach, strip_pixels // max(1, per_row))
    full = np.ones((3,) * len(shape), bool)
    next_id = 0
    for start in range(0, n_rows, step):
        end = min(start + step, n_rows)
        lo, hi = max(start - reach, 0), min(end + reach, n_rows)
        while True:
            mask = _window(rows, lo, hi, n_rows, min_size)
            # Objects with their full connectivity, as scikit-image's h_maxima sees them.
            parts, n = ndi.label(mask, full)
            boxes = ndi.find_objects(parts)
            tops = np.array([b[0].start for b in boxes], int) + lo  # ascending: labels follow raster order
            first, last = np.searchsorted(tops, [start, end]) + 1  # the strip's objects: first..last-1
            own_ids = np.arange(first, last)
            bottoms = np.array([b[0].stop for b in boxes[first - 1:last - 1]], int) + lo
            if len(own_ids) and bottoms.max() + reach > hi and hi < n_rows:
                # A part that begins here and reaches below the window is either an
                # object of this strip (read further down) or a branch of an object
                # an earlier strip already wrote whole, joined further down (skipped:
                # growing for it read most of the image again for every strip).
                written = np.zeros(n + 1, bool)
                written[parts[np.asarray(out[lo:hi]) != 0]] = True
                keep = ~written[own_ids]
                own_ids, bottoms = own_ids[keep], bottoms[keep]
            if not len(own_ids) or bottoms.max() + reach <= hi or hi == n_rows:
                break
            hi = min(max(int(bottoms.max()) + reach, 2 * hi - lo), n_rows)
        if len(own_ids):
            stop = min(int(bottoms.max()) + reach, n_rows) - lo
            is_own = np.zeros(n + 1, bool)
            is_own[own_ids] = True
            own = is_own[parts[:stop]]
            labels = _split(mask[:stop], own, spacing, h)
            block = np.array(out[lo:lo + stop])
            block[own] = labels[own] + next_id
            out[lo:lo + stop] = block
            next_id += int(labels.max())
        yield Progress("instances", end, n_rows, "Splitting touching objects, strip by strip…")
    return next_id


def _window(rows, lo, hi, n_rows, min_size):
    """The mask of rows lo..hi-1 without parts smaller than min_size, decided
    exactly: read min_size - 1 rows further on both sides, a small part
    touching the window is seen whole (it spans fewer rows than it has
    pixels), and a part reaching that wider edge has min_size pixels or more
    in view (a connected part has a pixel in every row it spans)."""
    if min_size <= 1:
        return np.asarray(rows(lo, hi), bool)
    a, b = max(lo - (min_size - 1), 0), min(hi + min_size - 1, n_rows)
    wide = np.asarray(rows(a, b), bool)
    parts, _ = ndi.label(wide)  # remove_small's connectivity
    keep = np.bincount(parts.ravel()) >= min_size
    keep[0] = False
    return keep[parts[lo - a:hi - a]]


def _reach(spacing, ndim: int) -> int:
    """Rows beyond an object that its smoothed distance depends on.

    The smoothing reads distances up to RADIUS pixels away; a neighbour's
    pixel there has background within RADIUS pixels of it (between it and
    the object), at most RADIUS * (largest / first-axis spacing) rows away.
    """
    sp = np.ones(ndim) if spacing is None else np.broadcast_to(np.asarray(spacing, float), (ndim,))
    return RADIUS + int(np.ceil(RADIUS * sp.max() / sp[0]))


def _split(context: np.ndarray, own: np.ndarray, spacing, h: float) -> np.ndarray:
    """The seeded watershed of a strip's own objects: ids 1..n, 0 elsewhere.

    context: the mask over the strip, neighbours included, so that the
    smoothed distance is the one a pass over the whole image would give.
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    smooth = ndi.gaussian_filter(ndi.distance_transform_edt(context, sampling=spacing), SIGMA)
    seeds, _ = ndi.label(h_maxima(np.where(own, smooth, 0.0), h) & own)
    labels = watershed(-smooth, seeds, mask=own)
    # Objects too small to hold a seed of their own still count as objects.
    orphans, n = ndi.label(own & (labels == 0))
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
