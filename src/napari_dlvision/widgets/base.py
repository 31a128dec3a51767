"""The frame every dock widget shares: viewer, one job at a time, messages,
saving and loading models, applying them to folders, and letting go of the
viewer's events when the widget goes away.
"""

from __future__ import annotations

import functools
from pathlib import Path

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

from ..core.errors import UserInputError
from ..core.events import n_epochs, n_steps
from .gc_pauses import freeze_long_lived, thaw_then_refreeze, watch_layer_removals
from .jobs import JobRunner, describe_error
from .parts import LayerPicker, ModelRow, PreviewHistory

MIN_DOCK_HEIGHT = 300  # pixels: two docks still fit a laptop's window one above the other


class ModelWidget(QWidget):
    KINDS: tuple[str, ...] = ()  # model kinds this widget can load
    WHAT = "model"  # how messages name the model

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.model = None
        self.runner = JobRunner(on_error=self._job_failed, on_state=self._set_busy)
        self.pickers: list[LayerPicker] = []
        self.panel = None  # a RunPanel, made by the subclass
        self.history = None  # a PreviewHistory, for widgets whose training shows previews
        self._history_image = None  # the layer those previews showed
        self._cleanups = []
        self._closed = False
        # Closing the viewer deletes the dock without closing it (no cleanup):
        # its job must then stop and end before Python or the session goes on.
        self.destroyed.connect(functools.partial(_shut_down, self.runner))
        freeze_long_lived()  # napari's start-up objects: full collections stop freezing the viewer
        watch_layer_removals(napari_viewer)

    # -- parts -------------------------------------------------------------
    def scrolling_layout(self) -> QVBoxLayout:
        """The layout to build the dock in, inside a vertical scroll area: a dock
        taller than the screen scrolls instead of pushing the window's lower
        buttons off it (the detector's dock needs about 1070 pixels)."""
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self._scroll = QScrollArea()
        self._scroll.setWidgetResizable(True)
        self._scroll.setFrameShape(QFrame.Shape.NoFrame)
        self._scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        content = QWidget()
        self._scroll.setWidget(content)
        outer.addWidget(self._scroll)
        return QVBoxLayout(content)

    def sizeHint(self):
        # The content's full height where the window has room: the dock area then
        # shares the height by what each dock needs, and scrolls only when short.
        hint = super().sizeHint()
        area = getattr(self, "_scroll", None)
        if area is not None:
            content = area.widget().sizeHint()
            hint.setHeight(max(hint.height(), content.height()))
            hint.setWidth(max(hint.width(), self.minimumSizeHint().width()))
        return hint

    def minimumSizeHint(self):
        # No sideways scrolling: the dock is as wide as its content needs, plus the scroll bar;
        # and never squeezed below its first rows by a dock added under it.
        hint = super().minimumSizeHint()
        area = getattr(self, "_scroll", None)
        if area is not None:
            content = area.widget().minimumSizeHint()
            hint.setWidth(max(hint.width(), content.width() + area.verticalScrollBar().sizeHint().width()))
            hint.setHeight(max(hint.height(), min(content.height(), MIN_DOCK_HEIGHT)))
        return hint

    def picker(self, layer_type, on_change=None, **kw) -> LayerPicker:
        p = LayerPicker(self.viewer, layer_type, on_change, **kw)
        self.pickers.append(p)
        return p

    def model_row(self, what: str, default_name: str) -> ModelRow:
        """Save… / Load… for this widget's model; refused before the dialog while a job runs."""
        return ModelRow(what, default_name, self.save_model, self.load_model, refused=self.busy)

    def on_close(self, fn):
        """Run `fn` when the widget is closed or taken out of its dock."""
        self._cleanups.append(fn)

    def reset_choices(self, *_):
        """napari calls this on layer changes for docked widgets; our pickers refresh themselves."""
        if self._closed:
            return
        for p in self.pickers:
            p.refresh()

    # -- messages ----------------------------------------------------------
    def say(self, text: str):
        if self.panel is not None:
            self.panel.say(text)

    def error(self, message: str, quiet: bool = False):
        """Show a problem: in the status line, and (unless quiet) as a notification."""
        message = " ".join(str(message).split())
        self.last_error = message
        self.say(message)
        if not quiet:
            show_error(message)
        return None

    last_error: str | None = None

    def busy(self) -> bool:
        if self.runner.busy:
            if self.runner.job is not None and self.runner.job.stopped:
                # Stop was pressed and the job ends at its next step: nothing is wrong.
                self.error("still stopping: try again in a moment", quiet=True)
            else:
                self.error("wait for the running job, or press Stop")
            return True
        return False

    def _set_busy(self, busy: bool):
        if self.panel is not None:
            self.panel.set_busy(busy)
        if self.history is not None:
            self.history.set_busy(busy)

    def _job_failed(self, message, job):
        if not self._closed:
            self.error(message, quiet=job.context.get("quiet", False))

    def start(self, gen, on_event, on_end=None, **context):
        self.last_error = None
        if not context.get("quiet"):  # live updates keep their status line steady
            self.say("Starting…")  # not the last run's message (an error, say) until the job's first event

        def shown(ev, job):  # events still queued when the widget closed are dropped
            if not self._closed:
                on_event(ev, job)

        return self.runner.start(gen, shown, self._ended(on_end), **context)

    def _ended(self, on_end):
        def end(job):
            if self._closed:
                return
            if job.error is None and not job.complete:
                self.say("Stopped.")
            if on_end is not None:
                on_end(job)
        return end

    def show_training_step(self, ev, offset: int, loss_format: str = ".3f"):
        """Progress, plot and "Step n/N (m in all), loss, <validation figures>, seconds" for a training event."""
        text = None
        if ev.stage == "training" and not ev.message:
            total = f" ({offset + ev.done} in all)" if offset else ""
            figures = "".join(f", {name} {value:.3f}" for name, value in ev.metrics.items() if value is not None)
            text = (f"Step {ev.done}/{ev.total}{total}, loss {ev.smoothed_loss:{loss_format}}{figures}, "
                    f"{ev.seconds:.0f} s")
        self.panel.show_progress(ev, step_offset=offset, status=text)

    # -- previews to go back to ----------------------------------------------
    def add_preview_history(self, layout) -> PreviewHistory:
        """The Previews row (the weights of each training preview, to go back to) in `layout`."""
        self.history = PreviewHistory(self.go_back)
        layout.addWidget(self.history)
        return self.history

    def begin_preview_history(self, image, resume: bool):
        """A new run starts a new list (Continue training goes on with it)."""
        if not resume:
            self.history.clear()
        self._history_image = image

    def end_preview_history(self, job):
        """A run that failed kept no model: its previews are not this model's."""
        if job.error is not None and not job.context.get("resume"):
            self.history.clear()

    def keep_preview(self, ev, offset: int):
        """Add a training event's preview weights (the shared loop sends them) to the list."""
        if ev.stage == "training" and isinstance(ev.payload, dict) and "weights" in ev.payload:
            self.history.add(offset + ev.done, ev.payload["weights"])

    def go_back(self, step: int, weights: dict):
        """Keep the weights the preview of `step` showed, and predict its image with them again."""
        if self.busy():
            return None
        if self.model is None or getattr(self.model, "net", None) is None:
            return self.error(f"train a {self.WHAT} first")
        net = self.model.net
        state = net.state_dict()
        if state.keys() != weights.keys() or any(state[k].shape != v.shape for k, v in weights.items()):
            self.history.clear()
            return self.error(f"those previews were of another {self.WHAT}; train again to preview this one")
        device = next(net.parameters()).device
        net.load_state_dict({k: v.to(device) for k, v in weights.items()})
        self.model.training = {**self.model.training, "kept": f"the weights previewed at step {step} (chosen)"}
        note = f"Went back to the weights previewed at step {step}. "
        image = self._history_image
        if image is None or image not in self.viewer.layers:
            return self.say(note)
        return self.predict_layer(image, note)

    @staticmethod
    def training_note(training: dict) -> str:
        """ "Training <how it ended> after N steps (E epochs) in S s; kept <which weights>. " """
        if "pixels_per_class" in training:  # a forest detector: fitted in one go, no steps
            return f"Forest trained in {training.get('seconds')} s; kept {training.get('kept')}. "
        how = {"time limit": "reached its time limit", "error": "ended"}.get(
            training.get("stopped"), training.get("stopped", "ended"))
        epochs = f" ({n_epochs(training['epochs'])})" if isinstance(training.get("epochs"), (int, float)) else ""
        return (f"Training {how} after {n_steps(training.get('steps'))}{epochs} in {training.get('seconds')} s; "
                f"kept {training.get('kept')}. ")

    def training_ended(self, training: dict, image):
        """Say how training ended and which weights were kept, then predict `image` with them."""
        note = self.training_note(training)
        if image is not None and image in self.viewer.layers:
            self.say(note)
            self.runner.then(lambda: self.predict_layer(image, note))
        elif image is not None:  # removed while training ran: nothing to predict, the model stays
            self.say(note + f"The image {image.name!r} was removed meanwhile: pick an image to predict.")
        else:
            self.say(note)

    def model_input(self, image, what: str):
        """(data, channel axis, spacing) of `image`, checked against the model; else UserInputError."""
        from .layers import image_input

        if self.model is None:
            raise UserInputError(f"train or load a {what} first")
        if image is None:
            raise UserInputError("choose an image layer to predict")
        data, axis, spacing = image_input(image)
        self.model.check_shape(data.shape, axis)
        return data, axis, spacing

    def stop(self):
        if self.runner.busy:
            self.say("Stopping…")
        self.runner.stop()

    # -- models on disk ----------------------------------------------------
    def save_model(self, path) -> Path | None:
        if self.busy():
            return None
        try:
            if self.model is None:
                raise UserInputError(f"train or load a {self.WHAT} first")
            from ..core.modelfile import SUFFIX, check_model_name

            # Qt's dialog on Linux adds no suffix: "mymodel" would be hidden by the Load filter.
            path = check_model_name(path if Path(path).suffix else Path(path).with_suffix(SUFFIX))
            path = self.model.save(path)
        except (UserInputError, OSError) as e:
            return self.error(f"could not save: {describe_error(e)}")
        show_info(f"saved {self.WHAT} to {path}")
        self.say(f"Saved {Path(path).name}.")
        return path

    def load_model(self, path):
        if self.busy():
            return None
        from .. import kinds

        try:
            kind = kinds.kind_of(path)
            if kind.name not in self.KINDS:
                raise UserInputError(f"{Path(path).name} holds {kind.a_title}; load it in that widget")
            model = kind.load(path, device=self.device())
        except UserInputError as e:
            return self.error(str(e))
        self.model = model
        if self.history is not None:
            self.history.clear()  # those previews were another model's
        self.on_model_loaded(model, Path(path))
        return model

    def device(self) -> str:
        return "auto"

    def on_model_loaded(self, model, path: Path):
        self.say(f"Loaded {path.name}.")

    def predict_folder(self, in_dir, out_dir, wanted=None, **options):
        """Apply the model to every image of in_dir, writing files into out_dir."""
        if self.busy():
            return None
        try:
            if self.model is None:
                raise UserInputError(f"train or load a {self.WHAT} first")
            from ..core.apply import folder_outputs, iter_predict_folder
            from ..core.io import list_images

            files = list_images(in_dir)
            folder_outputs(self.model, files, out_dir, wanted or (self.model.MAIN_OUTPUT,))  # refuse early
            gen = iter_predict_folder(self.model, files, out_dir, wanted, **options)
        except UserInputError as e:
            return self.error(str(e))

        def on_event(ev, job):
            self.panel.show_progress(ev)
            if ev.stage == "done" and ev.payload["failed"]:
                self.error(ev.message)

        return self.start(gen, on_event)

    # -- going away ----------------------------------------------------------
    def cleanup(self):
        """Disconnect from the viewer and its layers; stop a running job."""
        if self._closed:
            return
        self._closed = True
        self.runner.stop()
        for p in self.pickers:
            p.close_picker()
        # napari connected reset_choices when it docked us and does not disconnect it.
        for emitter in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            emitter.disconnect(self.reset_choices)
        for fn in self._cleanups:
            fn()
        self.model = None  # a closed widget keeps nothing big alive (see gc_pauses)
        if not self.runner.busy:
            self.runner.job = None  # nor does its last job (its generator holds the model and data)
        thaw_then_refreeze()

    def closeEvent(self, event):
        self.cleanup()
        super().closeEvent(event)

    def event(self, e):
        # napari takes a removed dock widget out by setting its parent to None.
        if e.type() == QEvent.Type.ParentChange and self.parent() is None and self._was_docked:
            self.cleanup()
        elif e.type() == QEvent.Type.ParentChange and self.parent() is not None:
            self._was_docked = True
        return super().event(e)

    _was_docked = False


def _shut_down(runner: JobRunner, *_):
    # A module function: a method of the deleted widget would not be called.
    runner.shut_down()
