"""Boxes to pixel labels and objects back to boxes: the "forest" detector's two halves.

A box says where an object is, not which of its pixels belong to it. Two
kinds of pixels are nevertheless certain enough to learn from: those outside
every box (grown by a pixel) but within the boxes' bounding rectangle (what
was annotated) are background, and the central part of a box
(an ellipse of half its height and width, at least its centre pixel) is its
object. `strokes_from_boxes` paints those two kinds as strokes, and the
pixel classifier (the Pixel classifier dock's filter bank and random
forest) learns every pixel from them. `boxes_of_objects` splits its
foreground into objects the way the pixel classifier's instances are split
(core.instances) and gives each object the box around it, scored by its
mean probability. Where an object's edge lies and how deep touching objects
are split are chosen on the training boxes (`choose_settings`).

Objects smaller than any box drawn are found too (on blobs, specks of 1-4
pixels that centernet, a network trained on the boxes, misses), and
training takes seconds.
It needs background around the objects: where every pixel lies in some box
(densely packed cells) there is nothing to learn background from.
"""

from __future__ import annotations

import numpy as np

from .boxes import BoxTable
from .errors import UserInputError
from .events import Progress

CORE = 0.5  # the central part of a box taken as its object: half its height and width
BACKGROUND_PER_OBJECT_PIXEL = 16  # background pixels kept per object pixel (the rest unlabelled)
MIN_BACKGROUND = 20_000
SPLITS = (0.1, 0.25, 0.5, 1.0, 1.5, 2.5)  # depths tried for splitting touching objects (core.instances' h)
DEFAULT_SPLIT = 1.5  # the pixel classifier's own
LEVELS = (0.2, 0.3, 0.5, 0.7, 0.85)  # a pixel is object where its probability of background is below it
DEFAULT_LEVEL = 0.5
TUNE_PIXELS = 1 << 20  # training pixels the level and split are tuned on (30 pairs, each splits them all)


def strokes_from_boxes(shape, boxes: np.ndarray, classes: np.ndarray, rng=None, sample: bool = True) -> np.ndarray:
    """Labels (0 unlabelled, 1 background, 1 + c for class c) of a plane of `shape` with these boxes.

    boxes: (N, 4) y0, x0, y1, x1 in pixel edges (y1, x1 exclusive). Background
    is sampled (at most BACKGROUND_PER_OBJECT_PIXEL per object pixel) so that
    a few boxes on a large image train in seconds, not on millions of pixels
    (sample=False: every background pixel).
    """
    from scipy import ndimage as ndi

    h, w = shape
    labels = np.zeros(shape, np.uint8)
    inside = np.zeros(shape, bool)
    cores = []
    for b, c in zip(np.asarray(boxes, float).reshape(-1, 4), classes):
        y0, x0 = max(int(np.floor(b[0])), 0), max(int(np.floor(b[1])), 0)
        y1, x1 = min(int(np.ceil(b[2])), h), min(int(np.ceil(b[3])), w)
        if y1 <= y0 or x1 <= x0:
            continue
        inside[y0:y1, x0:x1] = True
        cy, cx = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        ry, rx = max((b[2] - b[0]) / 2 * CORE, 0.5), max((b[3] - b[1]) / 2 * CORE, 0.5)
        yy = (np.arange(y0, y1) + 0.5 - cy)[:, None] / ry
        xx = (np.arange(x0, x1) + 0.5 - cx)[None, :] / rx
        core = yy**2 + xx**2 <= 1
        if not core.any():  # a box of a pixel or two: its centre pixel
            core[min(int(cy) - y0, y1 - y0 - 1), min(int(cx) - x0, x1 - x0 - 1)] = True
        cores.append((slice(y0, y1), slice(x0, x1), core, 1 + int(c)))
    # Background only within the boxes' bounding rectangle: the part of the plane the person annotated.
    # Objects elsewhere may simply not be boxed yet (boxes drawn on the top half, the rest to predict).
    background = np.ones(shape, bool) if not cores else _bounding_rectangle(inside)  # no cores: a negative plane
    background &= ~ndi.binary_dilation(inside, iterations=1)
    n_object = sum(int(core.sum()) for _, _, core, _ in cores)
    ys, xs = np.nonzero(background)
    cap = int(max(BACKGROUND_PER_OBJECT_PIXEL * n_object, MIN_BACKGROUND))
    if sample and len(ys) > cap:
        pick = (rng or np.random.default_rng(0)).choice(len(ys), cap, replace=False)
        ys, xs = ys[pick], xs[pick]
    labels[ys, xs] = 1
    cores.sort(key=lambda part: -part[2].size)  # smaller boxes last: they keep their core where boxes overlap
    for rows, cols, core, label in cores:
        labels[rows, cols][core] = label
    return labels


