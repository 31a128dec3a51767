"""Tiles with halos: exact, memory-bounded features and prediction.

An image is cut into tiles; each tile's features are computed on the tile
grown by the feature bank's halo, so inside the tile they equal the
whole-image features exactly (image borders see the same boundary handling
either way). `FeatureTiles` keeps recently used tile features in a bounded
cache: live retraining after a stroke reuses them instead of filtering again.
Without a cache one buffer is reused for every tile, so memory stays flat
however large the image.

Features are stored feature-major, (F, *outer box): a band of whole rows of
a tile is then a (F, pixels) view that the forest reads without a copy.
Training without a cache computes features only in small boxes around the
painted pixels, not over whole tiles.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict

import numpy as np

from .errors import UserInputError
from .features import FeatureSpec, compute_features_cf

FEATURE_TILE_BYTES = 128 << 20  # feature memory of one tile, halo included: flat memory; larger is not faster
CACHE_BYTES = 3 << 30  # default budget of cached tile features
BLOCK_PIXELS = 1 << 17  # pixels per prediction band
# Training without a cache: painted pixels are gathered per cell of this grid,
# features computed on the bounding box of the cell's labels plus the halo.
TRAINING_CELL = {2: 256, 3: 64}


def grid(shape, tile_shape) -> list[tuple[slice, ...]]:
    """Non-overlapping tiles covering `shape`, in C order."""
    ranges = [range(0, n, t) for n, t in zip(shape, tile_shape)]
    return [
        tuple(slice(o, min(o + t, n)) for o, t, n in zip(origin, tile_shape, shape))
        for origin in itertools.product(*ranges)
    ]


def grow(core: tuple[slice, ...], halo, shape):
    """(outer slices clipped to the image, core position inside the outer box)."""
    outer = tuple(
        slice(max(0, s.start - h), min(n, s.stop + h)) for s, h, n in zip(core, halo, shape)
    )
    inner = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(core, outer))
    return outer, inner


def volume(box) -> int:
    return math.prod(s.stop - s.start for s in box)


def tile_shape_for(shape, n_features: int, halo, budget=FEATURE_TILE_BYTES) -> tuple[int, ...]:
    """Largest cubic-ish tile whose features (with halo) fit in `budget`."""
    ndim = len(shape)
    voxels = budget / (4 * max(1, n_features))
    edge = int(voxels ** (1 / ndim)) - 2 * max(halo)
    edge = max(edge, 32)
    return tuple(min(n, edge) for n in shape)


def bands_in(core: tuple[slice, ...], pixels: int = BLOCK_PIXELS) -> list[tuple[slice, ...]]:
    """Slabs of whole rows (2D) or planes (3D) of `core`, about `pixels` each."""
    row = max(1, volume(core[1:]))
    step = max(1, pixels // row)
    first = core[0]
    return [(slice(a, min(a + step, first.stop)),) + core[1:] for a in range(first.start, first.stop, step)]


def label_boxes(labels: np.ndarray, cell: int) -> list[tuple[slice, ...]]:
    """Bounding boxes of the labelled pixels of each grid cell that has any."""
    boxes = []
    for core in grid(labels.shape, [cell] * labels.ndim):
        lab = labels[core]
        if not lab.any():
            continue
        box = []
        for axis, s in enumerate(core):
            hit = np.flatnonzero(lab.any(axis=tuple(a for a in range(lab.ndim) if a != axis)))
            box.append(slice(s.start + int(hit[0]), s.start + int(hit[-1]) + 1))
        boxes.append(tuple(box))
    return boxes


class FeatureTiles:
    """Per-tile feature stacks of one image, computed on demand and cached.

    `image_cf` is (C, *spatial) of any real dtype, an ndarray or anything
    sliced like one (a memory map); tiles are converted to float32 one by one.
    """

    def __init__(self, image_cf, spec: FeatureSpec, spacing=None,
                 tile_shape=None, cache_bytes: int = CACHE_BYTES):
        self.image = image_cf
        self.spec, self.spacing = spec, spacing
        self.shape = tuple(image_cf.shape[1:])
        self.ndim = len(self.shape)
        self.n_features = spec.n_features(image_cf.shape[0], self.ndim)
        self.halo = spec.halo(spacing, self.ndim)
        self.tile_shape = tuple(tile_shape or tile_shape_for(self.shape, self.n_features, self.halo))
        self.tiles = grid(self.shape, self.tile_shape)
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._buffer = None  # reused feature memory when nothing is cached
        self._in_buffer = None  # (tile index, features, inner) held in it

    def box_features(self, box, reuse: bool = False):
        """(features (F, *outer), inner slices) of a box of the image, exact."""
        outer, inner = grow(box, self.halo, self.shape)
        img = np.asarray(self.image[(slice(None),) + outer], dtype=np.float32)
        out = None
        if reuse:
            n = self.n_features * volume(outer)
            if self._buffer is None or self._buffer.size < n:
                self._buffer = None  # free the old one before allocating
                biggest = max(volume(grow(t, self.halo, self.shape)[0]) for t in self.tiles)
                self._buffer = np.empty(max(n, self.n_features * biggest), np.float32)
            out = self._buffer[:n].reshape((self.n_features,) + img.shape[1:])
        return compute_features_cf(img, self.spec, self.spacing, out=out), inner

    def outer_features(self, index: int):
        """(features (F, *outer box), core slices within it) of tile `index`.

        Without a cache the array is a reused buffer, valid until the next call.
        """
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index], grow(self.tiles[index], self.halo, self.shape)[1]
        if self._in_buffer is not None and self._in_buffer[0] == index:
            return self._in_buffer[1:]
        reuse = self.cache_bytes <= 0
        self._in_buffer = None
        feats, inner = self.box_features(self.tiles[index], reuse=reuse)
        if reuse:  # kept while prediction walks the tile's bands
            self._in_buffer = (index, feats, inner)
        else:
            self._cache[index] = feats
            # Always keep the latest tile: prediction walks its bands one by one.
            while len(self._cache) > 1 and sum(a.nbytes for a in self._cache.values()) > self.cache_bytes:
                self._cache.popitem(last=False)
        return feats, inner

    def features(self, index: int) -> np.ndarray:
        """Features (*tile, F) of tile `index`, exact as if computed whole (a view)."""
        feats, inner = self.outer_features(index)
        return np.moveaxis(feats[(slice(None),) + inner], 0, -1)

    def _check_labels(self, labels):
        labels = np.asarray(labels)
        if labels.shape != self.shape:
            raise UserInputError(
                f"labels have shape {labels.shape} but the image has {self.shape}"
            )
        return labels

    def iter_training_data(self, labels: np.ndarray):
        """Yield (parts done, parts total, X, y) for each part of the image holding labels.

        X (N, F) are features of labelled pixels, y (N,) their label ids. With
        a cache the parts are whole tiles, kept for the prediction that
        follows; without one, small boxes around the labels.
        """
        labels = self._check_labels(labels)
        if self.cache_bytes > 0:
            parts = [(core, i) for i, core in enumerate(self.tiles) if labels[core].any()]
        else:
            parts = [(box, None) for box in label_boxes(labels, TRAINING_CELL.get(self.ndim, 64))]
        for n, (box, index) in enumerate(parts, 1):
            if index is None:
                self._in_buffer = None
                feats, inner = self.box_features(box, reuse=True)
            else:
                feats, inner = self.outer_features(index)
            lab = labels[box]
            where = np.nonzero(lab > 0)
            # Index only the labelled pixels: a boolean mask would read every
            # feature of the whole tile.
            X = feats[(slice(None),) + tuple(w + s.start for w, s in zip(where, inner))].T
            yield n, len(parts), np.ascontiguousarray(X), lab[where].astype(np.int64)

    def training_data(self, labels: np.ndarray):
        """(X, y) of every labelled pixel; y holds label ids 1..K."""
        parts = [(x, y) for _, _, x, y in self.iter_training_data(labels)]
        if not parts:
            return np.zeros((0, self.n_features), np.float32), np.zeros(0, np.int64)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def bands(self, focus=None):
        """(tile index, band slices) pairs covering the image, `focus` first.

        A band is whole rows (2D) or planes (3D) of one tile. `focus` is a box
        (tuple of (start, stop) per axis) or None.
        """
        pairs = [(i, b) for i, core in enumerate(self.tiles) for b in bands_in(core)]
        if focus is None:
            return pairs
        centre = [(a + b) / 2 for a, b in focus]

        def key(pair):
            b = pair[1]
            visible = all(s.start < hi and s.stop > lo for s, (lo, hi) in zip(b, focus))
            dist = math.dist([(s.start + s.stop) / 2 for s in b], centre)
            # Visible bands first, centre outwards; the rest tile by tile,
            # which keeps the feature cache warm.
            return (0, dist, 0) if visible else (1, pair[0], dist)

        return sorted(pairs, key=key)

    # the name older callers used
    blocks = bands
