"""Apply a model file to an image or to every image of a folder.

    dlvision predict --model MODEL --image IMG --out SEG.tif [--probabilities P.tif] [--instances I.tif]
    dlvision predict --model MODEL --image FOLDER --out RESULTS/     # FOLDER/x.png -> RESULTS/x_segmentation.tif
    dlvision predict --model CLASSIFIER --data DIR --out PRED.csv     # image classifiers: one row per image
    dlvision predict --model MODEL --image BIG.zarr --out SEG.zarr [--chunk 1024] [--dask-address tcp://HOST:PORT]

Zarr / OME-Zarr inputs and outputs, TIFFs larger than memory, and any of
--chunk, --scheduler, --workers or --dask-address run the prediction as a
dask graph of tiles with halos (pixel classifiers and denoisers), so memory
stays flat whatever the image's size.

Outputs go to temporary files renamed into place; an output that names an
input, or an output folder that is the input folder, is refused before any
work starts.
"""

from __future__ import annotations

from pathlib import Path

# Extra outputs of pixel classifiers, beside the main one (--out).
PIXEL_EXTRA = ("probabilities", "uncertainty", "instances")
# Tasks that predict a whole data set at once (`--data`), not image by image.
DATA_PREDICTORS = {"images": "napari_dlvision.cli.predict_images"}


def add_arguments(p):
    from .common import image_options, int_in

    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--image", type=Path, default=None, help="image file, or a folder of images")
    p.add_argument("--data", type=Path, default=None,
                   help="image classifiers: a folder of images (class folders or flat) to classify")
    p.add_argument("--out", required=True, type=Path,
                   help="the main output (a segmentation for pixel classifiers); a folder when --image is one")
    # With a folder of images these only ask for the output; files go into --out.
    p.add_argument("--probabilities", type=Path, help="pixel classifiers: class probabilities (K, ...)")
    p.add_argument("--uncertainty", type=Path, help="pixel classifiers: 1 - (p_max - p_second)")
    p.add_argument("--instances", type=Path, help="pixel classifiers: instance labels of the foreground class")
    p.add_argument("--foreground", type=int, default=None,
                   help="class id split into instances (default: the highest class id)")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="detectors: keep boxes scoring at least this (default: the model's)")
    image_options(p)
    big = p.add_argument_group("large images (dask)")
    big.add_argument("--chunk", type=int_in(16, 1 << 16), default=None,
                     help="block side in pixels (default: 1024 in 2D, 128 in 3D; networks fit it to memory)")
    big.add_argument("--scheduler", choices=("threads", "processes", "synchronous"), default=None,
                     help="local dask scheduler (default: threads)")
    big.add_argument("--workers", type=int_in(1, 4096), default=None,
                     help="blocks computed at once (default: one per core)")
    big.add_argument("--dask-address", default=None,
                     help="run on an existing dask.distributed scheduler, e.g. tcp://10.0.0.5:8786")
    big.add_argument("--overwrite", action="store_true",
                     help="replace outputs that exist (large outputs are refused otherwise)")


def task_options(args, kind, model) -> dict:
    """Prediction options of the model's task, refusing flags meant for another task."""
    from .. import kinds
    from ..core.errors import UserInputError

    extra = [k for k in PIXEL_EXTRA if getattr(args, k) is not None]
    if kind.task != kinds.PIXELS and (extra or args.foreground is not None):
        raise UserInputError(f"--probabilities, --uncertainty, --instances and --foreground are for pixel "
                             f"classifiers; {args.model} is {kind.a_title}")
    if kind.task != kinds.BOXES and args.score_threshold is not None:
        raise UserInputError(f"--score-threshold is for detectors; {args.model} is {kind.a_title}")
    if kind.task == kinds.PIXELS:
        if args.foreground is not None and args.instances is None:
            raise UserInputError("--foreground chooses the class that --instances splits; give --instances too")
        if args.foreground is not None and not 1 <= args.foreground <= model.n_classes:
            raise UserInputError(f"--foreground must be a class id between 1 and {model.n_classes}")
        return {"foreground": args.foreground}
    if kind.task == kinds.BOXES and args.score_threshold is not None:
        return {"score_threshold": args.score_threshold}
    return {}


def run(args):
    import importlib

    from .. import kinds
    from ..core.apply import check_output_names, iter_predict_folder, predict_file, write_outputs
    from ..core.errors import UserInputError
    from ..core.io import list_images
    from .common import check_outputs

    kind = kinds.kind_of(args.model)
    if kind.task in DATA_PREDICTORS or args.data is not None:
        if kind.task not in DATA_PREDICTORS:
            raise UserInputError(f"--data is for image classifiers; {args.model} is {kind.a_title}: use --image")
        if args.data is None:
            raise UserInputError(f"{args.model} is {kind.a_title}: give --data DIR (a folder of images)")
        return importlib.import_module(DATA_PREDICTORS[kind.task]).run(args, kind)
    if args.image is None:
        raise UserInputError("give --image (a file or a folder of images)")
    from .predict_lazy import wants_lazy

    if wants_lazy(args):
        return importlib.import_module("napari_dlvision.cli.predict_lazy").run(args, kind)
    extra = {k: getattr(args, k) for k in PIXEL_EXTRA if getattr(args, k) is not None}
    folder = args.image.is_dir()
    if not folder:
        check_outputs([args.image, args.model], [args.out, *extra.values()])
    model = kind.load(args.model)
    options = task_options(args, kind, model)
    wanted = [model.MAIN_OUTPUT, *extra]
    if not folder:
        check_output_names(model, {model.MAIN_OUTPUT: args.out, **extra})
    if folder:
        files = list_images(args.image)
        if args.out.exists() and not args.out.is_dir():
            raise UserInputError(f"--out {args.out} is a file; give a folder for a folder of images")
        named = [k for k, v in extra.items() if str(v) != "yes"]  # the README's "--instances yes" names nothing
        if named:
            print(f"note: with a folder of images every output goes to {args.out}/<name>_<output>.tif; "
                  f"the names given to {', '.join('--' + k for k in named)} are not used", flush=True)
        last = None
        for ev in iter_predict_folder(model, files, args.out, wanted, args.channel_axis, args.spacing, **options):
            if ev.stage == "file":
                print(ev.message, flush=True)  # "Predicted a.tif (1/4)", "Skipped b.tif (2/4): why"
            last = ev
        print(last.message, flush=True)
        if last.payload["failed"]:
            raise UserInputError(f"{len(last.payload['failed'])} of {last.total} files failed (listed above)")
        return
    results = predict_file(model, args.image, args.channel_axis, args.spacing, wanted, **options)
    written = write_outputs({args.out: results[model.MAIN_OUTPUT],
                             **{path: results[name] for name, path in extra.items()}})
    print("wrote " + ", ".join(map(str, written)))
