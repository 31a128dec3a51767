"""What an image classifier's outputs mean: predictions, scores, splits, uncertainty.

Pure numpy, shared by the trainer, the CLI and the widget. Classes are
0-based indices here (0..K-1) and -1 means unlabelled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UserInputError


@dataclass
class Prediction:
    proba: np.ndarray  # (N, K)

    @property
    def labels(self) -> np.ndarray:
        return self.proba.argmax(1)

    @property
    def scores(self) -> np.ndarray:
        """Probability of the predicted class."""
        return self.proba.max(1)

    @property
    def margins(self) -> np.ndarray:
        """p(first) - p(second): small means the model hesitates between two classes."""
        if self.proba.shape[1] < 2:
            return np.ones(len(self.proba), np.float32)
        top2 = np.partition(self.proba, -2, axis=1)[:, -2:]
        return top2[:, 1] - top2[:, 0]


def label_next(margins: np.ndarray, labelled: np.ndarray, n: int | None = None) -> np.ndarray:
    """Indices of unlabelled images, smallest margin first: label these next."""
    idx = np.flatnonzero(~np.asarray(labelled, bool))
    order = idx[np.argsort(margins[idx], kind="stable")]
    return order if n is None else order[:n]


def stratified_split(labels: np.ndarray, fraction: float, seed: int = 0, cap: int | None = None):
    """(train indices, validation indices) of the labelled images, per class.

    Each class with at least 2 images gives about `fraction` of them (at least
    one) to validation; classes with one image stay in training. `cap`
    bounds the validation set (big data sets need no more to rank weights).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    n_lab = int((labels >= 0).sum())
    if cap is not None and n_lab:
        fraction = min(fraction, cap / n_lab)
    train, val = [], []
    for c in np.unique(labels[labels >= 0]):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = 0 if len(idx) < 2 or fraction <= 0 else max(1, int(round(fraction * len(idx))))
        val.append(idx[:k])
        train.append(idx[k:])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)  # noqa: E731
    return cat(train), cat(val)


def check_trainable(labels: np.ndarray, class_names) -> None:
    """Raise what a person needs to hear when the labels cannot train a classifier."""
    labels = np.asarray(labels)
    present = np.unique(labels[labels >= 0])
    if present.size == 0:
        raise UserInputError("no image is labelled: paint a stroke of a class on some images (or load class folders)")
    if present.size < 2:
        name = class_names[int(present[0])] if int(present[0]) < len(class_names) else f"class {present[0] + 1}"
        raise UserInputError(f"only {name!r} is labelled: label images of at least two classes")


def confusion(true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) counts: rows true class, columns predicted class (unlabelled images ignored)."""
    true, pred = np.asarray(true), np.asarray(pred)
    keep = true >= 0
    return np.bincount(true[keep] * n_classes + pred[keep], minlength=n_classes * n_classes).reshape(
        n_classes, n_classes)


@dataclass
class Evaluation:
    matrix: np.ndarray  # (K, K)
    class_names: list[str]

    @property
    def n(self) -> int:
        return int(self.matrix.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.matrix) / max(1, self.n))

    @property
    def precision(self) -> np.ndarray:
        """Per class; NaN where the class was never predicted."""
        col = self.matrix.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(col > 0, np.diag(self.matrix) / col, np.nan)

    @property
    def recall(self) -> np.ndarray:
        """Per class; NaN where the class has no image."""
        row = self.matrix.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(row > 0, np.diag(self.matrix) / row, np.nan)

    def to_json(self) -> dict:
        nan_none = lambda a: [None if np.isnan(v) else round(float(v), 4) for v in a]  # noqa: E731
        return {"n": self.n, "accuracy": round(self.accuracy, 5), "precision": nan_none(self.precision),
                "recall": nan_none(self.recall), "confusion": self.matrix.tolist()}

    def report(self) -> str:
        """Accuracy, per-class precision/recall and the confusion matrix as plain text."""
        names = [n if len(n) <= 12 else n[:11] + "." for n in self.class_names]
        wide = max(8, *(len(n) for n in names))
        fmt = lambda v: "   -  " if np.isnan(v) else f"{v:6.3f}"  # noqa: E731
        lines = [f"accuracy {self.accuracy:.4f} ({int(np.trace(self.matrix))} of {self.n} images)", "",
                 f"{'class':<{wide}}  precision  recall  images"]
        for k, name in enumerate(names):
            lines.append(f"{name:<{wide}}  {fmt(self.precision[k])}    {fmt(self.recall[k])}  "
                         f"{int(self.matrix[k].sum()):6d}")
        cell = max(5, len(str(int(self.matrix.max(initial=0)))) + 1)
        lines += ["", "confusion matrix (rows: true class, columns: predicted)",
                  " " * wide + "".join(f"{k:>{cell}d}" for k in range(len(names)))]
        for k, name in enumerate(names):
            lines.append(f"{name:<{wide}}" + "".join(f"{int(v):>{cell}d}" for v in self.matrix[k]))
        lines.append("columns: " + ", ".join(f"{k} {n}" for k, n in enumerate(names)))
        return "\n".join(lines)


def evaluate(true: np.ndarray, pred: np.ndarray, class_names) -> Evaluation:
    true = np.asarray(true)
    if not (true >= 0).any():
        raise UserInputError("no image has a known class to score against (class folders or a CSV give them)")
    return Evaluation(confusion(true, pred, len(class_names)), list(class_names))
