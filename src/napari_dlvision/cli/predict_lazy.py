"""`dlvision predict` for images larger than memory: a dask graph of tiles.

Chosen by `predict` when the input or an output is Zarr, the input TIFF is
larger than core.lazy.LAZY_INPUT_BYTES, or a dask option is given.
"""

from __future__ import annotations

import contextlib

DASK_OPTIONS = ("chunk", "scheduler", "workers", "dask_address")


def wants_lazy(args) -> bool:
    from ..core.lazy import LAZY_INPUT_BYTES, is_zarr

    if any(getattr(args, k) is not None for k in DASK_OPTIONS):
        return True
    outputs = [args.out] + [getattr(args, k) for k in ("probabilities", "uncertainty", "instances")]
    if is_zarr(args.image) or any(o is not None and is_zarr(o) for o in outputs):
        return True
    return args.image.is_file() and args.image.suffix.lower() in (".tif", ".tiff") \
        and _tiff_bytes(args.image) > LAZY_INPUT_BYTES


def _tiff_bytes(path) -> int:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return int(tif.series[0].size) * tif.series[0].dtype.itemsize
    except Exception:  # noqa: BLE001 - unreadable: the normal path reports it in one line
        return 0


def run(args, kind):
    from .. import kinds
    from ..core.errors import UserInputError
    from ..core.io import channel_axis_for, check_outputs, outputs_inside
    from ..core.lazy import check_lazy_output, is_zarr, lazy_outputs, ome_output, open_lazy, store
    from .predict import task_options

    if kind.task == kinds.BOXES:
        return _detect(args, kind)
    if kind.task not in (kinds.PIXELS, kinds.IMAGE_TO_IMAGE):
        raise UserInputError(f"tile-by-tile (dask) prediction is for pixel classifiers, denoisers and "
                             f"detectors; {args.model} is {kind.a_title}")
    if args.image.is_dir() and not is_zarr(args.image):
        raise UserInputError("dask options take one image (a TIFF or a Zarr store), not a folder of images")
    if args.scheduler is not None and args.dask_address is not None:
        raise UserInputError("give --scheduler or --dask-address, not both")
    extra = {k: getattr(args, k) for k in ("probabilities", "uncertainty") if getattr(args, k) is not None}
    paths = [args.out, *extra.values()] + ([args.instances] if args.instances is not None else [])
    check_outputs([args.image, args.model], paths, folders_ok=True)
    if args.image.is_dir() and any(outputs_inside(args.image, p) for p in paths):
        raise UserInputError(f"an output inside the input store {args.image} would change the input")
    for path in paths:
        check_lazy_output(path)
        if path.exists() and not args.overwrite:
            raise UserInputError(f"{path} exists; add --overwrite to replace it")
    model = kind.load(args.model)
    foreground = task_options(args, kind, model).get("foreground")  # flags of another task are refused
    if args.instances is not None and (kind.task != kinds.PIXELS or getattr(model, "mode", None) == "dense"):
        raise UserInputError("--instances tile by tile splits one class of the segmentation; a U-Net trained on "
                             "instance masks needs its probabilities whole: predict a TIFF that fits in memory")
    lazy = open_lazy(args.image)
    channel_axis = args.channel_axis if args.channel_axis is not None else lazy.channel_axis
    if channel_axis is None:
        channel_axis = channel_axis_for(lazy.array.shape, model.ndim, model.n_channels)
    arr = lazy.array[None] if channel_axis is None else _moveaxis(lazy.array, channel_axis, 0)
    wanted = [model.MAIN_OUTPUT, *extra]
    # Worker processes (--scheduler processes, a cluster) load the model from
    # its file's bytes; threads share the model already loaded here.
    shared = args.dask_address is None and args.scheduler in (None, "threads", "synchronous")
    results = lazy_outputs(model, arr, args.spacing, wanted, chunk=args.chunk,
                           model_file=None if shared else args.model)
    if "denoised" in results:  # an image comes back in the input's layout
        den = results["denoised"]
        results["denoised"] = den[0] if channel_axis is None else _moveaxis(den, 0, channel_axis)
    outputs = {args.out: results[model.MAIN_OUTPUT], **{path: results[k] for k, path in extra.items()}}
    ome = None
    if lazy.ome is not None:
        # Each output's axes: the input's less the one taken as channels, a class axis first for the
        # probabilities; the denoised image keeps the input's layout.
        spatial = [i for i in range(lazy.array.ndim) if i != channel_axis % lazy.array.ndim] \
            if channel_axis is not None else list(range(lazy.array.ndim))
        layouts = {"segmentation": spatial, "uncertainty": spatial, "probabilities": ["c", *spatial],
                   "denoised": list(range(lazy.array.ndim))}
        names = {args.out: model.MAIN_OUTPUT, **{path: k for k, path in extra.items()}}
        ome = {path: ome_output(lazy.ome, layouts[names[path]]) for path in outputs}
        if args.instances is not None:
            ome[args.instances] = ome_output(lazy.ome, spatial)
    blocks = results[model.MAIN_OUTPUT].npartitions
    derived = []
    if args.instances is not None:
        import dask.array as da
        import numpy as np

        seg = results[model.MAIN_OUTPUT]
        fg = model.n_classes if foreground is None else foreground
        spacing = args.spacing if args.spacing is not None else getattr(model, "spacing", None)
        derived.append((args.instances, da.zeros(seg.shape, dtype=np.int32, chunks=seg.chunks),
                        lambda written, target: _split_objects(written[args.out], fg, target, spacing)))
    with _scheduler(args):
        if args.dask_address:
            where = f"the cluster at {args.dask_address}"
        elif args.scheduler == "synchronous":
            where = "this process, one block at a time (synchronous)"
        else:
            where = f"{args.workers or 'all'} local {args.scheduler or 'threads'}"
        print(f"predicting {'x'.join(map(str, arr.shape[1:]))} in {blocks} block{'s' * (blocks != 1)} on {where}",
              flush=True)
        written = store(outputs, ome, derived=derived, inputs=[args.image])
    print("wrote " + ", ".join(map(str, written)))


