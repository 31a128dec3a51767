"""The random-forest pixel classifier: features + forest + model file.

Label convention everywhere: 0 = unlabelled, 1..K = classes. Probability
channel k belongs to class k + 1, and the segmentation holds class ids.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from . import modelfile
from .errors import ModelFileError, UserInputError
from .events import Progress
from .features import FeatureSpec
from .forest import MAX_FEATURES, MAX_TREES, TREE_LEAF, TreeEnsemble, fit_forest
from .images import as_channels_first, check_spacing
from .labels import as_label_array, check_classes, class_names_for
from .pixel_model import PixelModel
from .probabilities import segmentation, uncertainty
from .tiling import BLOCK_PIXELS, CACHE_BYTES, FeatureTiles, tile_shape_for, volume

DASK_TILE_BYTES = 64 << 20  # feature memory per dask chunk being predicted
PREVIEW_STRIDE = 4  # live preview of the visible region: one pixel in 4 x 4 predicted first (0.03 s for 1024²)

KIND = "pixel-random-forest"


class PixelClassifier(PixelModel):
    KIND = KIND

    def __init__(self, spec: FeatureSpec | None = None, n_trees: int = 50,
                 max_depth: int | None = None, class_names: list[str] | None = None):
        self.spec = spec or FeatureSpec.default()
        self.n_trees, self.max_depth = int(n_trees), max_depth
        self.class_names = list(class_names or [])
        self.ensemble: TreeEnsemble | None = None
        self._used = None  # (ensemble, spec of the features it splits on, forest reading those)
        self.n_channels = self.ndim = None
        self.spacing = None
        self.training: dict = {}

    # -- training ---------------------------------------------------------
    def fit(self, images, labels, channel_axis=None, spacing=None) -> PixelClassifier:
        """Train on one image/labels pair or on lists of them."""
        if not isinstance(images, (list, tuple)):
            images, labels = [images], [labels]
        if not isinstance(labels, (list, tuple)) or len(images) != len(labels):
            raise UserInputError("give one labels image per image")
        if not images:
            raise UserInputError("no training images given")
        xs, ys, tiles, n_ch, nd = [], [], None, None, None
        for image, lab in zip(images, labels):
            tiles = self.feature_tiles(image, channel_axis, spacing, cache_bytes=0, training=True)
            if xs and (tiles.image.shape[0], tiles.ndim) != (n_ch, nd):
                raise UserInputError(
                    f"all training images need the same channel count and dimensionality: "
                    f"{n_ch}-channel {nd}D and {tiles.image.shape[0]}-channel {tiles.ndim}D given")
            n_ch, nd = tiles.image.shape[0], tiles.ndim
            x, y = tiles.training_data(as_label_array(lab))
            xs.append(x)
            ys.append(y)
        return self.fit_xy(np.concatenate(xs), np.concatenate(ys), tiles)

    def fit_predict(self, image, labels, channel_axis=None, spacing=None) -> np.ndarray:
        """Train on one image and predict all of it, computing features once."""
        tiles = self.feature_tiles(image, channel_axis, spacing, training=True,
                                   cache_bytes=CACHE_BYTES)
        self.fit_xy(*tiles.training_data(as_label_array(labels)), tiles)
        out = np.empty((self.n_classes,) + tiles.shape, np.float32)
        for _ in self.iter_predict(tiles, out):
            pass
        return out

    def fit_xy(self, X, y, tiles: FeatureTiles) -> PixelClassifier:
        """Train on labelled-pixel features gathered from `tiles`' image(s)."""
        present = np.unique(y)
        n_classes = check_classes(present, len(self.class_names))
        t0 = time.perf_counter()
        self.ensemble = fit_forest(X, y - 1, n_classes, self.n_trees, self.max_depth)
        self.n_channels, self.ndim = tiles.image.shape[0], tiles.ndim
        self.spacing = None if tiles.spacing is None else [float(s) for s in tiles.spacing]
        self.class_names = class_names_for(self.class_names, n_classes)
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
        """Validated image wrapped for tiled feature computation (converted tile by tile)."""
        img = as_channels_first(image, channel_axis, float32=False)
        spec = self.spec
        if not training:
            self._check_compatible(img)
            if spacing is None:
                spacing = self.spacing
            spec = self.used_features()[0]
        return FeatureTiles(img, spec, spacing, tile_shape=tile_shape, cache_bytes=cache_bytes)

    def used_features(self) -> tuple[FeatureSpec, TreeEnsemble]:
        """(the features the trees split on, the forest reading only those).

        From a few strokes the trees use about half of the bank; prediction
        computes only those (same values: each scale's filters do not depend
        on which other features are asked for).
        """
        if self._used is not None and self._used[0] is self.ensemble:
            return self._used[1:]
        arrays = self.ensemble.arrays
        split = arrays["left_child"] != TREE_LEAF
        entries = _feature_entries(self.spec, self.n_channels, self.ndim)
        used = {entries[i][1] for i in np.unique(arrays["feature"][split])}
        spec, ensemble = self.spec, self.ensemble
        if used and len(used) < len(self.spec.features):
            spec = FeatureSpec(tuple(used))
            position = {e: i for i, e in enumerate(_feature_entries(spec, self.n_channels, self.ndim))}
            remap = np.array([position.get(e, -1) for e in entries], np.int64)
            pruned = dict(arrays, feature=np.where(split, remap[np.maximum(arrays["feature"], 0)],
                                                   arrays["feature"]))
            ensemble = TreeEnsemble(pruned, spec.n_features(self.n_channels, self.ndim), self.n_classes)
        self._used = (self.ensemble, spec, ensemble)
        return spec, ensemble

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

    def iter_bands(self, tiles: FeatureTiles, focus=None):
        """Yield (bands done, bands total, band slices, probabilities (K, *band)).

        Bands are whole rows (planes in 3D) of a tile, the `focus` box first;
        stop iterating to cancel.
        """
        self._check_compatible(tiles.image)
        spec, ensemble = self.used_features()
        if tiles.spec != spec:
            ensemble = self.ensemble
            if tiles.spec != self.spec:
                raise ValueError("these tiles hold features of another feature set")
        pairs = tiles.bands(focus)
        n_feat = tiles.n_features
        for n, (i, band) in enumerate(pairs, 1):
            feats, inner = tiles.outer_features(i)
            core = tiles.tiles[i]
            # The band in the outer box: its rows, and either just its columns
            # (a copy) or all columns of the box, halo included (a view, when
            # the halo adds little forest work; cropped afterwards).
            rows = slice(band[0].start - core[0].start + inner[0].start,
                         band[0].stop - core[0].start + inner[0].start)
            whole = math.prod(feats.shape[2:]) <= 1.1 * volume(inner[1:])
            sel = (slice(None), rows) + ((slice(None),) * (self.ndim - 1) if whole else inner[1:])
            x = feats[sel]
            shape = x.shape[1:]
            x = x.reshape(n_feat, -1) if whole else np.ascontiguousarray(x).reshape(n_feat, -1)
            p = ensemble.predict_proba(x.T).T.reshape((self.n_classes,) + shape)
            if whole:
                p = p[(slice(None), slice(None)) + inner[1:]]
            yield n, len(pairs), band, p

    def iter_predict(self, tiles: FeatureTiles, out: np.ndarray, focus=None):
        """Fill `out` (K, *spatial) with probabilities, band by band.

        Yields (bands done, bands total, band slices) after each band,
        visible region (`focus`) first; stop iterating to cancel. With cached
        features and a large visible region, a coarse preview of it comes
        first, as (0, total, region): every other pixel predicted and
        copied to its neighbours, overwritten by the exact bands after.
        """
        bands = self.iter_bands(tiles, focus)
        if focus is not None and tiles.cache_bytes > 0:
            region = tuple(slice(max(0, int(a)), min(n, int(b))) for (a, b), n in zip(focus, tiles.shape))
            if volume(region) > 2 * BLOCK_PIXELS:
                self._coarse_preview(tiles, out, region)
                yield 0, len(tiles.bands(focus)), region
        for n, total, band, p in bands:
            out[(slice(None),) + band] = p
            yield n, total, band

    def _coarse_preview(self, tiles: FeatureTiles, out: np.ndarray, region):
        """Probabilities of `region` from every PREVIEW_STRIDE-th pixel in-plane."""
        ensemble = self.ensemble if tiles.spec == self.spec else self.used_features()[1]
        step = (1,) * (self.ndim - 2) + (PREVIEW_STRIDE,) * 2
        for i, core in enumerate(tiles.tiles):
            part = tuple(slice(max(c.start, r.start), min(c.stop, r.stop)) for c, r in zip(core, region))
            if any(p.start >= p.stop for p in part):
                continue
            feats, inner = tiles.outer_features(i)
            sel = tuple(slice(p.start - c.start + o.start, p.stop - c.start + o.start, k)
                        for p, c, o, k in zip(part, core, inner, step))
            x = np.ascontiguousarray(feats[(slice(None),) + sel])
            p = ensemble.predict_proba(x.reshape(len(x), -1).T).T.reshape((self.n_classes,) + x.shape[1:])
            for axis, k in enumerate(step):
                p = np.repeat(p, k, axis=axis + 1)
            out[(slice(None),) + part] = p[(slice(None),) + tuple(slice(0, q.stop - q.start) for q in part)]

    def iter_predict_proba(self, image, channel_axis=None, spacing=None, focus=None, tiles=None):
        """Prediction as Progress events, for workers: each "predicting" event's
        payload holds the block just done ("block") and the whole probability
        array being filled ("probabilities"), the `focus` box first. Pass
        `tiles` to reuse cached features of the same image."""
        if tiles is None:
            tiles = self.feature_tiles(image, channel_axis, spacing)
        prob = np.empty((self.n_classes,) + tiles.shape, np.float32)
        for done, total, block in self.iter_predict(tiles, prob, focus):
            yield Progress("predicting", done, total, payload={"block": block, "probabilities": prob})

    def predict_outputs(self, image, channel_axis=None, spacing=None, wanted=("segmentation",),
                        foreground=None, tile_shape=None) -> dict:
        """The outputs in `wanted`, computed band by band (see core.pixel_model).

        Only what is asked for is ever held whole: for a segmentation, the
        image, one tile's features and the class ids, so memory stays flat
        (an 8192 x 8192 image predicts in well under 1 GB).
        """
        unknown = set(wanted) - set(self.OUTPUTS)
        if unknown:
            raise UserInputError(f"a pixel classifier cannot output {', '.join(sorted(unknown))}")
        tiles = self.feature_tiles(image, channel_axis, spacing, tile_shape=tile_shape)
        k, shape = self.n_classes, tiles.shape
        seg = np.empty(shape, np.uint8 if k < 255 else np.uint16)
        prob = np.empty((k,) + shape, np.float32) if "probabilities" in wanted else None
        unc = np.empty(shape, np.float32) if "uncertainty" in wanted else None
        for _, _, band, p in self.iter_bands(tiles):
            seg[band] = segmentation(p)
            if prob is not None:
                prob[(slice(None),) + band] = p
            if unc is not None:
                unc[band] = uncertainty(p)
        out = {"segmentation": seg}
        if prob is not None:
            out["probabilities"] = prob
        if unc is not None:
            out["uncertainty"] = unc
        if "instances" in wanted:
            out["instances"] = self.instances_from_segmentation(seg, spacing=tiles.spacing, foreground=foreground)
        return out

    def predict_proba(self, image, channel_axis=None, spacing=None, tile_shape=None, out=None):
        """Probabilities (K, *spatial) float32, computed in tiles."""
        tiles = self.feature_tiles(image, channel_axis, spacing, tile_shape=tile_shape)
        if out is None:
            out = np.empty((self.n_classes,) + tiles.shape, np.float32)
        for _ in self.iter_predict(tiles, out):
            pass
        return out

    def block_plan(self, image_cf, spacing=None):
        """How blocks of a larger-than-memory image are predicted (core.lazy)."""
        from .lazy import BlockPlan

        if image_cf.ndim - 1 != self.ndim or image_cf.shape[0] != self.n_channels:
            self._check_compatible(np.empty((image_cf.shape[0],) + (2,) * (image_cf.ndim - 1), np.float32))
        spacing = self.spacing if spacing is None else spacing
        halo = self.used_features()[0].halo(spacing, self.ndim)
        return BlockPlan(tuple(int(h) for h in halo), self.n_classes)

    def block_function(self, params, spacing=None):
        """Probabilities of one grown block (C, *spatial)."""
        spacing = self.spacing if spacing is None else spacing
        spec = self.used_features()[0]
        halo = spec.halo(spacing, self.ndim)
        n_features = spec.n_features(self.n_channels, self.ndim)

        def block_proba(block):
            # Several blocks run at once: smaller feature tiles keep memory flat.
            tile = tile_shape_for(block.shape[1:], n_features, halo, DASK_TILE_BYTES)
            return self.predict_proba(block, channel_axis=0, spacing=spacing, tile_shape=tile)

        return block_proba

    def predict_dask(self, image, channel_axis=None, spacing=None, chunks=None):
        """Lazy probabilities (K, *spatial) of an image larger than memory.

        `image` is anything dask can wrap (a dask array, a memory-mapped
        TIFF, a zarr array). Each chunk is grown by the feature halo from its
        neighbours, so the result equals in-memory prediction exactly.
        """
        import dask.array as da

        from .lazy import lazy_outputs

        arr = da.asarray(image) if chunks is None else da.from_array(image, chunks=chunks)
        arr = arr[None] if channel_axis is None else da.moveaxis(arr, channel_axis, 0)
        return lazy_outputs(self, arr, spacing, ("probabilities",), chunk="keep")["probabilities"]

    def predict(self, image, channel_axis=None, spacing=None) -> np.ndarray:
        """Segmentation: class ids 1..K per pixel."""
        return segmentation(self.predict_proba(image, channel_axis, spacing))

    def instances(self, prob: np.ndarray, spacing=None, foreground: int | None = None) -> np.ndarray:
        """Objects of the foreground class (default: the last), touching ones split."""
        return self.instances_from_segmentation(segmentation(prob), spacing, foreground)

    def instances_from_segmentation(self, seg: np.ndarray, spacing=None, foreground: int | None = None):
        fg = self.n_classes if foreground is None else int(foreground)
        if not 1 <= fg <= self.n_classes:
            raise UserInputError(f"foreground class must be between 1 and {self.n_classes}, got {fg}")
        from .instances import instances_from_segmentation  # scipy and scikit-image: only when asked

        spacing = self.spacing if spacing is None else spacing
        return instances_from_segmentation(seg, fg, spacing=spacing)

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
    def load(cls, path, device: str = "auto") -> PixelClassifier:
        """Read a model file (`device` is for parity with the networks: forests run on the CPU)."""
        meta, arrays, _ = modelfile.load(path, kinds=(KIND,))
        return cls.from_metadata(meta, arrays, path)

    @classmethod
    def from_metadata(cls, meta: dict, arrays: dict, path) -> PixelClassifier:
        """The classifier that `metadata()` and the ensemble's arrays describe, every field checked
        (a model file's, or the forest inside a detector's file); ModelFileError names `path`."""
        field = modelfile.field
        try:
            features = field(meta, "features", list)
            if not all(isinstance(f, str) for f in features):
                raise modelfile.ModelFileError(f"{path} is a damaged model: features must be names")
            spec = FeatureSpec.from_json(features)
            self = cls(spec, field(meta, "forest.n_trees", int, lo=1, hi=MAX_TREES),
                       field(meta, "forest.max_depth", int, lo=0, hi=10_000, optional=True),
                       field(meta, "class_names", list))
            self.n_channels = field(meta, "n_channels", int, lo=1, hi=64)
            self.ndim = field(meta, "ndim", int, choices=(2, 3))
            spacing = meta.get("spacing")
            self.spacing = None if spacing is None else list(check_spacing(spacing, self.ndim))
            self.training = field(meta, "training", dict, optional=True, default={})
            n_features = field(meta, "n_features", int, lo=1, hi=MAX_FEATURES)
            if n_features != spec.n_features(self.n_channels, self.ndim):
                raise ValueError("feature count does not match the feature list")
            self.ensemble = TreeEnsemble(arrays, n_features, len(meta["classes"]))
        except ModelFileError as e:
            if str(path) in str(e):
                raise
            raise ModelFileError(f"{path}: {e}") from None
        except (KeyError, TypeError, ValueError, IndexError, UserInputError) as e:
            raise ModelFileError(f"{path} is a damaged pixel classifier ({e})") from None
        return self


def _feature_entries(spec: FeatureSpec, n_channels: int, ndim: int) -> list[tuple]:
    """(channel, feature, output) of each column of the feature stack, in order."""
    return [(c, f, o) for c in range(n_channels) for f in spec.features for o in range(f.n_outputs(ndim))]
