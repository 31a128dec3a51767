"""Dock widget: denoise an image by Noise2Void, Noise2Noise or supervised training.

Pick the noisy layer (and, for Noise2Noise, a second noisy acquisition or,
supervised, the clean image), press Train: the loss curve, the progress bar
and a preview of the region on screen update while it trains; Stop keeps
the averaged weights the previews showed, and the whole layer is denoised
at the end into `<layer> denoised`, an Image layer with the input's contrast
limits, shown beside the input (grid). torch is imported in the worker.
"""

from __future__ import annotations

import time

import numpy as np
from napari.layers import Image
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout

from ..core.errors import UserInputError
from .base import ModelWidget
from .denoise_jobs import Layout, predict_job, train_job
from .layers import OUTPUT_TAG, find_output, image_input, show_output, spatial_shape, visible_box
from .lazy_layers import LazyPredictions, is_lazy
from .parts import ApplyRow, Field, RunPanel, SettingsForm

MODES = {"Noise2Void (noisy image only)": "n2v", "Noise2Noise (two noisy acquisitions)": "n2n",
         "Supervised (clean target)": "supervised"}
SECOND = {"n2v": "(not used)", "n2n": "Second noisy", "supervised": "Clean target"}
FIRST_AXIS = {"space (2D or 3D image)": "space", "channels": "channels", "repeated frames (Noise2Noise)": "frames"}
DEVICES = ("auto", "cpu", "cuda", "mps")
FIELDS = [
    Field("preset", "Architecture", "small", choices=("small", "medium"),
          tooltip="small: U-Net of depth 2, 32 channels; medium: depth 3, 32 channels"),
    Field("steps", "Steps", 400, 1, 1_000_000, 100),
    Field("patch_size", "Patch size", 0, 0, 1024, 16, special="auto (64; 32 in 3D)", tooltip="clipped to the image"),
    Field("batch_size", "Batch size", 0, 0, 256, special="auto (from free memory)"),
    Field("lr", "Learning rate", 8e-3, 1e-5, 1.0, 1e-3),
    Field("masked_fraction", "Masked pixels (N2V)", 0.1, 0.0005, 0.25, 0.01, decimals=4,
          tooltip="Noise2Void: share of pixels hidden from the network in each patch"),
    Field("channels", "Channels masked (N2V)", "independent", choices=("independent", "joint"),
          tooltip="independent: each channel hides its own pixels; joint: the same pixels in every channel"),
    Field("device", "Device", "auto", choices=DEVICES, tooltip="auto: CUDA, then Apple MPS, then CPU"),
    Field("preview_every", "Preview every", 25, 0, 100_000, 5, special="only at the end",
          tooltip="Refresh the denoised preview of the region on screen every N steps"),
]
REFRESH_S = 0.15  # redraw the output layer at most this often while predicting
PREVIEW_EDGE = 768  # previews cover at most this many pixels per axis of the region on screen


def is_input(layer) -> bool:
    return isinstance(layer, Image) and OUTPUT_TAG not in layer.metadata