def _split_objects(seg, foreground: int, target, spacing) -> None:
    """Instances of class `foreground` of the written segmentation, strip by strip
    from the store (core.instances.split_in_strips): memory stays that of a strip."""
    import sys

    from ..core.instances import split_in_strips

    print(f"splitting the objects of class {foreground} into instances, strip by strip", file=sys.stderr, flush=True)
    with _bar_ends_its_line():
        n = split_in_strips(lambda lo, hi: seg[lo:hi] == foreground, target, spacing,
                            on_strip=lambda done, total: _bar(done, total, "rows"))
    print(f"{n} objects", file=sys.stderr, flush=True)


def _detect(args, kind):
    """A detector on a Zarr store or a TIFF larger than memory: its tiles are
    read from the store one at a time (memory stays that of one tile), and
    duplicates across tile borders are removed over the whole image after."""
    from ..core.apply import write_output
    from ..core.errors import UserInputError
    from ..core.io import check_outputs
    from ..core.lazy import open_lazy
    from .predict import task_options

    given = [f"--{k.replace('_', '-')}" for k in DASK_OPTIONS if getattr(args, k) is not None]
    if given:
        raise UserInputError(f"{', '.join(given)}: a detector reads its tiles from the store in this process "
                             "(on its own device); the dask options are for pixel models and denoisers")
    check_outputs([args.image, args.model], [args.out])
    if args.out.suffix.lower() != ".csv":
        raise UserInputError(f"--out {args.out}: a detector writes its boxes as .csv")
    model = kind.load(args.model)
    options = task_options(args, kind, model)
    lazy = open_lazy(args.image)
    channel_axis = args.channel_axis if args.channel_axis is not None else lazy.channel_axis
    if channel_axis is None:
        channel_axis = model.guess_channel_axis(lazy.array.shape)
    print(f"detecting in {'x'.join(map(str, lazy.array.shape))}, tile by tile from the store", flush=True)
    with _bar_ends_its_line():
        boxes = model.predict_outputs(lazy.array, channel_axis, args.spacing, ("boxes",), on_progress=_tile_bar,
                                      **options)["boxes"]
    print(f"wrote {write_output(args.out, boxes)} ({len(boxes)} boxes)")


