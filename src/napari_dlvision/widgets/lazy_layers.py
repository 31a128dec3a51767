"""Image layers too big for memory: dask or Zarr data, multiscale pyramids.

Such a layer (e.g. opened with napari-ome-zarr) is predicted block by block
through core.lazy's tile graph, the blocks in view first, into a memory-mapped
file that the output layer shows as blocks arrive: memory stays that of a few
blocks whatever the image's size. **Save result…** writes it to Zarr or TIFF
(a temporary name renamed into place). The temporary files go when the
widget closes.
"""

from __future__ import annotations

import functools
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from napari.layers import Image
from qtpy.QtWidgets import QFileDialog, QPushButton

from ..core.errors import UserInputError
from ..core.events import Progress
from .layers import find_output, show_output, visible_box

REFRESH_S = 0.25  # redraw the output layer at most this often while blocks arrive


def is_lazy(image: Image | None) -> bool:
    """Whether a layer's pixels are not in memory (a pyramid, dask, Zarr, ...)."""
    return image is not None and (bool(image.multiscale) or not isinstance(image.data, np.ndarray))


def lazy_input(image: Image):
    """(full-resolution data, RGB?, spacing or None) of a large layer; nothing read.
    `as_dask` turns the data into the core's (C, *spatial) dask array; it runs
    in the worker, since importing dask.array stalls a thread for half a second."""
    data = image.data[0] if image.multiscale else image.data
    spatial = len(data.shape) - (1 if image.rgb else 0)
    spacing = tuple(float(s) for s in image.scale[-spatial:])
    return data, bool(image.rgb), (None if len(set(spacing)) == 1 else spacing)


def as_dask(data, rgb: bool):
    import dask.array as da

    arr = data if isinstance(data, da.Array) else da.from_array(data, chunks=_chunks(data))
    return da.moveaxis(arr, -1, 0) if rgb else arr[None]


def _chunks(data):
    from ..core.lazy import read_chunks

    own = getattr(data, "chunks", None)  # a Zarr array's own chunks, else reads of about 8 MB
    return own if isinstance(own, tuple) and len(own) == len(data.shape) else read_chunks(data.shape, data.dtype)


