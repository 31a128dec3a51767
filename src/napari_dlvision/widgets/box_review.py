"""Reviewing predicted boxes: live score threshold and NMS IoU, accepting boxes, scoring them.

The detector's candidates for each predicted image stay in memory, so moving
a slider re-selects boxes (non-maximum suppression, then the threshold)
without running the network again; the layer is rewritten once the slider
rests (a short debounce keeps dragging smooth).
"""

from __future__ import annotations

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QCheckBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton, QSlider

from ..core.box_metrics import describe_scores, evaluate_boxes
from ..core.errors import UserInputError
from .box_layers import accept_boxes, boxes_from_layer, show_boxes

DEBOUNCE_MS = 120


def _slider(value: float) -> QSlider:
    s = QSlider(Qt.Orientation.Horizontal)
    s.setRange(0, 100)
    s.setValue(int(round(100 * value)))
    return s


class BoxReview(QGroupBox):
    """Threshold and NMS sliders, Accept, and Evaluate against a ground-truth layer."""

    def __init__(self, owner, gt_picker):
        super().__init__("Predicted boxes")
        self.owner, self.gt_picker = owner, gt_picker
        self.shown: dict[str, tuple] = {}  # output layer key -> (image layer, candidates, their select)
        self.scores: dict | None = None  # last evaluation, kept fresh when the threshold moves
        form = QFormLayout(self)
        self.threshold = _slider(0.3)
        self.nms = _slider(0.5)
        self.threshold_label, self.nms_label = QLabel(), QLabel()
        for text, slider, label in (("Score threshold", self.threshold, self.threshold_label),
                                    ("NMS IoU", self.nms, self.nms_label)):
            row = QHBoxLayout()
            row.addWidget(slider, 1)
            row.addWidget(label)
            form.addRow(text, row)
            slider.valueChanged.connect(self._moved)
        self.nms_title = form.labelForField(row)  # the last row: NMS IoU
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(self.refresh)
        self.accept_btn = QPushButton("Accept boxes into annotations")
        self.accept_btn.setToolTip("Add the shown boxes of the annotated image to its boxes layer "
                                   "(boxes overlapping one already there are skipped); correct them, train again")
        self.accept_btn.clicked.connect(owner.accept)
        form.addRow(self.accept_btn)
        row = QHBoxLayout()
        row.addWidget(gt_picker, 1)
        self.evaluate_btn = QPushButton("Evaluate")
        self.evaluate_btn.clicked.connect(owner.evaluate)
        row.addWidget(self.evaluate_btn)
        form.addRow("Ground truth", row)
        self.validate_check = QCheckBox("Validate on it while training (mAP in the plot; keeps the best weights)")
        form.addRow(self.validate_check)
        self.result = QLabel("")
        self.result.setWordWrap(True)
        form.addRow(self.result)
        self._moved()

    # -- values ---------------------------------------------------------------
    def values(self) -> tuple[float, float]:
        return self.threshold.value() / 100, self.nms.value() / 100

    def set_suppression(self, on: bool):
        """The forest detector's objects are disjoint regions, never suppressed: its slider is greyed out."""
        tip = "" if on else "The forest detector's objects are separate regions: none is suppressed"
        for w in (self.nms, self.nms_label, self.nms_title):  # napari's style hardly greys a disabled slider
            w.setEnabled(on)
            w.setToolTip(tip)

    def set_values(self, threshold: float, nms_iou: float):
        self.threshold.setValue(int(round(100 * threshold)))
        self.nms.setValue(int(round(100 * nms_iou)))

    def _moved(self, *_):
        t, n = self.values()
        self.threshold_label.setText(f"{t:.2f}")
        self.nms_label.setText(f"{n:.2f}")
        self.timer.start(DEBOUNCE_MS)

    # -- layers ---------------------------------------------------------------
    def show(self, key: str, image, candidates, select, keep_selected=None):
        """Keep an image's candidates and show the selected boxes in layer `key`.

        select(candidates, score threshold, NMS IoU): the selection of the
        detector that found them (Detector.select; torch is loaded in its worker)."""
        self.shown[key] = (image, candidates, select)
        return self._draw(key, keep_selected)

    def selected(self, key: str):
        image, cands, select = self.shown[key]
        return select(cands, *self.values())

    def _draw(self, key, keep_selected=None):
        image = self.shown[key][0]
        table = self.selected(key)
        layer = show_boxes(self.owner.viewer, key, table, image, keep_selected)
        return layer, table

    def refresh(self):
        """Re-select every shown image's boxes with the current slider values."""
        viewer = self.owner.viewer
        for key, (image, *_) in list(self.shown.items()):
            if image not in viewer.layers:
                del self.shown[key]
                continue
            self._draw(key)
        if self.scores is not None:
            self.evaluate(*self.scores["args"])
        if self.shown:
            t, n = self.values()
            nms = f" after NMS at IoU {n:.2f}" if self.nms.isEnabled() else ""
            self.owner.say(f"Showing boxes with score >= {t:.2f}{nms}: {self._counts()}")

    def _counts(self) -> str:
        return ", ".join(f"{len(self.selected(k))} on {img.name}" for k, (img, *_) in self.shown.items())

    def accept_into(self, layer, image, names, key) -> int:
        if key not in self.shown:
            raise UserInputError(f"predict boxes on {image.name!r} first")
        return accept_boxes(layer, self.selected(key), image, names)

    # -- scores ---------------------------------------------------------------
    def evaluate(self, key, gt_layer, names):
        """Score the shown candidates of `key` against the ground-truth layer; shows and returns the figures."""
        image, cands, select = self.shown[key]
        truth, _, _ = boxes_from_layer(gt_layer, image, names)
        n_planes = image.data.shape[0] if truth.is_stack else None
        t, n = self.values()
        scores = evaluate_boxes(select(cands, 0.0, n), truth, t, n_planes)
        if scores["true boxes"] == 0:
            raise UserInputError(f"{gt_layer.name!r} holds no boxes to compare with")
        self.scores = {**scores, "args": (key, gt_layer, names)}
        self.result.setText(f"{image.name} vs {gt_layer.name}: {describe_scores(scores)} at score >= {t:.2f} "
                            f"({int(scores['true boxes'])} true, {int(scores['predicted boxes'])} predicted boxes)")
        return scores

    def forget_scores(self):
        self.scores = None
        self.result.setText("")
