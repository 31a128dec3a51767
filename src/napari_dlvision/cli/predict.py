"""Apply a model file to an image or to every image of a folder.

    dlvision predict --model MODEL --image IMG --out SEG.tif [--probabilities P.tif] [--instances I.tif]
    dlvision predict --model MODEL --image FOLDER --out RESULTS/     # FOLDER/x.png -> RESULTS/x_segmentation.tif

Outputs go to temporary files renamed into place; an output that names an
input, or an output folder that is the input folder, is refused before any
work starts.
"""

from __future__ import annotations

from pathlib import Path

# Extra outputs of pixel classifiers, beside the main one (--out).
PIXEL_EXTRA = ("probabilities", "uncertainty", "instances")


def add_arguments(p):
    from .common import image_options

    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--image", required=True, type=Path, help="image file, or a folder of images")
    p.add_argument("--out", required=True, type=Path,
                   help="the main output (a segmentation for pixel classifiers); a folder when --image is one")
    # With a folder of images these only ask for the output; files go into --out.
    p.add_argument("--probabilities", type=Path, help="pixel classifiers: class probabilities (K, ...)")
    p.add_argument("--uncertainty", type=Path, help="pixel classifiers: 1 - (p_max - p_second)")
    p.add_argument("--instances", type=Path, help="pixel classifiers: instance labels of the foreground class")
    p.add_argument("--foreground", type=int, default=None,
                   help="class id split into instances (default: the highest class id)")
    image_options(p)


def run(args):
    from .. import kinds
    from ..core.apply import iter_predict_folder, predict_file, write_output
    from ..core.errors import UserInputError
    from ..core.io import list_images
    from .common import check_outputs

    extra = {k: getattr(args, k) for k in PIXEL_EXTRA if getattr(args, k) is not None}
    folder = args.image.is_dir()
    if not folder:
        check_outputs([args.image, args.model], [args.out, *extra.values()])
    kind = kinds.kind_of(args.model)
    if kind.task != kinds.PIXELS and (extra or args.foreground is not None):
        raise UserInputError(f"--probabilities, --uncertainty, --instances and --foreground are for pixel "
                             f"classifiers; {args.model} is a {kind.title}")
    model = kind.load(args.model)
    if args.foreground is not None and not 1 <= args.foreground <= model.n_classes:
        raise UserInputError(f"--foreground must be a class id between 1 and {model.n_classes}")
    options = {"foreground": args.foreground} if kind.task == kinds.PIXELS else {}
    wanted = [model.MAIN_OUTPUT, *extra]
    if folder:
        files = list_images(args.image)
        if args.out.exists() and not args.out.is_dir():
            raise UserInputError(f"--out {args.out} is a file; give a folder for a folder of images")
        last = None
        for ev in iter_predict_folder(model, files, args.out, wanted, args.channel_axis, args.spacing, **options):
            if ev.stage == "file":
                print(f"[{ev.done}/{ev.total}] {ev.message}", flush=True)
            last = ev
        print(last.message, flush=True)
        if last.payload["failed"]:
            raise UserInputError(f"{len(last.payload['failed'])} of {last.total} files failed (listed above)")
        return
    results = predict_file(model, args.image, args.channel_axis, args.spacing, wanted, **options)
    written = [write_output(args.out, results[model.MAIN_OUTPUT])]
    for name, path in extra.items():
        written.append(write_output(path, results[name]))
    print("wrote " + ", ".join(map(str, written)))
