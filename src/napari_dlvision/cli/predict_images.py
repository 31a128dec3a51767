"""`dlvision predict --model CLASSIFIER --data DIR --out PRED.csv`: one row per image.

The CSV has a header and rows `path,label,score`: the image's path as found
under DIR (for a class-folder tree its parent folder is the true class; for
CIFAR batches `FILE.bin#record`), the predicted class name and its
probability.
"""

from __future__ import annotations

import csv


def run(args, kind):
    from ..core.errors import UserInputError
    from ..core.io import atomic_output
    from .common import check_outputs

    if args.image is not None:
        raise UserInputError(f"{args.model} is {kind.a_title}: give --data DIR, not --image")
    if args.out.suffix.lower() != ".csv":
        raise UserInputError(f"--out {args.out}: an image classifier writes a CSV file (name it .csv)")
    check_outputs([args.model, args.data], [args.out])
    model = kind.load(args.model)
    from ..data.image_sets import load_image_set

    data = load_image_set(args.data, split="test", class_names=model.class_names, size=model.size,
                          channels=model.n_channels)
    for note in data.notices:
        print(f"note: {note}", flush=True)
    pred = model.predict(data.images)
    labels, scores = pred.labels, pred.scores
    with atomic_output(args.out) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "score"])
            for path, k, s in zip(data.paths, labels, scores):
                w.writerow([path, model.class_names[int(k)], f"{float(s):.4f}"])
    print(f"wrote {args.out}: {len(data)} images")
