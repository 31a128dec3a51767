"""Detection scores with pycocotools (the COCO reference evaluation), not our own code.

    evaluate_boxes(predicted, truth, score_threshold=0.3)
    -> {"mAP@0.5": ..., "mAP@0.5:0.95": ..., "precision": ..., "recall": ..., "F1": ..., ...}

mAP is COCO's: area under the interpolated precision-recall curve of every
scored box, averaged over classes, at IoU 0.5 and averaged over IoU 0.50,
0.55, ..., 0.95. Precision and recall count the boxes scoring at least the
threshold, matched to the truth at IoU 0.5 by COCO's own greedy matching
(highest score first). A stack is one COCO "image" per plane, so boxes never
match across planes. COCO caps detections per image at 100; the cap here is
raised to the number of boxes given, so crowded images count every box.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np

from .boxes import BoxTable
from .errors import UserInputError

METRICS = ("mAP@0.5", "mAP@0.5:0.95", "precision", "recall", "F1")


def _coco(table: BoxTable, image_ids, scored: bool):
    from pycocotools.coco import COCO

    b = table.boxes
    planes = table.index if table.index is not None else np.zeros(len(table), np.int64)
    anns = []
    for i in range(len(table)):
        h, w = float(b[i, 2] - b[i, 0]), float(b[i, 3] - b[i, 1])
        ann = {"id": i + 1, "image_id": int(planes[i]) + 1, "category_id": int(table.classes[i]),
               "bbox": [float(b[i, 1]), float(b[i, 0]), w, h], "area": h * w, "iscrowd": 0}
        if scored:
            ann["score"] = float(table.scores[i])
        anns.append(ann)
    coco = COCO()
    coco.dataset = {"images": [{"id": int(k)} for k in image_ids], "annotations": anns,
                    "categories": [{"id": k} for k in range(1, len(table.class_names) + 1)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate_boxes(predicted: BoxTable, truth: BoxTable, score_threshold: float = 0.3,
                   n_planes: int | None = None) -> dict[str, float]:
    """COCO mAP of all predicted boxes; precision, recall and F1 of those scoring >= threshold.

    Classes are matched by name. `n_planes`: planes of a stack (planes with
    neither kind of box still count); None: those that hold boxes. Scores
    that cannot be computed (no true boxes) are NaN.
    """
    from pycocotools.cocoeval import COCOeval

    if predicted.scores is None:
        raise UserInputError("predicted boxes need scores")
    if predicted.is_stack != truth.is_stack:
        raise UserInputError("predicted and true boxes must both be for a stack (index column) or both not")
    predicted = predicted.renamed(truth.class_names)
    truth = truth.renamed(predicted.class_names)  # same names, same order, in both
    if truth.is_stack:
        planes = set(range(n_planes)) if n_planes else set(truth.index.tolist()) | set(predicted.index.tolist())
        image_ids = sorted(k + 1 for k in planes) or [1]
    else:
        image_ids = [1]
    n_true = len(truth)
    kept = predicted.above(score_threshold)
    out = {"true boxes": float(n_true), "predicted boxes": float(len(kept))}
    if n_true == 0:
        return {**out, **{m: math.nan for m in METRICS}}
    if len(predicted) == 0:
        return {**out, "mAP@0.5": 0.0, "mAP@0.5:0.95": 0.0, "precision": math.nan, "recall": 0.0, "F1": 0.0}
    gt, dt = _coco(truth, image_ids, False), _coco(predicted, image_ids, True)
    ev = COCOeval(gt, dt, "bbox")
    per_image = np.bincount(predicted.index if predicted.is_stack else np.zeros(len(predicted), int))
    ev.params.maxDets = [int(max(100, per_image.max()))]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, -1]  # (IoU thresholds, recall points, classes), all areas
    present = [k for k in range(precision.shape[2]) if (precision[:, :, k] > -1).any()]
    p = precision[:, :, present]
    out["mAP@0.5:0.95"] = float(np.mean(np.where(p > -1, p, 0))) if present else math.nan
    out["mAP@0.5"] = float(np.mean(np.where(p[0] > -1, p[0], 0))) if present else math.nan
    tp = fp = gt_count = 0
    all_areas = ev.params.areaRng[0]
    for e in ev.evalImgs:
        if e is None or list(e["aRng"]) != list(all_areas):
            continue
        scores = np.asarray(e["dtScores"])
        above = (scores >= score_threshold) & ~np.asarray(e["dtIgnore"][0], bool)
        matched = np.asarray(e["dtMatches"][0]) > 0
        tp += int(np.sum(above & matched))
        fp += int(np.sum(above & ~matched))
        gt_count += int(np.sum(~np.asarray(e["gtIgnore"], bool)))
    out["precision"] = tp / (tp + fp) if tp + fp else math.nan
    out["recall"] = tp / gt_count if gt_count else math.nan
    out["F1"] = 2 * tp / (2 * tp + fp + (gt_count - tp)) if gt_count else math.nan
    return out


def describe_scores(scores: dict[str, float]) -> str:
    """One line: mAP@0.5 0.93, mAP@0.5:0.95 0.61, precision 0.95, recall 0.90."""
    parts = []
    for m in ("mAP@0.5", "mAP@0.5:0.95", "precision", "recall"):
        v = scores.get(m, math.nan)
        parts.append(f"{m} {'n/a' if v is None or not math.isfinite(v) else f'{v:.3f}'}")
    return ", ".join(parts)
