"""A small live plot of training loss (and validation score), in plain Qt.

Drawn with QPainter so the plugin needs no plotting library; it repaints
only when a point arrives.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOUR = QColor(90, 170, 255)
SMOOTH_COLOUR = QColor(255, 200, 60)
VAL_COLOUR = QColor(120, 220, 120)


class LossPlot(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.clear()

    def clear(self):
        self.steps: list[int] = []
        self.loss: list[float] = []
        self.smoothed: list[float] = []
        self.val: list[tuple[int, float]] = []
        self.update()

    def add(self, step: int, loss: float | None, smoothed: float | None = None, val: float | None = None):
        if loss is not None and math.isfinite(loss):
            self.steps.append(step)
            self.loss.append(loss)
            self.smoothed.append(loss if smoothed is None else smoothed)
        if val is not None and (not self.val or self.val[-1] != (step, val)):
            self.val.append((step, val))
        self.update()

    def paintEvent(self, _event):
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h, m = self.width(), self.height(), 6
        p.fillRect(self.rect(), QColor(38, 41, 48))
        p.setPen(QColor(200, 200, 200))
        if not self.loss:
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "training loss appears here")
            return
        x_max = max(self.steps[-1], 1)
        logs = [math.log10(max(v, 1e-6)) for v in self.loss + self.smoothed]
        lo, hi = min(logs), max(logs)
        hi = hi if hi > lo else lo + 1

        def pt(step, value, log=True):
            y = (math.log10(max(value, 1e-6)) - lo) / (hi - lo) if log else value
            return QPointF(m + (w - 2 * m) * step / x_max, h - m - (h - 2 * m) * y)

        for values, colour in ((self.loss, LOSS_COLOUR), (self.smoothed, SMOOTH_COLOUR)):
            p.setPen(QPen(colour, 1.5))
            p.drawPolyline(QPolygonF([pt(s, v) for s, v in zip(self.steps, values)]))
        if self.val:
            p.setPen(QPen(VAL_COLOUR, 2))
            p.drawPolyline(QPolygonF([pt(s, v, log=False) for s, v in self.val]))
        p.setPen(QColor(220, 220, 220))
        text = f"step {self.steps[-1]}  loss {self.smoothed[-1]:.3f}"
        if self.val:
            text += f"  val IoU {self.val[-1][1]:.3f}"
        p.drawText(m + 2, m + 12, text)
