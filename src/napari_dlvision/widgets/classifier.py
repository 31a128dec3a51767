"""Dock widget: label images by painting on their thumbnails, train a classifier, see its mistakes.

The images (a stack layer the user opened, or a folder opened here) are
shown as a mosaic of thumbnails in one image layer, or as the stack itself
with its slider; an annotation Labels layer lies over them, and a stroke of
class c anywhere on a thumbnail labels that image c (the class painted most
wins). Train runs in a worker; afterwards every image gets a frame in its
predicted class's colour, a confidence bar, and a red or green corner where
its label is known. Filters step through misclassified, low-confidence,
unlabelled images, or those to label next (smallest margin first); the
confusion matrix of the held-out images is drawn in the dock.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
from napari.layers import Image
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QPushButton

from ..core.classification import Prediction
from ..core.errors import UserInputError
from ..core.mosaic import MAX_TILES, Mosaic, labels_from_strokes, overlay_tiles
from .base import ModelWidget
from .class_table import ClassTable
from .classifier_jobs import load_job, predict_job, train_job
from .classifier_views import ConfusionTable, FilterBar, filtered
from .layers import OUTPUT_TAG, show_output
from .parts import Field, RunPanel, SettingsForm

ARCHS = ("fast", "logreg", "mlp", "filters-mlp", "cnn", "cnn-bn", "resnet18")  # = dl.classify_nets.ARCHS
FIELDS = [
    Field("arch", "Architecture", "fast", choices=ARCHS,
          tooltip="fast: the default, best accuracy per second; the others follow the course"),
    Field("epochs", "Epochs", 0.0, 0, 10_000, 1, special="the architecture's", decimals=1),
    Field("time_limit", "Time limit (s)", 0.0, 0, 1e6, 30, special="none", decimals=0),
    Field("val_fraction", "Held out", 0.1, 0.0, 0.5, 0.05, decimals=2,
          tooltip="share of the labelled images kept for validation and the confusion matrix"),
    Field("device", "Device", "auto", choices=("auto", "cpu", "cuda", "mps")),
]
VIEWS = ("mosaic", "stack")
OVERLAY_MAX_PIXELS = 50_000_000  # a prediction overlay bigger than this would cost too much memory


def _is_stack(layer) -> bool:
    return OUTPUT_TAG not in layer.metadata and layer.data.ndim - (1 if layer.rgb else 0) == 3


class ClassifierWidget(ModelWidget):
    KINDS = ("image-classifier",)
    WHAT = "classifier"

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        # stack layer -> labels known from the folder it came from (weak: a deleted layer takes them along)
        self.file_labels = weakref.WeakKeyDictionary()
        self.stack = self.annotations = self.view_layer = self.mosaic = None
        self.labels = None  # per image: the labels the last training used
        self.prediction: Prediction | None = None
        lay = self.scrolling_layout()
        row = QHBoxLayout()
        self.image_picker = self.picker(Image, accept=_is_stack)
        open_btn = QPushButton("Open folder…")
        open_btn.setToolTip("Class folders (DIR/<class>/*.png), CIFAR binary batches, or a folder of images")
        open_btn.clicked.connect(self._open_dialog)
        row.addWidget(QLabel("Images"))
        row.addWidget(self.image_picker, 1)
        row.addWidget(open_btn)
        lay.addLayout(row)
        row = QHBoxLayout()
        self.view_combo = QComboBox()
        self.view_combo.addItems(list(VIEWS))
        self.show_btn = QPushButton("Label these images")
        self.show_btn.setToolTip("Show the images as thumbnails (or the stack) with an annotation layer over them")
        self.show_btn.clicked.connect(lambda: self.prepare_view())
        row.addWidget(QLabel("View as"))
        row.addWidget(self.view_combo)
        row.addWidget(self.show_btn, 1)
        lay.addLayout(row)
        self.class_table = ClassTable(("class 1", "class 2"), count_title="Images")
        lay.addWidget(self.class_table)
        self._count_timer = QTimer(self, singleShot=True, interval=150)
        self._count_timer.timeout.connect(self.update_counts)
        self.settings_form = SettingsForm("Training", FIELDS)
        lay.addWidget(self.settings_form)
        self.panel = RunPanel([("Train", lambda: self.train(False)), ("Continue training", lambda: self.train(True))],
                              self.stop, plot=True, hint="Open images, press 'Label these images', paint a stroke "
                              "of a class on some thumbnails, then Train.")
        self.train_btn, self.status = self.panel.buttons["Train"], self.panel.status
        lay.addWidget(self.panel)
        self.filter_bar = FilterBar(self.refresh_overlay, self.go_to)
        lay.addWidget(self.filter_bar)
        self.confusion = ConfusionTable()
        lay.addWidget(self.confusion)
        lay.addWidget(self.model_row("classifier", "classifier.dlv"))
        lay.addStretch()
        self.on_close(self._release)

    # -- data and views -------------------------------------------------------
    def _open_dialog(self):
        folder = QFileDialog.getExistingDirectory(self, "Folder of images (class folders, CIFAR binary, or flat)")
        if folder:
            self.open_folder(folder)

    def open_folder(self, folder):
        """Read a folder in a worker; the images become a stack layer, shown for labelling."""
        if self.busy():
            return None

        def on_event(ev, job):
            self.panel.show_progress(ev)
            if ev.stage == "done":
                s = ev.payload
                rgb = s.n_channels == 3
                layer = self.viewer.add_image(s.images if rgb else s.images[..., 0], rgb=rgb, name=Path(folder).name)
                if s.class_names:
                    self.class_table.set_names(s.class_names)
                self.image_picker.value = layer
                # The picker holds the layer itself; add_image through the viewer
                # napari hands a plugin returns a proxy of it (another object).
                self.file_labels[self.image_picker.value] = s.labels
                self.prepare_view()
                self.say(f"Opened {s.describe()}." + "".join(f" Note: {n}." for n in s.notices))

        return self.start(load_job(folder), on_event)

    def prepare_view(self, view: str | None = None):
        """Thumbnails (or the stack) of the picked images with an annotation layer over them."""
        stack = self.image_picker.value
        if stack is None:
            return self.error("open images as one stack (File > Open Files as Stack…) or use Open folder…")
        view = view or self.view_combo.currentText()
        self.view_combo.setCurrentText(view)
        n, h, w = stack.data.shape[:3]
        if view == "mosaic" and n > MAX_TILES:
            view = "stack"
            self.view_combo.setCurrentText(view)
            self.say(f"{n} images are too many for one mosaic ({MAX_TILES} at most): showing the stack")
        carried = None  # labels painted in the other view of these images go on counting
        if self.stack is stack and self.annotations is not None and self.annotations in self.viewer.layers:
            carried = self.current_labels()
        self._release()
        self.stack, self.prediction, self.labels = stack, None, None
        if view == "mosaic":
            self.mosaic = Mosaic.for_images(n, h, w)
            self.view_layer = show_output(self.viewer, f"{stack.name} mosaic", self.mosaic.assemble(np.asarray(stack.data)),
                                          "image", rgb=stack.rgb, contrast_limits=stack.contrast_limits)
            stack.visible = False
            self.viewer.reset_view()  # the whole mosaic, not one thumbnail at the stack's zoom
        else:
            self.mosaic, self.view_layer = None, stack
            stack.visible = True
        shape = self.mosaic.shape if self.mosaic else (n, h, w)
        name = f"{self.view_layer.name} annotations"
        old = self.viewer.layers[name] if name in self.viewer.layers else None
        if old is not None and tuple(old.data.shape) == shape:
            self.annotations = old  # strokes painted before are kept and used
        else:
            self.annotations = self.viewer.add_labels(np.zeros(shape, np.uint8), name=name if old is None else
                                                      f"{name} ({view})", opacity=0.8)
        self.annotations.events.paint.connect(self._painted)
        self.annotations.events.data.connect(self._painted)
        self.class_table.bind(self.annotations)
        if carried is not None and (carried >= 0).any():
            self.file_labels[stack] = carried
        self.viewer.layers.selection.active = self.annotations
        self.annotations.mode, self.annotations.brush_size = "paint", max(2, min(h, w) // 6)
        self.annotations.selected_label = max(1, int(self.annotations.selected_label))
        self.filter_bar.set_indices(filtered(self.filter_bar.name, None, self.current_labels()))
        self.update_counts()
        self.say(f"Paint a stroke of a class on each image to label it ({n} images"
                 + (", as a mosaic)." if self.mosaic else ", one by one with the slider).") + " Then Train.")
        return self.annotations

    def _release(self):
        if self.annotations is not None:
            self.annotations.events.paint.disconnect(self._painted)
            self.annotations.events.data.disconnect(self._painted)
        self.class_table.close_table()

    def _painted(self, *_):
        self._count_timer.start()

    def current_labels(self) -> np.ndarray:
        """Per image: the painted class (0-based) where painted, else the folder's label, else -1."""
        n = self.stack.data.shape[0]
        known = self.file_labels.get(self.stack)
        labels = np.full(n, -1, np.int64) if known is None else np.array(known)
        painted = labels_from_strokes(np.asarray(self.annotations.data), self.mosaic)
        labels[: len(painted)][painted > 0] = painted[painted > 0] - 1
        return labels

    def update_counts(self):
        if self.annotations is None or self.annotations not in self.viewer.layers:
            return
        labels = self.current_labels()
        self.class_table.update_counts({k + 1: int(c) for k, c in enumerate(np.bincount(labels[labels >= 0]))})

    # -- training and prediction -----------------------------------------------
    def settings(self) -> dict:
        v = self.settings_form.values()
        return {"epochs": v["epochs"] or None, "time_limit": v["time_limit"] or None,
                "val_fraction": v["val_fraction"], "device": v["device"]}

    def device(self) -> str:
        return self.settings_form.values()["device"]

    def train(self, resume: bool = False):
        if self.busy():
            return None
        try:
            if self.annotations is None or self.annotations not in self.viewer.layers:
                raise UserInputError("press 'Label these images' first, then paint strokes on some thumbnails")
            if resume and self.model is None:
                raise UserInputError("train or load a classifier before continuing")
            stack = self.stack
            strokes = np.array(self.annotations.data)  # a copy: painting may go on while the worker reads
        except UserInputError as e:
            return self.error(str(e))
        if not resume:
            self.panel.plot.clear()
        holder = {"rgb": stack.rgb}
        gen = train_job(holder, self.model if resume else None, self.settings_form.values()["arch"], self.device(),
                         stack.data, self.file_labels.get(stack), strokes, self.mosaic, self.class_table.names(),
                         self.settings())
        return self.start(gen, self._on_train_event, self._on_train_end, holder=holder,
                          offset=self.panel.plot.last_step if resume else 0)

    def _on_train_event(self, ev, job):
        self.show_training_step(ev, job.context["offset"])
        if ev.stage == "done":
            self.confusion.show_evaluation(ev.payload.get("evaluation"))

    def _on_train_end(self, job):
        holder = job.context["holder"]
        clf = holder.get("model")
        if clf is None or clf.net is None or job.error is not None:
            return
        self.model, self.labels = clf, holder.get("labels")
        note = self.training_note(clf.training)
        self.say(note)
        self.runner.then(lambda: self.predict_images(note))

    def predict_images(self, note: str = ""):
        """Classify every image of the current stack; frames and filters follow."""
        if self.busy():
            return None
        try:
            if self.model is None:
                raise UserInputError("train or load a classifier first")
            if self.stack is not None and self.stack not in self.viewer.layers:
                raise UserInputError(f"the images' layer {self.stack.name!r} was removed: the classifier is kept; "
                                     "open images and press 'Label these images' to classify them")
            if self.stack is None:
                raise UserInputError("press 'Label these images' first")
            stack = self.stack
        except UserInputError as e:
            return self.error(str(e))

        def on_event(ev, job):
            self.panel.show_progress(ev)
            if ev.stage == "done" and stack is self.stack:
                self.prediction = Prediction(ev.payload["proba"])
                self.refresh_overlay()
                self.say(f"{note}Predicted {len(self.prediction.proba)} images in {job.seconds:.1f} s.")

        return self.start(predict_job(self.model, stack.data, stack.rgb), on_event)

    def refresh_overlay(self):
        """Redraw the prediction frames, veiling the images the filter hides."""
        if self.stack is None or self.annotations is None:
            return
        labels = self.current_labels()
        self.filter_bar.set_indices(filtered(self.filter_bar.name, self.prediction, labels))
        if self.prediction is None:
            return
        n, h, w = self.stack.data.shape[:3]
        n_view = self.mosaic.n if self.mosaic else n
        if n_view * h * w > OVERLAY_MAX_PIXELS:
            return self.say("too many images to draw predictions over them; browse them with the filters")
        shown = np.zeros(n, bool)
        shown[self.filter_bar.indices] = True
        colours = np.array([self.class_table.colours()[k] if k < self.class_table.table.rowCount() else (1, 1, 1, 1)
                            for k in range(self.model.n_classes)])
        p = self.prediction
        tiles = overlay_tiles(n_view, h, w, p.labels[:n_view], p.scores[:n_view], colours, labels[:n_view],
                              shown[:n_view])
        data = self.mosaic.assemble(tiles) if self.mosaic else tiles
        show_output(self.viewer, f"{self.view_layer.name} predictions", data, "image", rgb=True,
                    keep_selected=self.annotations)

    def go_to(self, i: int):
        """Bring image i into view and say what the model thinks of it."""
        if self.mosaic is not None:
            cy, cx = self.mosaic.centre(i)
            self.viewer.camera.center = (cy, cx)
            self.viewer.camera.zoom = max(1.0, 300 / (6 * self.mosaic.cell[1]))
        else:
            self.viewer.dims.set_current_step(0, i)
        names = self.class_table.names()
        text = f"Image {i}"
        if self.prediction is not None:
            k = int(self.prediction.labels[i])
            name = self.model.class_names[k] if k < len(self.model.class_names) else str(k)
            text += f": predicted {name} ({self.prediction.scores[i]:.2f})"
        label = int(self.current_labels()[i])
        text += f", labelled {names[label] if 0 <= label < len(names) else label}" if label >= 0 else ", unlabelled"
        self.say(text + ".")

    def on_model_loaded(self, clf, path):
        self.class_table.set_names(clf.class_names + self.class_table.names()[len(clf.class_names):])
        self.settings_form.set_value("arch", clf.arch)
        self.panel.plot.clear()
        self.say(f"Loaded {path.name}: {clf.describe()}.")
        if self.stack is not None and self.stack in self.viewer.layers:
            self.predict_images()
