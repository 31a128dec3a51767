"""Prediction of images larger than memory: a dask graph of tiles with halos.

Every pixel model (random forest, U-Net) and the denoiser describe one
block's work through `block_plan(image_cf, spacing)`: the halo each block
needs from its neighbours, the number of output channels, and a function of
a grown block. Here that becomes `map_overlap`-style dask graph (overlap,
map_blocks, trim), so memory stays flat whatever the image's size, and any
dask scheduler runs it: local threads (default), local processes, or a
dask.distributed cluster. Blocks start on multiples of the networks'
pooling factor and see their whole receptive field, so the result is the
in-memory one: bit for bit for the forest.

Inputs: Zarr and OME-Zarr arrays and TIFFs (memory-mapped when stored
plainly, else read tile by tile through tifffile's Zarr view). Outputs:
Zarr (with OME-Zarr metadata when the input had it) or TIFF, written chunk
by chunk into a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
import numpy as np

from .errors import UserInputError
from .events import result_of
from .io import final_name, partial_name

LAZY_INPUT_BYTES = 1 << 31  # a TIFF larger than this is predicted lazily even without --dask options
CHUNK = {2: 1024, 3: 128}  # default block side per spatial dimensionality
# An image of at most this many blocks' worth of pixels is one block: the
# in-memory path runs inside it, with all cores. Cut into four, the halos
# and per-block overheads made a 2048 x 2048 forest prediction 1.8x slower.
WHOLE_BLOCKS = 4
ZARR_SUFFIXES = (".zarr", ".ome.zarr")


@dataclass
class BlockPlan:
    halo: tuple[int, ...]  # per spatial axis
    n_out: int  # output channels
    multiple: int = 1  # block starts and sides are multiples of this
    params: object = None  # small numbers the block function needs (e.g. the whole image's normalisation)
    side: int | None = None  # preferred block side (default CHUNK)


# A network's estimated working memory per block (one block per core runs at
# once). 256 MB gives 2D U-Net blocks of 488: on 8192 x 8192 (CPU, 2 cores)
# 82 s and 1.6 GB peak, against 99 s and 2.4 GB with blocks of 1024.
BLOCK_BYTES = 256 << 20


def network_block_side(ndim: int, halo: int, multiple: int, bytes_per_voxel: float) -> int:
    """The block side whose grown block's inference fits in BLOCK_BYTES; where
    the halo would dwarf such a block (3D), CHUNK, tiled inside (one_pass)."""
    grown = (BLOCK_BYTES / bytes_per_voxel) ** (1 / ndim)
    side = int(grown - 2 * halo) // multiple * multiple
    return int(min(CHUNK[ndim], side)) if side >= max(4 * multiple, halo) else CHUNK[ndim]


def one_pass(block_shape, bytes_per_voxel: float) -> bool:
    """Whether a network runs over a whole grown block at once (else in tiles)."""
    return float(np.prod(block_shape)) * bytes_per_voxel <= 2 * BLOCK_BYTES


class ModelBlocks:
    """The block function of a model, sendable to dask's worker processes.

    It carries the model *file's bytes* (and the plan's small parameters),
    never a pickled model: each worker loads and validates the file once,
    like any model file, with no shared file system needed.
    """

    def __init__(self, model_file, params, spacing):
        self.data = Path(model_file).read_bytes()
        self.key = hashlib.sha256(self.data).hexdigest()
        self.params, self.spacing = params, spacing

    def __call__(self, block):
        model = _LOADED.get(self.key)
        if model is None:
            model = _LOADED[self.key] = _load_bytes(self.data)
        return model.block_function(self.params, self.spacing)(block)


_LOADED: dict = {}  # model files loaded in this (worker) process, by content hash


def _load_bytes(data: bytes):
    import tempfile

    from ..kinds import load_model

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.dlv"
        path.write_bytes(data)
        return load_model(path, device="cpu")


def is_zarr(path) -> bool:
    """A Zarr store, or the name of one to write (*.zarr)."""
    path = Path(path)
    return path.suffix.lower() == ".zarr" or _has_zarr_metadata(path)


def _has_zarr_metadata(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in (".zarray", ".zgroup", "zarr.json"))


# -- reading ------------------------------------------------------------------
@dataclass
class LazyImage:
    array: object  # dask array, the file's own axis order
    ome: dict | None = None  # {"axes", "scale", "translation": one per axis, "zarr_format": 2|3, "version"}
    channel_axis: int | None = None  # from OME axes when they name one


def _zarr():
    try:
        import zarr
    except ImportError:
        raise UserInputError("Zarr input or output needs the zarr package: pip install 'napari-dlvision[scale]'") \
            from None
    return zarr


def open_lazy(path) -> LazyImage:
    """A dask view of a Zarr/OME-Zarr array or a TIFF, nothing read yet."""
    import dask.array as da

    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path}: no such file or folder")
    if is_zarr(path):
        zarr = _zarr()
        try:
            # Absolute: worker processes of a cluster open it from their own folders.
            node = zarr.open(str(path.resolve()), mode="r")
        except Exception as e:  # noqa: BLE001 - zarr raises many kinds for a broken store
            raise UserInputError(f"{path}: not a readable Zarr store ({type(e).__name__})") from None
        if isinstance(node, zarr.Array):
            return LazyImage(da.from_zarr(node))
        return _open_ome(path, node, da)
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            shape = tif.series[0].shape
    except Exception as e:  # noqa: BLE001 - a broken TIFF has many ways to fail
        raise UserInputError(f"{path}: not a readable TIFF ({type(e).__name__})") from None
    # Read by file name in each block, never embedded in the graph: worker
    # processes (--scheduler processes, a cluster) were each sent the whole
    # memory-mapped image, and a compressed TIFF's reader (a lock, an open
    # file) could not be sent at all.
    path = path.resolve()
    try:
        mm = tifffile.memmap(path, mode="r")  # plain, uncompressed, contiguous
        source = MemmapFile(path, mm.offset, mm.shape, mm.dtype)
        del mm
        return LazyImage(da.from_array(source, chunks=read_chunks(shape, source.dtype), lock=False))
    except (ValueError, OSError):
        source = TiffTiles(path)  # compressed or tiled: decoded tile by tile
        return LazyImage(da.from_array(source, chunks=read_chunks(shape, source.dtype, source.tile), lock=False))


READ_BYTES = 8 << 20  # a read from disk: blocks copy what they read (2048² of uint16, 161³ of a volume)


def read_chunks(shape, dtype, tile=None):
    """Regions of an array on disk read at once: about READ_BYTES, in whole tiles."""
    from dask.array.core import normalize_chunks

    return normalize_chunks("auto", shape, limit=READ_BYTES, dtype=dtype, previous_chunks=tile)


def _open_ome(path, group, da) -> LazyImage:
    attrs = dict(group.attrs)
    ome = attrs.get("ome", attrs)
    ms = ome.get("multiscales") if isinstance(ome, dict) else None
    if not (isinstance(ms, list) and ms and isinstance(ms[0], dict) and ms[0].get("datasets")):
        raise UserInputError(f"{path}: a Zarr group without OME-Zarr multiscales; give the array inside it")
    first = ms[0]
    ds = first["datasets"][0]
    if not isinstance(ds, dict) or not isinstance(ds.get("path"), str):
        raise UserInputError(f"{path}: OME-Zarr multiscales without a dataset path")
    arr = group[ds["path"]]
    axes = first.get("axes") or []
    names = [a.get("name") if isinstance(a, dict) else str(a) for a in axes]
    types = [a.get("type") if isinstance(a, dict) else None for a in axes]
    scale, translation = [1.0] * arr.ndim, [0.0] * arr.ndim
    for t in ds.get("coordinateTransformations", []) or []:
        kind = t.get("type") if isinstance(t, dict) else None
        if kind in ("scale", "translation") and len(t.get(kind) or []) == arr.ndim:
            values = [float(v) for v in t[kind]]
            scale, translation = (values, translation) if kind == "scale" else (scale, values)
    dark = da.from_zarr(arr)
    full = [dict(a) if isinstance(a, dict) else {"name": str(a)} for a in axes]  # units and all
    if len(names) != dark.ndim:
        names, types = [f"dim_{i}" for i in range(dark.ndim)], [None] * dark.ndim
        full = [{"name": n} for n in names]
    # One time point at a time: a length-1 time axis is dropped, a longer one refused.
    for i in [i for i, (n, t) in enumerate(zip(names, types)) if t == "time" or n == "t"][::-1]:
        if dark.shape[i] != 1:
            raise UserInputError(f"{path}: {dark.shape[i]} time points; predict one time point at a time")
        dark = dark[(slice(None),) * i + (0,)]
        del names[i], types[i], scale[i], translation[i], full[i]
    channel = next((i for i, (n, t) in enumerate(zip(names, types)) if t == "channel" or n == "c"), None)
    if channel is not None and dark.shape[channel] == 1:
        dark = dark[(slice(None),) * channel + (0,)]
        del names[channel], types[channel], scale[channel], translation[channel], full[channel]
        channel = None
    meta = {"axes": full, "scale": scale, "translation": translation, "zarr_format": int(group.metadata.zarr_format),
            "version": str(first.get("version", ome.get("version", "0.4")))}
    return LazyImage(dark, meta, channel)


# -- threads and memory ---------------------------------------------------------
def one_thread_per_block() -> None:
    """Cap this process's compiled thread pools at one thread: the scheduler
    runs one block per core, and pools inside each would fight over them."""
    from .images import limit_threads

    limit_threads(1)
    _heap_for_blocks()


_HEAP_SET = False


def _heap_for_blocks() -> None:
    """Undo, in dask worker processes, glibc's setting that made blocks 1.8x slower.

    dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also
    freezes glibc's mmap threshold at 128 KB: every feature tile (megabytes)
    is then mapped and unmapped, page faults included, at each use. Tiles up
    to 32 MB come from the heap again (measured: a forest on 8192 x 8192 in
    2 worker processes took 19.6 s, 9.4 s with this, 9.1-9.7 s in threads).
    """
    global _HEAP_SET
    if _HEAP_SET or "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return
    _HEAP_SET = True
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD: keep freed tiles for the next block
    except (OSError, AttributeError):
        pass  # not glibc: nothing to undo


@contextlib.contextmanager
def one_thread_per_block_here():
    """While blocks are computed in this process (threads scheduler): pools of
    one thread each, as the scheduler runs one block per core; afterwards as
    before. Worker processes cap themselves (see `_block`) and keep it."""
    from .images import limit_threads

    limit_threads(1)
    try:
        yield
    finally:
        limit_threads(None)


# -- the graph ----------------------------------------------------------------
def lazy_outputs(model, image_cf, spacing=None, wanted=("segmentation",), chunk=None, model_file=None) -> dict:
    """{output name: dask array} for a (C, *spatial) dask array; see `iter_lazy_outputs`."""
    return result_of(iter_lazy_outputs(model, image_cf, spacing, wanted, chunk, model_file))


def iter_lazy_outputs(model, image_cf, spacing=None, wanted=("segmentation",), chunk=None, model_file=None):
    """{output name: dask array} for a (C, *spatial) dask array, as the return
    value of a generator of the Progress events of planning (a model may run
    once over a central region first: the denoiser fits its put-back there).

    `chunk`: the block side (default CHUNK, or the whole image when it
    holds at most WHOLE_BLOCKS of them), rounded to the plan's multiple;
    "keep" keeps the array's own blocks where the model allows any.
    `model_file` (the model's file): blocks load the model from its bytes, so
    any scheduler (processes, a cluster) can run them; without it they call
    this model object (threads)."""
    import dask.array as da

    allowed = {"segmentation", "probabilities", "uncertainty", "denoised"}
    bad = [w for w in wanted if w not in allowed or w not in model.OUTPUTS]
    if bad:
        raise UserInputError(f"{', '.join(bad)} cannot be computed tile by tile; lazy prediction gives "
                             + ", ".join(w for w in model.OUTPUTS if w in allowed))
    # A plan that computes (the denoiser's) comes as a generator, so a Stop can end it.
    plan = (yield from model.iter_block_plan(image_cf, spacing)) if hasattr(model, "iter_block_plan") \
        else model.block_plan(image_cf, spacing)
    ndim = image_cf.ndim - 1
    halo = tuple(-(-h // plan.multiple) * plan.multiple for h in plan.halo)
    side = None
    if chunk == "keep" and plan.multiple == 1:  # the caller's blocks, as they are
        arr = image_cf.rechunk({0: -1})
    else:
        side = (plan.side or CHUNK[ndim]) if chunk in (None, "keep") else int(chunk)
        if chunk is None and np.prod(image_cf.shape[1:], dtype=float) <= WHOLE_BLOCKS * CHUNK[ndim] ** ndim:
            side = -(-max(image_cf.shape[1:]) // plan.multiple) * plan.multiple
        side = max(plan.multiple, side // plan.multiple * plan.multiple)
        arr = image_cf.rechunk((-1,) + (side,) * ndim)
    shape = arr.shape[1:]
    if plan.multiple > 1:
        # The network pads an image's far end to its multiple (reflect, as
        # here); padded once here, every block is a multiple and the pixels
        # near the far end see what they see in memory.
        pad = [(-n) % plan.multiple for n in shape]
        if any(pad):
            mode = "reflect" if all(p < n for p, n in zip(pad, shape)) else "edge"
            arr = da.pad(arr, [(0, 0)] + [(0, p) for p in pad], mode=mode).rechunk((-1,) + (side,) * ndim)
    depth = {0: 0, **{i + 1: min(h, n) for i, (h, n) in enumerate(zip(halo, arr.shape[1:]))}}
    grown = da.overlap.overlap(arr, depth=depth, boundary="none")

    fn = ModelBlocks(model_file, plan.params, spacing) if model_file is not None \
        else model.block_function(plan.params, spacing)
    out = grown.map_blocks(_block, fn, chunks=((plan.n_out,),) + grown.chunks[1:], dtype=np.float32)

    out = da.overlap.trim_internal(out, depth, boundary="none")
    if out.shape[1:] != shape:
        out = out[(slice(None),) + tuple(slice(0, n) for n in shape)]
    results = {}
    for name in wanted:
        if name in ("probabilities", "denoised"):
            results[name] = out
        elif name == "segmentation":
            results[name] = out.map_blocks(_segmentation, drop_axis=0, dtype=np.uint8 if plan.n_out < 255
                                           else np.uint16)
        elif name == "uncertainty":
            results[name] = out.map_blocks(_uncertainty, drop_axis=0, dtype=np.float32)
    return results


def block_regions(arr, focus=None) -> list[tuple[slice, ...]]:
    """The regions of `arr`'s blocks, those nearest `focus` first.

    `focus`: a box, (start, stop) per trailing axis (e.g. the part of the
    image on screen); blocks overlapping it come first, then by distance of
    their centres to its centre."""
    starts = [np.cumsum((0,) + tuple(c[:-1])) for c in arr.chunks]
    regions = [tuple(slice(int(s[k]), int(s[k] + c[k])) for s, c, k in zip(starts, arr.chunks, idx))
               for idx in np.ndindex(*arr.numblocks)]
    if focus is None:
        return regions
    lead = arr.ndim - len(focus)
    centre = np.array([(a + b) / 2 for a, b in focus])

    def key(region):
        own = region[lead:]
        inside = all(r.start < b and a < r.stop for r, (a, b) in zip(own, focus))
        mid = np.array([(r.start + r.stop) / 2 for r in own])
        return (not inside, float(np.abs(mid - centre).sum()))

    return sorted(regions, key=key)


def iter_blocks_into(arr, out, focus=None):
    """Compute dask array `arr` block by block into `out` (anything taking
    slice assignment: a memory map, a Zarr array), nearest `focus` first:
    Progress events ("predicting") whose payload is the region just written.
    One block at a time, so its own thread pools may use every core."""
    from .events import Progress

    regions = block_regions(arr, focus)
    blocks = f"{len(regions)} block" + ("s" if len(regions) != 1 else "")
    yield Progress("predicting", 0, len(regions), f"predicting {blocks}, those in view first…")
    for n, region in enumerate(regions, 1):
        out[region] = arr[region].compute(scheduler="threads")
        yield Progress("predicting", n, len(regions), payload={"region": region})


def _block(block, fn):
    # In the caller's process the caller decides (store() caps around its
    # compute; a plain .compute() leaves pools as they are); a dask worker
    # runs nothing but blocks and caps itself for good.
    if _in_dask_worker():
        one_thread_per_block()
    return fn(np.asarray(block))


def _in_dask_worker() -> bool:
    import multiprocessing

    if multiprocessing.current_process().name != "MainProcess":  # processes scheduler, nanny workers
        return True
    if "distributed" in sys.modules:  # a worker started without a nanny
        from distributed import get_worker

        try:
            get_worker()
            return True
        except ValueError:
            pass
    return False


def _segmentation(prob):
    from .probabilities import segmentation

    return segmentation(prob)


def _uncertainty(prob):
    from .probabilities import uncertainty

    return uncertainty(prob)


def sampled_percentile_params(normalisation, image_cf) -> np.ndarray:
    """Normalisation.params of a dask (C, *spatial) array, from the same regular
    subsample of the flattened channel the in-memory version takes."""
    n = int(np.prod(image_cf.shape[1:]))
    step = max(1, n // normalisation.max_samples)
    flat_index = np.arange(0, n, step, dtype=np.int64)
    out = np.empty((image_cf.shape[0], 2), np.float64)
    for c in range(image_cf.shape[0]):
        sample = _flat_sample(image_cf[c], flat_index)
        out[c] = normalisation.params(sample[None])[0] if sample.size else (0.0, 1.0)
    return out


SAMPLE_BAND_BYTES = 64 << 20


def _flat_sample(arr, flat_index) -> np.ndarray:
    """arr.ravel()[flat_index] of a dask array, read in bands along its first
    axis (dask's point indexing took 2.7 s for a million points of a 2048 x
    2048 image, against 0.1 s for its four bands)."""
    slab = int(np.prod(arr.shape[1:]))  # elements per index of the first axis
    per_band = max(1, SAMPLE_BAND_BYTES // max(1, slab * arr.dtype.itemsize))
    out = np.empty(len(flat_index), arr.dtype)
    lead = flat_index // slab
    for a in range(0, arr.shape[0], per_band):
        b = min(arr.shape[0], a + per_band)
        sel = np.flatnonzero((lead >= a) & (lead < b))
        if not len(sel):
            continue
        if per_band == 1 and slab * arr.dtype.itemsize > 4 * SAMPLE_BAND_BYTES:  # one huge plane: points only
            rest = np.unravel_index(flat_index[sel] - a * slab, arr.shape[1:])
            out[sel] = np.asarray(arr[a].vindex[rest].compute())
        else:
            band = np.asarray(arr[a:b].compute()).reshape(-1)
            out[sel] = band[flat_index[sel] - a * slab]
    return out


# -- writing ------------------------------------------------------------------
def check_lazy_output(path) -> None:
    path = Path(path)
    if is_zarr(path):
        _zarr()
        if path.exists() and not _has_zarr_metadata(path):  # e.g. a folder of the user's named *.zarr
            raise UserInputError(f"{path} exists and is not a Zarr store; it would be replaced")
    elif path.suffix.lower() not in (".tif", ".tiff"):
        raise UserInputError(f"{path}: the tile-by-tile path (a Zarr or large TIFF input or output, or a dask "
                             "option) writes .zarr or .tif")
    elif path.is_dir():  # a folder of the user's named *.tif: --overwrite deleted it
        raise UserInputError(f"{path} is a folder, not a TIFF; it would be replaced")
    if not path.resolve().parent.is_dir():
        raise UserInputError(f"cannot write {path}: output folder does not exist")


def store(outputs: dict, ome: dict | None = None, progress: bool = True, derived=(), inputs=()) -> list[Path]:
    """Compute and write {path: dask array} together, each into a temporary
    name renamed into place at the end; on any failure nothing is left.

    ome: {path: OME-Zarr metadata (ome_output)} for Zarr outputs that get it.
    inputs: the files the blocks read, which a cluster's workers must see.

    derived: (path, template, make) for outputs computed from the written
    ones, before any is renamed: make(written, target) reads the outputs
    already written (written[path][rows]) and fills `target`, a new store
    shaped like the dask array `template`.
    """
    import dask.array as da

    outputs = {p: _zarr_chunked(a) if is_zarr(p) else a for p, a in outputs.items()}
    ome = {Path(p): meta for p, meta in (ome or {}).items()}
    targets, temps, finals = {}, [], []
    computing = False
    try:
        for path, arr in [*outputs.items(), *((p, t) for p, t, _ in derived)]:
            path = Path(path)
            # Beside the name itself (a link's folder, not its target's): renamed into place, never across disks.
            tmp = partial_name(path.parent.resolve() / path.name)
            temps.append(tmp)
            finals.append((tmp, path))
            targets[path] = _create_zarr(tmp, arr, ome.get(path)) if is_zarr(path) else _create_tiff(tmp, arr, path)
        check_cluster_sees([*inputs, *temps])
        sources = list(outputs.values())
        # One block at a time: its own pools may use every core.
        parallel = max(a.npartitions for a in sources) > 1
        computing = True
        with _progress(progress), (one_thread_per_block_here() if parallel else contextlib.nullcontext()):
            da.store(sources, [targets[Path(p)] for p in outputs], lock=False)
        computing = False
        for path, _, make in derived:
            make({Path(p): targets[Path(p)] for p in outputs}, targets[Path(path)])
        _put_in_place(finals)
        return [p for _, p in finals]
    except BaseException:
        for tmp in temps:
            _remove(tmp)
        if computing and _let_cluster_tasks_end():
            for tmp in temps:  # what blocks still running wrote after the first removal
                _remove(tmp)
        raise


CLUSTER_DRAIN_S = 20  # longest wait for a cluster's running blocks after a failure or an interrupt


def _let_cluster_tasks_end() -> bool:
    """After a failure or an interrupt while blocks ran on a dask cluster, wait
    (up to CLUSTER_DRAIN_S) until its workers run no task; whether there was
    a cluster. A block already running there cannot be stopped and writes its
    chunk when it ends, which brought a removed temporary output back. The
    outputs are removed before this wait too: a batch system's SIGKILL may
    follow its SIGTERM within it. Local schedulers stop with this process.

    The workers are asked, not the scheduler, which forgets cancelled tasks
    at once while their threads still run them; every running task counts
    (another client's too, on a shared cluster), hence the bound."""
    import time

    client = _this_runs_client()
    if client is None:
        return False

    def drain():
        deadline = time.monotonic() + CLUSTER_DRAIN_S
        while time.monotonic() < deadline and any(client.run(_running_tasks).values()):
            time.sleep(0.2)

    try:
        _bounded(drain, CLUSTER_DRAIN_S + 2)
    except BaseException:  # noqa: BLE001 - a second Ctrl-C: stop waiting
        pass
    return True


def _this_runs_client():
    """The dask.distributed client this run made (--dask-address), or None:
    never one made from the configuration here."""
    if "distributed" not in sys.modules:
        return None
    from distributed.client import default_client

    try:
        return default_client()
    except ValueError:
        return None


def _bounded(fn, seconds: float) -> None:
    """Run fn (which asks a cluster's workers) for at most `seconds`, in a
    daemon thread: Client.run has no timeout, and a worker that stopped
    answering must not hold this process past the bound. Its errors are
    dropped (a lost scheduler or worker: nothing more to ask)."""
    thread = threading.Thread(target=_quiet, args=(fn,), name="dask workers asked", daemon=True)
    thread.start()
    thread.join(seconds)


CONNECT_S = 10  # seconds to reach a dask scheduler or its workers; DLVISION_DASK_CONNECT_S changes it


def connect_seconds() -> float:
    import math

    try:
        s = float(os.environ.get("DLVISION_DASK_CONNECT_S", CONNECT_S))
    except ValueError:
        return CONNECT_S
    return s if math.isfinite(s) and 0 < s <= 3600 else CONNECT_S


def check_cluster_sees(paths) -> None:
    """Refuse in one line a dask cluster (this run's client) whose workers do
    not see these files. Workers write and read by file name: on a worker
    without the shared file system a Zarr output's chunks went to its own
    disk (the output here all zeros, exit 0) and an input store read as its
    fill value. Workers that do not answer within the connection timeout are
    refused too: Client.run has no timeout of its own."""
    client = _this_runs_client() if paths else None
    if client is None:
        return
    answers = {}

    def ask():
        answers.update(client.run(_missing, [str(Path(p).resolve()) for p in paths], on_error="return"))

    _bounded(ask, connect_seconds())
    if not answers:  # Client.run answers for all workers at once, or not at all
        raise UserInputError(f"the dask workers did not answer within {connect_seconds():g} s "
                             "(is one stopped or overloaded?)")
    for worker, missing in sorted(answers.items()):
        if not isinstance(missing, list):  # an error there
            raise UserInputError(f"the dask worker {worker} could not look for the files ({type(missing).__name__})")
        if missing:
            raise UserInputError(f"the dask worker {worker} cannot see {final_name(missing[0])}: a cluster needs the "
                                 "image and the outputs on a file system that every worker shares")


def _missing(paths) -> list[str]:
    """Those of `paths` this process cannot see (run on each worker by Client.run)."""
    return [p for p in paths if not os.path.exists(p)]


def _quiet(fn) -> None:
    try:
        fn()
    except BaseException:  # noqa: BLE001 - a lost scheduler or worker: nothing more to wait for
        pass


def _running_tasks(dask_worker) -> int:
    """Tasks running in a dask worker's threads (run on the worker by Client.run)."""
    return len(dask_worker.active_threads)


def _create_tiff(tmp, arr, final):
    import tifffile

    # A plain (uncompressed, contiguous) TIFF, written through a memory map;
    # BigTIFF when it needs it.
    mm = tifffile.memmap(tmp, shape=arr.shape, dtype=arr.dtype, bigtiff=arr.nbytes > 2**32 - 2**25)
    target = MemmapFile(mm.filename, mm.offset, mm.shape, mm.dtype)
    del mm
    _reserve(tmp, final)
    return target


def _reserve(path, final) -> None:
    """Allocate a memory-mapped file's blocks now: the file is sparse, and a
    disk that fills while pages are written through the map kills the process
    with SIGBUS (no message, the partial file left). Reserved up front, a full
    disk is an OSError here, before any work, and the file is removed."""
    if not hasattr(os, "posix_fallocate"):  # not on macOS or Windows
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # file systems without it: as before
            raise UserInputError(f"cannot write {final}: {e.strerror}") from None
    finally:
        os.close(fd)


class MemmapFile:
    """A plain TIFF's pixels, read and written by file name: a memory map sent
    to another process would arrive as a copy (and writes to it be lost)."""

    def __init__(self, path, offset, shape, dtype):
        self.path, self.offset, self.shape, self.dtype = str(path), int(offset), tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)

    def __setitem__(self, key, value):
        mm = np.memmap(self.path, mode="r+", dtype=self.dtype, shape=self.shape, offset=self.offset)
        mm[key] = value
        mm.flush()
        del mm

    def __getitem__(self, key):
        return np.array(np.memmap(self.path, mode="r", dtype=self.dtype, shape=self.shape, offset=self.offset)[key])


class TiffTiles:
    """A compressed or tiled TIFF read by file name, a region at a time (the
    tiles under it decoded). Each thread keeps the file open: opening parses
    every page's header (50 ms for 2000 pages). Sent to another process, it
    goes as its name, and opens the file there."""

    def __init__(self, path):
        self.path = str(path)
        self._local = threading.local()
        arr = self._open()
        self.shape, self.dtype, self.tile = tuple(arr.shape), np.dtype(arr.dtype), tuple(arr.chunks)
        self.ndim = len(self.shape)

    def _open(self):
        arr = getattr(self._local, "array", None)
        if arr is None:
            import tifffile

            arr = _zarr().open(tifffile.imread(self.path, aszarr=True), mode="r")
            arr = arr if isinstance(arr, _zarr().Array) else arr["0"]
            self._local.array = arr
        return arr

    def __getitem__(self, key):
        return np.asarray(self._open()[key])

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state):
        self.__dict__.update(state, _local=threading.local())


