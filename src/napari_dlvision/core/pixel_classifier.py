"""The random-forest pixel classifier: features + forest + model file.

Label convention everywhere: 0 = unlabelled, 1..K = classes. Probability
channel k belongs to class k + 1, and the segmentation holds class ids.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import modelfile
from .errors import ModelFileError, UserInputError
from .features import FeatureSpec, as_channels_first
from .forest import TreeEnsemble, fit_forest
from .instances import instances_from_segmentation
from .tiling import CACHE_BYTES, FeatureTiles

KIND = "pixel-random-forest"
MAX_CLASSES = 64  # more is almost surely an instance mask picked by mistake


class PixelClassifier:
    def __init__(self, spec: FeatureSpec | None = None, n_trees: int = 50,
                 max_depth: int | None = None, class_names: list[str] | None = None):
        self.spec = spec or FeatureSpec.default()
        self.n_trees, self.max_depth = int(n_trees), max_depth
        self.class_names = list(class_names or [])
        self.ensemble: TreeEnsemble | None = None
        self.n_channels = self.ndim = None
        self.spacing = None
        self.training: dict = {}

    # -- training ---------------------------------------------------------
    def fit(self, images, labels, channel_axis=None, spacing=None) -> PixelClassifier:
        """Train on one image/labels pair or on lists of them."""
        if not isinstance(images, (list, tuple)):
            images, labels = [images], [labels]
        if len(images) != len(labels):
            raise UserInputError("give one labels image per image")
        xs, ys, tiles = [], [], None
        for image, lab in zip(images, labels):
            tiles = self.feature_tiles(image, channel_axis, spacing, cache_bytes=0, training=True)
            x, y = tiles.training_data(_as_labels(lab))
            xs.append(x)
            ys.append(y)
        return self.fit_xy(np.concatenate(xs), np.concatenate(ys), tiles)

    def fit_predict(self, image, labels, channel_axis=None, spacing=None) -> np.ndarray:
        """Train on one image and predict all of it, computing features once."""
        tiles = self.feature_tiles(image, channel_axis, spacing, training=True,
                                   cache_bytes=CACHE_BYTES)
        self.fit_xy(*tiles.training_data(_as_labels(labels)), tiles)
        out = np.empty((self.n_classes,) + tiles.shape, np.float32)
        for _ in self.iter_predict(tiles, out):
            pass
        return out

    def fit_xy(self, X, y, tiles: FeatureTiles) -> PixelClassifier:
        """Train on labelled-pixel features gathered from `tiles`' image(s)."""
        if len(y) == 0:
            raise UserInputError("nothing is painted: paint some pixels of each class first")
        present = np.unique(y)
        if len(present) < 2:
            raise UserInputError(
                f"only class {int(present[0])} is painted: paint at least two classes"
            )
        n_classes = max(int(present.max()), len(self.class_names))
        if n_classes > MAX_CLASSES:
            raise UserInputError(
                f"the labels use class ids up to {n_classes}: is this an instance mask? "
                f"Paint strokes with a few classes (at most {MAX_CLASSES})"
            )
        t0 = time.perf_counter()
        self.ensemble = fit_forest(X, y - 1, n_classes, self.n_trees, self.max_depth)
        self.n_channels, self.ndim = tiles.image.shape[0], tiles.ndim
        self.spacing = None if tiles.spacing is None else [float(s) for s in tiles.spacing]
        names = self.class_names + [f"class {k}" for k in range(len(self.class_names) + 1, n_classes + 1)]
        self.class_names = names[:n_classes]
        self.training = {
            "pixels_per_class": {str(int(k)): int((y == k).sum()) for k in present},
            "fit_seconds": round(time.perf_counter() - t0, 3),
        }
        return self

    @property
    def n_classes(self) -> int:
        return 0 if self.ensemble is None else self.ensemble.n_classes

    # -- prediction -------------------------------------------------------
    def feature_tiles(self, image, channel_axis=None, spacing=None, cache_bytes=0,
                      tile_shape=None, training=False) -> FeatureTiles:
        """Validated image wrapped for tiled feature computation."""
        img = as_channels_first(image, channel_axis)
        if not training:
            self._check_compatible(img)
            if spacing is None:
                spacing = self.spacing
        return FeatureTiles(img, self.spec, spacing, tile_shape=tile_shape, cache_bytes=cache_bytes)

    def _check_compatible(self, img_cf):
        self.check_shape(img_cf.shape, channel_axis=0)

    def check_shape(self, shape, channel_axis=None):
        """Raise a readable error unless an image of this shape fits the model."""
        if self.ensemble is None:
            raise UserInputError("the classifier is not trained yet")
        n_ch = 1 if channel_axis is None else shape[channel_axis]
        ndim = len(shape) - (0 if channel_axis is None else 1)
        if ndim != self.ndim:
            raise UserInputError(
                f"the classifier was trained on {self.ndim}D images; this image is {ndim}D"
            )
        if n_ch != self.n_channels:
            raise UserInputError(
                f"the classifier was trained on {self.n_channels}-channel images; "
                f"this image has {n_ch} channel(s)"
            )

    def iter_predict(self, tiles: FeatureTiles, out: np.ndarray, focus=None):
        """Fill `out` (K, *spatial) with probabilities, block by block.

        Yields (blocks done, blocks total, block slices) after each block,
        visible region (`focus`) first; stop iterating to cancel.
        """
        self._check_compatible(tiles.image)
        pairs = tiles.blocks(focus)
        n_feat = tiles.n_features
        for n, (i, block) in enumerate(pairs, 1):
            core = tiles.tiles[i]
            rel = tuple(slice(b.start - c.start, b.stop - c.start) for b, c in zip(block, core))
            feats = tiles.features(i)[rel]
            p = self.ensemble.predict_proba(feats.reshape(-1, n_feat))
            out[(slice(None),) + block] = p.T.reshape(out.shape[:1] + feats.shape[:-1])
            yield n, len(pairs), block

    def predict_proba(self, image, channel_axis=None, spacing=None, tile_shape=None, out=None):
        """Probabilities (K, *spatial) float32, computed in tiles."""
        tiles = self.feature_tiles(image, channel_axis, spacing, tile_shape=tile_shape)
        if out is None:
            out = np.empty((self.n_classes,) + tiles.shape, np.float32)
        for _ in self.iter_predict(tiles, out):
            pass
        return out

    def predict_dask(self, image, channel_axis=None, spacing=None, chunks=None):
        """Lazy probabilities (K, *spatial) of an image larger than memory.

        `image` is anything dask can wrap (a dask array, a memory-mapped
        TIFF, a zarr array). Each chunk is grown by the feature halo from its
        neighbours, so the result equals in-memory prediction exactly.
        """
        import dask.array as da

        arr = da.asarray(image) if chunks is None else da.from_array(image, chunks=chunks)
        arr = arr[None] if channel_axis is None else da.moveaxis(arr, channel_axis, 0)
        arr = arr.rechunk({0: -1})
        if arr.ndim - 1 != self.ndim or arr.shape[0] != self.n_channels:
            self._check_compatible(np.empty((arr.shape[0],) + (2,) * (arr.ndim - 1), np.float32))
        if spacing is None:
            spacing = self.spacing
        halo = self.spec.halo(spacing, self.ndim)
        depth = {0: 0, **{i + 1: h for i, h in enumerate(halo)}}
        grown = da.overlap.overlap(arr, depth=depth, boundary="none")
        k = self.n_classes
        prob = grown.map_blocks(
            lambda block: self.predict_proba(block, channel_axis=0, spacing=spacing),
            chunks=((k,),) + grown.chunks[1:], dtype=np.float32,
        )
        return da.overlap.trim_internal(prob, depth, boundary="none")

    def predict(self, image, channel_axis=None, spacing=None) -> np.ndarray:
        """Segmentation: class ids 1..K per pixel."""
        return segmentation(self.predict_proba(image, channel_axis, spacing))

    def instances(self, prob: np.ndarray, spacing=None, foreground: int | None = None) -> np.ndarray:
        """Objects of the foreground class (default: the last), touching ones split."""
        fg = self.n_classes if foreground is None else int(foreground)
        spacing = self.spacing if spacing is None else spacing
        return instances_from_segmentation(segmentation(prob), fg, spacing=spacing)

    # -- model file -------------------------------------------------------
    def metadata(self) -> dict:
        return {
            "kind": KIND,
            "classes": list(range(1, self.n_classes + 1)),
            "class_names": self.class_names,
            "n_channels": self.n_channels,
            "ndim": self.ndim,
            "spacing": self.spacing,
            "features": self.spec.to_json(),
            "n_features": self.ensemble.n_features,
            "forest": {"n_trees": self.n_trees, "max_depth": self.max_depth},
            "training": self.training,
        }

    def save(self, path) -> Path:
        if self.ensemble is None:
            raise UserInputError("train the classifier before saving it")
        return modelfile.save(path, self.metadata(), self.ensemble.arrays)

    @classmethod
    def load(cls, path) -> PixelClassifier:
        meta, arrays, _ = modelfile.load(path, kinds=(KIND,))
        try:
            spec = FeatureSpec.from_json(meta["features"])
            self = cls(spec, meta["forest"]["n_trees"], meta["forest"]["max_depth"], meta["class_names"])
            self.n_channels, self.ndim = int(meta["n_channels"]), int(meta["ndim"])
            self.spacing = meta.get("spacing")
            self.training = meta.get("training", {})
            n_features = int(meta["n_features"])
            if n_features != spec.n_features(self.n_channels, self.ndim):
                raise ValueError("feature count does not match the feature list")
            self.ensemble = TreeEnsemble(arrays, n_features, len(meta["classes"]))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ModelFileError(f"{path} is a damaged pixel classifier ({e})") from None
        return self


def _as_labels(labels) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise UserInputError("labels must be whole numbers (0 = unlabelled, 1..K = classes)")
        lab = lab.astype(np.int64)
    if lab.dtype.kind not in "iub":
        raise UserInputError(f"labels must be integers, got dtype {lab.dtype}")
    if lab.size and lab.min() < 0:
        raise UserInputError("labels must not be negative (0 = unlabelled, 1..K = classes)")
    return lab


def segmentation(prob: np.ndarray) -> np.ndarray:
    """Class id (1..K) of the most probable class at each pixel."""
    dtype = np.uint8 if prob.shape[0] < 255 else np.uint16
    return (np.argmax(prob, axis=0) + 1).astype(dtype)


def uncertainty(prob: np.ndarray) -> np.ndarray:
    """1 - (p_max - p_second): 0 where the forest is sure, 1 where it is torn."""
    if prob.shape[0] < 2:
        return np.zeros(prob.shape[1:], np.float32)
    top2 = np.partition(prob, -2, axis=0)[-2:]
    return (1.0 - (top2[1] - top2[0])).astype(np.float32)
