"""Dock widget: train a U-Net from painted strokes or instance masks, live.

Training runs in a thread worker; the loss plot, progress bar and the
prediction layers update while it runs, Stop keeps the best weights, and
Continue training starts from them after more painting. torch is imported
only when a button needs it, so opening the widget stays light.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from magicgui.widgets import create_widget
from napari.layers import Image, Labels
from napari.utils.notifications import show_info
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout,
    QLabel, QProgressBar, QPushButton, QSpinBox, QVBoxLayout,
)

from ..core.errors import UserInputError
from ..core.pixel_classifier import segmentation
from ._common import (
    JobWidget, ask_in_out_folders, ask_open_path, ask_save_path, button_row, describe_error,
    image_input, output_layer,
)
from .loss_plot import LossPlot

# triton ships its own LLVM, which segfaults against Mesa's (llvmpipe) LLVM
# once a viewer has drawn; torch imports it lazily (e.g. in Adam's __init__)
# only to offer torch.compile, which we never use. Keep it out of the GUI.
if "triton" not in sys.modules:
    sys.modules["triton"] = None

PRESETS = ("small", "medium")  # names of dl.unet.PRESETS, without importing torch
MODES = {"Sparse strokes (classes 1..K)": "sparse", "Dense instance masks": "dense"}
DEVICES = ("auto", "cpu", "cuda", "mps")


def predict_events(segmenter, data, channel_axis, instances: bool):
    """Tiled prediction as events: ("predicting", done, total), then ("done", results)."""
    img = segmenter.prepare(data, channel_axis)
    prob = np.empty((segmenter.n_classes,) + img.shape[1:], np.float32)
    for done, total, _ in segmenter.iter_predict(img, prob):
        yield "predicting", done, total
    results = {"probabilities": prob}
    if instances:
        results["instances"] = segmenter.instances(prob)
    yield "done", results


def folder_pairs(folder):
    """(images, masks) from `folder/images` and `folder/masks` with matching names."""
    from ..core.io import list_images, mask_for, read_image

    folder = Path(folder)
    pairs = [(read_image(p), read_image(mask_for(p, folder / "masks"))) for p in list_images(folder / "images")]
    return [p[0] for p in pairs], [p[1] for p in pairs]


class UNetWidget(JobWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.segmenter = None
        self.folder_data = None  # (images, masks) loaded from a folder
        self.image_combo = create_widget(annotation=Image, label="Image")
        self.labels_combo = create_widget(annotation=Labels, label="Annotations")
        self.apply_combo = create_widget(annotation=Image, label="Predict")
        self.combos = (self.image_combo, self.labels_combo, self.apply_combo)
        self._build()
        self.viewer.layers.events.inserted.connect(self.reset_choices)
        self.viewer.layers.events.removed.connect(self.reset_choices)
        for combo in (self.image_combo, self.labels_combo):
            combo.changed.connect(self._use_layers)
        self.reset_choices()

    def _use_layers(self, *_):
        """Picking layers again means training on layers, not the folder."""
        self.folder_data = None
        self.folder_label.setText("no folder")

    def _build(self):
        lay = QVBoxLayout(self)
        form = QFormLayout()
        form.addRow("Image", self.image_combo.native)
        form.addRow("Annotations", self.labels_combo.native)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(list(MODES))
        form.addRow("Labels are", self.mode_combo)
        self.all_pairs_check = QCheckBox("Also every other '<image> annotations' pair")
        form.addRow("", self.all_pairs_check)
        folder_row = QHBoxLayout()
        self.folder_label = QLabel("no folder")
        folder_btn = QPushButton("Folder…")
        folder_btn.setToolTip("Train on FOLDER/images and FOLDER/masks (same file names)")
        folder_btn.clicked.connect(self._folder_train_dialog)
        folder_row.addWidget(self.folder_label)
        folder_row.addWidget(folder_btn)
        form.addRow("Or train on", folder_row)
        lay.addLayout(form)

        box = QGroupBox("Training")
        tform = QFormLayout(box)
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(PRESETS)
        tform.addRow("Architecture", self.preset_combo)
        self.steps_spin = QSpinBox(minimum=1, maximum=1_000_000, value=500)
        tform.addRow("Steps", self.steps_spin)
        self.patch_spin = QSpinBox(minimum=16, maximum=1024, value=64, singleStep=16)
        tform.addRow("Patch size", self.patch_spin)
        self.batch_spin = QSpinBox(minimum=0, maximum=256, value=0)
        self.batch_spin.setSpecialValueText("auto (from free memory)")
        tform.addRow("Batch size", self.batch_spin)
        self.lr_spin = QDoubleSpinBox(decimals=5, minimum=1e-5, maximum=1.0, value=3e-3, singleStep=1e-3)
        tform.addRow("Learning rate", self.lr_spin)
        aug = QHBoxLayout()
        self.aug_checks = {}
        for name, on in (("flips", True), ("rot90", True), ("intensity", True), ("elastic", False)):
            c = QCheckBox(name)
            c.setChecked(on)
            self.aug_checks[name] = c
            aug.addWidget(c)
        tform.addRow("Augment", aug)
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        tform.addRow("Device", self.device_combo)
        self.preview_spin = QSpinBox(minimum=0, maximum=100_000, value=50)
        self.preview_spin.setToolTip("Refresh the prediction layers every N steps (0: only at the end)")
        tform.addRow("Preview every", self.preview_spin)
        lay.addWidget(box)

        run = QHBoxLayout()
        self.train_btn = QPushButton("Train")
        self.train_btn.clicked.connect(lambda: self.train(resume=False))
        self.continue_btn = QPushButton("Continue training")
        self.continue_btn.clicked.connect(lambda: self.train(resume=True))
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setEnabled(False)
        self.stop_btn.clicked.connect(self.stop)
        for b in (self.train_btn, self.continue_btn, self.stop_btn):
            run.addWidget(b)
        lay.addLayout(run)
        self.progress = QProgressBar()
        self.status = QLabel("Paint strokes (or pick instance masks), then Train.")
        self.status.setWordWrap(True)
        self.plot = LossPlot()
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addWidget(self.plot)

        lay.addLayout(button_row(("Save model…", self._save_dialog), ("Load model…", self._load_dialog)))
        lay.addLayout(button_row(
            self.apply_combo.native,
            ("Predict layer", lambda: self.predict_layer(self.apply_combo.value)),
            ("Predict folder…", self._folder_predict_dialog),
        ))
        lay.addStretch()

    # -- settings ---------------------------------------------------------
    def settings(self):
        from ..dl.train import TrainSettings

        return TrainSettings(
            steps=self.steps_spin.value(), patch_size=self.patch_spin.value(),
            batch_size=self.batch_spin.value(), lr=self.lr_spin.value(),
            device=self.device_combo.currentText(), preview_every=self.preview_spin.value(),
            **{k: c.isChecked() for k, c in self.aug_checks.items()},
        )

    def mode(self) -> str:
        return MODES[self.mode_combo.currentText()]

    def _training_data(self):
        """(images, labels, channel axis, spacing) from the folder or the layers."""
        if self.folder_data is not None:
            images, masks = self.folder_data
            axis = -1 if images[0].ndim == masks[0].ndim + 1 else None
            return images, masks, axis, None
        image, labels = self.image_combo.value, self.labels_combo.value
        if image is None:
            raise UserInputError("open an image first")
        if labels is None:
            raise UserInputError("pick an annotation layer (paint strokes) or instance masks")
        data, axis, spacing = image_input(image)
        pairs = [(data, np.array(labels.data))]
        if self.all_pairs_check.isChecked():
            for layer in self.viewer.layers:
                other = f"{layer.name} annotations"
                if isinstance(layer, Image) and layer is not image and other in self.viewer.layers:
                    d, _, _ = image_input(layer)
                    pairs.append((d, np.array(self.viewer.layers[other].data)))
        return [p[0] for p in pairs], [p[1] for p in pairs], axis, spacing

    # -- actions ----------------------------------------------------------
    def train(self, resume: bool = False):
        """Train a new U-Net, or continue training the current one."""
        if self.busy():
            return None
        try:
            from ..dl.segmenter import UNetSegmenter
            from ..dl.train import train_unet

            images, labels, axis, spacing = self._training_data()
            if resume and self.segmenter is None:
                raise UserInputError("train or load a U-Net before continuing")
            if resume and self.segmenter.mode != self.mode():
                raise UserInputError(f"this U-Net was trained on {self.segmenter.mode} labels")
            seg = self.segmenter if resume else UNetSegmenter(
                self.preset_combo.currentText(), self.mode(), device=self.device_combo.currentText())
            settings = self.settings()
            gen = train_unet(seg, images, labels, settings, channel_axis=axis, spacing=spacing)
        except UserInputError as e:
            return self.error(str(e))
        if not resume:
            self.plot.clear()
        image = self.image_combo.value if self.folder_data is None else None
        self.start(gen, kind="train", segmenter=seg, image=image, offset=self.plot.steps[-1] if self.plot.steps else 0)

    def predict_layer(self, image: Image | None, note: str = ""):
        if self.busy():
            return None
        try:
            if self.segmenter is None:
                raise UserInputError("train or load a U-Net first")
            if image is None:
                raise UserInputError("choose an image layer to predict")
            data, axis, _ = image_input(image)
            gen = predict_events(self.segmenter, data, axis, instances=True)
        except UserInputError as e:
            return self.error(str(e))
        self.start(gen, kind="predict", segmenter=self.segmenter, image=image, note=note)

    def predict_folder(self, in_dir, out_dir):
        return self.predict_folder_job(self.segmenter, in_dir, out_dir, ["segmentation", "probabilities", "instances"])

    def load_folder(self, folder):
        """Use FOLDER/images + FOLDER/masks (dense instance masks) as training data."""
        try:
            self.folder_data = folder_pairs(folder)
        except UserInputError as e:
            return self.error(str(e))
        self.mode_combo.setCurrentIndex(list(MODES.values()).index("dense"))
        self.folder_label.setText(f"{Path(folder).name}: {len(self.folder_data[0])} images")
        return self.folder_data

    def save_model(self, path):
        if self.busy():
            return None
        try:
            if self.segmenter is None or self.segmenter.net is None:
                raise UserInputError("train or load a U-Net first")
            path = self.segmenter.save(path)
        except (UserInputError, OSError) as e:
            return self.error(f"could not save: {describe_error(e)}")
        show_info(f"saved U-Net to {path}")
        return path

    def load_model(self, path):
        if self.busy():
            return None
        try:
            from ..dl.segmenter import UNetSegmenter

            seg = UNetSegmenter.load(path, device=self.device_combo.currentText())
        except UserInputError as e:
            return self.error(str(e))
        self.segmenter = seg
        self.mode_combo.setCurrentIndex(list(MODES.values()).index(seg.mode))
        self.status.setText(f"Loaded {Path(path).name}: {seg.ndim}D U-Net, {seg.mode} mode, "
                            f"{seg.n_classes} classes, trained {seg.training.get('steps_total', '?')} steps.")
        return seg

    # -- events -----------------------------------------------------------
    def on_event(self, job, ev):
        kind = job["kind"]
        if kind == "predict":
            if ev[0] == "predicting":
                self.progress.setValue(int(100 * ev[1] / ev[2]))
                self.status.setText("Predicting…")
            else:
                job["complete"] = True
                self._show(job["image"], job["segmenter"], ev[1]["probabilities"], ev[1].get("instances"))
                self.progress.setValue(100)
                self.status.setText(job["note"] + f"Prediction done in {time.perf_counter() - job['t0']:.1f} s.")
        else:
            self._on_train_event(job, ev)

    def _on_train_event(self, job, ev):
        if ev.message:
            self.status.setText(ev.message)
        if ev.stage == "training":
            self.progress.setValue(int(100 * ev.step / ev.total))
            self.plot.add(job["offset"] + ev.step, ev.loss, ev.smoothed_loss, ev.val_metric)
            if ev.message is None:
                self.status.setText(f"Step {ev.step}/{ev.total}, loss {ev.smoothed_loss:.3f}, {ev.seconds:.0f} s")
        if ev.preview is not None and job["image"] is not None:
            self._show(job["image"], job["segmenter"], ev.preview)
        if ev.stage == "done":
            job["complete"] = True
            self.progress.setValue(100)

    def on_end(self, job):
        if job.get("kind") != "train":
            return
        seg = job["segmenter"]
        if seg.net is None:
            return
        self.segmenter = seg  # the kept (best) weights are in it now
        image = job["image"]
        if image is not None and image in self.viewer.layers and self.last_error is None:
            # The final overlay, from the kept weights, with instances.
            t = seg.training
            how = {"closed": "stopped", "time limit": "reached its time limit"}.get(t.get("stopped"), t.get("stopped", "ended"))
            note = (f"Training {how} after {t.get('steps')} steps in "
                    f"{t.get('seconds')} s, best weights kept (step {seg.metrics.get('best_step')}). ")
            self._restart = lambda: self.predict_layer(image, note)

    def _show(self, image, seg, prob, instances=None):
        labels = self.labels_combo.value
        names = seg.class_names
        for k in range(prob.shape[0]):
            output_layer(self.viewer, image, f"U-Net probability {names[k]}", prob[k], on_top=labels)
        output_layer(self.viewer, image, "U-Net segmentation", segmentation(prob), on_top=labels)
        if instances is not None:
            output_layer(self.viewer, image, "U-Net instances", instances, on_top=labels)

    # -- dialogs ----------------------------------------------------------
    def _save_dialog(self):
        if path := ask_save_path(self, "Save U-Net", "unet.dlv"):
            self.save_model(path)

    def _load_dialog(self):
        if path := ask_open_path(self, "Load U-Net"):
            self.load_model(path)

    def _folder_train_dialog(self):
        folder = QFileDialog.getExistingDirectory(self, "Folder with images/ and masks/")
        if folder:
            self.load_folder(folder)

    def _folder_predict_dialog(self):
        if folders := ask_in_out_folders(self):
            self.predict_folder(*folders)