def _zarr_chunked(arr):
    """`arr` in blocks of one regular grid, the Zarr store's chunks: every block
    but the last along an axis as large as the largest.

    Zarr writes a part of a chunk by reading the whole chunk, changing it and
    writing it back, so two blocks of one chunk written at once lose one
    block's pixels. Blocks come irregular when a network's halo exceeds the
    last block (dask's overlap then evens out the last ones: 300 rows in
    blocks of 128 became 128, 112, 60), and 14% of a probability map was
    zeros in the store."""
    grid = tuple(max(c) for c in arr.chunks)
    if all(all(n == g for n in c[:-1]) for c, g in zip(arr.chunks, grid)):
        return arr
    return arr.rechunk(grid)


def ome_output(ome: dict, layout) -> dict:
    """An output's OME-Zarr metadata from its input's (`LazyImage.ome`).

    `layout` lists, for each axis of the output, the input axis it comes from
    (its name, unit, scale and translation), or "c" for a class axis made by
    the model (probabilities). An input axis the model took as channels is in
    no output but those in the input's own layout (the denoised image)."""
    axes, scale = [], []
    translation = ome.get("translation") or [0.0] * len(ome["axes"])
    shift = []
    for i in layout:
        if i == "c":
            axes.append({"name": "c", "type": "channel"})
            scale.append(1.0)
            shift.append(0.0)
        else:
            axes.append(dict(ome["axes"][i]))
            scale.append(float(ome["scale"][i]))
            shift.append(float(translation[i]))
    return {**ome, "axes": axes, "scale": scale, "translation": shift if any(shift) else None}


