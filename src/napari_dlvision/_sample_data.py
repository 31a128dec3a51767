"""Offline sample data for File > Open Sample > DL Vision."""

from __future__ import annotations

from .data.synthetic import nuclei
from .palette import annotation_colormap


def _visible_strokes(scribbles):
    """Strokes three pixels wide: one-pixel lines vanish at screen zoom."""
    from scipy import ndimage as ndi

    size = (3,) * scribbles.ndim if scribbles.ndim == 2 else (1, 3, 3)
    wide = ndi.grey_dilation(scribbles, size=size)
    return wide.astype(scribbles.dtype)


def _nuclei_layers(sample, name, scale=None):
    kw = {} if scale is None else {"scale": scale}
    # Annotations before the ground truth: layer pickers offer the first one.
    return [
        (sample.image, {"name": name, **kw}, "image"),
        (_visible_strokes(sample.scribbles), {"name": f"{name} annotations", "opacity": 1.0,
                                              "colormap": annotation_colormap(), **kw}, "labels"),
        (sample.instances, {"name": f"{name} ground truth", "visible": False, **kw}, "labels"),
    ]


def nuclei_2d():
    return _nuclei_layers(nuclei((512, 512), seed=1), "nuclei")


def nuclei_3d():
    return _nuclei_layers(nuclei((32, 128, 128), radius=(7.0, 11.0), seed=2), "nuclei 3d")


def coins():
    from skimage import data

    return [(data.coins(), {"name": "coins"}, "image")]


def cell():
    from skimage import data

    return [(data.cell(), {"name": "cell"}, "image")]


def noisy_cells():
    """Two independent noisy acquisitions of synthetic cells (camera counts) and the clean image."""
    import numpy as np

    from .data.noisy import noisy_cells as make

    clean, (a, b) = make((256, 256), sigma=0.15, n=2, seed=7)
    counts = lambda x: np.clip(x * 1000 + 100, 0, None).astype(np.float32)  # noqa: E731
    return [
        (counts(a), {"name": "noisy cells"}, "image"),
        (counts(b), {"name": "noisy cells (second acquisition)", "visible": False}, "image"),
        (counts(clean), {"name": "cells (clean)", "visible": False}, "image"),
    ]
