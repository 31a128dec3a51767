"""Dock widget: train a U-Net from painted strokes or instance masks, live.

Training runs in a thread worker; the loss plot, progress bar and the
prediction layers update while it runs, Stop keeps the weights the plot
and previews promised, and Continue training starts from them after more
painting. torch is imported in the worker, never on napari's main thread.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.layers import Image
from qtpy.QtWidgets import QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QPushButton

from ..core.errors import UserInputError
from .annotations import AnnotationInputs
from .base import ModelWidget
from .layers import image_input
from .lazy_layers import LazyPredictions, is_lazy
from .outputs import PixelOutputs, with_displayable_instances
from .parts import ApplyRow, Field, RunPanel, SettingsForm

MODES = {"Sparse strokes (classes 1..K)": "sparse", "Dense instance masks": "dense"}
DEVICES = ("auto", "cpu", "cuda", "mps")
FIELDS = [
    Field("preset", "Architecture", "small", choices=("small", "medium"),
          tooltip="small: depth 3, 16 channels; medium: depth 4, 32 channels"),
    Field("steps", "Steps", 500, 1, 1_000_000, 100),
    Field("patch_size", "Patch size", 0, 0, 1024, 16, special="auto (64; 32 in 3D)",
          tooltip="Edge of the training patches; 3D patches of 64 take seconds per step on a CPU"),
    Field("batch_size", "Batch size", 0, 0, 256, special="auto (from free memory)"),
    Field("lr", "Learning rate", 3e-3, 1e-5, 1.0, 1e-3),
    Field("flips", "Flips", True), Field("rot90", "90° rotations", True),
    Field("intensity", "Intensity changes", True), Field("elastic", "Elastic deformation", False),
    Field("device", "Device", "auto", choices=DEVICES, tooltip="auto: CUDA, then Apple MPS, then CPU"),
    Field("preview_every", "Preview every", 50, 0, 100_000, 10, special="only at the end",
          tooltip="Refresh the prediction layers every N steps"),
]


def _export_run_job(folder, image, labels, command):
    """Write the run's files (each atomically), as Progress events."""
    from ..core.events import Progress
    from ..core.io import write_image
    from ..core.runfile import write_run

    yield Progress("writing", 0, 3, "Writing the image…")
    write_image(folder / "image.tif", np.asarray(image))
    yield Progress("writing", 1, 3, "Writing the labels…")
    write_image(folder / "labels.tif", np.asarray(labels))
    write_run(folder / "run.json", command)
    yield Progress("done", 3, 3, None)


def _train_job(holder, resume_from, preset, mode, device, images, labels, axis, spacing, settings_kw, names):
    """The worker's side of training: import torch there, build or reuse the model, train."""
    from .torch_import import import_torch

    import_torch()
    from ..dl.pixel_train import TrainSettings, train_unet
    from ..dl.segmenter import UNetSegmenter

    seg = resume_from or UNetSegmenter(preset, mode, class_names=names, device=device)
    holder["segmenter"] = seg
    yield from train_unet(seg, images, labels, TrainSettings(**settings_kw), channel_axis=axis, spacing=spacing)


