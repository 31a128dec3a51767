"""Checks shared by the CLI and widget tests."""

import numpy as np


def assert_denoised_alike(got, want):
    """Two denoisings of one image by one model, run in different threads or
    processes (the widget's worker and the test, dask's workers and the whole
    image): the network's sums may round differently there (another thread count), and the put-back's block matching ranks
    patches by those outputs, so at a near-tie a patch's group changes and a
    few pixels move a little. Nearly all pixels agree to float precision, the
    rest by well under 1% of the image's range; a real difference (units, the
    put-back on or off, a jump of tens of counts) fails both checks."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    diff, span = np.abs(got - want), float(np.ptp(want))
    assert np.mean(diff > 1e-4 * span) < 0.01, f"{np.mean(diff > 1e-4 * span):.2%} of the pixels differ"
    assert diff.max() < 0.005 * span, f"largest difference {diff.max():.3g} of a range of {span:.3g}"
