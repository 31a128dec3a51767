"""The forest's train-and-predict as one generator of progress events.

The GUI runs it in a worker thread and applies each event to its layers on
the main thread; stopping the iteration cancels the work between steps.
Features of the image stay cached in `tiles`, so retraining after the next
stroke only recomputes what changed.
"""

from __future__ import annotations

import numpy as np

from .events import Progress
from .labels import as_strokes
from .pixel_classifier import PixelClassifier
from .tiling import FeatureTiles


def train_and_predict(clf: PixelClassifier, tiles: FeatureTiles, labels: np.ndarray, focus=None,
                      wanted=("segmentation",), foreground: int | None = None):
    """Fit `clf` on `labels`, then predict the whole image, `focus` box first.

    The labels array is only read. The last event's payload holds the
    outputs named in `wanted` (see core.pixel_model).
    """
    as_strokes(labels)  # an instance mask picked as the strokes layer is refused
    xs, ys = [], []
    yield Progress("features", 0, 1, "Computing features of labelled tiles…")
    for done, total, x, y in tiles.iter_training_data(labels):
        xs.append(x)
        ys.append(y)
        yield Progress("features", done, total, "Computing features of labelled tiles…")
    X = np.concatenate(xs) if xs else np.zeros((0, tiles.n_features), np.float32)
    y = np.concatenate(ys) if ys else np.zeros(0, np.int64)
    yield Progress("training", 0, 1, "Training the forest…")
    clf.fit_xy(X, y, tiles)
    yield from clf.iter_predict_outputs(None, wanted=wanted, foreground=foreground, focus=focus, tiles=tiles)
