"""Random-forest pixel classifier on filter features, from sparse strokes.

    dlvision train rf --image IMG --labels STROKES --out MODEL [--image IMG2 --labels STROKES2]
"""

from __future__ import annotations

import time
from pathlib import Path

from .common import (check_named_classes, check_outputs, class_names, image_options, int_in, model_path,
                     read_pairs)


def add_arguments(p):
    p.add_argument("--image", action="append", required=True, type=Path,
                   help="image file (TIFF, PNG, JPEG); repeat with --labels for several")
    p.add_argument("--labels", action="append", required=True, type=Path,
                   help="labels TIFF/PNG, image shape without channels; 0 = unlabelled, 1..K = classes")
    p.add_argument("--out", required=True, type=model_path, help="model file to write")
    p.add_argument("--features", default=None,
                   help="feature subset, e.g. 'gaussian@0.3,hessian@1.6,log' "
                        "(a bare family takes every --scales); default: all families at 0.7-5")
    p.add_argument("--scales", default=None,
                   help="scales in pixels (above 0, up to 32), e.g. 1,1.6,3.5: for bare families in --features, "
                        "or alone for every family; below 0.5 only Gaussian smoothing is computed")
    p.add_argument("--trees", type=int_in(1, 10_000), default=50, help="number of trees (default 50)")
    p.add_argument("--max-depth", type=int_in(0, 1000), default=0, help="maximum tree depth (default 0: none)")
    p.add_argument("--class-names", type=class_names, default=None,
                   help="comma-separated names of classes 1..K")
    image_options(p)


def run(args):
    from ..core.features import FAMILIES, FeatureSpec
    from ..core.forest import prefetch_sklearn
    from ..core.labels import as_strokes
    from ..core.pixel_classifier import PixelClassifier

    check_outputs(args.image + args.labels, [args.out])
    prefetch_sklearn("sklearn.ensemble")  # imports while the images are read and filtered
    if args.features:
        spec = FeatureSpec.parse(args.features, args.scales)
    elif args.scales:
        spec = FeatureSpec.parse(",".join(FAMILIES), args.scales)
    else:
        spec = FeatureSpec.default()
    clf = PixelClassifier(spec, args.trees, args.max_depth or None, args.class_names)
    images, labels, axis = read_pairs(args.image, args.labels, args.channel_axis)
    labels = [as_strokes(lab, f"labels of {Path(name).name}") for lab, name in zip(labels, args.labels)]
    check_named_classes(args.class_names, labels)
    t0 = time.perf_counter()
    clf.fit(images, labels, channel_axis=axis, spacing=args.spacing)
    clf.save(args.out)
    counts = ", ".join(f"class {k}: {n}" for k, n in clf.training["pixels_per_class"].items())
    print(f"trained on {counts} labelled pixels in {time.perf_counter() - t0:.1f} s; wrote {args.out}")
