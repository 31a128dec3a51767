"""Tiles with halos: exact, memory-bounded features and prediction.

An image is cut into tiles; each tile's features are computed on the tile
grown by the feature bank's halo and cropped back, so they equal the
whole-image features exactly (image borders see the same boundary handling
either way). `FeatureTiles` keeps recently used tile features in a bounded
cache: live retraining after a stroke reuses them instead of filtering again.
Prediction walks small blocks inside the tiles, nearest the region the user
looks at first.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict

import numpy as np

from .errors import UserInputError
from .features import FeatureSpec, compute_features_cf

FEATURE_TILE_BYTES = 256 << 20  # feature memory of one tile, halo included; larger is not faster
CACHE_BYTES = 3 << 30  # default budget of cached tile features
BLOCK_PIXELS = 1 << 17  # pixels per prediction block


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


def tile_shape_for(shape, n_features: int, halo, budget=FEATURE_TILE_BYTES) -> tuple[int, ...]:
    """Largest cubic-ish tile whose features (with halo) fit in `budget`."""
    ndim = len(shape)
    voxels = budget / (4 * max(1, n_features))
    edge = int(voxels ** (1 / ndim)) - 2 * max(halo)
    edge = max(edge, 32)
    return tuple(min(n, edge) for n in shape)


def blocks_in(core: tuple[slice, ...], block_edge: int) -> list[tuple[slice, ...]]:
    rel = grid([s.stop - s.start for s in core], [block_edge] * len(core))
    return [tuple(slice(c.start + r.start, c.start + r.stop) for c, r in zip(core, b)) for b in rel]


class FeatureTiles:
    """Per-tile feature stacks of one image, computed on demand and cached."""

    def __init__(self, image_cf: np.ndarray, spec: FeatureSpec, spacing=None,
                 tile_shape=None, cache_bytes: int = CACHE_BYTES):
        self.image = image_cf
        self.spec, self.spacing = spec, spacing
        self.shape = image_cf.shape[1:]
        self.ndim = len(self.shape)
        self.n_features = spec.n_features(image_cf.shape[0], self.ndim)
        self.halo = spec.halo(spacing, self.ndim)
        self.tile_shape = tuple(tile_shape or tile_shape_for(self.shape, self.n_features, self.halo))
        self.tiles = grid(self.shape, self.tile_shape)
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def features(self, index: int) -> np.ndarray:
        """Features (*tile, F) of tile `index`, exact as if computed whole.

        Pixel-major layout: a block of pixels is then a cheap row copy that
        the forest reads directly, and labelled pixels index out as (N, F).
        """
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        outer, inner = grow(self.tiles[index], self.halo, self.shape)
        feats = compute_features_cf(self.image[(slice(None),) + outer], self.spec, self.spacing)
        feats = np.ascontiguousarray(np.moveaxis(feats[(slice(None),) + inner], 0, -1))
        # Always keep the latest tile: prediction walks its blocks one by one.
        self._cache[index] = feats
        while len(self._cache) > 1 and sum(a.nbytes for a in self._cache.values()) > self.cache_bytes:
            self._cache.popitem(last=False)
        return feats

    def iter_training_data(self, labels: np.ndarray):
        """Yield (tiles done, tiles total, X, y) for each tile holding labels.

        X (N, F) are features of labelled pixels, y (N,) their label ids.
        """
        labels = np.asarray(labels)
        if labels.shape != self.shape:
            raise UserInputError(
                f"labels have shape {labels.shape} but the image has {self.shape}"
            )
        todo = [(i, core) for i, core in enumerate(self.tiles) if labels[core].any()]
        for n, (i, core) in enumerate(todo, 1):
            lab = labels[core]
            mask = lab > 0
            yield n, len(todo), self.features(i)[mask], lab[mask].astype(np.int64)

    def training_data(self, labels: np.ndarray):
        """(X, y) of every labelled pixel; y holds label ids 1..K."""
        parts = [(x, y) for _, _, x, y in self.iter_training_data(labels)]
        if not parts:
            return np.zeros((0, self.n_features), np.float32), np.zeros(0, np.int64)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def blocks(self, focus=None):
        """(tile index, block slices) pairs, blocks nearest `focus` first.

        `focus` is a box (tuple of (start, stop) per axis) or None.
        """
        edge = max(16, int(round(BLOCK_PIXELS ** (1 / self.ndim))))
        pairs = [(i, b) for i, core in enumerate(self.tiles) for b in blocks_in(core, edge)]
        if focus is None:
            return pairs
        centre = [(a + b) / 2 for a, b in focus]

        def key(pair):
            b = pair[1]
            visible = all(s.start < hi and s.stop > lo for s, (lo, hi) in zip(b, focus))
            dist = math.dist([(s.start + s.stop) / 2 for s in b], centre)
            # Visible blocks first, centre outwards; the rest tile by tile,
            # which keeps the feature cache warm.
            return (0, dist, 0) if visible else (1, pair[0], dist)

        return sorted(pairs, key=key)
