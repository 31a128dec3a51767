"""The class table: names, the colour each class is painted in, pixels painted.

Bound to the annotation Labels layer in both directions: clicking a row
selects that label for the brush, and choosing a label in napari's layer
controls selects its row. Colour swatches come from the layer's own colormap,
so the table shows exactly the colour the brush paints. Class names belong
to the annotation layer, not to one widget: every table bound to the same
layer (the forest's, the U-Net's) shows and edits one list.
"""

from __future__ import annotations

import weakref

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView, QHBoxLayout, QHeaderView, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout,
    QWidget,
)

from ..core.labels import MAX_CLASSES
from .layers import class_colour

NAME, COUNT = 1, 2
_NAMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # annotation layer -> class names
_TABLES: weakref.WeakSet = weakref.WeakSet()


def painted_counts(data) -> dict[int, int]:
    """{class id: pixels} of an annotation array, every id above 0: ids beyond
    MAX_CLASSES stay in, so the check before training can say the layer looks
    like an instance mask (the table shows at most MAX_CLASSES rows)."""
    a = np.asarray(data)
    if a.dtype.kind not in "iub" or a.size == 0:
        return {}
    if a.dtype.itemsize == 1 and a.dtype.kind != "i":  # the common case: cheap
        n = np.bincount(a.ravel(), minlength=1)
        return {k: int(n[k]) for k in range(1, len(n)) if n[k]}
    ids, n = np.unique(a, return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, n) if i > 0}


def _named_rows(names: list[str], keep: int = 2) -> list[str]:
    """`names` without the trailing rows that still carry their automatic name
    ("class k" in row k), keeping at least `keep` rows."""
    n = len(names)
    while n > keep and names[n - 1] == f"class {n}":
        n -= 1
    return names[:n]


class ClassTable(QWidget):
    def __init__(self, names=("background", "foreground"), count_title="Painted pixels"):
        super().__init__()
        self.layer = None
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["", "Class", count_title])
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(NAME, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(COUNT, QHeaderView.ResizeMode.ResizeToContents)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setMinimumHeight(90)
        self.table.setMaximumHeight(150)
        self.table.currentCellChanged.connect(self._row_chosen)
        self.table.itemChanged.connect(self._edited)
        lay.addWidget(self.table)
        row = QHBoxLayout()
        self.add_btn = QPushButton("Add class")
        self.add_btn.clicked.connect(lambda: self.set_names(self.names() + [f"class {self.table.rowCount() + 1}"]))
        row.addWidget(self.add_btn)
        row.addStretch()
        lay.addLayout(row)
        self.set_names(list(names))
        _TABLES.add(self)

    # -- names and colours ----------------------------------------------
    def names(self) -> list[str]:
        out = []
        for r in range(self.table.rowCount()):
            item = self.table.item(r, NAME)
            out.append((item.text().strip() if item else "") or f"class {r + 1}")
        return out

    def set_names(self, names, publish: bool = True):
        names = [str(n) for n in names]
        counts = [self.table.item(r, COUNT).text() if self.table.item(r, COUNT) else "0"
                  for r in range(self.table.rowCount())]
        self.table.blockSignals(True)
        self.table.setRowCount(len(names))
        for r, name in enumerate(names):
            swatch = QTableWidgetItem("")
            swatch.setFlags(Qt.ItemFlag.ItemIsEnabled)  # not selectable: the highlight would hide the colour
            self.table.setItem(r, 0, swatch)
            self.table.setItem(r, NAME, QTableWidgetItem(name))
            count = QTableWidgetItem(counts[r] if r < len(counts) else "0")
            count.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
            count.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.table.setItem(r, COUNT, count)
        self.table.blockSignals(False)
        self._colour_rows()
        self._follow_layer()
        if publish:
            self._publish()

    def _edited(self, item):
        if item.column() == NAME:
            self._publish()

    def _publish(self):
        """Share this table's names with every table bound to the same layer."""
        if self.layer is None:
            return
        names = self.names()
        _NAMES[self.layer] = names
        for other in list(_TABLES):
            if other is not self and other.layer is self.layer and other.names() != names:
                other.set_names(names, publish=False)

    def _colour_rows(self, *_):
        for r in range(self.table.rowCount()):
            rgba = class_colour(self.layer, r + 1)
            self.table.item(r, 0).setBackground(QColor.fromRgbF(*[float(v) for v in rgba[:3]], 1.0))
            self.table.item(r, 0).setToolTip(f"label {r + 1}")

    def colours(self) -> list[np.ndarray]:
        return [class_colour(self.layer, r + 1) for r in range(self.table.rowCount())]

    # -- the annotation layer ---------------------------------------------
    def bind(self, layer):
        """Follow this Labels layer (or None): colours, selected label, counts."""
        if self.layer is not None:
            self.layer.events.selected_label.disconnect(self._follow_layer)
            self.layer.events.colormap.disconnect(self._colour_rows)
        self.layer = layer
        if layer is not None:
            layer.events.selected_label.connect(self._follow_layer)
            layer.events.colormap.connect(self._colour_rows)
            if layer in _NAMES:  # another table named this layer's classes already
                self.set_names(_NAMES[layer], publish=False)
            else:
                # A new layer keeps the names the user gave, not the rows
                # added for ids of the last layer (an instance mask picked by
                # mistake added 64): those come back if this layer paints them.
                self.set_names(_named_rows(self.names()), publish=False)
                _NAMES[layer] = self.names()
        self._colour_rows()
        self._follow_layer()

    def _follow_layer(self, *_):
        if self.layer is None:
            return
        row = int(self.layer.selected_label) - 1
        if 0 <= row < self.table.rowCount() and self.table.currentRow() != row:
            self.table.blockSignals(True)
            self.table.setCurrentCell(row, NAME)
            self.table.blockSignals(False)

    def _row_chosen(self, row, _col, *_):
        if self.layer is not None and row >= 0 and int(self.layer.selected_label) != row + 1:
            self.layer.selected_label = row + 1

    def update_counts(self, counts: dict[int, int]):
        """Show painted pixels per class; rows are added for ids beyond the table."""
        top = min(max(counts, default=0), MAX_CLASSES)
        if top > self.table.rowCount():
            names = self.names()
            self.set_names(names + [f"class {k}" for k in range(len(names) + 1, top + 1)])
        self.table.blockSignals(True)
        for r in range(self.table.rowCount()):
            self.table.item(r, COUNT).setText(str(counts.get(r + 1, 0)))
        self.table.blockSignals(False)

    def count(self, class_id: int) -> int:
        item = self.table.item(class_id - 1, COUNT)
        return int(item.text()) if item else 0

    def close_table(self):
        self.bind(None)