class LazyPredictions:
    """A widget's predictions of big layers and the button that saves the last one."""

    def __init__(self, widget):
        self.widget = widget
        self._folder: Path | None = None
        self._files: dict[str, Path] = {}  # output layer key -> its memory-mapped file
        self.result = None  # (image layer, dask view of the finished output) of the last complete run
        self.save_btn = QPushButton("Save result…")
        self.save_btn.setToolTip("Write the last prediction of a large layer to Zarr or TIFF")
        self.save_btn.setEnabled(False)
        self.save_btn.setVisible(False)  # shown once a large layer is predicted
        self.save_btn.clicked.connect(self._save_dialog)
        widget.on_close(self.cleanup)
        # Closing the viewer deletes the dock without closing it: the files
        # (gigabytes for a slide) must go then too. A partial holds this object
        # (no Qt object), so the call reaches it after the widget is gone.
        widget.destroyed.connect(functools.partial(LazyPredictions.cleanup, self))

    def predict(self, image: Image, model, what: str, layer_type: str, key: str, note: str = "",
                instances: dict | None = None, **layer_kw):
        """Start predicting `image` lazily into output layer `key` ("segmentation"
        or "denoised" of `model`); the layer shows the blocks as they come.
        The model checks the image in the worker (the job's error says why).
        instances ({"key", "foreground", "opacity"}): then split that class of
        the segmentation into objects, strip by strip from its file, into a
        second file shown as layer `key`."""
        w = self.widget
        if w.busy():
            return None
        try:
            if model is None:
                raise UserInputError(f"train or load a {w.WHAT} first")
            data, rgb, spacing = lazy_input(image)
            focus = visible_box(w.viewer, image, tuple(data.shape[:-1] if rgb else data.shape))
            folder = self._temporary_folder()
        except UserInputError as e:
            return w.error(str(e))
        path = folder / f"{what}-{secrets.token_hex(4)}.npy"
        if instances is not None:
            instances = {**instances, "path": folder / f"instances-{secrets.token_hex(4)}.npy",
                         "spacing": spacing if spacing is not None else getattr(model, "spacing", None)}
        self.save_btn.setEnabled(False)
        self.save_btn.setVisible(True)
        self.result = None
        self._last_refresh = 0.0
        return w.start(self._job(model, data, rgb, spacing, what, focus, path, instances), self._on_event,
                       self._on_end, image=image, key=key, path=path, layer_type=layer_type, layer_kw=layer_kw,
                       note=note, what=what, instances=instances)

    @staticmethod
    def _job(model, data, rgb, spacing, what, focus, path, instances=None):
        from ..core.lazy import iter_blocks_into, iter_lazy_outputs

        # Planning may run the model once over a central region (the denoiser
        # fits its put-back numbers there, with progress and Stop): say so,
        # since no block shows yet.
        yield Progress("predicting", 0, 0, "Preparing the blocks…")
        out = (yield from iter_lazy_outputs(model, as_dask(data, rgb), spacing, (what,)))[what]
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=out.dtype, shape=out.shape)
        yield Progress("predicting", 0, 0, payload={"array": mm})
        yield from iter_blocks_into(out, mm, focus)
        mm.flush()
        if instances is not None:
            inst, n = yield from _split_objects(mm, instances)
            yield Progress("instances", 1, 1, payload={"instances": inst, "objects": n})
        yield Progress("done", 1, 1, payload={"array": mm})

    def _on_event(self, ev, job):
        w, c = self.widget, job.context
        w.panel.show_progress(ev)
        payload = ev.payload or {}
        if "array" in payload and "layer" not in c:
            data = self._displayed(payload["array"], c["what"], c["image"])
            layer = find_output(w.viewer, c["key"])
            if layer is not None and layer._type_string == c["layer_type"]:
                layer.data = data  # the layer now shows this run's file
            else:
                layer = show_output(w.viewer, c["key"], data, c["layer_type"], like=c["image"], **c["layer_kw"])
            c["layer"] = layer
            old = self._files.get(c["key"])
            self._files[c["key"]] = c["path"]
            if old is not None and old != c["path"]:
                old.unlink(missing_ok=True)  # the layer it fed is gone; mapped pages stay valid until unmapped
        if ev.stage == "instances":
            c["splitting"] = "instances" not in payload
        if "instances" in payload and c["image"] in w.viewer.layers:
            self._show_instances(payload["instances"], c)
            c["objects"] = payload["objects"]
        now = time.perf_counter()
        if "layer" in c and (ev.stage == "done" or now - self._last_refresh > REFRESH_S):
            self._last_refresh = now
            if c["layer"] in w.viewer.layers:
                c["layer"].refresh()
        if ev.stage == "done":
            import dask.array as da

            # Saved as the layer shows it (and the CLI writes it): a denoised grey image
            # without the network's channel axis, a colour one with its channels last.
            arr = self._displayed(payload["array"], c["what"], c["image"])
            self.result = (c["image"], da.from_array(arr, chunks=_chunks(arr)))
            self.save_btn.setEnabled(True)
            objects = f", {c['objects']} objects" if "objects" in c else ""
            saved = "denoised image" if c["what"] == "denoised" else "segmentation"
            w.say(f"{c['note']}Predicted {c['image'].name} block by block (those in view first){objects} in "
                  f"{job.seconds:.1f} s; Save result… writes the {saved} to Zarr or TIFF.")

    def _show_instances(self, arr, c):
        """The instances layer, made (or refilled) once the objects are split."""
        w, spec = self.widget, c["instances"]
        layer = find_output(w.viewer, spec["key"])
        if layer is not None and layer._type_string == "labels":
            layer.data = arr
        else:
            show_output(w.viewer, spec["key"], arr, "labels", like=c["image"],
                        keep_selected=c["layer_kw"].get("keep_selected"), opacity=spec["opacity"])
        old = self._files.get(spec["key"])
        self._files[spec["key"]] = spec["path"]
        if old is not None and old != spec["path"]:
            old.unlink(missing_ok=True)

    def _on_end(self, job):
        if job.error is None and not job.complete:
            c = job.context
            if c.get("instances") is not None:
                c["instances"]["path"].unlink(missing_ok=True)  # a half-split file is shown nowhere
            if c.get("splitting"):
                self.widget.say("Stopped while splitting the objects: the segmentation is complete; "
                                "no instances are shown.")
            else:
                self.widget.say("Stopped; the blocks done so far are shown." if "layer" in c
                                else "Stopped before the first block.")

    @staticmethod
    def _displayed(arr, what, image):
        if what != "denoised":
            return arr
        return np.moveaxis(arr, 0, -1) if image.rgb else arr[0]

    # -- saving ---------------------------------------------------------------
    def _save_dialog(self):
        path, _ = QFileDialog.getSaveFileName(self.widget, "Save result", "", "Zarr (*.zarr);;TIFF (*.tif)")
        if path:
            self.save(path)

    def save(self, path):
        """Write the last complete result to `path` (.zarr or .tif), in a worker."""
        w = self.widget
        if w.busy():
            return None
        try:
            if self.result is None:
                raise UserInputError("predict a large layer first (and let it finish)")
            from ..core.lazy import check_lazy_output

            path = Path(path)
            check_lazy_output(path)
            image, arr = self.result
            source = getattr(getattr(image, "source", None), "path", None)
            if source is not None and Path(source).resolve() == path.resolve():
                raise UserInputError(f"{path} is the image's own file; choose another name")
        except UserInputError as e:
            return w.error(str(e))

        from ..core.lazy import is_zarr

        meta = layer_ome(image, arr.ndim) if is_zarr(path) else None  # the image's place and pixel size
        ome = {path: meta} if meta is not None else None

        def job():
            from ..core.lazy import store

            yield Progress("saving", 0, 1, f"writing {path.name}…")
            written = store({path: arr}, ome, progress=False)
            yield Progress("done", 1, 1, payload={"path": written[0]})

        def on_event(ev, job):
            w.panel.show_progress(ev)
            if ev.stage == "done":
                w.say(f"Saved {ev.payload['path'].name}.")

        return w.start(job(), on_event)

    # -- temporary files ---------------------------------------------------------
    def _temporary_folder(self) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="napari-dlvision-"))
        return self._folder

    def cleanup(self, *_):
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


