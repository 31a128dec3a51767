"""Noise2Void's blind spot, tested directly: a hidden pixel's value never reaches
the network's input, so it cannot reach its output for that pixel."""

import numpy as np
import pytest
import torch

from napari_dlvision.core.errors import UserInputError
from napari_dlvision.dl.blind_spot import blind_spot, blind_spot_batch, grid_points

CASES = [  # (patch shape (C, *spatial), channels, replacement, fraction)
    ((1, 32, 32), "independent", "random", 0.25),
    ((1, 32, 32), "independent", "median", 0.25),
    ((1, 8, 16, 16), "independent", "random", 0.2),
    ((3, 24, 24), "independent", "random", 0.2),
    ((3, 24, 24), "joint", "random", 0.2),
    ((2, 24, 24), "joint", "median", 0.2),
    ((1, 5, 40), "independent", "random", 0.25),  # thinner than the neighbourhood
]


def _masked(patch, seed, **kw):
    return blind_spot(patch, rng=np.random.default_rng(seed), **kw)


@pytest.mark.parametrize("shape,channels,replacement,fraction", CASES)
def test_a_hidden_pixels_own_value_never_reaches_the_input(shape, channels, replacement, fraction):
    rng = np.random.default_rng(1)
    patch = rng.normal(size=shape).astype(np.float32)
    kw = dict(fraction=fraction, channels=channels, replacement=replacement)
    x, mask = _masked(patch, 7, **kw)
    assert mask.sum() > 0
    # Give every hidden pixel a value no other pixel has: it must appear nowhere
    # in the network's input, neither in place nor as another pixel's replacement.
    perturbed = patch.copy()
    perturbed[mask > 0] += 1000.0
    x2, mask2 = _masked(perturbed, 7, **kw)
    np.testing.assert_array_equal(mask2, mask)
    np.testing.assert_array_equal(x2, x)
    assert (np.abs(x) < 100).all()
    # Unhidden pixels are untouched; hidden ones changed (a random normal never repeats).
    np.testing.assert_array_equal(x[mask == 0], patch[mask == 0])
    assert (x[mask > 0] != patch[mask > 0]).all()


def test_the_network_output_at_a_hidden_pixel_ignores_its_value():
    """The loss input (the prediction at hidden pixels) is the same whatever the hidden values are."""
    from napari_dlvision.dl.unet import UNet

    torch.manual_seed(0)
    net = UNet(2, 1, 1, depth=2, base_channels=8).eval()
    patch = np.random.default_rng(2).normal(size=(1, 32, 32)).astype(np.float32)
    x, mask = _masked(patch, 3, fraction=0.05)
    target = patch.copy()
    target[mask > 0] += 5.0  # another noise draw at the hidden pixels
    x2, _ = _masked(target, 3, fraction=0.05)
    with torch.no_grad():
        y1, y2 = net(torch.from_numpy(x[None])), net(torch.from_numpy(x2[None]))
    hidden = torch.from_numpy(mask[None] > 0)
    torch.testing.assert_close(y1[hidden], y2[hidden], rtol=0, atol=0)
    # Without the mask the same perturbation would have reached the output: the test can fail.
    with torch.no_grad():
        y3 = net(torch.from_numpy(target[None]))
    assert not torch.allclose(net(torch.from_numpy(patch[None]))[hidden], y3[hidden])


def test_replacements_come_from_the_neighbourhood():
    patch = np.arange(40 * 40, dtype=np.float32).reshape(1, 40, 40)  # every value tells its position
    x, mask = _masked(patch, 0, fraction=0.05, radius=2)
    for y, xx in np.argwhere(mask[0] > 0):
        v = int(x[0, y, xx])
        sy, sx = divmod(v, 40)
        assert max(abs(sy - y), abs(sx - xx)) <= 2 and (sy, sx) != (y, xx)
        assert mask[0, sy, sx] == 0


