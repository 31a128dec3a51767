"""Score a model against ground truth and print the figures.

    dlvision evaluate --model DETECTOR --image IMG --boxes GT.csv    # mAP@0.5, mAP@0.5:0.95, precision, recall
    dlvision evaluate --model CLASSIFIER --data DIR                  # accuracy, per-class precision/recall, confusion

Detectors and image classifiers are scored here; pixel models and
denoisers by the benchmarks (bench/).
"""
# Each task has its own evaluator module (cli/evaluate_<task>.py with
# run(args, kind)); this command only dispatches on the model's kind.

from __future__ import annotations

import importlib
from pathlib import Path

from .common import positive_float

EVALUATORS = {"boxes": "napari_dlvision.cli.evaluate_boxes", "images": "napari_dlvision.cli.evaluate_images"}


def add_arguments(p):
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--image", type=Path, default=None, help="detectors: an image file (or a folder of images)")
    p.add_argument("--boxes", type=Path, default=None, help="detectors: ground-truth boxes CSV (or a folder of CSVs)")
    p.add_argument("--data", type=Path, default=None,
                   help="image classifiers: a class-folder tree or a CIFAR binary folder")
    p.add_argument("--score-threshold", type=positive_float, default=None,
                   help="detectors: score above which a box counts for precision and recall")


def run(args):
    from .. import kinds
    from ..core.errors import UserInputError

    kind = kinds.kind_of(args.model)
    module = EVALUATORS.get(kind.task)
    if module is None:
        raise UserInputError(f"{args.model} is {kind.a_title}; `evaluate` scores detectors and image classifiers")
    importlib.import_module(module).run(args, kind)
