"""A small live plot of the training loss and validation metrics, in plain Qt.

Drawn with QPainter, so the plugin needs no plotting library; it repaints
only when a point arrives. Loss on a log axis at the left, metrics (0..1)
on a linear axis at the right, steps counted over all runs of one model
(Continue training goes on where the last run ended).
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFontMetrics, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOUR = QColor(90, 170, 255)
SMOOTH_COLOUR = QColor(255, 200, 60)
METRIC_COLOURS = (QColor(120, 220, 120), QColor(230, 120, 230), QColor(240, 240, 240))
AXIS_COLOUR = QColor(170, 170, 170)


def _fmt(v: float) -> str:
    return f"{v:.2g}" if v < 0.01 or v >= 100 else f"{v:.3g}"


class LossPlot(QWidget):
    PLACEHOLDER = "the training loss appears here"

    def __init__(self, parent=None):
        super().__init__(parent)
        self.placeholder = self.PLACEHOLDER  # shown while there is no loss to draw
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.clear()

    def clear(self):
        self.steps: list[int] = []
        self.loss: list[float] = []
        self.smoothed: list[float] = []
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.update()

    def set_placeholder(self, text: str | None = None):
        """What the empty plot says (the default: where the loss will appear)."""
        self.placeholder = text or self.PLACEHOLDER
        self.update()

    @property
    def last_step(self) -> int:
        return self.steps[-1] if self.steps else 0

    def add(self, step: int, loss: float | None, smoothed: float | None = None, metrics=None, redraw: bool = True):
        if loss is not None and math.isfinite(loss):
            self.steps.append(step)
            self.loss.append(loss)
            self.smoothed.append(loss if smoothed is None or not math.isfinite(smoothed) else smoothed)
        for name, value in (metrics or {}).items():
            series = self.metrics.setdefault(name, [])
            if value is not None and math.isfinite(value) and (not series or series[-1] != (step, value)):
                series.append((step, float(value)))
        if redraw:
            self.update()

    def paintEvent(self, _event):
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), QColor(38, 41, 48))
        fm = QFontMetrics(p.font())
        if not self.loss:
            p.setPen(AXIS_COLOUR)
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.placeholder)
            return
        left, right = fm.horizontalAdvance("0.0000") + 8, (fm.horizontalAdvance("1.0") + 10 if self.metrics else 8)
        top, bottom = fm.height() + 8, fm.height() + 6
        area = QRectF(left, top, max(10, self.width() - left - right), max(10, self.height() - top - bottom))
        x_max = max(self.steps[-1], 1)
        logs = [math.log10(max(v, 1e-6)) for v in self.loss + self.smoothed]
        lo, hi = min(logs), max(logs)
        hi = hi if hi > lo else lo + 1

        def pt(step, y01):
            return QPointF(area.left() + area.width() * step / x_max, area.bottom() - area.height() * y01)

        def loss_y(v):
            return (math.log10(max(v, 1e-6)) - lo) / (hi - lo)

        # Axes with their end values: loss (log) left, steps below, metrics right.
        p.setPen(QPen(AXIS_COLOUR, 1))
        p.drawLine(area.bottomLeft(), area.bottomRight())
        p.drawLine(area.bottomLeft(), area.topLeft())
        p.drawText(QRectF(0, area.top() - fm.height() / 2, left - 4, fm.height()),
                   Qt.AlignmentFlag.AlignRight, _fmt(10 ** hi))
        p.drawText(QRectF(0, area.bottom() - fm.height() / 2, left - 4, fm.height()),
                   Qt.AlignmentFlag.AlignRight, _fmt(10 ** lo))
        p.drawText(QRectF(area.left(), area.bottom() + 2, area.width(), fm.height()),
                   Qt.AlignmentFlag.AlignLeft, "0")
        p.drawText(QRectF(area.left(), area.bottom() + 2, area.width(), fm.height()),
                   Qt.AlignmentFlag.AlignHCenter, "step")
        p.drawText(QRectF(area.left(), area.bottom() + 2, area.width(), fm.height()),
                   Qt.AlignmentFlag.AlignRight, str(x_max))
        if self.metrics:
            p.drawLine(area.bottomRight(), area.topRight())
            for value, y in (("1", area.top()), ("0", area.bottom())):
                p.drawText(QRectF(area.right() + 4, y - fm.height() / 2, right, fm.height()),
                           Qt.AlignmentFlag.AlignLeft, value)

        for values, colour in ((self.loss, LOSS_COLOUR), (self.smoothed, SMOOTH_COLOUR)):
            p.setPen(QPen(colour, 1.5))
            p.drawPolyline(QPolygonF([pt(s, loss_y(v)) for s, v in zip(self.steps, values)]))
        legend = [(LOSS_COLOUR, "loss"), (SMOOTH_COLOUR, f"smoothed {self.smoothed[-1]:.3g}")]
        for (name, series), colour in zip(self.metrics.items(), METRIC_COLOURS):
            p.setPen(QPen(colour, 2))
            points = [pt(s, min(max(v, 0.0), 1.0)) for s, v in series]
            p.drawPolyline(QPolygonF(points))
            for q in points:
                p.drawEllipse(q, 2, 2)
            if series:
                legend.append((colour, f"{name} {series[-1][1]:.3f}"))
        x = left
        for colour, text in legend:
            room = self.width() - x - 20
            if fm.horizontalAdvance(text) > room:  # a narrow dock: shorter words, then an ellipsis
                short = text.replace("validation ", "val. ").replace("accuracy", "acc.")
                text = fm.elidedText(short, Qt.TextElideMode.ElideMiddle, int(room))
            p.setPen(QPen(colour, 3))
            p.drawLine(QPointF(x, 4 + fm.height() / 2), QPointF(x + 12, 4 + fm.height() / 2))
            p.setPen(QColor(220, 220, 220))
            p.drawText(QPointF(x + 16, 3 + fm.ascent()), text)
            x += 28 + fm.horizontalAdvance(text)
