"""Train-and-predict as one generator of progress events.

The GUI runs it in a worker thread and applies each event to its layers on
the main thread; stopping the iteration cancels the work between steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .instances import instances_from_segmentation
from .pixel_classifier import PixelClassifier, segmentation
from .tiling import FeatureTiles


@dataclass
class Event:
    stage: str  # "features", "training", "predicting", "instances", "done"
    done: int
    total: int
    block: tuple | None = None  # slices of the spatial block just predicted
    probabilities: np.ndarray | None = None  # (K, *block) for that block
    instances: np.ndarray | None = None


def train_and_predict(clf: PixelClassifier, tiles: FeatureTiles, labels: np.ndarray,
                      focus=None, instances_of: int | None = None):
    """Fit `clf` on `labels`, then predict the whole image, `focus` box first.

    `instances_of` names the class split into instances at the end (None:
    skip). The labels array is only read.
    """
    xs, ys = [], []
    yield Event("features", 0, 1)
    for done, total, x, y in tiles.iter_training_data(labels):
        xs.append(x)
        ys.append(y)
        yield Event("features", done, total)
    X = np.concatenate(xs) if xs else np.zeros((0, tiles.n_features), np.float32)
    y = np.concatenate(ys) if ys else np.zeros(0, np.int64)
    yield Event("training", 0, 1)
    clf.fit_xy(X, y, tiles)
    yield from predict_events(clf, tiles, focus, instances_of)


def predict_events(clf: PixelClassifier, tiles: FeatureTiles, focus=None, instances_of=None):
    prob = np.empty((clf.n_classes,) + tiles.shape, np.float32)
    for done, total, block in clf.iter_predict(tiles, prob, focus):
        yield Event("predicting", done, total, block, prob[(slice(None),) + block])
    if instances_of is not None:
        yield Event("instances", 0, 1)
        seg = segmentation(prob)
        spacing = tiles.spacing
        yield Event("instances", 1, 1, instances=instances_from_segmentation(seg, instances_of, spacing=spacing))
    yield Event("done", 1, 1)