@contextlib.contextmanager
def _bar_ends_its_line():
    """An interrupt or error during a progress bar: its message starts on a line of its own."""
    try:
        yield
    except BaseException:
        import sys

        print(file=sys.stderr, flush=True)
        raise


def _tile_bar(done: int, total: int) -> None:
    _bar(done, total, "tile")


def _bar(done: int, total: int, what: str) -> None:
    """A one-line progress bar on stderr, like dask's for the pixel models."""
    import sys

    filled = 40 * done // max(total, 1)
    end = "\n" if done >= total else ""
    print(f"\r[{'#' * filled}{' ' * (40 - filled)}] | {100 * done // max(total, 1)}% | {what} {done}/{total}",
          end=end, file=sys.stderr, flush=True)


def _moveaxis(arr, source, target):
    import dask.array as da

    from ..core.errors import UserInputError

    if not -arr.ndim <= source < arr.ndim:
        raise UserInputError(f"--channel-axis {source} is out of range for an image of {arr.ndim} axes")
    return da.moveaxis(arr, source, target)


@contextlib.contextmanager
def _scheduler(args):
    import dask

    from ..core.errors import UserInputError

    if args.dask_address is None:
        with dask.config.set(scheduler=args.scheduler or "threads", num_workers=args.workers):
            yield
        return
    try:
        from distributed import Client
    except ImportError:
        raise UserInputError("--dask-address needs dask.distributed: pip install 'napari-dlvision[scale]'") \
            from None
    client = _connect(Client, args.dask_address)
    try:
        restore = _quiet_cancelled_gathers(client)
        try:
            with client.as_current():
                yield
        finally:
            restore()
    finally:
        client.close()


def _quiet_cancelled_gathers(client):
    """Ctrl-C during a cluster run cancels the client's gather, whose task then
    ends with distributed's AllExit; asyncio printed it as a 6-line traceback
    ("Task exception was never retrieved") above our one-line message. Returns
    what puts the loop's own handler back (the loop is distributed's, shared)."""
    try:
        from distributed.client import AllExit

        loop = client.loop.asyncio_loop
        before = loop.get_exception_handler()
    except (ImportError, AttributeError):  # another distributed: its traceback stays, nothing breaks
        return lambda: None

    def handler(loop, context):
        if isinstance(context.get("exception"), AllExit):
            return
        if before is not None:
            before(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.call_soon_threadsafe(loop.set_exception_handler, handler)
    return lambda: loop.call_soon_threadsafe(loop.set_exception_handler, before)


def _connect(Client, address):
    """A Client of the scheduler at `address`, or one line within 1.5x the
    connection timeout (10 s + 5 s by default).

    distributed's own timeout covers the connection but not the handshake: a
    service that answers but speaks another protocol (a web server at that
    port) kept the command waiting for good. The handshake runs in a daemon
    thread, given up on past the deadline (the process then exits anyway)."""
    import threading

    from ..core.errors import UserInputError
    from ..core.lazy import connect_seconds

    result = {}
    limit = connect_seconds()
    deadline = limit * 1.5  # the handshake's share after the connection

    def connect():
        try:
            result["client"] = Client(address, timeout=f"{limit}s")
        except Exception as e:  # noqa: BLE001 - reported below, in one line
            result["error"] = e

    thread = threading.Thread(target=connect, name="dask connect", daemon=True)
    thread.start()
    thread.join(deadline)
    if "client" in result:
        return result["client"]
    why = result.get("error")
    why = f": {why}" if why is not None else f": no dask handshake within {deadline:g} s (is it a dask scheduler?)"
    raise UserInputError(f"no dask scheduler answered at {address}{why}")
