"""The normalisation sample of a lazy image is the in-memory one: the same
flattened regular subsample, read band by band (or point by point from one
plane too big for a band)."""

import numpy as np
import pytest

da = pytest.importorskip("dask.array")

from napari_dlvision.core import lazy  # noqa: E402


@pytest.mark.parametrize("shape, chunks", [((300, 340), 64), ((7, 50, 60), (3, 16, 16))])
@pytest.mark.parametrize("band_bytes", [lazy.SAMPLE_BAND_BYTES, 100, 1])
def test_flat_sample_equals_the_in_memory_subsample(shape, chunks, band_bytes, monkeypatch):
    monkeypatch.setattr(lazy, "SAMPLE_BAND_BYTES", band_bytes)
    a = np.random.default_rng(0).integers(0, 5000, shape).astype(np.uint16)
    idx = np.arange(0, a.size, 7)
    np.testing.assert_array_equal(lazy._flat_sample(da.from_array(a, chunks=chunks), idx), a.ravel()[idx])
