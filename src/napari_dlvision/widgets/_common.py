"""Pieces every dock widget shares: jobs in a thread worker, output layers,
reading image layers, readable errors. No model-specific code here."""

from __future__ import annotations

import logging
import time

import numpy as np
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QPushButton, QWidget

from ..core.errors import UserInputError

log = logging.getLogger("napari_dlvision")


def describe_error(exc: BaseException) -> str:
    """One line for a notification; tracebacks go to the log only."""
    if isinstance(exc, UserInputError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory: try fewer features, a smaller patch or tile, or a smaller image"
    return f"{type(exc).__name__}: {exc}"


def _drain(gen):
    """Generator function wrapping a generator, as napari's workers want."""
    yield from gen


def image_input(image: Image):
    """(data, channel_axis, spacing) of an image layer, as the core wants them.

    RGB(A) layers carry channels last; the voxel size comes from the layer's
    scale and is None when isotropic.
    """
    if image.multiscale:
        raise UserInputError(
            f"{image.name!r} is a multiscale image; open its full-resolution level as a plain layer"
        )
    data = np.asarray(image.data)
    axis = -1 if image.rgb else None
    spatial = data.ndim - (1 if image.rgb else 0)
    spacing = tuple(float(s) for s in image.scale[-spatial:])
    return data, axis, (None if len(set(spacing)) == 1 else spacing)


def spatial_shape(image: Image) -> tuple[int, ...]:
    shape = image.data.shape
    return tuple(shape[:-1] if image.rgb else shape)


def visible_box(viewer, image: Image, shape):
    """Box of data pixels on screen, (start, stop) per axis; None when unknown."""
    try:
        canvas = getattr(viewer, "canvas", None)  # napari >= 0.6
        size = np.asarray(canvas.size if canvas is not None else viewer._canvas_size, float)
        zoom = float(viewer.camera.zoom)
        centre = np.asarray(viewer.camera.center)[-2:]
        half = size / zoom / 2
        lo = image.world_to_data(np.r_[viewer.dims.point[:-2], centre - half])
        hi = image.world_to_data(np.r_[viewer.dims.point[:-2], centre + half])
    except Exception:  # odd dims or camera state: predict in plain order
        return None
    lo, hi = np.asarray(lo)[-len(shape):], np.asarray(hi)[-len(shape):]
    box = []
    for a, b, n in zip(lo, hi, shape):
        a, b = sorted((a, b))
        if a == b:  # a sliced axis: the current plane
            a, b = a - 0.5, a + 1.5
        box.append((int(np.clip(np.floor(a), 0, n)), int(np.clip(np.ceil(b), 0, n))))
    return tuple(box)


OUTPUT_TAG = "napari_dlvision_output"  # layer.metadata key marking layers we made


def output_layer(viewer, image: Image, kind: str, data: np.ndarray, on_top=None):
    """The layer `<image> <kind>`, created, or updated in place when it fits.

    Segmentations and instances are Labels layers; probabilities and
    uncertainty are hidden Image layers. `on_top` (the user's annotation
    layer) is kept above the outputs and selected, so painting goes on.
    """
    name = f"{image.name} {kind}"
    n = len(spatial_shape(image))
    kw = dict(scale=image.scale[-n:], translate=image.translate[-n:], metadata={OUTPUT_TAG: kind})
    layer = viewer.layers[name] if name in viewer.layers else None
    if layer is not None and (layer is on_top or layer.metadata.get(OUTPUT_TAG) != kind):
        layer = None  # the user's own layer of that name: never touch it; napari renames ours
    if layer is not None and layer.data.shape == data.shape and layer.data.dtype == data.dtype:
        layer.data[...] = data
        layer.refresh()
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    if kind.endswith(("segmentation", "instances")):
        layer = viewer.add_labels(data, name=name, opacity=0.4, visible=kind.endswith("segmentation"), **kw)
    else:
        cmap = "magma" if kind.startswith("probability") else "inferno"
        layer = viewer.add_image(data, name=name, colormap=cmap, visible=False, contrast_limits=(0, 1), **kw)
    if on_top is not None and on_top in viewer.layers:
        viewer.layers.move(viewer.layers.index(on_top), len(viewer.layers))
        viewer.layers.selection.active = on_top
    return layer


def button_row(*items) -> QHBoxLayout:
    """A row of widgets; (text, callback) pairs become push buttons."""
    row = QHBoxLayout()
    for item in items:
        if isinstance(item, tuple):
            text, slot = item
            item = QPushButton(text)
            item.clicked.connect(slot)
        row.addWidget(item)
    return row


MODEL_FILTER = "Models (*.dlv);;All files (*)"


def ask_save_path(parent, title: str, default: str) -> str:
    return QFileDialog.getSaveFileName(parent, title, default, MODEL_FILTER)[0]


def ask_open_path(parent, title: str) -> str:
    return QFileDialog.getOpenFileName(parent, title, "", MODEL_FILTER)[0]


def ask_in_out_folders(parent) -> tuple[str, str] | None:
    src = QFileDialog.getExistingDirectory(parent, "Folder of images to segment")
    dst = QFileDialog.getExistingDirectory(parent, "Folder for the results") if src else ""
    return (src, dst) if dst else None


class JobWidget(QWidget):
    """A widget running one generator job at a time in a napari thread worker.

    Subclasses call `start(gen, **job)` and implement `on_event(job, event)`
    and optionally `on_end(job)`; `stop()` ends the job at its next event,
    and the generator is closed on the main thread so its clean-up (such as
    restoring the best weights) runs before anything else uses the model.
    They need `self.status` (QLabel), `self.progress` (QProgressBar) and
    `self.stop_btn`.
    """

    combos: tuple = ()  # magicgui layer combos to refresh when layers change

    def __init__(self):
        super().__init__()
        self.worker = None
        self.job: dict = {}
        self.last_error: str | None = None
        self._restart = None  # action to run once the current job ends

    def reset_choices(self, *_):
        for combo in self.combos:
            combo.reset_choices()

    def start(self, gen, **job):
        self.last_error = None
        self.job = {"gen": gen, "t0": time.perf_counter(), "complete": False, **job}
        # Connecting "errored" here stops napari from re-raising in the event loop.
        self.worker = create_worker(
            _drain, gen, _start_thread=False,
            _connect={"yielded": self._on_yielded, "errored": self._on_error, "finished": self._on_finished},
        )
        self.stop_btn.setEnabled(True)
        self.progress.setValue(0)
        self.worker.start()

    def stop(self):
        self._restart = None
        if self.worker is not None:
            self.worker.quit()
            self.status.setText("Stopping…")

    def busy(self) -> bool:
        if self.worker is not None:
            self.error("wait for the running job, or press Stop")
            return True
        return False

    def predict_folder_job(self, model, in_dir, out_dir, wanted):
        """Apply `model` to every image of in_dir, writing TIFFs to out_dir."""
        if self.busy():
            return None
        try:
            if model is None:
                raise UserInputError("train or load a model first")
            from ..core.batch import iter_predict_folder
            from ..core.io import list_images

            files = list_images(in_dir)
        except UserInputError as e:
            return self.error(str(e))
        self.start(iter_predict_folder(model, files, out_dir, wanted), folder=True)

    def _on_yielded(self, event):
        if self.job.get("folder"):
            done, total, path = event
            self.progress.setValue(int(100 * done / total))
            self.status.setText(f"Predicted {path.name} ({done}/{total})")
            self.job["complete"] = done == total
            return
        self.on_event(self.job, event)

    def on_event(self, job, event):  # pragma: no cover - abstract
        raise NotImplementedError

    def on_end(self, job):
        """Called on the main thread once the job's generator is closed."""

    def _on_error(self, exc):
        if not isinstance(exc, (UserInputError, MemoryError)):
            log.error("job failed", exc_info=exc)
        self.error(describe_error(exc))

    def _on_finished(self):
        job, self.worker = self.job, None
        job["gen"].close()  # runs the generator's clean-up if it was stopped
        self.stop_btn.setEnabled(False)
        if not job["complete"] and self.last_error is None:
            self.status.setText("Stopped.")
        self.on_end(job)
        restart, self._restart = self._restart, None
        if restart is not None:
            restart()

    def error(self, message: str):
        self.last_error = message
        self.status.setText(message)
        show_error(message)
        return None