def _create_zarr(tmp, arr, meta):
    """A Zarr array for `arr`, inside an OME-Zarr group when `meta` (ome_output) describes it."""
    zarr = _zarr()
    chunks = tuple(max(c) for c in arr.chunks)
    if meta is None:
        return zarr.create_array(str(tmp), shape=arr.shape, chunks=chunks, dtype=arr.dtype)
    if len(meta["axes"]) != arr.ndim:  # a caller's mistake: never write axes that mislabel the data
        raise ValueError(f"{len(meta['axes'])} OME axes for an output of {arr.ndim}")
    group = zarr.open_group(str(tmp), mode="w", zarr_format=meta["zarr_format"])
    target = group.create_array("0", shape=arr.shape, chunks=chunks, dtype=arr.dtype)
    transforms = [{"type": "scale", "scale": meta["scale"]}]
    if meta.get("translation"):
        transforms.append({"type": "translation", "translation": meta["translation"]})
    multiscales = [{"version": meta["version"], "name": "napari-dlvision", "axes": meta["axes"],
                    "datasets": [{"path": "0", "coordinateTransformations": transforms}]}]
    if meta["zarr_format"] >= 3:
        group.attrs["ome"] = {"version": meta["version"], "multiscales": multiscales}
    else:
        group.attrs["multiscales"] = multiscales
    return target