UINT16_IDS = 65535


def _split_objects(seg, spec: dict):
    """(instances, count) of class spec["foreground"] of the segmentation file
    `seg`, strip by strip (core.instances.iter_strips), into a memory-mapped
    file; Progress per strip, so Stop works between strips. Returned as uint16 when
    the ids fit: napari maps wider ids to colours on the main thread at every
    redraw (see outputs.instances_for_display)."""
    from ..core.instances import iter_strips

    path, fg = spec["path"], spec["foreground"]
    yield Progress("instances", 0, seg.shape[0], "Splitting touching objects, strip by strip…")
    wide = path.with_suffix(".int32.npy")
    out = np.lib.format.open_memmap(wide, mode="w+", dtype=np.int32, shape=seg.shape)
    try:
        n = yield from iter_strips(lambda lo, hi: seg[lo:hi] == fg, out, spec["spacing"])
        out.flush()
        if n > UINT16_IDS:
            del out
            wide.replace(path)
            return np.load(path, mmap_mode="r+"), n
        narrow = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=seg.shape)
        step = max(1, (1 << 22) // max(1, int(np.prod(seg.shape[1:]))))
        for lo in range(0, seg.shape[0], step):
            narrow[lo:lo + step] = out[lo:lo + step]
        narrow.flush()
        return narrow, n
    finally:
        wide.unlink(missing_ok=True)  # mapped pages stay valid until unmapped


def layer_ome(image, ndim: int) -> dict | None:
    """OME-Zarr metadata of a result shaped like `image`'s data (`ndim` axes):
    the layer's axis names, units, pixel size and offset, so that the saved
    store lies where the image does. None for a layer without any of them,
    and for a colour image (OME-Zarr puts channels before space, the layer
    keeps them last)."""
    if getattr(image, "rgb", False) or ndim != image.ndim:
        return None
    labels = [str(a) for a in getattr(image, "axis_labels", ())] or [str(i - ndim) for i in range(ndim)]
    units = [str(u) for u in getattr(image, "units", ())] or ["pixel"] * ndim
    default_labels = all(a.lstrip("-").isdigit() for a in labels)  # napari's (-2, -1)
    if default_labels and set(units) == {"pixel"} and not np.any(image.translate) and np.all(image.scale == 1):
        return None  # nothing to keep: a plain Zarr array, as before
    if default_labels:
        labels = (["t", "z", "y", "x"] if ndim <= 4 else [f"dim_{i}" for i in range(ndim)])[-ndim:]
    axes = [{"name": n, "type": "time" if n == "t" else "space", **({"unit": u} if u != "pixel" else {})}
            for n, u in zip(labels, units)]
    return {"axes": axes, "scale": [float(v) for v in image.scale],
            "translation": [float(v) for v in image.translate] if any(image.translate) else None,
            "zarr_format": 3, "version": "0.5"}
