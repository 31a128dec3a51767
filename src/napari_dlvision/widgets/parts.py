"""Small widgets every dock widget is built from.

- LayerPicker: a layer combo box that stays live (layers added, removed,
  renamed) and tells its owner about every value it takes, the first one
  included; released on close.
- RunPanel: the action buttons, Stop, a progress bar, a status line and an
  optional loss plot, fed by core.events.Progress; routine training steps
  are drawn at most a few times a second.
- ModelRow: Save… / Load… of model files.
- PreviewHistory: the weights of each training preview, to go back to one.
- ApplyRow: apply the model to another image layer or a folder of files.
- SettingsForm: a form of typed fields, read as a dict.
No model-specific code here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
    QProgressBar, QPushButton, QSpinBox, QVBoxLayout, QWidget,
)

from .loss_plot import LossPlot

MODEL_FILTER = "Models (*.dlv);;All files (*)"


class StatusLabel(QLabel):
    """A word-wrapped status line with room for every line of its text: in the
    docks' scroll area Qt does not grow a wrapped label when its text gets
    longer, and a second line was cut off."""

    def setText(self, text):
        super().setText(text)
        self._fit()

    def resizeEvent(self, event):
        super().resizeEvent(event)
        self._fit()

    def _fit(self):
        height = self.heightForWidth(max(self.width(), 1))
        if height > 0 and height != self.minimumHeight():  # relaid out only when the line count changes
            self.setMinimumHeight(height)


class LayerPicker(QComboBox):
    """Layers of one type from the viewer; `on_change(layer or None)` hears every value."""

    def __init__(self, viewer, layer_type, on_change: Callable | None = None, accept=None, prefer=None,
                 none_text: str = "(none)"):
        super().__init__()
        self.viewer, self.layer_type = viewer, layer_type
        self.accept = accept or (lambda layer: True)
        self.prefer = prefer  # layer -> sort key for the default choice (smaller first)
        self.on_change = on_change
        self.none_text = none_text
        self._layers: list = []
        self._reported = object()  # nothing reported yet: the first value is reported too
        self._named: set = set()
        # Until the user picks a layer, the preferred one is taken, also when it is added later
        # (a "ground truth" layer opened after docking); a layer the user picked stays.
        self._user_picked = False
        self.activated.connect(self._picked_by_user)
        events = viewer.layers.events
        self._connections = [(events.inserted, self.refresh), (events.removed, self.refresh),
                             (events.moved, self.refresh)]
        for emitter, slot in self._connections:
            emitter.connect(slot)
        self.currentIndexChanged.connect(self._changed)
        self.refresh()

    @property
    def choices(self) -> list:
        return list(self._layers)

    @property
    def value(self):
        i = self.currentIndex()
        return self._layers[i] if 0 <= i < len(self._layers) else None

    @value.setter
    def value(self, layer):
        self._user_picked = True
        self.refresh()
        if layer in self._layers:
            self.setCurrentIndex(self._layers.index(layer))
        self._changed()

    def refresh(self, *_):
        current = self.value
        layers = [la for la in self.viewer.layers if isinstance(la, self.layer_type) and self.accept(la)]
        for layer in layers:  # keep names up to date when the user renames a layer
            if id(layer) not in self._named:
                layer.events.name.connect(self._renamed)
                self._named.add(id(layer))
        best = min(layers, key=self.prefer) if (layers and self.prefer) else (layers[0] if layers else None)
        if current not in layers:
            current, self._user_picked = best, False
        elif self.prefer and not self._user_picked and self.prefer(best) < self.prefer(current):
            current = best
        self.blockSignals(True)
        self.clear()
        self._layers = layers
        if layers:
            self.addItems([la.name for la in layers])
            self.setCurrentIndex(layers.index(current))
        else:
            self.addItem(self.none_text)
        self.blockSignals(False)
        self._changed()

    def _picked_by_user(self, *_):
        self._user_picked = True

    def _renamed(self, event=None):
        for i, layer in enumerate(self._layers):
            if i < self.count() and self.itemText(i) != layer.name:
                self.setItemText(i, layer.name)

    def _changed(self, *_):
        value = self.value
        if value is not self._reported:
            self._reported = value
            if self.on_change is not None:
                self.on_change(value)

    def close_picker(self):
        """Disconnect from the viewer (the widget is going away)."""
        for emitter, slot in self._connections:
            emitter.disconnect(slot)
        for layer in self.viewer.layers:
            if id(layer) in self._named:
                layer.events.name.disconnect(self._renamed)
        self._connections, self._named = [], set()


class RunPanel(QWidget):
    """Action buttons + Stop, progress bar, status line and (optionally) a loss plot."""

    def __init__(self, buttons, on_stop, plot: bool = False, hint: str = "", lock_while_busy: bool = True):
        super().__init__()
        # The action buttons grey out while a job runs (they could only say "wait"); not where
        # jobs start by themselves as the user paints (the forest's live update), or they would flicker.
        self.lock_while_busy, self._busy, self._held = lock_while_busy, False, set()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.buttons = {}
        for text, slot in buttons:
            if isinstance(text, QWidget):
                row.addWidget(text)
                continue
            b = QPushButton(text)
            b.clicked.connect(slot)
            self.buttons[text] = b
            row.addWidget(b)
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setEnabled(False)
        self.stop_btn.clicked.connect(on_stop)
        row.addWidget(self.stop_btn)
        lay.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.status = StatusLabel(hint)
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        self.plot = LossPlot() if plot else None
        if self.plot is not None:
            lay.addWidget(self.plot)
        self._pending, self._last_draw = None, 0.0  # the newest undrawn event and its status
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._draw)

    # Each redraw of a dock widget costs the main thread 15-20 ms of window
    # composition under software OpenGL (measured: progress.setValue alone
    # 14.5 ms), time the training threads lose on a small machine; with a
    # redraw per step the U-Net trained 1.4-1.5x slower in the viewer than
    # headless. So routine steps are drawn at most every DRAW_EVERY_S; the
    # newest one always lands (timer), and anything else (messages, other
    # stages, say()) is drawn at once.
    DRAW_EVERY_S = 0.5

    def set_busy(self, busy: bool):
        self.stop_btn.setEnabled(busy)
        self._busy = busy
        if self.lock_while_busy:
            for text, button in self.buttons.items():
                button.setEnabled(not busy and text not in self._held)
        if busy:
            self.progress.setValue(0)

    def hold(self, text: str, off: bool, why: str = ""):
        """Keep the button `text` greyed out (with `why` as its tooltip) while `off`, busy or not."""
        self._held.discard(text)
        if off:
            self._held.add(text)
        self.buttons[text].setEnabled(not off and not (self.lock_while_busy and self._busy))
        self.buttons[text].setToolTip(why if off else "")

    def say(self, text: str):
        self._draw(status=False)  # the newest step's bar and curve, not its status over this text
        self.status.setText(text)

    def show_progress(self, ev, step_offset: int = 0, status: str | None = None):
        """Progress bar, status and plot from one core.events.Progress; `status` is
        the text for a routine training step (drawn with it, or skipped with it)."""
        if self.plot is not None and ev.stage == "training":
            self.plot.add(step_offset + ev.done, ev.loss, ev.smoothed_loss, ev.metrics, redraw=False)
        self._pending = (ev, status)
        routine = ev.stage == "training" and not ev.message
        wait = self._last_draw + self.DRAW_EVERY_S - time.perf_counter()
        if not routine or wait <= 0:
            self._draw()
        elif not self._timer.isActive():
            self._timer.start(int(1000 * wait) + 1)

    def _draw(self, status: bool = True):
        self._timer.stop()
        pending, self._pending = self._pending, None
        if pending is None:
            return
        ev, text = pending
        self._last_draw = time.perf_counter()
        if ev.fraction is not None:
            self.progress.setValue(int(round(100 * ev.fraction)))
        if status and (ev.message or text):
            self.status.setText(ev.message or text)
        if self.plot is not None:
            self.plot.update()


class PreviewHistory(QWidget):
    """The weights each training preview showed, to go back to one after Stop:
    a list of steps and "Go back". "Best" is the user's call: only they see
    what a preview gets right where nothing is painted. Snapshots are CPU
    copies (2 MB each for the small 2D U-Net, 31 MB for the medium one): at
    most MAX of them and MAX_BYTES in all; beyond that the older ones are
    thinned evenly, and the newest is always kept."""

    MAX = 24
    MAX_BYTES = 256 << 20

    def __init__(self, on_use):
        super().__init__()
        self.entries: list[tuple[int, dict]] = []
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Previews"))
        self.combo = QComboBox()
        self.combo.setToolTip("The weights each preview showed during training")
        self.use_btn = QPushButton("Go back to it")
        self.use_btn.setToolTip("Keep the weights of the preview chosen here instead (Continue training "
                                "then goes on from them)")
        self.use_btn.clicked.connect(lambda: on_use(*self.chosen()) if self.entries else None)
        row.addWidget(self.combo, 1)
        row.addWidget(self.use_btn)
        self.set_busy(False)

    def clear(self):
        self.entries.clear()
        self._show()

    def add(self, step: int, weights: dict):
        self.entries.append((int(step), weights))
        size = sum(v.numel() * v.element_size() for v in weights.values())
        if len(self.entries) > max(2, min(self.MAX, self.MAX_BYTES // max(size, 1))):
            old = self.entries[:-1]
            self.entries = old[::2] + self.entries[-1:]
        self._show()

    def chosen(self) -> tuple[int, dict]:
        return self.entries[len(self.entries) - 1 - max(0, self.combo.currentIndex())]

    def choose(self, step: int):
        """Select the preview of `step` (as a user picks it in the list)."""
        steps = [s for s, _ in reversed(self.entries)]
        self.combo.setCurrentIndex(steps.index(int(step)))

    def set_busy(self, busy: bool):
        self._busy = busy
        self.combo.setEnabled(not busy and bool(self.entries))
        self.use_btn.setEnabled(not busy and bool(self.entries))

    def _show(self):
        self.combo.clear()
        self.combo.addItems([f"step {s}" for s, _ in reversed(self.entries)])  # newest first
        self.set_busy(self._busy)


class ModelRow(QWidget):
    """Save… / Load… buttons for model files; the callbacks get a path.
    `refused()` is asked before a file dialog opens (a job running, say), so
    that the user does not pick a file only to hear it cannot be done now."""

    def __init__(self, what: str, default_name: str, on_save, on_load, refused=lambda: False):
        super().__init__()
        self.what, self.default_name = what, default_name
        self.on_save, self.on_load, self.refused = on_save, on_load, refused
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.save_btn = QPushButton(f"Save {what}…")
        self.load_btn = QPushButton(f"Load {what}…")
        self.save_btn.clicked.connect(self._save)
        self.load_btn.clicked.connect(self._load)
        row.addWidget(self.save_btn)
        row.addWidget(self.load_btn)

    def _save(self):
        if self.refused():
            return
        path = QFileDialog.getSaveFileName(self, f"Save {self.what}", self.default_name, MODEL_FILTER)[0]
        if path:
            self.on_save(path)

    def _load(self):
        if self.refused():
            return
        path = QFileDialog.getOpenFileName(self, f"Load {self.what}", "", MODEL_FILTER)[0]
        if path:
            self.on_load(path)


class ApplyRow(QWidget):
    """Apply the model to an image layer (picked here) or to a folder of files."""

    def __init__(self, picker: LayerPicker, on_layer, on_folder, layer_text="Apply to layer",
                 folder_text="Apply to folder…"):
        super().__init__()
        self.picker, self.on_folder = picker, on_folder
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(picker, 1)
        self.layer_btn = QPushButton(layer_text)
        self.layer_btn.clicked.connect(lambda: on_layer(picker.value))
        self.folder_btn = QPushButton(folder_text)
        self.folder_btn.clicked.connect(self._folder)
        row.addWidget(self.layer_btn)
        row.addWidget(self.folder_btn)

    def _folder(self):
        src = QFileDialog.getExistingDirectory(self, "Folder of images")
        dst = QFileDialog.getExistingDirectory(self, "Folder for the results (not the same folder)") if src else ""
        if src and dst:
            self.on_folder(src, dst)


@dataclass
class Field:
    name: str
    label: str
    default: Any
    lo: float = 0
    hi: float = 1_000_000
    step: float = 1
    choices: tuple = ()
    tooltip: str = ""
    special: str = ""  # text shown for the minimum value (e.g. "auto" for 0)
    decimals: int = 5


class SettingsForm(QGroupBox):
    """A form of fields (int, float, bool or choice, from each default's type); `values()` reads it."""

    def __init__(self, title: str, fields):
        super().__init__(title)
        self.form = QFormLayout(self)
        self.editors: dict[str, QWidget] = {}
        for f in fields:
            self.add(f)

    def add(self, f: Field):
        if f.choices:
            w = QComboBox()
            w.addItems([str(c) for c in f.choices])
            w.setCurrentText(str(f.default))
        elif isinstance(f.default, bool):
            w = QCheckBox()
            w.setChecked(f.default)
        elif isinstance(f.default, int):
            w = QSpinBox(minimum=int(f.lo), maximum=int(f.hi), value=f.default, singleStep=int(f.step))
        else:
            w = QDoubleSpinBox(decimals=f.decimals, minimum=f.lo, maximum=f.hi, value=f.default, singleStep=f.step)
        if f.special and hasattr(w, "setSpecialValueText"):
            w.setSpecialValueText(f.special)
        w.setToolTip(f.tooltip)
        self.editors[f.name] = w
        self.form.addRow(f.label, w)
        return w

    def values(self) -> dict:
        out = {}
        for name, w in self.editors.items():
            if isinstance(w, QComboBox):
                out[name] = w.currentText()
            elif isinstance(w, QCheckBox):
                out[name] = w.isChecked()
            else:
                out[name] = w.value()
        return out

    def enable(self, names, on: bool):
        """Enable or grey out these fields, their labels with them."""
        for name in names:
            self.editors[name].setEnabled(on)
            self.form.labelForField(self.editors[name]).setEnabled(on)

    def set_value(self, name: str, value):
        w = self.editors[name]
        if isinstance(w, QComboBox):
            w.setCurrentText(str(value))
        elif isinstance(w, QCheckBox):
            w.setChecked(bool(value))
        else:
            w.setValue(value)


def hbox(*widgets) -> QHBoxLayout:
    row = QHBoxLayout()
    for w in widgets:
        row.addWidget(QLabel(w) if isinstance(w, str) else w)
    return row
