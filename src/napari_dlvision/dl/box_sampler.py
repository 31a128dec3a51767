"""Training patches for detectors: crops that move their boxes with the image.

Every detector trains on square patches cut from the annotated images. A
patch is a crop (around a box half of the time, anywhere otherwise), scaled
by a random factor, flipped, rotated by multiples of 90 degrees and changed
in intensity; its boxes follow every geometric step. Boxes the crop cuts
(less than `keep_fraction` of them inside) are returned as "ignore" boxes:
the network must not learn that half an object is a whole one, nor that it
is background. Images without boxes are valid negatives and are sampled
like any other area.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

BORDER_FRACTION = 0.25  # how far a training window may reach past the image's edge


@dataclass
class BoxAugmentation:
    flips: bool = True
    rot90: bool = True
    scale: float = 1.25  # zoom factor drawn log-uniformly from [1/scale, scale]; 1: off
    intensity: bool = True
    keep_fraction: float = 0.85  # a box cut by the crop stays a box when this much of it is inside


def background(image_cf: np.ndarray) -> np.ndarray:
    """Per-channel fill beyond an image's edge: its median, from a subsample."""
    flat = image_cf.reshape(image_cf.shape[0], -1)
    return np.median(flat[:, :: max(1, flat.shape[1] // 100_000)], axis=1).astype(np.float32)


def flip_boxes(boxes: np.ndarray, size: float, axis: int) -> np.ndarray:
    """Boxes (y0, x0, y1, x1) of a patch of edge `size` flipped along axis 0 (y) or 1 (x)."""
    b = boxes.copy()
    b[:, axis], b[:, axis + 2] = size - boxes[:, axis + 2], size - boxes[:, axis]
    return b


def rot90_boxes(boxes: np.ndarray, size: float, k: int) -> np.ndarray:
    """Boxes of a square patch rotated as np.rot90(patch, k, axes=(-2, -1)) rotates it."""
    b = boxes.copy()
    for _ in range(k % 4):
        # np.rot90 by one: the pixel at (y, x) goes to (size - 1 - x, y); in edge coordinates
        # the point (y, x) goes to (size - x, y).
        b = np.stack([size - b[:, 3], b[:, 0], size - b[:, 1], b[:, 2]], axis=1)
    return b


class BoxPatchSampler:
    """Random augmented patches with their boxes, classes and ignore boxes.

    `images`: channels-first float32 arrays (normalised); `tables`: per image
    (boxes (n, 4) float, classes (n,) int 1..K), boxes inside the image.
    """

    def __init__(self, images, tables, patch: int, augmentation: BoxAugmentation, object_fraction: float,
                 rng):
        self.images, self.patch, self.aug, self.rng = list(images), int(patch), augmentation, rng
        self.boxes = [np.asarray(b, np.float64).reshape(-1, 4) for b, _ in tables]
        self.classes = [np.asarray(c, np.int64).reshape(-1) for _, c in tables]
        self.object_fraction = object_fraction
        self.fill = [background(img) for img in self.images]
        n_boxes = np.array([len(b) for b in self.boxes], float)
        self.p_boxes = n_boxes / n_boxes.sum() if n_boxes.sum() else None
        areas = np.array([img.shape[1] * img.shape[2] for img in self.images], float)
        self.p_area = areas / areas.sum()

    def _window(self, i: int, size: float, around_box: bool) -> np.ndarray:
        """Top-left corner (edge coordinates) of a crop window of edge `size` in image i."""
        h, w = self.images[i].shape[1:]
        lo = []
        if around_box and len(self.boxes[i]):
            b = self.boxes[i][self.rng.integers(len(self.boxes[i]))]
            for a, (b0, b1), n in zip((0, 1), ((b[0], b[2]), (b[1], b[3])), (h, w)):
                # The box lands anywhere inside the window when it fits, else the window sits on it.
                first, last = b1 - size, b0
                lo.append(self.rng.uniform(min(first, last), max(first, last)))
        else:
            lo = [self.rng.uniform(0, n - size) if n > size else -self.rng.uniform(0, size - n) for n in (h, w)]
        # Windows may reach past the image by a quarter of their size (filled with background),
        # so objects cut by the image's edge are seen often, with the edge where prediction
        # puts it (Detector pads images by the same fill); smaller images sit inside the window.
        m = BORDER_FRACTION * size
        out = []
        for v, n in zip(lo, (h, w)):
            out.append(min(max(v, -m), n - size + m) if n >= size else min(max(v, n - size - m), m))
        return np.array(out)

    def sample_one(self):
        rng, aug, p = self.rng, self.aug, self.patch
        around = self.p_boxes is not None and rng.random() < self.object_fraction
        i = int(rng.choice(len(self.images), p=self.p_boxes if around else self.p_area))
        s = math.exp(rng.uniform(-math.log(aug.scale), math.log(aug.scale))) if aug.scale > 1 else 1.0
        size = p / s
        origin = self._window(i, size, around)
        if s == 1.0:
            origin = np.round(origin)  # a plain crop: no interpolation blurs the patch
        img = self.images[i]
        if s == 1.0 and np.all(origin == np.round(origin)) and np.all(origin >= 0) \
                and origin[0] + p <= img.shape[1] and origin[1] + p <= img.shape[2]:
            y, x = int(origin[0]), int(origin[1])
            x_patch = np.ascontiguousarray(img[:, y:y + p, x:x + p])
        else:
            offset = origin + 0.5 / s - 0.5  # output pixel centre -> input pixel coordinate
            x_patch = np.stack([
                ndi.affine_transform(ch, [1 / s, 1 / s], offset=offset, output_shape=(p, p), order=1,
                                     mode="constant", cval=float(f), prefilter=False)
                for ch, f in zip(img, self.fill[i])])
        boxes = (self.boxes[i] - np.r_[origin, origin]) * s
        classes = self.classes[i]
        clipped = np.clip(boxes, 0, p)
        area = np.prod(np.maximum(boxes[:, 2:] - boxes[:, :2], 1e-9), axis=1)
        inside = np.prod(np.maximum(clipped[:, 2:] - clipped[:, :2], 0), axis=1) / area
        keep = inside >= aug.keep_fraction
        cut = (inside > 0) & ~keep
        boxes, ignore, classes = clipped[keep], clipped[cut], classes[keep]
        if aug.flips:
            for axis in (0, 1):
                if rng.random() < 0.5:
                    x_patch = np.flip(x_patch, axis + 1)
                    boxes, ignore = flip_boxes(boxes, p, axis), flip_boxes(ignore, p, axis)
        if aug.rot90:
            k = int(rng.integers(4))
            if k:
                x_patch = np.rot90(x_patch, k, axes=(-2, -1))
                boxes, ignore = rot90_boxes(boxes, p, k), rot90_boxes(ignore, p, k)
        x_patch = np.ascontiguousarray(x_patch, np.float32)
        if aug.intensity:
            c = x_patch.shape[0]
            x_patch = x_patch * rng.uniform(0.75, 1.25, (c, 1, 1)).astype(np.float32) \
                + rng.uniform(-0.15, 0.15, (c, 1, 1)).astype(np.float32)
        # Boxes thinner than a tenth of a pixel after clipping carry no object.
        ok = np.all(boxes[:, 2:] - boxes[:, :2] > 0.1, axis=1)
        return x_patch, boxes[ok].astype(np.float32), classes[ok], ignore.astype(np.float32)

    def sample(self, n: int):
        """(x (n, C, P, P) float32, [(boxes (k, 4), classes (k,), ignore (m, 4))] * n)."""
        xs, targets = [], []
        for _ in range(n):
            x, b, c, ign = self.sample_one()
            xs.append(x)
            targets.append((b, c, ign))
        return np.stack(xs), targets
