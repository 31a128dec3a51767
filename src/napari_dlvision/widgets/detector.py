"""Dock widget: draw boxes, train a detector, get scored boxes back, correct them, train again.

Boxes come from a Shapes layer (rectangles, any shape taken as its bounding
box, a `class` feature per shape) or an instance Labels layer. Training runs
in a thread worker with the loss (and validation mAP) plot, previews of the
boxes, Stop that keeps the chosen weights and Continue. Predictions are a
Shapes layer of scored rectangles; the threshold and NMS sliders filter
them live. torch is imported in the worker, never on napari's main thread.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton

from ..core.errors import UserInputError
from ..dl.detector_archs import ARCHS, DEFAULT_ARCH, FOREST, PRETRAINED, TORCHVISION_ARCHS
from .base import ModelWidget
from .box_layers import box_counts, boxes_from_layer, choose_class, new_boxes_layer
from .box_review import BoxReview
from .class_table import ClassTable
from .layers import OUTPUT_TAG, image_input
from .parts import ApplyRow, Field, RunPanel, SettingsForm

FIELDS = [
    Field("arch", "Architecture", DEFAULT_ARCH, choices=ARCHS,
          tooltip="auto: forest for one class of objects with background between them, else centernet; "
                  "centernet: the project's U-Net, fast from scratch on a CPU; forest: no network, the pixel "
                  "classifier's forest taught by the boxes, trained in seconds, for objects apart on a clear "
                  "background (steps, patches and augmentation do not apply); torchvision's FCOS and Faster "
                  "R-CNN: bigger, best with pretrained backbones and a GPU"),
    Field("steps", "Steps", 400, 1, 1_000_000, 50),
    Field("patch_size", "Patch size", 0, 0, 1024, 16, special="auto (from the objects)"),
    Field("batch_size", "Batch size", 0, 0, 256, special="auto"),
    Field("lr", "Learning rate", 0.0, 0.0, 1.0, 1e-3, special="auto"),
    Field("flips", "Flips", True), Field("rot90", "90° rotations", True),
    Field("scale", "Scale augmentation", 1.25, 1.0, 4.0, 0.05, decimals=2, special="off",
          tooltip="Patches zoomed by up to this factor (and down by its inverse)"),
    Field("intensity", "Intensity changes", True),
    Field("empty_planes", "Stack planes without boxes", "skip", choices=("skip", "negative"),
          tooltip="skip: not annotated yet; negative: planes with no objects"),
    Field("pretrained", "Pretrained backbone", "cache", choices=PRETRAINED,
          tooltip="torchvision detectors: ImageNet weights from torch's cache only, never, or downloaded"),
    Field("device", "Device", "auto", choices=("auto", "cpu", "cuda", "mps"),
          tooltip="auto: CUDA, then Apple MPS, then CPU"),
    Field("preview_every", "Preview every", 50, 0, 100_000, 10, special="only at the end"),
]
# What only a network uses: greyed out when the forest is chosen (empty_planes applies to both).
NO_LOSS = "a forest is fitted in one go: it has no training loss to plot"
NETWORK_KEYS = ("steps", "patch_size", "batch_size", "lr", "flips", "rot90", "scale", "intensity", "device",
                "preview_every")
TRAIN_KEYS = ("steps", "patch_size", "batch_size", "lr", "flips", "rot90", "scale", "intensity", "empty_planes",
              "device", "preview_every")


def _import_in_worker():
    """torch, and torchvision's NMS that the review's sliders run on the main thread: a first import
    there stalled the viewer 0.38 s. Called only for networks: the forest detector imports neither."""
    from .torch_import import import_torch

    import_torch()
    import torchvision.ops  # noqa: F401


def _train_job(holder, resume_from, arch, pretrained, device, data, axis, boxes, names, settings_kw, validation):
    """The worker's side: convert instance labels, build or reuse the detector, train; torch is imported
    there once a network is chosen (the forest trains without it)."""
    from ..core.boxes import boxes_from_labels
    from ..dl.detect_train import DetectSettings, train_detector
    from ..dl.detector import Detector

    if isinstance(boxes, np.ndarray):  # an instance Labels layer's copy
        boxes = boxes_from_labels(boxes, boxes.ndim == 3, names[0])
    det = resume_from or Detector(arch, class_names=names, pretrained=pretrained, device=device)
    holder["detector"] = det
    yield from train_detector(det, data, boxes, DetectSettings(**settings_kw), validation, channel_axis=axis,
                              prepare_network=_import_in_worker)


def _predict_job(model, data, axis):
    if model.arch != FOREST:
        _import_in_worker()
    yield from model.iter_predict(data, axis)


def _not_output(layer) -> bool:
    return OUTPUT_TAG not in layer.metadata


def _named_like(layer, *words) -> bool:
    name = layer.name.lower()
    return any(w in name for w in words)


STROKE_WORDS = ("annot", "stroke", "scribble")  # a pixel classifier's painted strokes: no boxes in them
TRUTH_WORDS = ("truth", "ground", "gt", "reference")


def _boxes_preference(layer):
    """Shapes first (named like boxes first); a Labels layer of painted strokes
    last: its fragments would train as objects."""
    return (not isinstance(layer, Shapes), _named_like(layer, *STROKE_WORDS), _named_like(layer, *TRUTH_WORDS),
            not layer.name.lower().endswith("boxes"))


def _truth_preference(layer):
    """A layer named like ground truth first; painted strokes last."""
    return (not _named_like(layer, *TRUTH_WORDS), _named_like(layer, *STROKE_WORDS), not isinstance(layer, Shapes))


class DetectorWidget(ModelWidget):
    KINDS = ("object-detector",)
    WHAT = "detector"

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self._watched, self._ready = None, False  # pickers report their first layer before the rest exists
        lay = self.scrolling_layout()
        self.image_picker = self.picker(Image, self._image_changed, accept=_not_output)
        self.boxes_picker = self.picker((Shapes, Labels), self._boxes_changed, accept=_not_output,
                                        prefer=_boxes_preference)
        new_btn = QPushButton("New")
        new_btn.setToolTip("A Shapes layer to draw boxes on this image (a 3D one for a stack)")
        new_btn.clicked.connect(self.new_boxes)
        for text, widget, extra in (("Image", self.image_picker, None), ("Boxes", self.boxes_picker, new_btn)):
            row = QHBoxLayout()
            row.addWidget(QLabel(text))
            row.addWidget(widget, 1)
            if extra is not None:
                row.addWidget(extra)
            lay.addLayout(row)
        self.class_table = ClassTable(["object"], count_title="Boxes")
        self.class_table.table.currentCellChanged.connect(self._class_chosen)
        lay.addWidget(self.class_table)
        self.settings_form = SettingsForm("Training", FIELDS)
        self.settings_form.editors["arch"].currentTextChanged.connect(self._arch_chosen)
        lay.addWidget(self.settings_form)
        self.panel = RunPanel([("Train", lambda: self.train(False)), ("Continue training", lambda: self.train(True))],
                              self.stop, plot=True, hint="Draw boxes around objects (New), then Train.")
        self.train_btn, self.continue_btn = self.panel.buttons["Train"], self.panel.buttons["Continue training"]
        self.stop_btn, self.status, self.plot = self.panel.stop_btn, self.panel.status, self.panel.plot
        self._arch_chosen(DEFAULT_ARCH)
        lay.addWidget(self.panel)
        self.gt_picker = self.picker((Shapes, Labels), accept=_not_output, prefer=_truth_preference)
        self.review = BoxReview(self, self.gt_picker)
        lay.addWidget(self.review)
        lay.addWidget(self.model_row("detector", "detector.dlv"))
        self.apply_picker = self.picker(Image, accept=_not_output)
        lay.addWidget(ApplyRow(self.apply_picker, self.predict_layer, self.predict_folder, "Predict layer",
                               "Predict folder…"))
        lay.addStretch()
        self.on_close(lambda: self._watch(None))
        self._ready = True
        self._boxes_changed(self.boxes_picker.value)

    # -- annotation layer ------------------------------------------------------------
    def _image_changed(self, image):
        if self._ready:
            self.review.forget_scores()

    def _boxes_changed(self, layer):
        if not self._ready:
            return
        self._watch(layer)
        self._update_counts()

    def _watch(self, layer):
        """Follow the boxes layer's edits for the class counts."""
        if self._watched is not None:
            for ev in (self._watched.events.data, self._watched.events.features):
                ev.disconnect(self._update_counts)
        self._watched = layer if isinstance(layer, Shapes) else None
        if self._watched is not None:
            for ev in (layer.events.data, layer.events.features):
                ev.connect(self._update_counts)

    def _update_counts(self, *_):
        layer = self.boxes_picker.value
        if isinstance(layer, Shapes):
            self.class_table.update_counts(box_counts(layer))
        elif isinstance(layer, Labels):
            # One box per object of an instance layer (all of the first class). Counted with
            # bincount, linear and quick on the main thread; huge or lazy layers are not read here.
            data = layer.data
            if isinstance(data, np.ndarray) and data.dtype.kind in "iu" and 0 < data.size <= 2**24:
                lo, hi = int(data.min()), int(data.max())
                if lo >= 0 and hi <= 2**22:
                    self.class_table.update_counts({1: int(np.count_nonzero(np.bincount(data.ravel())[1:]))})

    def _class_chosen(self, row, *_):
        if row >= 0:
            choose_class(self.boxes_picker.value, row + 1)

    def new_boxes(self):
        image = self.image_picker.value
        if image is None:
            return self.error("open an image first")
        layer = new_boxes_layer(self.viewer, image, self.class_table.names())
        self.boxes_picker.value = layer
        self.viewer.layers.selection.active = layer
        return layer

    def _boxes_of(self, layer, image):
        """A BoxTable (Shapes) or a labels copy converted in the worker (Labels), and the class names."""
        if layer is None:
            raise UserInputError("pick or make a boxes layer (New) and draw boxes around objects")
        names = self.class_table.names()
        if isinstance(layer, Labels):
            if tuple(layer.data.shape) != tuple(image.data.shape[:image.ndim]):
                raise UserInputError(f"the labels {layer.name!r} do not match the image {image.name!r} in shape")
            return np.array(layer.data), names
        table, names, notes = boxes_from_layer(layer, image, names)
        if names != self.class_table.names():
            self.class_table.set_names(names)
        if notes:
            self.say("; ".join(notes))
        return table, names

    # -- training ----------------------------------------------------------------
    def train(self, resume: bool = False):
        if self.busy():
            return None
        try:
            if resume and self.model is None:
                raise UserInputError("train or load a detector before continuing")
            image = self.image_picker.value
            if image is None:
                raise UserInputError("open an image and pick it")
            data, axis, _ = image_input(image)
            boxes, names = self._boxes_of(self.boxes_picker.value, image)
            validation = self._validation(names)
            values = self.settings_form.values()
            settings = {k: values[k] for k in TRAIN_KEYS}
        except UserInputError as e:
            return self.error(str(e))
        if not resume:
            self.plot.clear()
            self.plot.set_placeholder(NO_LOSS if values["arch"] == FOREST else None)
        holder = {}
        gen = _train_job(holder, self.model if resume else None, values["arch"], values["pretrained"],
                         values["device"], data, axis, boxes, names, settings, validation)
        return self.start(gen, self._on_train_event, self._on_train_end, holder=holder, image=image,
                          offset=self.plot.last_step if resume else 0)

    def _validation(self, names):
        if not self.review.validate_check.isChecked():
            return None
        gt, image = self.gt_picker.value, self.apply_picker.value
        if gt is None or image is None:
            raise UserInputError("validation needs an image (the Predict layer choice) and a ground-truth layer")
        data, axis, _ = image_input(image)
        truth, _, _ = boxes_from_layer(gt, image, names)
        return [(data, truth)]

    def _arch_chosen(self, arch: str):
        """Grey out what the chosen architecture does not use (auto may still choose a network)."""
        self.settings_form.enable(NETWORK_KEYS, arch != FOREST)
        self.settings_form.enable(("pretrained",), arch in TORCHVISION_ARCHS)
        if self.model is None or self.model.arch != FOREST:
            self.plot.set_placeholder(NO_LOSS if arch == FOREST else None)

    def _model_changed(self, det):
        """A forest is fitted in one go: no loss to plot, nothing to continue, no duplicates to suppress."""
        forest = det.arch == FOREST
        self.review.set_suppression(not forest)
        self.plot.set_placeholder(NO_LOSS if forest else None)
        self.panel.hold("Continue training", forest,
                        "a forest is fitted in one go: Train fits it again on the boxes as they are now")

    def _on_train_event(self, ev, job):
        self.show_training_step(ev, job.context["offset"])
        preview = ev.payload.get("preview") if isinstance(ev.payload, dict) else None
        if preview is not None and job.context["image"] in self.viewer.layers:
            det = job.context["holder"]["detector"]  # set before training; auto's choice made before any preview
            self.review.set_suppression(det.arch != FOREST)
            self._show(job.context["image"], preview, det)
            job.context["previewed"] = ev.stage == "done"

    def _on_train_end(self, job):
        det = job.context["holder"].get("detector")
        if det is None or det.net is None or job.error is not None:
            return
        self.model = det
        self._model_changed(det)
        self.class_table.set_names(det.class_names + self.class_table.names()[len(det.class_names):])
        t = det.training
        if t.get("notes"):  # boxes clipped or dropped, planes skipped: the status line moved on long ago
            show_info("Detector training: " + "; ".join(t["notes"]))
        image = job.context["image"]
        if det.arch == FOREST and job.context.get("previewed") and image in self.viewer.layers:
            # The forest's last preview is the trained forest's prediction of this image: not predicted again.
            n, threshold = len(self.review.selected(self._key(image))), self.review.values()[0]
            return self.say(f"{self.training_note(t)}Predicted {image.name}: {n} boxes with score >= {threshold:.2f}.")
        self.training_ended(t, image)

    # -- prediction and review ---------------------------------------------------------
    def _key(self, image) -> str:
        return f"{image.name} detections"

    def _show(self, image, candidates, model=None):
        """Show candidates found by `model` (the widget's model unless given)."""
        return self.review.show(self._key(image), image, candidates, (model or self.model).select,
                                keep_selected=self.boxes_picker.value)

    def predict_layer(self, image, note: str = "", then=None):
        if self.busy():
            return None
        try:
            data, axis, _ = self.model_input(image, "detector")
        except UserInputError as e:
            return self.error(str(e))

        def on_event(ev, job):
            self.panel.show_progress(ev)
            if ev.stage == "done":
                layer, table = self._show(image, ev.payload["candidates"])
                self.say(f"{note}Predicted {image.name} in {job.seconds:.1f} s: {len(table)} boxes "
                         f"with score >= {self.review.values()[0]:.2f}.")

        return self.start(_predict_job(self.model, data, axis), on_event,
                          (lambda job: then() if job.complete else None) if then else None)

    def accept(self):
        layer, image = self.boxes_picker.value, self.image_picker.value
        try:
            if not isinstance(layer, Shapes) or image is None:
                raise UserInputError("pick the image and its boxes (Shapes) layer to accept boxes into")
            added = self.review.accept_into(layer, image, self.class_table.names(), self._key(image))
        except UserInputError as e:
            return self.error(str(e))
        self.say(f"Added {added} boxes to {layer.name!r}; correct them and train again.")
        return added

    def evaluate(self):
        image, gt = self.apply_picker.value, self.gt_picker.value
        if image is None or gt is None:
            return self.error("pick an image (Predict layer) and a ground-truth boxes or labels layer")
        key = self._key(image)

        def score():
            try:
                return self.review.evaluate(key, gt, self.class_table.names())
            except UserInputError as e:
                return self.error(str(e))

        if key in self.review.shown and self.review.shown[key][0] is image:
            return score()
        return self.predict_layer(image, then=score)

    def load_model(self, path):
        from ..core.errors import ModelFileError
        from ..core.modelfile import read_metadata
        from .torch_import import import_torch

        try:
            forest = read_metadata(path).get("arch") == FOREST
        except (ModelFileError, OSError):
            forest = False  # the loader below says what is wrong with the file, as for any model
        if not forest:
            import_torch()  # loading builds the network: torch without triton (see torch_import)
        return super().load_model(path)

    def on_model_loaded(self, det, path):
        self.class_table.set_names(det.class_names + self.class_table.names()[len(det.class_names):])
        self.settings_form.set_value("arch", det.arch)
        self.review.set_values(det.score_threshold, det.nms_iou)
        self.plot.clear()
        self._model_changed(det)
        trained = (det.training.get("kept") or "a forest") if det.arch == FOREST else \
            f"trained {det.training.get('steps_total', '?')} steps"
        self.say(f"Loaded {path.name}: {det.arch} detector, classes {', '.join(det.class_names)}, {trained}.")
