"""The fast forest path: OpenCV filters, feature-major tiles, training boxes, streamed outputs."""

import tracemalloc

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_dlvision.core import filters
from napari_dlvision.core.errors import UserInputError
from napari_dlvision.core.features import FeatureSpec
from napari_dlvision.core.images import as_channels_first
from napari_dlvision.core.pixel_classifier import PREVIEW_STRIDE, PixelClassifier
from napari_dlvision.core.probabilities import segmentation, uncertainty
from napari_dlvision.core.tiling import FeatureTiles


@pytest.mark.parametrize("shape,sigmas", [
    ((97, 131), (0.7, 0.7)), ((97, 131), (5.0, 3.5)), ((3, 4), (10.0, 10.0)),
    ((9, 40, 33), (0.5, 1.6, 1.6)), ((6, 20, 70), (3.0, 1.0, 0.2)),
])
def test_gaussian_matches_scipy(shape, sigmas, rng):
    img = (rng.random(shape) * 1000).astype(np.float32)
    ours = filters.gaussian(img, sigmas)
    ref = ndi.gaussian_filter(img.astype(np.float64), sigmas, truncate=filters.TRUNCATE, mode="reflect")
    assert ours.dtype == np.float32 and ours.shape == shape
    # float32 sums against scipy's float64: a few float32 ulps.
    np.testing.assert_allclose(ours, ref, rtol=2e-6, atol=1e-4)


@pytest.mark.parametrize("shape,sigmas", [((150, 517), (1.6, 1.6)), ((12, 45, 70), (1.0, 3.5, 3.5))])
def test_gaussian_of_a_crop_equals_the_crop_of_the_gaussian(shape, sigmas, rng):
    """Exact, not close: OpenCV's scalar tail columns would differ by an ulp."""
    img = (rng.random(shape) * 100).astype(np.float32)
    whole = filters.gaussian(img, sigmas)
    r = [filters.radius(s) for s in sigmas]
    for _ in range(25):
        lo = [int(rng.integers(0, n)) for n in shape]
        hi = [int(rng.integers(a + 1, n + 1)) for a, n in zip(lo, shape)]
        outer = tuple(slice(max(0, a - h), min(n, b + h)) for a, b, h, n in zip(lo, hi, r, shape))
        part = filters.gaussian(np.ascontiguousarray(img[outer]), sigmas)
        inner = tuple(slice(a - o.start, b - o.start) for a, b, o in zip(lo, hi, outer))
        np.testing.assert_array_equal(part[inner], whole[tuple(slice(a, b) for a, b in zip(lo, hi))])


def test_training_boxes_give_the_whole_image_features(sample2d):
    """Without a cache, features come from small boxes around the strokes: same numbers."""
    img = as_channels_first(sample2d.image, None)
    spec = FeatureSpec.default()
    boxes = FeatureTiles(img, spec, cache_bytes=0)
    tiles = FeatureTiles(img, spec, tile_shape=(100, 100), cache_bytes=1 << 30)
    xb, yb = boxes.training_data(sample2d.scribbles)
    xt, yt = tiles.training_data(sample2d.scribbles)
    order_b, order_t = np.lexsort(xb.T), np.lexsort(xt.T)
    np.testing.assert_array_equal(xb[order_b], xt[order_t])
    np.testing.assert_array_equal(yb[order_b], yt[order_t])
    assert len(yb) == int((sample2d.scribbles > 0).sum())


def test_forest_reads_any_memory_layout(sample2d):
    clf = PixelClassifier(n_trees=10).fit(sample2d.image, sample2d.scribbles)
    feats = np.random.default_rng(1).random((clf.ensemble.n_features, 5000)).astype(np.float32) * 1000
    by_rows = clf.ensemble.predict_proba(np.ascontiguousarray(feats.T))
    np.testing.assert_array_equal(clf.ensemble.predict_proba(feats.T), by_rows)  # a transposed view