@pytest.mark.parametrize("channels,replacement", [("independent", "random"), ("joint", "random"),
                                                  ("joint", "median")])
def test_a_batch_is_masked_patch_by_patch(channels, replacement):
    """The batched pass keeps the guarantee in every patch, and each patch has its own hidden pixels."""
    patches = np.random.default_rng(4).normal(size=(6, 2, 24, 24)).astype(np.float32)
    kw = dict(fraction=0.2, radius=2, replacement=replacement, channels=channels)
    x, mask = blind_spot_batch(patches, rng=np.random.default_rng(5), **kw)
    perturbed = patches.copy()
    perturbed[mask > 0] += 1000.0
    x2, mask2 = blind_spot_batch(perturbed, rng=np.random.default_rng(5), **kw)
    np.testing.assert_array_equal(mask2, mask)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(x[mask == 0], patches[mask == 0])
    assert (x[mask > 0] != patches[mask > 0]).all()
    assert len({mask[i].tobytes() for i in range(6)}) == 6


def test_random_replacements_are_uniform_over_the_usable_neighbours():
    """Redrawing hidden neighbours leaves every offset of the window equally likely."""
    side = 200
    patch = np.arange(side * side, dtype=np.float32).reshape(1, 1, side, side)  # values tell positions
    x, mask = blind_spot_batch(np.repeat(patch, 8, axis=0), 0.1, np.random.default_rng(0), radius=2)
    counts = {}
    for b, _, y, xx in np.argwhere(mask > 0):
        if 2 <= y < side - 2 and 2 <= xx < side - 2:  # away from reflections at the border
            sy, sx = divmod(int(x[b, 0, y, xx]), side)
            counts[(sy - y, sx - xx)] = counts.get((sy - y, sx - xx), 0) + 1
    assert len(counts) == 24 and (0, 0) not in counts
    freq = np.array(list(counts.values()), float)
    assert freq.min() > 0.8 * freq.mean() and freq.max() < 1.2 * freq.mean(), counts


def test_channels_joint_hide_the_same_pixels_independent_do_not():
    patch = np.random.default_rng(0).normal(size=(3, 32, 32)).astype(np.float32)
    _, joint = _masked(patch, 0, fraction=0.1, channels="joint")
    assert (joint[0] == joint[1]).all() and (joint[0] == joint[2]).all()
    _, indep = _masked(patch, 0, fraction=0.1, channels="independent")
    assert not (indep[0] == indep[1]).all()
    # Independent: the other channels keep their values at a channel's hidden pixels.
    x, _ = _masked(patch, 0, fraction=0.1, channels="independent")
    only0 = (indep[0] > 0) & (indep[1] == 0)
    np.testing.assert_array_equal(x[1][only0], patch[1][only0])


@pytest.mark.parametrize("shape,fraction", [((64, 64), 0.03), ((16, 32, 32), 0.01), ((7, 9), 0.1)])
def test_hidden_pixels_spread_over_the_patch_at_the_asked_density(shape, fraction):
    pts = grid_points(shape, fraction, np.random.default_rng(0))
    assert len(np.unique(pts, axis=0)) == len(pts)
    assert 0.4 * fraction < len(pts) / np.prod(shape) < 2.5 * fraction
    assert (pts >= 0).all() and (pts < np.array(shape)).all()
    # Every quarter of the patch gets some (no clumping in one corner).
    half = np.array(shape) // 2
    assert len({tuple(q) for q in (pts >= half).astype(int)}) == 2 ** len(shape)


@pytest.mark.parametrize("kw", [dict(fraction=0.5), dict(fraction=0), dict(radius=0),
                                dict(replacement="mean"), dict(channels="some")])
def test_settings_are_checked(kw):
    from napari_dlvision.dl.blind_spot import check_settings

    args = dict(fraction=0.03, radius=2, replacement="random", channels="independent") | kw
    with pytest.raises(UserInputError):
        check_settings(**args)