@contextlib.contextmanager
def _progress(show):
    if not show:
        yield
        return
    import sys

    if "distributed" in sys.modules:  # a client was made (--dask-address): it has its own dashboard
        from distributed import get_client

        try:
            get_client()
            yield
            return
        except ValueError:
            pass
    from dask.diagnostics import ProgressBar

    # The bar's thread sleeps dt between updates and is joined at the end: a
    # long dt (1 s) added up to a second to every run.
    with ProgressBar(out=sys.stderr, dt=0.1):
        yield


def _put_in_place(finals) -> None:
    """Rename each (temporary, final) output into place, all or none.

    A folder (a Zarr store) cannot replace another in one step, and deleting
    a large one takes minutes: existing outputs are moved aside first and
    deleted only once every new one is in place, so an interrupt leaves the
    old outputs or the new ones, never some of each."""
    aside, placed = [], []
    try:
        for _, path in finals:
            if path.exists() or path.is_symlink():
                old = path.parent / f".{path.name[:100]}.{secrets.token_hex(6)}.old"
                os.replace(path, old)
                aside.append((old, path))
        for tmp, path in finals:
            os.replace(tmp, path)
            placed.append(path)
    except BaseException:
        for path in placed:
            _remove(path)
        for old, path in aside:
            with contextlib.suppress(OSError):
                os.replace(old, path)
        raise
    try:
        for old, _ in aside:
            _remove(old)
    except BaseException:  # an interrupt while deleting: the new outputs are in place; finish, then stop
        for old, _ in aside:
            _remove(old)
        raise


def _remove(p: Path) -> None:
    with contextlib.suppress(OSError):
        if p.is_symlink():  # the link, never what it points to
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
