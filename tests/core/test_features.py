import numpy as np
import pytest

from napari_dlvision.core.errors import UserInputError
from napari_dlvision.core.images import as_channels_first
from napari_dlvision.core.features import (
    FAMILIES, Feature, FeatureSpec, compute_features,
)
from napari_dlvision.core.tiling import FeatureTiles


def test_default_spec_counts_and_names():
    spec = FeatureSpec.default()
    # 1 fine Gaussian + 5 scales x (4 scalar families + Hessian x ndim) + 2 structure tensors
    assert spec.n_features(1, 2) == 1 + 5 * (4 + 2) + 2 * 2
    assert spec.n_features(3, 3) == 3 * (1 + 5 * (4 + 3) + 2 * 3)
    assert len(spec.names(2, 2)) == spec.n_features(2, 2)


@pytest.mark.parametrize("shape,axis", [((40, 50), None), ((12, 20, 22), None), ((40, 50, 3), -1)])
def test_feature_stack_shape_and_dtype(shape, axis, rng):
    img = rng.random(shape).astype(np.float32)
    spec = FeatureSpec.from_grid(FAMILIES, [1.0, 1.6])
    feats = compute_features(img, spec, channel_axis=axis)
    spatial = shape if axis is None else shape[:-1]
    n_ch = 1 if axis is None else shape[axis]
    assert feats.shape == (spec.n_features(n_ch, len(spatial)),) + spatial
    assert feats.dtype == np.float32 and np.isfinite(feats).all()


def test_families_respond_to_structure():
    img = np.zeros((64, 64), np.float32)
    img[32, 32] = 1  # a spot: LoG strongly negative at its centre
    feats = compute_features(img, FeatureSpec((Feature("log", 1.0), Feature("gaussian", 1.0))))
    log, gauss = feats[1], feats[0]  # sorted by family name: gaussian, log
    assert log[32, 32] == log.min() < 0
    assert gauss[32, 32] == gauss.max()


def test_hessian_eigenvalues_sorted_descending(rng):
    img = rng.random((30, 30)).astype(np.float32)
    ev = compute_features(img, FeatureSpec((Feature("hessian", 1.0),)))
    assert np.all(ev[0] >= ev[1])


@pytest.mark.parametrize(
    "shape,spacing,tile",
    [((150, 170), None, (48, 64)), ((30, 45, 40), (3.0, 1.0, 1.0), (12, 20, 16))],
)
def test_tiled_features_equal_whole_image(shape, spacing, tile, rng):
    img = rng.random(shape).astype(np.float32) * 100
    spec = FeatureSpec.from_grid(FAMILIES, [0.7, 1.6, 3.5]) if len(shape) == 2 else FeatureSpec.default()
    whole = np.moveaxis(compute_features(img, spec, spacing=spacing), 0, -1)
    tiles = FeatureTiles(img[None], spec, spacing, tile_shape=tile, cache_bytes=0)
    assert len(tiles.tiles) > 4
    for i, core in enumerate(tiles.tiles):
        np.testing.assert_array_equal(tiles.features(i), whole[core])


def test_halo_is_needed(rng):
    """A tile grown by less than the halo differs: the halo is not oversized by accident."""
    img = rng.random((120, 120)).astype(np.float32)
    spec = FeatureSpec((Feature("structure_tensor", 3.5),))
    whole = compute_features(img, spec)
    h = spec.halo(None, 2)[0]
    short = compute_features(img[: 60 + h - 2], spec)
    exact = compute_features(img[: 60 + h], spec)
    np.testing.assert_array_equal(exact[:, :60], whole[:, :60])
    assert not np.array_equal(short[:, :60], whole[:, :60])


def test_anisotropic_spacing_changes_features(rng):
    img = rng.random((10, 30, 30)).astype(np.float32)
    spec = FeatureSpec((Feature("gaussian", 1.6),))
    iso = compute_features(img, spec)
    aniso = compute_features(img, spec, spacing=(4, 1, 1))
    assert not np.allclose(iso, aniso)


def test_parse_and_json_round_trip():
    spec = FeatureSpec.parse("gaussian@0.3,hessian,log@1.6", scales="1,3.5")
    assert [f.name for f in spec.features] == ["gaussian@0.3", "hessian@1", "hessian@3.5", "log@1.6"]
    assert FeatureSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("text", ["blur@1", "hessian@0.3", "hessian@abc", ""])
def test_parse_rejects_bad_features(text):
    with pytest.raises(UserInputError):
        FeatureSpec.parse(text)


@pytest.mark.parametrize(
    "image,axis",
    [
        (np.full((10, 10), np.nan, np.float32), None),
        (np.zeros((10,)), None),
        (np.zeros((2, 3, 4, 5, 6)), None),
        (np.zeros((10, 10)), 5),
        (np.array([["a"]]), None),
    ],
)
def test_bad_images_raise_readable_errors(image, axis):
    with pytest.raises(UserInputError):
        as_channels_first(image, axis)
