"""What the image-classifier dock runs in its worker thread: reading, training, predicting.

torch is imported here, in the worker, never on napari's main thread; the
layer data handed in is converted to arrays here too (it may be dask).
"""

from __future__ import annotations

import numpy as np

from ..core.events import Progress
from ..core.mosaic import labels_from_strokes


def _as_images(data, rgb: bool) -> np.ndarray:
    """(N, H, W, C) numpy images from a stack layer's data (runs in the worker: may be dask)."""
    x = np.asarray(data)
    if not rgb:
        x = x[..., None]
    return x[..., :3] if x.shape[-1] == 4 else x


def load_job(path):
    from ..data.image_sets import iter_load

    yield from iter_load(path)


def train_job(holder, model, arch, device, images, file_labels, strokes, mosaic, names, settings_kw):
    """Worker: torch first, then labels from the strokes, then the shared trainer."""
    from .torch_import import import_torch

    import_torch()
    from ..data.image_sets import ImageSet
    from ..dl.classify import ImageClassifier
    from ..dl.classify_train import ClassifierSettings, train_classifier

    x = _as_images(images, holder["rgb"])
    labels = np.full(len(x), -1, np.int64) if file_labels is None else np.array(file_labels)
    painted = labels_from_strokes(strokes, mosaic)
    labels[: len(painted)][painted > 0] = painted[painted > 0] - 1  # strokes override file labels
    holder["labels"] = labels
    n_classes = max(len(names), int(labels.max()) + 1)
    names = list(names) + [f"class {k + 1}" for k in range(len(names), n_classes)]
    clf = model or ImageClassifier(arch, device=device)
    holder["model"] = clf
    yield from train_classifier(clf, ImageSet(x, labels, names, []), ClassifierSettings(arch=clf.arch, **settings_kw))


def predict_job(model, images, rgb):
    from .torch_import import import_torch

    import_torch()
    x = model.check_images(_as_images(images, rgb))
    proba = None
    for done, total, proba in model.iter_predict_proba(x):
        yield Progress("predicting", done, total, f"predicting {done}/{total} images")
    yield Progress("done", len(x), len(x), payload={"proba": proba})
