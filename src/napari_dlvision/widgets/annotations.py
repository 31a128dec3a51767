"""The inputs of a model trained from painted labels: image, annotation layer, classes.

Both pickers are live from the first value they show (layers opened before
the widget docked are the common case): the annotation layer they start
with is watched for strokes at once, its classes fill the class table, and
it becomes the selected layer, in paint mode, so the next stroke lands on it.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QGridLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..core.errors import UserInputError
from ..palette import annotation_colormap
from .class_table import ClassTable, painted_counts
from .layers import OUTPUT_TAG, spatial_shape

BRUSH_SIZE = 5
COUNT_DELAY_MS = 100  # recount painted pixels this long after a stroke


def _is_ours(layer) -> bool:
    return OUTPUT_TAG in layer.metadata


def _annotation_preference(layer):
    """Visible layers named like annotations first (the hidden ground truth last)."""
    name = layer.name.lower()
    return (not layer.visible, not any(w in name for w in ("annot", "stroke", "scribble", "label")))


class AnnotationInputs(QWidget):
    def __init__(self, owner, on_paint=None, class_names=("background", "foreground"), select_on_dock=True):
        super().__init__()
        self.owner, self.viewer, self.on_paint = owner, owner.viewer, on_paint
        self.select_on_dock = select_on_dock
        self._watched = None
        self._counts: dict[int, int] = {}
        self._counted = None  # the layer self._counts belongs to
        self._count_timer = QTimer(self, singleShot=True, interval=COUNT_DELAY_MS)
        self._count_timer.timeout.connect(self.update_counts)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        grid = QGridLayout()
        self.class_table = ClassTable(class_names)
        self.image_picker = owner.picker(Image, accept=lambda la: not _is_ours(la))
        self.labels_picker = owner.picker(Labels, self._labels_changed, accept=lambda la: not _is_ours(la),
                                          prefer=_annotation_preference)
        grid.addWidget(QLabel("Image"), 0, 0)
        grid.addWidget(self.image_picker, 0, 1)
        grid.addWidget(QLabel("Annotations"), 1, 0)
        grid.addWidget(self.labels_picker, 1, 1)
        self.new_btn = QPushButton("New")
        self.new_btn.setToolTip("Add an empty annotation layer for the chosen image")
        self.new_btn.clicked.connect(self.new_layer)
        grid.addWidget(self.new_btn, 1, 2)
        grid.setColumnStretch(1, 1)  # the layer names get the width, not the New button ("blobs annotat")
        lay.addLayout(grid)
        lay.addWidget(self.class_table)
        owner.on_close(self._release)
        # The picker reported its first value before the table existed: bind now.
        self._labels_changed(self.labels_picker.value, first=True)

    # -- the annotation layer ---------------------------------------------
    def _labels_changed(self, layer, first=False):
        if not hasattr(self, "labels_picker"):
            return  # reported while the picker is being made; bound right after
        if self._watched is not None and self._watched is not layer:
            self._disconnect()
        if layer is not None and self._watched is not layer:
            layer.events.paint.connect(self._painted)
            layer.events.data.connect(self._painted)
            self._watched = layer
        self.class_table.bind(layer)
        self.update_counts()
        if first and layer is not None:
            self._image_of(layer)
        if first and layer is not None and self.select_on_dock:
            self.make_paintable(layer)

    def _image_of(self, labels):
        """At docking, the image the annotations fit (the first image in the
        list may be another one, of another size)."""
        image = self.image_picker.value
        if image is None or spatial_shape(image) == tuple(labels.data.shape):
            return
        fitting = [la for la in self.image_picker.choices if spatial_shape(la) == tuple(labels.data.shape)]
        if fitting:
            self.image_picker.value = fitting[0]

    def _disconnect(self):
        if self._watched is not None:
            self._watched.events.paint.disconnect(self._painted)
            self._watched.events.data.disconnect(self._painted)
            self._watched = None

    def _release(self):
        self._disconnect()
        self.class_table.close_table()

    def make_paintable(self, layer):
        """Select the layer in paint mode with a visible brush, above the image."""
        if layer not in self.viewer.layers:
            return
        layer.visible = True
        if layer.brush_size < 3:
            layer.brush_size = BRUSH_SIZE
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"
        if layer.selected_label == 0:
            layer.selected_label = 1

    def _painted(self, *_):
        # napari's paint payload changed across versions: re-read the data later.
        self._count_timer.start()
        if self.on_paint is not None:
            self.on_paint()

    def update_counts(self):
        layer = self.labels_picker.value
        self._counts = painted_counts(layer.data) if layer is not None else {}
        self._counted = layer
        self.class_table.update_counts(self._counts)

    def counts(self, recount: bool = True) -> dict[int, int]:
        """Painted pixels per class; `recount=False` takes the last count when no
        stroke came since (live update: a recount of a 4096 x 4096 layer holds the
        viewer 0.1 s, and the stroke's own count ran 100 ms after it)."""
        if recount or self._count_timer.isActive() or self._counted is not self.labels_picker.value:
            self.update_counts()
        return dict(self._counts)

    def new_layer(self):
        image = self.image_picker.value
        if image is None:
            return self.owner.error("open an image first")
        shape = spatial_shape(image)
        layer = self.viewer.add_labels(
            np.zeros(shape, np.uint8), name=f"{image.name} annotations",
            scale=image.scale[-len(shape):], translate=image.translate[-len(shape):], opacity=1.0,
            colormap=annotation_colormap(),
        )
        layer.brush_size = BRUSH_SIZE
        layer.selected_label = 1
        self.labels_picker.value = layer
        self.make_paintable(layer)
        return layer

    def snapshot(self):
        """(image layer, annotation layer, copy of the annotations), checked.

        A copy: painting may go on while a worker reads it.
        """
        image, labels = self.image_picker.value, self.labels_picker.value
        if image is None:
            raise UserInputError("open an image first")
        if labels is None:
            raise UserInputError("add an annotation layer (New) and paint some strokes")
        shape = spatial_shape(image)
        if tuple(labels.data.shape) != shape:
            raise UserInputError(
                f"annotations {labels.name!r} have shape {tuple(labels.data.shape)} "
                f"but image {image.name!r} has {shape}")
        return image, labels, np.array(labels.data)
