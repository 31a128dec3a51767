"""Putting the noisy pixel back into a blind-spot prediction (core.reinclusion),
on real noise over synthetic cells, with a blind-spot estimate that needs no
network: each pixel predicted from its neighbours only (a ring filter)."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.metrics import peak_signal_noise_ratio

from napari_dlvision.core import reinclusion
from napari_dlvision.data.noisy import add_noise, clean_cells


def blind_spot_estimate(noisy, sigma=1.5):
    """A Gaussian average of the neighbours without the pixel itself: like
    Noise2Void's prediction, it never depends on the pixel it predicts."""
    kernel = np.zeros((9, 9))
    kernel[4, 4] = 1
    kernel = ndi.gaussian_filter(kernel, sigma)
    kernel[4, 4] = 0
    return ndi.convolve(noisy.astype(np.float64), kernel / kernel.sum(), mode="reflect").astype(np.float32)


@pytest.fixture(scope="module")
def clean():
    return clean_cells((256, 256), seed=5)


def psnr(clean, x):
    return peak_signal_noise_ratio(clean, x, data_range=1.0)


@pytest.mark.parametrize("noise", [{"gaussian": 0.03}, {"poisson_peak": 300.0}])
def test_putting_the_pixel_back_sharpens_a_blurred_prediction_at_low_noise(clean, noise):
    noisy = add_noise(clean, np.random.default_rng(0), **noise)
    mu = blind_spot_estimate(noisy)
    params = reinclusion.fit(mu, noisy)
    x = reinclusion.apply(params, mu, noisy)
    assert x.dtype == np.float32 and x.shape == mu.shape
    # Better than either source alone: the blur loses the edges, the pixel is noisy.
    assert psnr(clean, x) > max(psnr(clean, mu), psnr(clean, noisy)) + 1.0, (psnr(clean, mu), psnr(clean, x))


def test_the_noise_model_is_found_without_a_clean_image(clean):
    rng = np.random.default_rng(1)
    gaussian = add_noise(clean, rng, gaussian=0.05)
    p = reinclusion.fit(blind_spot_estimate(gaussian), gaussian)
    mu_mid = 0.5
    s2 = reinclusion._noise(p, np.array([mu_mid]))[0]
    assert 0.05**2 * 0.9 < s2 < 0.05**2 * 1.3, s2
    poisson = add_noise(clean, rng, poisson_peak=100.0)
    p = reinclusion.fit(blind_spot_estimate(poisson), poisson)
    slope = max(a for a, _ in p["lines"])
    assert 0.8 / 100 < slope < 1.25 / 100, slope  # variance = signal / peak


def test_at_high_noise_it_does_not_make_things_worse(clean):
    noisy = add_noise(clean, np.random.default_rng(2), gaussian=0.3)
    mu = blind_spot_estimate(noisy, sigma=2.0)
    x = reinclusion.apply(reinclusion.fit(mu, noisy), mu, noisy)
    assert psnr(clean, x) > psnr(clean, mu) - 0.1


def test_units_do_not_matter_and_blocks_match_the_whole(clean):
    noisy = add_noise(clean, np.random.default_rng(3), poisson_peak=200.0)
    mu = blind_spot_estimate(noisy)
    x = reinclusion.apply(reinclusion.fit(mu, noisy), mu, noisy)
    raw, mu_raw = noisy * 4000 + 100, mu * 4000 + 100
    x_raw = reinclusion.apply(reinclusion.fit(mu_raw, raw), mu_raw, raw)
    np.testing.assert_allclose((x_raw - 100) / 4000, x, atol=1e-4)
    # Once fitted, a pixel's result looks REACH pixels away at most: a block
    # grown by that margin gives the whole's values.
    p = reinclusion.fit(mu, noisy)
    m = reinclusion.REACH
    grown = (slice(60 - m, 140 + m), slice(30 - m, 200 + m))
    block = reinclusion.apply(p, mu[grown], noisy[grown])
    np.testing.assert_allclose(block[m:-m, m:-m], x[60:140, 30:200], atol=1e-6)


def test_too_little_or_nothing_to_fit_keeps_the_prediction():
    rng = np.random.default_rng(4)
    small = rng.random((40, 40)).astype(np.float32)
    assert reinclusion.fit(small, small) is None
    assert reinclusion.apply(None, small, small) is small
    flat = np.full((128, 128), 7.0, np.float32)
    assert reinclusion.fit(flat, flat) is None
    with_nan = rng.random((128, 128)).astype(np.float32)
    with_nan[3, 3] = np.nan
    assert reinclusion.fit(with_nan, with_nan) is None


def test_the_calibration_region_is_central_and_bounded():
    region = reinclusion.calibration_region((8192, 4096))
    sides = [s.stop - s.start for s in region]
    assert np.prod(sides) <= reinclusion.CALIBRATION_VOXELS
    assert all(abs((s.start + s.stop) / 2 - n / 2) <= 1 for s, n in zip(region, (8192, 4096)))
    assert reinclusion.calibration_region((100, 200)) == (slice(0, 100), slice(0, 200))


def test_a_large_image_goes_in_bands_of_rows_with_the_same_result(clean, monkeypatch):
    noisy = add_noise(clean, np.random.default_rng(6), gaussian=0.05)
    mu = blind_spot_estimate(noisy)
    p = reinclusion.fit(mu, noisy)
    whole = reinclusion.apply(p, mu, noisy)
    monkeypatch.setattr(reinclusion, "APPLY_VOXELS", 40 * 256)  # bands of 40 rows (the floor is 4 * REACH)
    banded = reinclusion.apply(p, mu, noisy)
    np.testing.assert_allclose(banded, whole, atol=1e-6)
    assert psnr(clean, banded) > psnr(clean, mu)


def test_the_wiener_stage_keeps_fine_repeated_walls():
    """Thin walls a blurred prediction smooths away: groups of similar patches
    share the walls but not the noise, so the blend with the Wiener stage beats
    the residual rule alone (the blend is what `apply` returns)."""
    yy, xx = np.indices((192, 192))
    walls = ndi.gaussian_filter(np.where((yy % 9 == 0) | (xx % 9 == 0), 0.8, 0.2), 0.7).astype(np.float32)
    noisy = add_noise(walls, np.random.default_rng(3), gaussian=0.05)
    mu = blind_spot_estimate(noisy, sigma=0.8)
    params = reinclusion.fit(mu, noisy)
    residual_only = reinclusion._residual_rule(params, mu, noisy)
    x = reinclusion.apply(params, mu, noisy)
    assert psnr(walls, x) > psnr(walls, residual_only) + 0.5, (psnr(walls, residual_only), psnr(walls, x))
    # Every pixel is in some group, the borders too.
    assert np.isfinite(x).all() and psnr(walls[:4], x[:4]) > psnr(walls[:4], residual_only[:4])
