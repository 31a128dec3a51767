"""Small labelled image sets made on the spot, for tests and demonstrations.

Three (or up to six) classes a small network learns in seconds but a
constant guess does not: stripes across, stripes down, a bright disc, a
ring, a cross, a checkerboard; each drawn with random phase, position,
contrast and colour tint over noise.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES = ("across", "down", "disc", "ring", "cross", "checker")


def _pattern(k: int, size: int, rng) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    period = rng.uniform(3.5, 6.0)
    phase = rng.uniform(0, 2 * np.pi)
    cy, cx = rng.uniform(0.35, 0.65, 2) * size
    r = np.hypot(yy - cy, xx - cx)
    rad = rng.uniform(0.2, 0.3) * size
    if k == 0:
        return 0.5 + 0.5 * np.sin(2 * np.pi * yy / period + phase)
    if k == 1:
        return 0.5 + 0.5 * np.sin(2 * np.pi * xx / period + phase)
    if k == 2:
        return (r < rad).astype(np.float32)
    if k == 3:
        return (np.abs(r - rad) < 1.5).astype(np.float32)
    if k == 4:
        return ((np.abs(yy - cy) < 1.5) | (np.abs(xx - cx) < 1.5)).astype(np.float32)
    return ((np.floor(yy / 4) + np.floor(xx / 4)) % 2).astype(np.float32)


def toy_classes(n_per_class: int = 20, size: int = 16, n_classes: int = 3, rgb: bool = True, seed: int = 0):
    """(images (N, size, size, 3 or 1) uint8, labels (N,) 0-based, class names), classes interleaved."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n_per_class):
        for k in range(n_classes):
            p = _pattern(k, size, rng) * rng.uniform(0.5, 0.9) + rng.normal(0, 0.12, (size, size))
            tint = rng.uniform(0.6, 1.0, 3 if rgb else 1)
            img = np.clip(p[..., None] * tint + 0.05, 0, 1)
            images.append((img * 255).astype(np.uint8))
            labels.append(k)
    return np.stack(images), np.array(labels, np.int64), list(CLASS_NAMES[:n_classes])


def write_class_folders(root, images, labels, names, suffix: str = ".png"):
    """DIR/<class>/NNNN.png (or .jpg/.tif) from arrays; returns the written paths."""
    from pathlib import Path

    import imageio.v3 as iio
    import tifffile

    root = Path(root)
    paths = []
    for i, (img, k) in enumerate(zip(images, labels)):
        folder = root / names[k]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:04d}{suffix}"
        if suffix in (".tif", ".tiff"):
            tifffile.imwrite(path, img)
        else:
            iio.imwrite(path, img[..., 0] if img.shape[-1] == 1 else img)
        paths.append(path)
    return paths


def write_cifar_batch(path, images, labels, coarse=None):
    """A CIFAR binary batch: per record [coarse label] label + R, G, B planes (32 x 32 images)."""
    images = np.asarray(images, np.uint8)
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    cols = [np.asarray(labels, np.uint8)[:, None], planes]
    if coarse is not None:
        cols.insert(0, np.asarray(coarse, np.uint8)[:, None])
    np.concatenate(cols, axis=1).tofile(path)
