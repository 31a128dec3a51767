"""Accuracy measures shared by tests, benchmarks and training reports."""

from __future__ import annotations

import numpy as np


def iou(pred: np.ndarray, true: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both empty)."""
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    union = np.logical_or(pred, true).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, true).sum() / union)


def matched_pairs(pred: np.ndarray, true: np.ndarray, threshold: float = 0.5) -> int:
    """Number of (predicted, true) instance pairs overlapping with IoU > threshold.

    With threshold >= 0.5 each instance matches at most one other, so a plain
    count of pairs is the true-positive count.
    """
    pred, true = np.asarray(pred).ravel(), np.asarray(true).ravel()
    both = (pred > 0) & (true > 0)
    pairs, inter = np.unique(
        np.stack([pred[both], true[both]]).astype(np.int64), axis=1, return_counts=True
    )
    if pairs.size == 0:
        return 0
    area_p = np.bincount(pred.astype(np.int64))
    area_t = np.bincount(true.astype(np.int64))
    union = area_p[pairs[0]] + area_t[pairs[1]] - inter
    return int(np.sum(inter / union > threshold))


def instance_f1(pred: np.ndarray, true: np.ndarray, threshold: float = 0.5) -> float:
    """F1 of instance matching at IoU > threshold (1.0 when both are empty)."""
    n_pred = len(np.unique(pred[pred > 0]))
    n_true = len(np.unique(true[true > 0]))
    if n_pred + n_true == 0:
        return 1.0
    tp = matched_pairs(pred, true, threshold)
    return 2 * tp / (n_pred + n_true)


def accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(true)))
