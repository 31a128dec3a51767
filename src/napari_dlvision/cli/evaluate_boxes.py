"""`dlvision evaluate` for detectors: mAP@0.5, mAP@0.5:0.95, precision and recall.

    dlvision evaluate --model DETECTOR --image IMG --boxes GT.csv [--score-threshold T]
    dlvision evaluate --model DETECTOR --image FOLDER --boxes CSV_FOLDER   # IMG.png <-> IMG.csv (or IMG_boxes.csv)

All images are scored together (one COCO evaluation, each image or plane on
its own); precision and recall count the boxes scoring at least the
threshold (the model's unless given).
"""

from __future__ import annotations

from pathlib import Path


def _pairs(image, boxes):
    from ..core.errors import UserInputError
    from ..core.io import list_images

    if image.is_dir() != boxes.is_dir():
        raise UserInputError("give --image and --boxes both as files or both as folders")
    if not image.is_dir():
        return [(image, boxes)]
    pairs = []
    for img in list_images(image):
        found = [p for p in (boxes / f"{img.stem}.csv", boxes / f"{img.stem}_boxes.csv") if p.is_file()]
        if not found:
            raise UserInputError(f"no {img.stem}.csv (or {img.stem}_boxes.csv) in {boxes} for {img.name}")
        pairs.append((img, found[0]))
    return pairs


def run(args, kind):
    import numpy as np

    from ..core.box_metrics import evaluate_boxes
    from ..core.boxes import BoxTable, clip_to_image
    from ..core.errors import UserInputError
    from .train_detector import read_image_and_boxes

    if args.image is None or args.boxes is None:
        raise UserInputError(f"{args.model} is a detector: give --image and --boxes (ground truth)")
    if args.data is not None:
        raise UserInputError("--data is for image classifiers; give --image and --boxes")
    threshold = args.score_threshold
    if threshold is not None and not 0 < threshold < 1:
        raise UserInputError("--score-threshold must be between 0 and 1")
    model = kind.load(args.model)
    threshold = model.score_threshold if threshold is None else threshold
    predicted, truth, planes = [], [], 0
    for img_path, csv_path in _pairs(Path(args.image), Path(args.boxes)):
        image, table, has_channels = read_image_and_boxes(img_path, csv_path, class_names=model.class_names)
        # Truth is clipped to the image as training clips it: a box outside it cannot be found.
        spatial = image.shape[-3:-1] if has_channels else image.shape[-2:]
        table, notes = clip_to_image(table, spatial, image.shape[0] if table.is_stack else None)
        for note in notes:
            print(f"note: {csv_path.name}: {note}", flush=True)
        cands = model.candidates(image, -1 if has_channels else None)
        pred = model.select(cands, 0.0, model.nms_iou)  # mAP ranks every candidate
        n = image.shape[0] if table.is_stack else 1
        # Every image (and plane) becomes one plane of a combined stack, so nothing matches across images.
        predicted.append(pred.with_index(0) if not pred.is_stack else pred)
        truth.append(table.with_index(0) if not table.is_stack else table)
        predicted[-1].index, truth[-1].index = predicted[-1].index + planes, truth[-1].index + planes
        planes += n
    names = list(dict.fromkeys(n for t in truth + predicted for n in t.class_names))
    predicted = [t.renamed(names) for t in predicted]
    truth = [t.renamed(names) for t in truth]

    def joined(tables, scored):
        return BoxTable(np.concatenate([t.boxes for t in tables]), np.concatenate([t.classes for t in tables]),
                        names, np.concatenate([t.scores for t in tables]) if scored else None,
                        np.concatenate([t.index for t in tables]))

    scores = evaluate_boxes(joined(predicted, True), joined(truth, False), threshold, planes)
    if scores["true boxes"] == 0:
        raise UserInputError("the ground truth holds no boxes: mAP, precision and recall are undefined")
    for name in ("mAP@0.5", "mAP@0.5:0.95", "precision", "recall"):
        v = scores[name]
        print(f"{name:<14}{'n/a' if v != v else f'{v:.4f}'}")
    print(f"{int(scores['true boxes'])} true boxes, {int(scores['predicted boxes'])} predicted at score >= "
          f"{threshold:g} in {planes} image{'s' if planes > 1 else ''}/planes")
