"""Parts of the image-classifier dock: the confusion matrix and the filter browser.

ConfusionTable draws an Evaluation (core.classification) as a coloured
table: counts shaded by their share of the true class (the diagonal green,
mistakes red), precision and recall per class in the last columns.
FilterBar picks which images to look at (all, misclassified, low
confidence, unlabelled, label these next) and steps through them.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QComboBox, QHBoxLayout, QHeaderView, QLabel, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)

from ..core.classification import Prediction, label_next

FILTERS = ("all images", "misclassified", "low confidence", "unlabelled", "label these next")
LOW_CONFIDENCE = 0.6


def filtered(name: str, prediction: Prediction | None, labels: np.ndarray) -> np.ndarray:
    """Indices of the images a filter shows, in the order to visit them."""
    labels = np.asarray(labels)
    n = len(labels)
    if name == "unlabelled":
        return np.flatnonzero(labels < 0)
    if prediction is None:
        return np.arange(n) if name == "all images" else np.zeros(0, np.int64)
    if name == "misclassified":
        return np.flatnonzero((labels >= 0) & (prediction.labels != labels))
    if name == "low confidence":
        idx = np.flatnonzero(prediction.scores < LOW_CONFIDENCE)
        return idx[np.argsort(prediction.scores[idx], kind="stable")]
    if name == "label these next":
        return label_next(prediction.margins, labels >= 0)
    return np.arange(n)


class ConfusionTable(QWidget):
    def __init__(self):
        super().__init__()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.title = QLabel("Confusion matrix: train to see it (rows: true class, columns: predicted)")
        self.title.setWordWrap(True)
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setMaximumHeight(260)
        lay.addWidget(self.title)
        lay.addWidget(self.table)
        self.evaluation = None

    def show_evaluation(self, ev, what: str = "validation images"):
        """Fill the table from a core.classification.Evaluation (None clears it)."""
        self.evaluation = ev
        if ev is None:
            self.table.setRowCount(0)
            self.table.setColumnCount(0)
            self.title.setText("Confusion matrix: no labelled images were held out to score on")
            return
        k = len(ev.class_names)
        self.title.setText(f"Accuracy {ev.accuracy:.3f} on {ev.n} {what} (rows: true class, columns: predicted)")
        self.table.setRowCount(k)
        self.table.setColumnCount(k + 2)
        # Short headers, the full words in tooltips: a dock is ~300 px wide, and "precision"
        # and "recall" in full pushed recall out of sight with four classes.
        short = [n if len(n) <= 8 else n[:7] + "." for n in ev.class_names]
        self.table.setHorizontalHeaderLabels(short + ["prec.", "rec."])
        self.table.setVerticalHeaderLabels(short)
        for col, full in enumerate(list(ev.class_names) + ["precision", "recall"]):
            self.table.horizontalHeaderItem(col).setToolTip(full)
        rows = ev.matrix.sum(1)
        for i in range(k):
            for j in range(k):
                v = int(ev.matrix[i, j])
                item = QTableWidgetItem(str(v))
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                share = v / rows[i] if rows[i] else 0.0
                if v:
                    base = (40, 160, 70) if i == j else (200, 50, 50)
                    alpha = int(60 + 195 * share)
                    item.setBackground(QColor(*base, alpha))
                self.table.setItem(i, j, item)
            for col, value in ((k, ev.precision[i]), (k + 1, ev.recall[i])):
                item = QTableWidgetItem("-" if np.isnan(value) else f"{value:.2f}")
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                self.table.setItem(i, col, item)

    def cell(self, i: int, j: int) -> int:
        return int(self.table.item(i, j).text())


class FilterBar(QWidget):
    """A filter choice, previous / next buttons and where we are; `on_go(index)` shows an image."""

    def __init__(self, on_change, on_go):
        super().__init__()
        self.on_change, self.on_go = on_change, on_go
        self.indices = np.zeros(0, np.int64)
        self.pos = -1
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.combo = QComboBox()
        self.combo.addItems(list(FILTERS))
        self.combo.setToolTip("Which images to browse; the others are veiled in the mosaic.\n"
                              "'label these next': unlabelled images, the most uncertain first "
                              "(smallest gap between the two most likely classes)")
        self.combo.currentTextChanged.connect(lambda *_: self.on_change())
        self.prev_btn, self.next_btn = QPushButton("◀"), QPushButton("▶")
        self.prev_btn.clicked.connect(lambda: self.step(-1))
        self.next_btn.clicked.connect(lambda: self.step(1))
        self.where = QLabel("")
        for w in (QLabel("Show"), self.combo, self.prev_btn, self.next_btn, self.where):
            row.addWidget(w)
        row.addStretch()

    @property
    def name(self) -> str:
        return self.combo.currentText()

    def set_indices(self, indices):
        self.indices = np.asarray(indices, np.int64)
        self.pos = -1
        self.where.setText(f"{len(self.indices)} images")

    def step(self, d: int):
        if not len(self.indices):
            return
        self.pos = (self.pos + d) % len(self.indices)
        self.where.setText(f"{self.pos + 1}/{len(self.indices)}")
        self.on_go(int(self.indices[self.pos]))
