"""The one progress event every long job yields.

Training loops, the forest's live loop and batch prediction are generators
of `Progress`. Consumers (a napari thread worker, the CLI, a benchmark) read
`done`/`total` for a progress bar, `message` for a status line and the
optional figures (`loss`, `metrics`) for a plot; `payload` carries what only
one consumer understands (a preview array, a predicted block, a result).
Stopping the iteration cancels the job between events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    stage: str  # e.g. "start", "features", "training", "predicting", "file", "done"
    done: int = 0
    total: int = 0  # 0: unknown
    message: str | None = None
    loss: float | None = None  # this step's training loss
    smoothed_loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. {"held-out IoU": 0.91}
    seconds: float | None = None  # since the job started
    payload: Any = field(default=None, repr=False)

    @property
    def fraction(self) -> float | None:
        return None if self.total <= 0 else min(1.0, self.done / self.total)

    @property
    def finished(self) -> bool:
        return self.stage == "done"


def result_of(events):
    """Run a generator of Progress events to its end and give back what it returns
    (a job whose caller wants the result, not the progress)."""
    while True:
        try:
            next(events)
        except StopIteration as stop:
            return stop.value


def n_steps(n) -> str:
    """ "1 step", "40 steps": for messages of the loop and the docks."""
    return f"{n} step" if n == 1 else f"{n} steps"


def n_epochs(e) -> str:
    """ "1 epoch", "2.5 epochs", to 3 significant digits."""
    text = f"{e:.3g}"
    return f"{text} epoch" if text == "1" else f"{text} epochs"
