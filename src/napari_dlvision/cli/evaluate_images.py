"""`dlvision evaluate --model CLASSIFIER --data DIR`: accuracy, per-class precision/recall, confusion matrix.

DIR is a class-folder tree (folder names are the true classes) or a CIFAR
binary folder (its test batch is scored).
"""

from __future__ import annotations


def run(args, kind):
    from ..core.classification import evaluate
    from ..core.errors import UserInputError

    if args.data is None:
        raise UserInputError(f"{args.model} is {kind.a_title}: give --data DIR (class folders or CIFAR batches)")
    if args.image is not None or args.boxes is not None or args.score_threshold is not None:
        raise UserInputError("--image, --boxes and --score-threshold are for detectors; image classifiers take --data")
    model = kind.load(args.model)
    from ..data.image_sets import load_image_set

    data = load_image_set(args.data, split="test", class_names=model.class_names, size=model.size,
                          channels=model.n_channels)
    for note in data.notices:
        print(f"note: {note}", flush=True)
    known = data.labels >= 0
    if not known.any():
        raise UserInputError(f"{args.data} gives no true classes to score against: use class folders named "
                             f"after the model's classes ({', '.join(model.class_names[:5])}...)")
    pred = model.predict(data.images[known])
    print(evaluate(data.labels[known], pred.labels, model.class_names).report())