def test_streamed_outputs_equal_outputs_from_whole_probabilities(sample2d):
    clf = PixelClassifier(n_trees=20).fit(sample2d.image, sample2d.scribbles)
    prob = clf.predict_proba(sample2d.image)
    wanted = ("segmentation", "probabilities", "uncertainty", "instances")
    out = clf.predict_outputs(sample2d.image, wanted=wanted, tile_shape=(64, 100))
    np.testing.assert_array_equal(out["probabilities"], prob)
    np.testing.assert_array_equal(out["segmentation"], segmentation(prob))
    np.testing.assert_array_equal(out["uncertainty"], uncertainty(prob))
    np.testing.assert_array_equal(out["instances"], clf.instances(prob))
    assert set(clf.predict_outputs(sample2d.image)) == {"segmentation"}


def test_segmentation_of_a_big_image_holds_no_full_size_feature_stack(sample2d):
    """Memory stays flat: tiles' features only, not (F, H, W) nor (K, H, W) float32."""
    clf = PixelClassifier(n_trees=5).fit(sample2d.image, sample2d.scribbles)
    big = np.tile(sample2d.image, (4, 4))  # 1024 x 1024 uint16, 2 MiB
    full_stack = clf.ensemble.n_features * big.size * 4  # what a whole-image stack would take
    tracemalloc.start()
    try:
        seg = clf.predict_outputs(big, tile_shape=(256, 256))["segmentation"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seg.shape == big.shape and seg.dtype == np.uint8
    assert peak < full_stack / 3, f"peak {peak / 2**20:.0f} MiB"


def test_image_kept_in_its_type_is_still_checked():
    img = np.arange(600, dtype=np.uint16).reshape(20, 30)
    view = as_channels_first(img, None, float32=False)
    assert view.dtype == np.uint16 and view.shape == (1, 20, 30) and np.shares_memory(view, img)
    bad = np.ones((40, 300, 3), np.float32)
    bad[30, 299, 1] = np.nan
    with pytest.raises(UserInputError, match="NaN"):
        as_channels_first(bad, -1, float32=False)
    with pytest.raises(UserInputError, match="too large"):
        as_channels_first(np.full((300, 20), 1e300), None, float32=False)


def test_prediction_computes_only_the_features_the_trees_use(sample2d):
    clf = PixelClassifier(n_trees=10).fit(sample2d.image, sample2d.scribbles)
    spec, pruned = clf.used_features()
    assert 0 < len(spec.features) < len(clf.spec.features)
    assert pruned.n_features == spec.n_features(1, 2) < clf.ensemble.n_features
    tiles = clf.feature_tiles(sample2d.image, training=True)  # every feature
    assert tiles.spec == clf.spec
    full = np.empty((2,) + tiles.shape, np.float32)
    for _ in clf.iter_predict(tiles, full):
        pass
    np.testing.assert_array_equal(clf.predict_proba(sample2d.image), full)


def test_live_prediction_previews_the_visible_region_then_gives_exact_values(sample2d):
    image = np.tile(sample2d.image, (3, 3))  # 768 x 768
    labels = np.tile(sample2d.scribbles, (3, 3))
    clf = PixelClassifier(n_trees=10)
    tiles = clf.feature_tiles(image, training=True, cache_bytes=1 << 30, tile_shape=(300, 768))
    clf.fit_xy(*tiles.training_data(labels), tiles)
    focus = ((100, 700), (50, 650))
    out = np.zeros((2,) + image.shape, np.float32)
    steps = clf.iter_predict(tiles, out, focus)
    done, total, region = next(steps)
    assert done == 0 and region == (slice(100, 700), slice(50, 650))
    preview = out.copy()
    assert (preview[:, 100:700, 50:650].sum(0) > 0.99).all() and not preview[:, :100].any()
    for _ in steps:
        pass
    np.testing.assert_array_equal(out, clf.predict_proba(image))
    # the preview is the exact value at one pixel in PREVIEW_STRIDE x PREVIEW_STRIDE
    s = PREVIEW_STRIDE
    assert s > 1
    np.testing.assert_array_equal(preview[:, 100:700:s, 50:650:s], out[:, 100:700:s, 50:650:s])
