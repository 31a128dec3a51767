import functools

import numpy as np
import pytest

from napari_dlvision.data.synthetic import nuclei


@functools.lru_cache
def _nuclei(shape, seed):
    return nuclei(shape, seed=seed)


@pytest.fixture
def sample2d():
    """256 x 256 synthetic nuclei with ~20 scribbled strokes (cached, read-only)."""
    s = _nuclei((256, 256), 4)
    for a in (s.image, s.instances, s.scribbles):
        a.setflags(write=False)
    return s


@pytest.fixture
def sample3d():
    s = _nuclei((24, 64, 64), 5)
    for a in (s.image, s.instances, s.scribbles):
        a.setflags(write=False)
    return s


@pytest.fixture
def rng():
    return np.random.default_rng(0)