MIN_BACKGROUND_FRACTION = 0.2  # of the annotated rectangles, for "auto" to choose the forest


def choose_arch(labels: list[np.ndarray], n_classes: int) -> tuple[str, str]:
    """("forest" or "centernet", why) for the "auto" detector, from strokes_from_boxes(..., sample=False).

    The forest where one class of objects lies apart with background
    between them (bench: blobs, nuclei, 3D planes; it trains in seconds);
    centernet for densely packed objects, which leave the forest nothing
    to learn background from (maize cells), and for several classes, which
    the forest tells apart by pixel filters alone.
    """
    annotated = sum(_bounding_rectangle(lab > 0).sum() for lab in labels)
    unboxed = sum(int((lab == 1).sum()) for lab in labels)
    fraction = unboxed / max(int(annotated), 1)
    if n_classes > 1:
        return "centernet", f"auto chose centernet ({n_classes} classes)"
    if fraction < MIN_BACKGROUND_FRACTION:
        return "centernet", f"auto chose centernet (objects packed: {fraction:.0%} of the boxed area lies between boxes)"
    return "forest", f"auto chose forest (objects apart: {fraction:.0%} of the boxed area lies between boxes)"


def _bounding_rectangle(mask: np.ndarray) -> np.ndarray:
    """True on the bounding rectangle of a plane's True pixels (the part a person annotated)."""
    out = np.zeros(mask.shape, bool)
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if len(rows):
        out[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
    return out


def check_background(labels: list[np.ndarray]):
    if not any((lab == 1).any() for lab in labels):
        raise UserInputError("every pixel lies inside a box, so the forest detector has no background to learn "
                             "from; choose centernet for densely packed objects")


def boxes_of_objects(prob: np.ndarray, split: float = DEFAULT_SPLIT, level: float = DEFAULT_LEVEL):
    """(boxes (n, 4), scores (n,), classes (n,) 1..K) of the objects in a plane's probabilities.

    prob: (K + 1, H, W), background first (the pixel classifier's output on
    strokes_from_boxes labels). A pixel is object where its probability of
    background is below `level`; touching objects are split at depth `split`; each
    object takes the class of most probability over its pixels and the box
    around it; its score is its pixels' mean probability of not being background.
    """
    from scipy import ndimage as ndi

    from .instances import instances_from_mask

    objects = 1.0 - prob[0]
    mask = prob[0] < level
    inst = instances_from_mask(mask, h=split, min_size=1)
    n = int(inst.max())
    if n == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    index = np.arange(1, n + 1)
    scores = np.asarray(ndi.mean(objects, inst, index), np.float32)
    sums = np.stack([ndi.sum(p, inst, index) for p in prob[1:]])
    classes = (np.argmax(sums, axis=0) + 1).astype(np.int64)
    boxes = np.zeros((n, 4), np.float32)
    for i, sl in enumerate(ndi.find_objects(inst)):
        if sl is not None:
            boxes[i] = (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
    return boxes, scores, classes


def choose_settings(probs: list[np.ndarray], targets, evaluate) -> dict:
    """The edge level and split depth whose boxes best find the training boxes.

    The ring of a box around its central part is never labelled, so where
    the forest puts an object's edge is calibrated here, with how deep
    touching objects are split, as a person would tune both by eye. probs:
    each training plane's probabilities; targets: their (boxes, classes);
    evaluate(each plane's boxes_of_objects, their targets) -> (mAP@0.5,
    mAP@0.5:0.95). Every pair is tried on at most TUNE_PIXELS of the planes;
    a Progress event follows each, and the chosen pair is returned.
    mAP@0.5 decides, ties going to the level, then the split, nearest the
    defaults: ranking ties by mAP@0.5:0.95 chose, on blobs, edges that
    fitted the training half and missed the other half's specks.
    """
    probs, targets = _tuning_set(probs, targets)
    scored, pairs = [], [(level, split) for level in LEVELS for split in SPLITS]
    for i, (level, split) in enumerate(pairs):
        m50, _ = evaluate([boxes_of_objects(p, split, level) for p in probs], targets)
        scored.append((round(m50, 3), -abs(level - DEFAULT_LEVEL), -abs(split - DEFAULT_SPLIT), level, split))
        # A generator: a Stop acts between pairs. A line for each level tried, not for each pair.
        message = None if (i + 1) % len(SPLITS) else \
            f"choosing where objects end and how touching ones are split ({i + 1} of {len(pairs)} tried)…"
        yield Progress("tuning", i + 1, len(pairs), message)
    level, split = max(scored)[-2:]
    return {"level": level, "split": split}


def _tuning_set(probs, targets):
    """Planes (or a window of a large one) of at most TUNE_PIXELS, with the boxes wholly inside them."""
    out_p, out_t, pixels = [], [], 0
    for prob, (boxes, classes) in zip(probs, targets):
        h, w = prob.shape[1:]
        if pixels and pixels + h * w > TUNE_PIXELS:
            break
        side = int(np.sqrt(TUNE_PIXELS))
        if h * w > TUNE_PIXELS:  # a window where the boxes are, whole boxes only
            cy, cx = np.median((boxes[:, 0] + boxes[:, 2]) / 2), np.median((boxes[:, 1] + boxes[:, 3]) / 2)
            y0 = int(min(max(cy - side // 2, 0), max(h - side, 0)))
            x0 = int(min(max(cx - side // 2, 0), max(w - side, 0)))
            prob = prob[:, y0:y0 + side, x0:x0 + side]
            inside = (boxes[:, 0] >= y0) & (boxes[:, 1] >= x0) & (boxes[:, 2] <= y0 + prob.shape[1]) \
                & (boxes[:, 3] <= x0 + prob.shape[2])
            boxes, classes = boxes[inside] - np.array([y0, x0, y0, x0]), classes[inside]
        out_p.append(prob)
        out_t.append((boxes, classes))
        pixels += prob.shape[1] * prob.shape[2]
    return out_p, out_t


UNBOXED_LEVEL = 0.5  # an object nobody boxed: where the first forest's probability of background is below this
UNBOXED_MIN_AREA = 0.1  # of the median box's area: smaller spots are not taken for objects


def unboxed_background(labels: np.ndarray, prob: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels without the background taught where the forest finds objects nobody boxed; their number.

    Background is every pixel outside the boxes within their bounding
    rectangle, so an object the person left unboxed there (one cut by the
    edge of the part they boxed, one overlooked) is taught as background; the
    forest then shrinks every object to its core and scatters specks on the
    rims. The first forest still finds such objects (their cores): each one
    outside every box and at least UNBOXED_MIN_AREA of a typical box, with a
    ring of half a typical box around it, is left unlabelled, and the forest
    is fitted again. Measured on blobs, 30 boxes on the top half, the blobs
    cut by its edge left unboxed: 130 boxes found (60 specks of a pixel or
    two), F1 0.63 -> 66 boxes, F1 0.95. Spots smaller than that are left
    alone: the out-of-focus parts of nuclei that StarDist's truth leaves
    unboxed are background there.
    """
    from scipy import ndimage as ndi

    if not len(boxes):
        return labels, 0
    boxed = np.zeros(labels.shape, bool)
    for y0, x0, y1, x1 in np.asarray(boxes).reshape(-1, 4):
        boxed[int(max(y0, 0)):int(np.ceil(y1)), int(max(x0, 0)):int(np.ceil(x1))] = True
    found, n = ndi.label(prob[0] < UNBOXED_LEVEL)
    if n == 0:
        return labels, 0
    touches_a_box = np.zeros(n + 1, bool)
    touches_a_box[np.unique(found[boxed])] = True
    taught_background = np.zeros(n + 1, bool)
    taught_background[np.unique(found[labels == 1])] = True
    sides = np.asarray(boxes)[:, 2:] - np.asarray(boxes)[:, :2]
    big_enough = np.bincount(found.ravel(), minlength=n + 1) >= UNBOXED_MIN_AREA * np.median(sides.prod(1))
    unboxed = ~touches_a_box & taught_background & big_enough
    unboxed[0] = False
    if not unboxed.any():
        return labels, 0
    ring = max(1, int(round(np.median(sides) / 2)))
    near = ndi.binary_dilation(unboxed[found], iterations=ring)
    out = labels.copy()
    out[near & (labels == 1)] = 0
    return out, int(unboxed.sum())


def table_of(found, class_names, stack: bool) -> BoxTable:
    """A BoxTable of each plane's (boxes, scores, classes), with plane indices if `stack`."""
    return BoxTable(np.concatenate([f[0] for f in found]), np.concatenate([f[2] for f in found]), list(class_names),
                    np.concatenate([f[1] for f in found]),
                    np.concatenate([np.full(len(f[1]), i) for i, f in enumerate(found)]) if stack else None)
