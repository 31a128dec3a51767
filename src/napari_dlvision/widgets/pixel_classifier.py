"""Dock widget: paint sparse labels, train a random forest, see it live.

Thin by design: it reads layers, runs `core.live` generators in a napari
thread worker, and writes results into its own output layers on the main
thread. The user's annotation layer is only ever read.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from magicgui.widgets import create_widget
from napari.layers import Image, Labels
from napari.utils.notifications import show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView, QCheckBox, QGridLayout, QGroupBox, QHBoxLayout,
    QHeaderView, QLabel, QProgressBar, QPushButton, QSpinBox, QTableWidget,
    QTableWidgetItem, QVBoxLayout,
)

from ..core.errors import UserInputError
from ..core.features import FAMILIES, FAMILY_TITLES, SCALES, FeatureSpec
from ..core.pixel_classifier import MAX_CLASSES, PixelClassifier, segmentation, uncertainty
from ._common import (
    JobWidget, ask_in_out_folders, ask_open_path, ask_save_path, button_row, describe_error,
    image_input, output_layer, spatial_shape, visible_box,
)

LIVE_DELAY_MS = 150  # wait this long after a stroke before retraining
REFRESH_S = 0.15  # redraw output layers at most this often while predicting


class PixelClassifierWidget(JobWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.classifier: PixelClassifier | None = None
        self._tiles = None
        self._tiles_key = None
        self._last_refresh = 0.0
        self._watched = None

        self.image_combo = create_widget(annotation=Image, label="Image")
        self.labels_combo = create_widget(annotation=Labels, label="Annotations")
        self.apply_combo = create_widget(annotation=Image, label="Apply to")
        self.combos = (self.image_combo, self.labels_combo, self.apply_combo)
        self._build()
        self.viewer.layers.events.inserted.connect(self.reset_choices)
        self.viewer.layers.events.removed.connect(self.reset_choices)
        self.viewer.layers.events.removed.connect(self._forget_features)
        self.labels_combo.changed.connect(self._watch_labels)
        self.reset_choices()

    # -- layout -----------------------------------------------------------
    def _build(self):
        lay = QVBoxLayout(self)
        grid = QGridLayout()
        grid.addWidget(QLabel("Image"), 0, 0)
        grid.addWidget(self.image_combo.native, 0, 1)
        grid.addWidget(QLabel("Annotations"), 1, 0)
        grid.addWidget(self.labels_combo.native, 1, 1)
        self.new_labels_btn = QPushButton("New")
        self.new_labels_btn.setToolTip("Add an empty annotation layer for the chosen image")
        self.new_labels_btn.clicked.connect(self.new_annotation_layer)
        grid.addWidget(self.new_labels_btn, 1, 2)
        lay.addLayout(grid)

        self.class_table = QTableWidget(2, 2)
        self.class_table.setHorizontalHeaderLabels(["Class", "Labelled pixels"])
        self.class_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.class_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.class_table.setMinimumHeight(110)
        self.class_table.setMaximumHeight(160)
        self.class_table.cellClicked.connect(self._select_class)
        self._set_class_rows(["background", "foreground"])
        lay.addWidget(self.class_table)
        add_class = QPushButton("Add class")
        add_class.clicked.connect(lambda: self._set_class_rows(self.class_names() + [f"class {self.class_table.rowCount() + 1}"]))
        lay.addWidget(add_class)

        feats = QGroupBox("Features (family x scale)")
        fgrid = QGridLayout(feats)
        self.feature_boxes: dict[tuple[str, float], QCheckBox] = {}
        for j, s in enumerate(SCALES):
            fgrid.addWidget(QLabel(f"{s:g}"), 0, j + 1, alignment=Qt.AlignmentFlag.AlignCenter)
        default = set(FeatureSpec.default().features)
        for i, fam in enumerate(FAMILIES):
            fgrid.addWidget(QLabel(FAMILY_TITLES[fam]), i + 1, 0)
            for j, s in enumerate(SCALES):
                box = QCheckBox()
                if fam != "gaussian" and s < 0.5:
                    box.setEnabled(False)
                box.setChecked(any(f.family == fam and f.scale == s for f in default))
                self.feature_boxes[fam, s] = box
                fgrid.addWidget(box, i + 1, j + 1, alignment=Qt.AlignmentFlag.AlignCenter)
        lay.addWidget(feats)

        forest = QHBoxLayout()
        forest.addWidget(QLabel("Trees"))
        self.trees_spin = QSpinBox(minimum=1, maximum=1000, value=50)
        forest.addWidget(self.trees_spin)
        forest.addWidget(QLabel("Max depth (0 = none)"))
        self.depth_spin = QSpinBox(minimum=0, maximum=100, value=0)
        forest.addWidget(self.depth_spin)
        lay.addLayout(forest)

        self.instances_check = QCheckBox("Instances of the last class (split touching objects)")
        self.instances_check.setChecked(True)
        lay.addWidget(self.instances_check)

        run = QHBoxLayout()
        self.train_btn = QPushButton("Train and predict")
        self.train_btn.clicked.connect(self.train)
        run.addWidget(self.train_btn)
        self.live_check = QCheckBox("Live update")
        self.live_check.setToolTip("Retrain after every stroke, the visible region first")
        run.addWidget(self.live_check)
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setEnabled(False)
        self.stop_btn.clicked.connect(self.stop)
        run.addWidget(self.stop_btn)
        lay.addLayout(run)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.status = QLabel("Paint a few strokes of each class, then train.")
        self.status.setWordWrap(True)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)

        lay.addLayout(button_row(("Save classifier…", self._save_dialog), ("Load classifier…", self._load_dialog)))
        lay.addLayout(button_row(
            self.apply_combo.native,
            ("Apply to layer", lambda: self.apply_to_layer(self.apply_combo.value)),
            ("Apply to folder…", self._folder_dialog),
        ))
        lay.addStretch()

        self._live_timer = QTimer(self, singleShot=True, interval=LIVE_DELAY_MS)
        self._live_timer.timeout.connect(self._live_retrain)

    # -- classes ----------------------------------------------------------
    def class_names(self) -> list[str]:
        return [
            (self.class_table.item(r, 0).text().strip() if self.class_table.item(r, 0) else "") or f"class {r + 1}"
            for r in range(self.class_table.rowCount())
        ]

    def _set_class_rows(self, names):
        self.class_table.setRowCount(len(names))
        for r, name in enumerate(names):
            self.class_table.setItem(r, 0, QTableWidgetItem(name))
            count = QTableWidgetItem("0")
            count.setFlags(count.flags() & ~Qt.ItemFlag.ItemIsEditable)
            self.class_table.setItem(r, 1, count)
        self.update_counts()

    def _select_class(self, row, _col):
        layer = self.labels_combo.value
        if layer is not None:
            layer.selected_label = row + 1

    def update_counts(self):
        layer = self.labels_combo.value
        if layer is None:
            return
        ids, n = np.unique(np.asarray(layer.data), return_counts=True)
        counts = {int(i): int(c) for i, c in zip(ids, n) if 0 < i <= MAX_CLASSES}
        top = max(counts, default=0)
        if top > self.class_table.rowCount():
            names = self.class_names()
            self._set_class_rows(names + [f"class {k}" for k in range(len(names) + 1, top + 1)])
            return
        for r in range(self.class_table.rowCount()):
            self.class_table.item(r, 1).setText(str(counts.get(r + 1, 0)))

    # -- layers -----------------------------------------------------------
    def new_annotation_layer(self):
        image = self.image_combo.value
        if image is None:
            return self.error("open an image first")
        shape = image.data.shape[:-1] if image.rgb else image.data.shape
        layer = self.viewer.add_labels(
            np.zeros(shape, np.uint8), name=f"{image.name} annotations",
            scale=image.scale[-len(shape):], translate=image.translate[-len(shape):],
        )
        layer.brush_size = 5
        layer.mode = "paint"
        layer.selected_label = 1
        self.reset_choices()
        self.labels_combo.value = layer
        return layer

    def _watch_labels(self, *_):
        if self._watched is not None:
            self._watched.events.paint.disconnect(self._on_paint)
            self._watched.events.data.disconnect(self._on_paint)
        self._watched = self.labels_combo.value
        if self._watched is not None:
            self._watched.events.paint.connect(self._on_paint)
            self._watched.events.data.connect(self._on_paint)
            self.update_counts()

    def _on_paint(self, *_):
        # napari's paint payload changed across versions: re-read data later.
        self._live_timer.start()

    def _live_retrain(self):
        self.update_counts()
        if self.live_check.isChecked():
            self.train()

    def _output(self, image: Image, kind: str, data: np.ndarray):
        return output_layer(self.viewer, image, kind, data, on_top=self.labels_combo.value)

    # -- settings ---------------------------------------------------------
    def feature_spec(self) -> FeatureSpec:
        chosen = [(f, s) for (f, s), box in self.feature_boxes.items() if box.isChecked()]
        return FeatureSpec.from_grid([], []) if not chosen else FeatureSpec.parse(
            ",".join(f"{f}@{s:g}" for f, s in chosen)
        )

    def set_feature_spec(self, spec: FeatureSpec):
        for (f, s), box in self.feature_boxes.items():
            box.setChecked(any(x.family == f and x.scale == s for x in spec.features))

    def _forget_features(self, *_):
        """A layer went away: free the cached features (they may be its)."""
        self._tiles = self._tiles_key = None

    def _cached_tiles(self, clf: PixelClassifier, image: Image, run):
        """Generator for the worker: the image's feature tiles, then `run(tiles)`.

        Converting and checking a big image takes a while, so it happens in
        the worker; the tiles (and their feature cache) are kept for the next
        run on the same image and feature set. One job runs at a time, so the
        worker may set the cache.
        """
        data, axis, spacing = image_input(image)
        key = (id(image), id(image.data), clf.spec, spacing)

        def job():
            if key != self._tiles_key:
                self._tiles = self._tiles_key = None  # free the old features first
                self._tiles = clf.feature_tiles(data, axis, spacing, cache_bytes=2 << 30, training=True)
                self._tiles_key = key
            yield from run(self._tiles)

        return job()

    # -- actions ----------------------------------------------------------
    def train(self):
        """Fit a new forest on the current annotations and predict the image."""
        if self.worker is not None:
            self._restart = self.train
            self.worker.quit()
            return
        image, labels = self.image_combo.value, self.labels_combo.value
        try:
            if image is None:
                raise UserInputError("open an image first")
            if labels is None:
                raise UserInputError("add an annotation layer (New) and paint some strokes")
            from ..core.live import train_and_predict

            clf = PixelClassifier(self.feature_spec(), self.trees_spin.value(),
                                  self.depth_spin.value() or None, self.class_names())
            shape = spatial_shape(image)
            # A snapshot: painting may go on while the worker reads.
            snapshot = np.array(labels.data)
            if snapshot.shape != shape:
                raise UserInputError(
                    f"annotations {labels.name!r} have shape {snapshot.shape} "
                    f"but image {image.name!r} has {shape}"
                )
            self.update_counts()
            instances_of = self._instances_class(snapshot)
            focus = visible_box(self.viewer, image, shape)
            gen = self._cached_tiles(
                clf, image, lambda tiles: train_and_predict(clf, tiles, snapshot, focus, instances_of))
        except UserInputError as e:
            return self.error(str(e))
        self.start(gen, image=image, clf=clf, shape=shape)

    def _instances_class(self, labels=None):
        if not self.instances_check.isChecked():
            return None
        top = int(labels.max()) if labels is not None and labels.size else 0
        return max(top, len(self.class_names()))

    def apply_to_layer(self, image: Image | None):
        """Predict another image layer with the current classifier."""
        if self.busy():
            return None
        try:
            if self.classifier is None:
                raise UserInputError("train or load a classifier first")
            if image is None:
                raise UserInputError("choose an image layer to apply the classifier to")
            from ..core.live import predict_events

            clf = self.classifier
            data, axis, spacing = image_input(image)
            clf.check_shape(data.shape, axis)  # cheap: the full check runs in the worker
            shape = spatial_shape(image)
            focus = visible_box(self.viewer, image, shape)
            fg = clf.n_classes if self.instances_check.isChecked() else None

            def gen():  # in the worker: building tiles converts the whole image
                yield from predict_events(clf, clf.feature_tiles(data, axis, spacing), focus, fg)
        except UserInputError as e:
            return self.error(str(e))
        self.start(gen(), image=image, clf=clf, shape=shape)

    def apply_to_folder(self, in_dir, out_dir):
        """Predict every image file of a folder, writing TIFFs to out_dir."""
        extra = ["instances"] if self.instances_check.isChecked() else []
        return self.predict_folder_job(self.classifier, in_dir, out_dir, ["segmentation", "probabilities", *extra])

    def save_classifier(self, path) -> Path | None:
        try:
            if self.classifier is None:
                raise UserInputError("train or load a classifier first")
            path = self.classifier.save(path)
        except (UserInputError, OSError) as e:
            return self.error(f"could not save: {describe_error(e)}")
        show_info(f"saved classifier to {path}")
        return path

    def load_classifier(self, path) -> PixelClassifier | None:
        if self.busy():
            return None
        try:
            clf = PixelClassifier.load(path)
        except UserInputError as e:
            return self.error(str(e))
        self.classifier = clf
        self.set_feature_spec(clf.spec)
        self.trees_spin.setValue(clf.n_trees)
        self.depth_spin.setValue(clf.max_depth or 0)
        names = clf.class_names + self.class_names()[len(clf.class_names):]
        self._set_class_rows(names)
        self.status.setText(f"Loaded {Path(path).name}: {clf.n_classes} classes, {len(clf.spec.features)} features.")
        return clf

    # -- worker plumbing --------------------------------------------------
    def on_event(self, job, ev):
        stage = ev.stage
        self.status.setText({
            "features": "Computing features of labelled tiles…",
            "training": "Training the forest…",
            "predicting": "Predicting, visible region first…",
            "instances": "Splitting touching objects…",
            "done": "Done.",
        }[stage])
        if stage == "predicting":
            self.progress.setValue(int(100 * ev.done / ev.total))
            self._write_block(job, ev)
        elif stage == "instances" and ev.instances is not None:
            self._output(job["image"], "instances", ev.instances)
        elif stage == "done":
            job["complete"] = True
            self.classifier = job["clf"]
            self.progress.setValue(100)
            self._refresh_outputs(force=True)
            secs = time.perf_counter() - job["t0"]
            counts = ", ".join(f"{n}" for n in job["clf"].training.get("pixels_per_class", {}).values())
            self.status.setText(f"Done in {secs:.2f} s" + (f" (trained on {counts} pixels per class)." if counts else "."))

    def _write_block(self, job, ev):
        image = job["image"]
        if "layers" not in job:
            n_classes, shape = ev.probabilities.shape[0], job["shape"]
            names = job["clf"].class_names
            # One 2D/3D layer per class: a stacked layer would add a dims slider.
            layers = {
                f"probability {k}": self._output(image, f"probability {names[k]}", np.zeros(shape, np.float32))
                for k in range(n_classes)
            }
            layers["segmentation"] = self._output(image, "segmentation", np.zeros(shape, np.uint8 if n_classes < 255 else np.uint16))
            layers["uncertainty"] = self._output(image, "uncertainty", np.zeros(shape, np.float32))
            job["layers"] = layers
        layers = job["layers"]
        p = ev.probabilities
        for k in range(p.shape[0]):
            layers[f"probability {k}"].data[ev.block] = p[k]
        layers["segmentation"].data[ev.block] = segmentation(p)
        layers["uncertainty"].data[ev.block] = uncertainty(p)
        self._refresh_outputs(force=ev.done == ev.total)

    def _refresh_outputs(self, force=False):
        now = time.perf_counter()
        if not force and now - self._last_refresh < REFRESH_S:
            return
        self._last_refresh = now
        for layer in self.job.get("layers", {}).values():
            if layer in self.viewer.layers:
                layer.refresh()

    def on_end(self, job):
        if "layers" in job:
            self._refresh_outputs(force=True)

    # -- dialogs (thin: the methods above do the work and are tested) -----
    def _save_dialog(self):
        if path := ask_save_path(self, "Save classifier", "classifier.dlv"):
            self.save_classifier(path)

    def _load_dialog(self):
        if path := ask_open_path(self, "Load classifier"):
            self.load_classifier(path)

    def _folder_dialog(self):
        if folders := ask_in_out_folders(self):
            self.apply_to_folder(*folders)
