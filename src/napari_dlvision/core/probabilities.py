"""From class probabilities (K, *spatial) to what users look at.

Probability channel k belongs to class k + 1; segmentations hold class ids.
"""

from __future__ import annotations

import numpy as np


def segmentation(prob: np.ndarray) -> np.ndarray:
    """Class id (1..K) of the most probable class at each pixel."""
    dtype = np.uint8 if prob.shape[0] < 255 else np.uint16
    return (np.argmax(prob, axis=0) + 1).astype(dtype)


def uncertainty(prob: np.ndarray) -> np.ndarray:
    """1 - (p_max - p_second): 0 where the model is sure, 1 where it is torn."""
    if prob.shape[0] < 2:
        return np.zeros(prob.shape[1:], np.float32)
    top2 = np.partition(prob, -2, axis=0)[-2:]
    return (1.0 - (top2[1] - top2[0])).astype(np.float32)
