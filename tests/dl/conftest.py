"""Shared fixtures for the deep-learning tests: small real trainings on CPU."""

import functools
import os

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_dlvision.data.synthetic import nuclei

if "PYTEST_XDIST_WORKER" not in os.environ:  # workers have their share from tests/conftest.py
    torch.set_num_threads(2)


def _touching_pairs(shape, n_pairs, seed, radius=(9.0, 12.0), separation=(1.55, 1.85)):
    """Pairs of touching nucleus-like discs, one pair per grid cell, random angle.

    Returns (uint16 image, int32 instances). Centres are `separation` radii
    apart, so each pair overlaps and only a boundary tells them apart.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape, dtype=np.float32)
    inst = np.zeros(shape, np.int32)
    nearest = np.full(shape, np.inf, np.float32)
    bright = np.zeros(shape, np.float32)
    cells = int(np.ceil(np.sqrt(n_pairs)))
    cell = np.array(shape, float) / cells
    k = 0
    for i in range(n_pairs):
        cy, cx = (i // cells + 0.5) * cell[0], (i % cells + 0.5) * cell[1]
        r, angle = rng.uniform(*radius), rng.uniform(0, np.pi)
        half = rng.uniform(*separation) * r / 2
        for sign in (-1, 1):
            k += 1
            d = np.hypot(yy - cy - sign * half * np.sin(angle), xx - cx - sign * half * np.cos(angle)) / r
            inside = (d < 1) & (d < nearest)
            nearest = np.where(inside, d, nearest)
            inst[inside] = k
            bright[inside] = rng.uniform(0.55, 1.0) * (1 - 0.25 * d[inside] ** 2)
    img = ndi.gaussian_filter(bright, 1.2) + 0.1 + rng.normal(0, 0.045, shape)
    return (np.clip(img, 0, None) * 3000).astype(np.uint16), inst


@pytest.fixture(scope="session")
def touching_pairs():
    """The generator of touching disc pairs, as a function."""
    return _touching_pairs


@functools.lru_cache
def _nuclei(shape, seed):
    s = nuclei(shape, seed=seed)
    for a in (s.image, s.instances, s.scribbles):
        a.setflags(write=False)
    return s


@pytest.fixture(scope="session")
def train2d():
    return _nuclei((128, 128), 4)


@pytest.fixture(scope="session")
def test2d():
    return _nuclei((128, 128), 9)


@pytest.fixture(scope="session")
def sparse_run(train2d):
    """A U-Net trained briefly from scribbles: (segmenter, training events)."""
    from napari_dlvision.dl.segmenter import UNetSegmenter
    from napari_dlvision.dl.pixel_train import TrainSettings, train_unet

    seg = UNetSegmenter(mode="sparse", class_names=["background", "nucleus"])
    settings = TrainSettings(steps=150, patch_size=64, batch_size=4, seed=0)
    events = list(train_unet(seg, train2d.image, train2d.scribbles, settings))
    return seg, events


@pytest.fixture(scope="session")
def dense_run():
    """A U-Net trained briefly on touching disc pairs from instance masks."""
    from napari_dlvision.dl.segmenter import UNetSegmenter
    from napari_dlvision.dl.pixel_train import TrainSettings, train_unet

    image, inst = _touching_pairs((128, 128), 9, seed=0)
    seg = UNetSegmenter(mode="dense")
    settings = TrainSettings(steps=120, patch_size=64, batch_size=4, seed=0)
    events = list(train_unet(seg, image, inst, settings))
    return seg, events
