"""Dock widget: paint sparse labels, train a random forest, see it live.

Thin by design: it reads layers, runs the forest's generators in a thread
worker, and writes results into its own output layers on the main thread.
The user's annotation layer is only ever read.
"""

from __future__ import annotations

import threading

from napari.layers import Image
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QCheckBox, QGridLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout

from ..core.errors import UserInputError
from ..core.features import FAMILIES, FAMILY_TITLES, SCALES, FeatureSpec
from ..core.pixel_classifier import PixelClassifier
from .annotations import AnnotationInputs
from .base import ModelWidget
from .layers import image_input, spatial_shape, visible_box
from .outputs import PixelOutputs, with_displayable_instances
from .lazy_layers import LazyPredictions, is_lazy
from .parts import ApplyRow, RunPanel

LIVE_DELAY_MS = 150  # wait this long after a stroke before retraining
CACHE_BYTES = 2 << 30  # features kept for live retraining


class PixelClassifierWidget(ModelWidget):
    KINDS = ("pixel-random-forest",)
    WHAT = "classifier"

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self._tiles = self._tiles_key = None
        self._tiles_lock = threading.Lock()  # the worker sets the cache, the main thread may drop it
        lay = self.scrolling_layout()
        self.inputs = AnnotationInputs(self, on_paint=self._on_paint)
        lay.addWidget(self.inputs)
        self.class_table = self.inputs.class_table
        lay.addWidget(self._features_box())
        forest = QHBoxLayout()
        forest.addWidget(QLabel("Trees"))
        self.trees_spin = QSpinBox(minimum=1, maximum=1000, value=50)
        forest.addWidget(self.trees_spin)
        forest.addWidget(QLabel("Max depth (0 = none)"))
        self.depth_spin = QSpinBox(minimum=0, maximum=100, value=0)
        forest.addWidget(self.depth_spin)
        lay.addLayout(forest)
        self.outputs = PixelOutputs(self.viewer, suffix="")
        lay.addWidget(self.outputs)
        self.live_check = QCheckBox("Live update")
        self.live_check.setToolTip("Retrain after every stroke, the region on screen first")
        self.live_check.toggled.connect(self._live_toggled)
        self.panel = RunPanel([("Train and predict", self.train), (self.live_check, None)], self.stop,
                              hint="Paint a few strokes of each class, then train.", lock_while_busy=False)
        self.train_btn = self.panel.buttons["Train and predict"]
        self.stop_btn, self.progress, self.status = self.panel.stop_btn, self.panel.progress, self.panel.status
        lay.addWidget(self.panel)
        lay.addWidget(self.model_row("classifier", "classifier.dlv"))
        self.apply_combo = self.picker(Image)
        lay.addWidget(ApplyRow(self.apply_combo, self.apply_to_layer, self.apply_to_folder))
        self.lazy = LazyPredictions(self)
        lay.addWidget(self.lazy.save_btn)
        lay.addStretch()
        self._live_timer = QTimer(self, singleShot=True, interval=LIVE_DELAY_MS)
        self._live_timer.timeout.connect(self._live_retrain)
        # Another image picked with live update on: its prediction (or its message) at once,
        # not the last image's message until the next stroke.
        self.inputs.image_picker.on_change = lambda _layer: self.live_check.isChecked() and self._live_timer.start()
        self.viewer.layers.events.removed.connect(self._forget_features)
        self.on_close(lambda: self.viewer.layers.events.removed.disconnect(self._forget_features))
        self.on_close(self._live_timer.stop)
        self.on_close(self._forget_features)  # the feature cache can be hundreds of MB

    # aliases kept for scripts and tests
    @property
    def image_combo(self):
        return self.inputs.image_picker

    @property
    def labels_combo(self):
        return self.inputs.labels_picker

    @property
    def classifier(self):
        return self.model

    def class_names(self):
        return self.class_table.names()

    def new_annotation_layer(self):
        return self.inputs.new_layer()

    # -- layout -----------------------------------------------------------
    def _features_box(self):
        box = QGroupBox("Features (family x scale)")
        box.setCheckable(True)  # unticked: hidden, the chosen features stay
        grid = QGridLayout()
        self.feature_boxes: dict[tuple[str, float], QCheckBox] = {}
        for j, s in enumerate(SCALES):
            grid.addWidget(QLabel(f"{s:g}"), 0, j + 1, alignment=Qt.AlignmentFlag.AlignCenter)
        default = set(FeatureSpec.default().features)
        for i, fam in enumerate(FAMILIES):
            grid.addWidget(QLabel(FAMILY_TITLES[fam]), i + 1, 0)
            for j, s in enumerate(SCALES):
                c = QCheckBox()
                c.setEnabled(fam == "gaussian" or s >= 0.5)
                c.setChecked(any(f.family == fam and f.scale == s for f in default))
                self.feature_boxes[fam, s] = c
                grid.addWidget(c, i + 1, j + 1, alignment=Qt.AlignmentFlag.AlignCenter)
        inner = QGroupBox()
        inner.setFlat(True)
        inner.setLayout(grid)
        lay = QVBoxLayout(box)
        lay.addWidget(inner)
        box.toggled.connect(inner.setVisible)
        reset = QPushButton("Defaults")
        reset.clicked.connect(lambda: self.set_feature_spec(FeatureSpec.default()))
        lay.addWidget(reset, alignment=Qt.AlignmentFlag.AlignRight)
        box.toggled.connect(reset.setVisible)
        box.setChecked(False)
        return box

    # -- settings ---------------------------------------------------------
    def feature_spec(self) -> FeatureSpec:
        chosen = [(f, s) for (f, s), box in self.feature_boxes.items() if box.isChecked()]
        if not chosen:
            raise UserInputError("select at least one feature")
        return FeatureSpec.parse(",".join(f"{f}@{s:g}" for f, s in chosen))

    def set_feature_spec(self, spec: FeatureSpec):
        for (f, s), box in self.feature_boxes.items():
            box.setChecked(any(x.family == f and x.scale == s for x in spec.features))

    # -- live update ------------------------------------------------------
    def _on_paint(self):
        self._live_timer.start()

    def _live_toggled(self, on):
        if on and self.inputs.labels_picker.value is None:
            self.say("Live update is on: add an annotation layer (New) and paint.")
        elif on:
            self.say("Live update is on: every finished stroke retrains.")
            self._live_timer.start()

    def _live_retrain(self):
        if self.live_check.isChecked():
            self.train(live=True)

    def _forget_features(self, *_):
        """A layer went away: free the cached features (they may be its)."""
        with self._tiles_lock:
            self._tiles = self._tiles_key = None

    def _cached_tiles(self, clf: PixelClassifier, image: Image, run):
        """Generator for the worker: the image's feature tiles, then `run(tiles)`.

        Converting and checking a big image takes a while, so it happens in
        the worker; the tiles (and their feature cache) are kept for the next
        run on the same image and feature set.
        """
        data, axis, spacing = image_input(image)
        key = (id(image), id(image.data), clf.spec, spacing)

        def job():
            with self._tiles_lock:
                tiles = self._tiles if key == self._tiles_key else None
                if tiles is None:
                    self._tiles = self._tiles_key = None  # free the old features first
            if tiles is None:
                tiles = clf.feature_tiles(data, axis, spacing, cache_bytes=CACHE_BYTES, training=True)
                with self._tiles_lock:
                    self._tiles, self._tiles_key = tiles, key
            yield from run(tiles)

        return job()

    # -- actions ----------------------------------------------------------
    def train(self, live: bool = False):
        """Fit a new forest on the current annotations and predict the image."""
        if self._closed:
            return None
        if self.runner.busy:  # a newer stroke or click: restart with the latest strokes
            self.runner.stop()
            self.runner.then(lambda: self.train(live))
            return None
        try:
            image, labels, snapshot = self.inputs.snapshot()
            from ..core.live import train_and_predict

            clf = PixelClassifier(self.feature_spec(), self.trees_spin.value(),
                                  self.depth_spin.value() or None, self.class_names())
            shape = spatial_shape(image)
            from ..core.labels import check_classes

            check_classes(sorted(self.inputs.counts(recount=not live)), len(self.class_names()))
            focus = visible_box(self.viewer, image, shape)
            wanted = self.outputs.wanted()
            gen = self._cached_tiles(
                clf, image, lambda tiles: train_and_predict(clf, tiles, snapshot, focus, wanted))
        except UserInputError as e:
            # While painting with live update, "only one class so far" is a normal state.
            return self.error(str(e), quiet=live)
        self.outputs.begin(image, clf.class_names, labels)
        return self.start(with_displayable_instances(gen), self._on_event, self._on_end, image=image, clf=clf,
                          quiet=live)

    def apply_to_layer(self, image: Image | None):
        """Predict another image layer with the current classifier."""
        if self.busy():
            return None
        try:
            if self.model is None:
                raise UserInputError("train or load a classifier first")
            if image is None:
                raise UserInputError("choose an image layer to apply the classifier to")
            clf = self.model
            if is_lazy(image):  # too big for memory: block by block into a file, those in view first
                style = self.outputs.segmentation_style(clf.class_names, self.inputs.labels_picker.value, clf.n_classes)
                return self.lazy.predict(image, clf, "segmentation", "labels", self.outputs.name(image, "segmentation"),
                                         self.outputs.lazy_note(), self.outputs.lazy_instances(image, clf), **style)
            data, axis, spacing = image_input(image)
            clf.check_shape(data.shape, axis)  # cheap: the full check runs in the worker
            focus = visible_box(self.viewer, image, spatial_shape(image))
            gen = clf.iter_predict_outputs(data, axis, spacing, self.outputs.wanted(), focus=focus)
        except UserInputError as e:
            return self.error(str(e))
        self.outputs.begin(image, clf.class_names, self.inputs.labels_picker.value)
        return self.start(with_displayable_instances(gen), self._on_event, self._on_end, image=image, clf=clf,
                          applied=True)

    def apply_to_folder(self, in_dir, out_dir):
        """Predict every image file of a folder, writing TIFFs to out_dir."""
        return self.predict_folder(in_dir, out_dir, ["segmentation", *self.outputs.wanted()[1:]])

    def on_model_loaded(self, clf, path):
        self.set_feature_spec(clf.spec)
        self.trees_spin.setValue(clf.n_trees)
        self.depth_spin.setValue(clf.max_depth or 0)
        self.class_table.set_names(clf.class_names + self.class_names()[len(clf.class_names):])
        self.say(f"Loaded {path.name}: {clf.n_classes} classes, {len(clf.spec.features)} features.")

    # -- worker events ----------------------------------------------------
    def _on_event(self, ev, job):
        self.panel.show_progress(ev)
        if ev.stage == "predicting":
            self.outputs.write_block(ev.payload["block"], ev.payload["probabilities"], final=ev.done == ev.total,
                                     seg=ev.payload.get("segmentation"))
        elif ev.stage == "done":
            self.model = job.context["clf"]
            self.outputs.finish(ev.payload)
            secs = job.seconds
            if job.context.get("applied"):
                self.say(f"Predicted {job.context['image'].name} in {secs:.2f} s.")
            else:
                counts = ", ".join(str(v) for v in self.model.training.get("pixels_per_class", {}).values())
                self.say(f"Trained and predicted in {secs:.2f} s (painted pixels per class: {counts}).")

    def _on_end(self, job):
        self.outputs.end()