class UNetWidget(ModelWidget):
    KINDS = ("pixel-unet",)
    WHAT = "U-Net"

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.folder_data = None  # (images, masks, channel axis) read from a folder
        lay = self.scrolling_layout()
        self.inputs = AnnotationInputs(self)
        self.inputs.image_picker.currentIndexChanged.connect(self._use_layers)
        self.inputs.labels_picker.currentIndexChanged.connect(self._use_layers)
        lay.addWidget(self.inputs)
        self.class_table = self.inputs.class_table
        form = QFormLayout()
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(list(MODES))
        self.mode_combo.currentTextChanged.connect(self._mode_changed)
        form.addRow("Labels are", self.mode_combo)
        self.all_pairs_check = QCheckBox("Also every other '<image> annotations' pair")
        form.addRow("", self.all_pairs_check)
        folder_row = QHBoxLayout()
        self.folder_label = QLabel("no folder")
        folder_btn = QPushButton("Folder…")
        folder_btn.setToolTip("Train on FOLDER/images and FOLDER/masks (same file names)")
        folder_btn.clicked.connect(self._folder_dialog)
        folder_row.addWidget(self.folder_label, 1)
        folder_row.addWidget(folder_btn)
        form.addRow("Or train on", folder_row)
        lay.addLayout(form)
        self.settings_form = SettingsForm("Training", FIELDS)
        lay.addWidget(self.settings_form)
        self.outputs = PixelOutputs(self.viewer, suffix=" (U-Net)")
        lay.addWidget(self.outputs)
        self.panel = RunPanel([("Train", lambda: self.train(False)), ("Continue training", lambda: self.train(True))],
                              self.stop, plot=True, hint="Paint strokes (or pick instance masks), then Train.")
        self.train_btn, self.continue_btn = self.panel.buttons["Train"], self.panel.buttons["Continue training"]
        self.stop_btn, self.progress, self.status, self.plot = (
            self.panel.stop_btn, self.panel.progress, self.panel.status, self.panel.plot)
        lay.addWidget(self.panel)
        self.add_preview_history(lay)
        lay.addWidget(self.model_row("U-Net", "unet.dlv"))
        self.export_run_btn = QPushButton("Export run for the command line…")
        self.export_run_btn.setToolTip("Write the image, the labels and a run file into an empty folder; "
                                       "`dlvision run FOLDER/run.json` trains the same U-Net there or on a "
                                       "cluster (add --distributed under torchrun); Load… opens the result")
        self.export_run_btn.clicked.connect(self._export_run_dialog)
        lay.addWidget(self.export_run_btn)
        self.apply_combo = self.picker(Image, accept=lambda la: "napari_dlvision_output" not in la.metadata)
        lay.addWidget(ApplyRow(self.apply_combo, self.predict_layer, self.predict_folder_dialog_done,
                               "Predict layer", "Predict folder…"))
        self.lazy = LazyPredictions(self)
        lay.addWidget(self.lazy.save_btn)
        lay.addStretch()

    # aliases kept for scripts and tests
    @property
    def segmenter(self):
        return self.model

    @property
    def image_combo(self):
        return self.inputs.image_picker

    @property
    def labels_combo(self):
        return self.inputs.labels_picker

    def settings(self) -> dict:
        v = self.settings_form.values()
        return {k: v[k] for k in ("steps", "patch_size", "batch_size", "lr", "flips", "rot90", "intensity",
                                  "elastic", "device", "preview_every")}

    def device(self) -> str:
        return self.settings_form.values()["device"]

    def mode(self) -> str:
        return MODES[self.mode_combo.currentText()]

    def _mode_changed(self, *_):
        self.class_table.setVisible(self.mode() == "sparse")

    def _use_layers(self, *_):
        """Picking layers again means training on layers, not the folder."""
        self.folder_data = None
        self.folder_label.setText("no folder")

    # -- data ---------------------------------------------------------------
    def _training_data(self):
        """(images, labels, channel axis, spacing, image layer to preview) from the folder or the layers."""
        if self.folder_data is not None:
            images, masks, axis = self.folder_data
            return images, masks, axis, None, None
        image, _, labels = self.inputs.snapshot()
        data, axis, spacing = image_input(image)
        images, targets = [data], [labels]
        if self.all_pairs_check.isChecked():
            for layer in self.viewer.layers:
                other = f"{layer.name} annotations"
                if isinstance(layer, Image) and layer is not image and other in self.viewer.layers:
                    d, a, _ = image_input(layer)
                    if a != axis:
                        raise UserInputError(f"{layer.name!r} and {image.name!r} differ in colour; train on one kind")
                    images.append(d)
                    targets.append(np.array(self.viewer.layers[other].data))
        return images, targets, axis, spacing, image

    def load_folder(self, folder):
        """Use FOLDER/images + FOLDER/masks (dense instance masks) as training data."""
        from ..data.folders import read_image_mask_folder

        try:
            self.folder_data = read_image_mask_folder(folder)
        except UserInputError as e:
            return self.error(str(e))
        self.mode_combo.setCurrentIndex(list(MODES.values()).index("dense"))
        self.folder_label.setText(f"{Path(folder).name}: {len(self.folder_data[0])} images")
        return self.folder_data

    # -- actions ----------------------------------------------------------
    def train(self, resume: bool = False):
        """Train a new U-Net, or continue training the current one."""
        if self.busy():
            return None
        try:
            if resume and self.model is None:
                raise UserInputError("train or load a U-Net before continuing")
            if resume and self.model.mode != self.mode():
                raise UserInputError(f"this U-Net was trained on {self.model.mode} labels")
            images, labels, axis, spacing, image = self._training_data()
            settings = self.settings()
            preset = self.settings_form.values()["preset"]
            names = self.class_table.names() if self.mode() == "sparse" else None
        except UserInputError as e:
            return self.error(str(e))
        if not resume:
            self.plot.clear()
        self.begin_preview_history(image, resume)
        holder = {}
        gen = _train_job(holder, self.model if resume else None, preset, self.mode(), settings["device"],
                         images, labels, axis, spacing, settings, names)
        if image is not None:
            self.outputs.begin(image, names or ["background", "interior", "boundary"], self.inputs.labels_picker.value)
        return self.start(with_displayable_instances(gen), self._on_train_event, self._on_train_end, holder=holder,
                          image=image, offset=self.plot.last_step if resume else 0, resume=resume)

    def _on_train_event(self, ev, job):
        self.show_training_step(ev, job.context["offset"])
        preview = ev.payload.get("preview") if ev.payload else None
        if preview is not None and job.context["image"] is not None:
            self.outputs.write_all(preview)
        self.keep_preview(ev, job.context["offset"])

    def _on_train_end(self, job):
        self.end_preview_history(job)
        seg = job.context["holder"].get("segmenter")
        if seg is None or seg.net is None or job.error is not None:
            return
        self.model = seg  # the kept weights are in it now
        t = seg.training
        self.training_ended(t, job.context["image"])

    def predict_layer(self, image: Image | None, note: str = ""):
        if self.busy():
            return None
        if is_lazy(image) and self.model is not None:  # too big for memory: block by block, those in view first
            style = self.outputs.segmentation_style(self.model.class_names, self.inputs.labels_picker.value,
                                                    self.model.n_classes)
            instances = self.outputs.lazy_instances(image, self.model)
            return self.lazy.predict(image, self.model, "segmentation", "labels",
                                     self.outputs.name(image, "segmentation"),
                                     note + self.outputs.lazy_note(instances_ok=self.model.mode != "dense"), instances,
                                     **style)
        try:
            data, axis, spacing = self.model_input(image, "U-Net")
            gen = self.model.iter_predict_outputs(data, axis, spacing, self.outputs.wanted())
        except UserInputError as e:
            return self.error(str(e))
        self.outputs.begin(image, self.model.class_names, self.inputs.labels_picker.value)
        return self.start(with_displayable_instances(gen), self._on_predict_event, lambda job: self.outputs.end(),
                          image=image, note=note)

    def _on_predict_event(self, ev, job):
        self.panel.show_progress(ev)
        if ev.stage == "predicting":
            self.outputs.write_block(ev.payload["block"], ev.payload["probabilities"], final=ev.done == ev.total,
                                     seg=ev.payload.get("segmentation"))
        elif ev.stage == "done":
            self.outputs.finish(ev.payload)
            self.say(f"{job.context['note']}Predicted {job.context['image'].name} in {job.seconds:.1f} s.")

    def predict_folder(self, in_dir, out_dir):
        return super().predict_folder(in_dir, out_dir, ["segmentation", *self.outputs.wanted()[1:]])

    def predict_folder_dialog_done(self, in_dir, out_dir):
        return self.predict_folder(in_dir, out_dir)

    def on_model_loaded(self, seg, path):
        self.mode_combo.setCurrentIndex(list(MODES.values()).index(seg.mode))
        if seg.mode == "sparse":
            self.class_table.set_names(seg.class_names + self.class_table.names()[len(seg.class_names):])
        self.plot.clear()
        self.say(f"Loaded {path.name}: {seg.ndim}D U-Net, {seg.mode} mode, {seg.n_classes} classes, "
                 f"trained {seg.training.get('steps_total', '?')} steps.")

    # -- a run for the command line -----------------------------------------
    def export_run(self, folder):
        """Write image.tif, labels.tif and run.json (the `train unet` command of
        these settings) into `folder`, which must not hold them yet."""
        if self.busy():
            return None
        from ..cli.train_unet import run_command

        try:
            if self.folder_data is not None:
                raise UserInputError("a folder is trained from where it is: run "
                                     "`dlvision train unet --masks-dir FOLDER ...` instead")
            images, labels, axis, spacing, _ = self._training_data()
            if len(images) != 1:
                raise UserInputError("an exported run holds one image and its labels: untick "
                                     "'Also every other pair'")
            folder = Path(folder)
            if not folder.is_dir():
                raise UserInputError(f"{folder} is not a folder")
            taken = [n for n in ("image.tif", "labels.tif", "run.json", "unet.dlv") if (folder / n).exists()]
            if taken:
                raise UserInputError(f"{folder} already holds {', '.join(taken)}; choose an empty folder")
            # Rows beyond the painted classes are not named in the command (it refuses them).
            painted = max(self.inputs.counts(), default=0)
            names = self.class_table.names()[:painted] if self.mode() == "sparse" else None
            command = run_command(self.settings(), self.mode(), self.settings_form.values()["preset"],
                                  axis, spacing, names)
        except UserInputError as e:
            return self.error(str(e))
        return self.start(_export_run_job(folder, images[0], labels[0], command), self._on_export_event,
                          self._on_export_end, folder=folder)

    def _on_export_event(self, ev, job):
        self.panel.show_progress(ev)

    def _on_export_end(self, job):
        if job.error is None and job.complete:
            run = job.context["folder"] / "run.json"
            self.say(f"Wrote {run}: train with `dlvision run {run}`, then Load… its unet.dlv.")

    def _export_run_dialog(self):
        folder = QFileDialog.getExistingDirectory(self, "Empty folder for the run")
        if folder:
            self.export_run(folder)

    def _folder_dialog(self):
        folder = QFileDialog.getExistingDirectory(self, "Folder with images/ and masks/")
        if folder:
            self.load_folder(folder)