class DenoiserWidget(ModelWidget):
    KINDS = ("denoiser",)
    WHAT = "denoiser"

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        lay = self.scrolling_layout()
        self._form = form = QFormLayout()
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(list(MODES))
        self.mode_combo.currentTextChanged.connect(self._mode_changed)
        form.addRow("Training", self.mode_combo)
        self.noisy_picker = self.picker(Image, accept=is_input)
        form.addRow("Noisy image", self.noisy_picker)
        self.second_picker = self.picker(Image, accept=is_input)
        form.addRow("Second image", self.second_picker)
        self.axis_combo = QComboBox()
        self.axis_combo.addItems(list(FIRST_AXIS))
        self.axis_combo.setToolTip("What the first axis of a 3D (non-RGB) layer holds")
        form.addRow("First axis is", self.axis_combo)
        self.side_by_side = QCheckBox("Show the result beside the input (grid)")
        self.side_by_side.setChecked(True)
        form.addRow("", self.side_by_side)
        self.tta_check = QCheckBox("Average 8 flips and rotations (8x slower)")
        self.tta_check.setToolTip("When denoising a whole layer or folder: a little less noise, 8 times the time")
        self.tta_check.setChecked(True)
        form.addRow("", self.tta_check)
        self.reinclude_check = QCheckBox("Put each pixel's own value back where unsure")
        self.reinclude_check.setToolTip(
            "Noise2Void never sees the pixel it predicts; weighing its prediction against the pixels' own values "
            "by their estimated errors, frequency by frequency and across similar patches, keeps fine detail "
            "(+0.4-1.1 dB at low and medium noise)")
        self.reinclude_check.setChecked(True)
        form.addRow("", self.reinclude_check)
        lay.addLayout(form)
        self.settings_form = SettingsForm("Training", FIELDS)
        lay.addWidget(self.settings_form)
        self.panel = RunPanel([("Train", lambda: self.train(False)), ("Continue training", lambda: self.train(True))],
                              self.stop, plot=True, hint="Pick the noisy image, then Train.")
        self.train_btn, self.continue_btn = self.panel.buttons["Train"], self.panel.buttons["Continue training"]
        self.stop_btn, self.progress, self.status, self.plot = (
            self.panel.stop_btn, self.panel.progress, self.panel.status, self.panel.plot)
        lay.addWidget(self.panel)
        self.add_preview_history(lay)
        lay.addWidget(self.model_row("denoiser", "denoiser.dlv"))
        self.apply_picker = self.picker(Image, accept=is_input)
        lay.addWidget(ApplyRow(self.apply_picker, self.predict_layer, self.predict_folder,
                               "Denoise layer", "Denoise folder…"))
        self.lazy = LazyPredictions(self)
        lay.addWidget(self.lazy.save_btn)
        lay.addStretch()
        self._mode_changed()

    # -- settings -------------------------------------------------------------
    def mode(self) -> str:
        return MODES[self.mode_combo.currentText()]

    def set_mode(self, mode: str):
        self.mode_combo.setCurrentIndex(list(MODES.values()).index(mode))

    def _mode_changed(self, *_):
        mode = self.mode()
        self.second_picker.setEnabled(mode != "n2v")
        self.reinclude_check.setEnabled(mode == "n2v")  # the other networks see the pixel already
        self.second_picker.setToolTip(SECOND[mode])
        label = self._form.labelForField(self.second_picker)
        if label is not None:
            label.setText(SECOND[mode] if mode != "n2v" else "Second image")

    def settings(self) -> dict:
        v = self.settings_form.values()
        return {k: v[k] for k in ("steps", "patch_size", "batch_size", "lr", "masked_fraction", "channels",
                                  "device", "preview_every")}

    def device(self) -> str:
        return self.settings_form.values()["device"]

    def layout_of(self, layer) -> Layout:
        """Where the layer keeps its channels, and whether its first axis holds frames."""
        _, axis, _ = image_input(layer)
        first = FIRST_AXIS[self.axis_combo.currentText()]
        if first == "frames":
            return Layout(axis, True)
        if first == "channels" and not layer.rgb:
            return Layout(0, False)
        return Layout(axis, False)

    # -- training -------------------------------------------------------------
    def train(self, resume: bool = False):
        """Train a new denoiser, or continue training the current one."""
        if self.busy():
            return None
        mode, noisy, other = self.mode(), self.noisy_picker.value, None
        try:
            if resume and self.model is None:
                raise UserInputError("train or load a denoiser before continuing")
            if resume and self.model.mode != mode:
                raise UserInputError(f"this denoiser was trained with {self.model.title}; continue it the same way")
            if noisy is None:
                raise UserInputError("open a noisy image first")
            data, _, spacing = image_input(noisy)
            layout = self.layout_of(noisy)
            if mode == "n2n" and layout.frames:
                other = None
            elif mode != "n2v":
                other = self.second_picker.value
                if other is None or other is noisy:
                    raise UserInputError(f"pick the {SECOND[mode].lower()} image (another layer than the noisy one)")
                if tuple(other.data.shape) != tuple(data.shape):
                    raise UserInputError(f"{other.name!r} has shape {tuple(other.data.shape)} but {noisy.name!r} "
                                         f"has {tuple(data.shape)}: they must show the same field")
                other = other.data
            elif layout.frames:
                raise UserInputError("a stack of repeated frames trains Noise2Noise: pick that mode")
            if spacing is not None and (layout.frames or layout.axis == 0):  # the first axis is not space
                spacing = spacing[1:] if len(set(spacing[1:])) > 1 else None
            settings = self.settings()
        except UserInputError as e:
            return self.error(str(e))
        if not resume:
            self.plot.clear()
        self.begin_preview_history(noisy, resume)
        ndim = np.ndim(data) - (layout.axis is not None) - layout.frames
        view = {"ndim": ndim}
        created = find_output(self.viewer, self.output_name(noisy)) is None
        self._begin_output(noisy)
        self._update_view(view, noisy, layout)
        holder = {}
        gen = train_job(holder, self.model if resume else None, mode, self.settings_form.values()["preset"],
                        settings["device"], data, other, layout, spacing, settings, view,
                        self.reinclude_check.isChecked())
        return self.start(gen, self._on_train_event, self._on_train_end, holder=holder, image=noisy,
                          layout=layout, view=view, resume=resume, offset=self.plot.last_step if resume else 0,
                          created=created)

    def _update_view(self, view, layer, layout):
        """Tell the worker which region (and frame) is on screen, for the next preview."""
        if layer not in self.viewer.layers:
            return
        box = visible_box(self.viewer, layer, spatial_shape(layer))
        spatial = layout.spatial_box(box, view["ndim"])
        if spatial is not None:  # zoomed far out: the middle of the view, so previews stay quick
            spatial = tuple((max(a, (a + b) // 2 - PREVIEW_EDGE // 2), min(b, (a + b) // 2 + PREVIEW_EDGE // 2))
                            for a, b in spatial)
        view["box"] = spatial
        if layout.frames and box is not None:
            view["acquisition"] = box[0][0]

    def _on_train_event(self, ev, job):
        self.show_training_step(ev, job.context["offset"], ".4g")
        self.keep_preview(ev, job.context["offset"])
        preview = ev.payload.get("preview") if isinstance(ev.payload, dict) else None
        if preview is not None:
            self._write(job.context["image"], preview, refresh=True)
            job.context["written"] = True
        self._update_view(job.context["view"], job.context["image"], job.context["layout"])

    def _on_train_end(self, job):
        self.end_preview_history(job)
        d = job.context["holder"].get("denoiser")
        if d is None or d.net is None or job.error is not None:
            self._drop_empty_output(job)
            return
        t = d.training
        if not t.get("steps") and not job.context["resume"]:
            self._drop_empty_output(job)
            self.say("Stopped before the first training step ended: no denoiser was kept.")
            return
        self.model = d  # the kept weights are in it now
        self.training_ended(t, job.context["image"])

    # -- output layer -----------------------------------------------------------
    def output_name(self, layer) -> str:
        return f"{layer.name} denoised"

    def _drop_empty_output(self, job):
        """A refused or stopped run leaves no empty output layer behind (one it made, nothing written in)."""
        if not job.context["created"] or job.context.get("written"):
            return
        out = find_output(self.viewer, self.output_name(job.context["image"]))
        if out is not None:
            self.viewer.layers.remove(out)

    def _begin_output(self, layer):
        shape = tuple(layer.data.shape)
        kw = {"contrast_limits": tuple(layer.contrast_limits), "rgb": layer.rgb, "blending": "translucent"}
        if not layer.rgb:
            kw["colormap"] = layer.colormap.name
        out = show_output(self.viewer, self.output_name(layer), np.zeros(shape, np.float32), "image", like=layer,
                          update=False, **kw)
        if self.side_by_side.isChecked() and not self.viewer.grid.enabled:
            self.viewer.grid.enabled = True
            self.viewer.reset_view()  # frame both images
        return out

    def _write(self, layer, block, refresh: bool):
        out = find_output(self.viewer, self.output_name(layer))
        if out is None:
            return
        out.data[block["index"]] = block["values"]
        if refresh:
            out.refresh()

    # -- prediction -------------------------------------------------------------
    def predict_layer(self, image: Image | None, note: str = ""):
        if self.busy():
            return None
        try:
            if self.model is None:
                raise UserInputError("train or load a denoiser first")
            if image is None:
                raise UserInputError("choose an image layer to denoise")
            if is_lazy(image):  # too big for memory: block by block into a file, those in view first
                first = FIRST_AXIS[self.axis_combo.currentText()]
                if first == "frames" or first == "channels" and not image.rgb:
                    raise UserInputError("a large layer is denoised as one 2D or 3D image (grey or RGB); "
                                         "set 'First axis is' to space")
                self._apply_options()
                kw = {"contrast_limits": tuple(image.contrast_limits), "rgb": image.rgb, "blending": "translucent"}
                if not image.rgb:
                    kw["colormap"] = image.colormap.name
                return self.lazy.predict(image, self.model, "denoised", "image", self.output_name(image), note, **kw)
            data, _, _ = image_input(image)
            layout = self.layout_of(image)
            shape = np.shape(data)[1:] if layout.frames else np.shape(data)
            self.model.check_shape(shape, layout.frame_axis())
        except UserInputError as e:
            return self.error(str(e))
        self._apply_options()
        self._begin_output(image)
        self._last_refresh = 0.0
        return self.start(predict_job(self.model, data, layout), self._on_predict_event, self._on_predict_end,
                          image=image, note=note)

    def _on_predict_event(self, ev, job):
        self.panel.show_progress(ev)
        if ev.stage == "predicting" and ev.payload is not None:
            now = time.perf_counter()
            refresh = now - self._last_refresh > REFRESH_S
            self._write(job.context["image"], ev.payload, refresh)
            if refresh:
                self._last_refresh = now
        elif ev.stage == "done":
            self.say(f"{job.context['note']}Denoised {job.context['image'].name} in {job.seconds:.1f} s.")

    def _on_predict_end(self, job):
        image = job.context["image"]
        out = find_output(self.viewer, self.output_name(image))
        if out is not None:
            out.refresh()

    _last_refresh = 0.0

    def _apply_options(self):
        """The prediction options ticked in the widget, onto the model."""
        self.model.tta = self.tta_check.isChecked()
        self.model.reinclude = self.reinclude_check.isChecked()  # the model keeps it off but for Noise2Void

    def predict_folder(self, in_dir, out_dir):
        if self.model is not None and not self.runner.busy:
            self._apply_options()
        return super().predict_folder(in_dir, out_dir, ["denoised"])

    def on_model_loaded(self, d, path):
        self.set_mode(d.mode)
        self.tta_check.setChecked(d.tta)
        self.reinclude_check.setChecked(d.reinclude or d.mode != "n2v")
        self.plot.clear()
        self.say(f"Loaded {path.name}: {d.ndim}D {d.title} denoiser for {d.n_channels}-channel images, "
                 f"trained {d.training.get('steps_total', '?')} steps.")
