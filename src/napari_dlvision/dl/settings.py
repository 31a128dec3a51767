"""Training settings shared by every network kind, importable without torch.

`FitSettings` are the training loop's (dl/loop.py); `KindSettings` is the
base of a kind's own settings (steps, patches, augmentation...), from which
the loop's are made. A forest detector is configured with the same settings
and trains without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..core.errors import UserInputError

SCHEDULES = ("cosine", "constant", "onecycle")


@dataclass
class FitSettings:
    steps: int = 500
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimiser: str = "adamw"  # "adamw" or "sgd" (Nesterov momentum 0.9)
    schedule: str = "cosine"  # cosine decay to 5%, constant, or onecycle (linear up, linear down)
    warmup: int = 0  # steps of linear warm-up (cosine and constant)
    grad_clip: float | None = 1.0  # max gradient norm; None: no clipping
    ema: float | None = None  # decay of the weight average, e.g. 0.99; None: off
    # With the average on: from this step on, an equal-weight average of every step's weights
    # instead of the EMA (before it, the current weights); None: the EMA throughout.
    average_from: int | None = None
    device: str = "auto"
    amp: bool = True  # mixed precision (float16) on CUDA
    cpu_amp: bool = False  # bfloat16 autocast on CPUs with native bfloat16 (about 2x faster convolutions)
    time_limit: float | None = None  # seconds
    seed: int = 0
    val_every: int = 0  # steps between validations; 0: ten per run
    preview_every: int = 0  # steps between previews; 0: none
    time_schedule: bool = False  # with a time limit: the schedule runs by elapsed time when that is further on
    check_every: int = 1  # steps between checks that all weights are finite (each check waits for a GPU)
    # What the time limit and reported seconds count: "wall" time, or "cpu": this process's CPU time
    # divided by torch's threads, i.e. the wall time of a machine nobody else uses (benchmarks on shared CPUs).
    clock: str = "wall"

    def check(self):
        def number(name, value, lo, hi=math.inf, integer=False):
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            if integer:
                ok = ok and float(value).is_integer()
            if not ok or not lo <= value <= hi:
                kind = "a whole number" if integer else "a number"
                raise UserInputError(f"{name} must be {kind} between {lo:g} and {hi:g}, got {value!r}")

        number("steps", self.steps, 1, 10_000_000, integer=True)
        number("seed", self.seed, 0, 2**32 - 1, integer=True)
        number("batch size", self.batch_size, 1, 4096, integer=True)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and 0 < self.lr <= 10):
            raise UserInputError(f"learning rate must be a positive number up to 10, got {self.lr!r}")
        number("weight decay", self.weight_decay, 0, 1)
        number("warm-up steps", self.warmup, 0, 10_000_000, integer=True)
        if self.grad_clip is not None:
            number("gradient clipping", self.grad_clip, 1e-6)
        if self.ema is not None:
            number("EMA decay", self.ema, 0, 0.99999)
        if self.average_from is not None:
            number("first averaged step", self.average_from, 0, 10_000_000, integer=True)
        if self.time_limit is not None:
            number("time limit", self.time_limit, 1e-3)
        number("validation interval", self.val_every, 0, 10_000_000, integer=True)
        number("preview interval", self.preview_every, 0, 10_000_000, integer=True)
        number("weight check interval", self.check_every, 1, 10_000_000, integer=True)
        if self.schedule not in SCHEDULES:
            raise UserInputError(f"unknown learning-rate schedule {self.schedule!r}; use {', '.join(SCHEDULES)}")
        if self.clock not in ("wall", "cpu"):
            raise UserInputError(f"unknown clock {self.clock!r}; use wall or cpu")
        if self.optimiser not in ("adamw", "sgd"):
            raise UserInputError(f"unknown optimiser {self.optimiser!r}; use adamw or sgd")

    def to_json(self) -> dict:
        return asdict(self)

    def lr_factor(self, step: int) -> float:
        """Multiplier of `lr` for the update at `step` (0-based)."""
        total = max(1, int(self.steps))
        if self.schedule == "onecycle":
            peak = max(1, int(0.25 * total))
            return 0.1 + 0.9 * step / peak if step < peak else max(0.02, (total - step) / max(1, total - peak))
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if self.schedule == "constant":
            return 1.0
        t = min(max(step - self.warmup, 0), total) / max(1, total - self.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


class KindSettings:
    """Base of a model kind's training settings (a dataclass sharing some field
    names with FitSettings): the loop's settings from those fields, the JSON
    kept in the model file, and the batch-size bound every kind shares."""

    def fit_settings(self, batch_size: int, **override) -> FitSettings:
        common = {f.name for f in fields(FitSettings)} & {f.name for f in fields(self)}
        return FitSettings(**{k: getattr(self, k) for k in common} | {"batch_size": batch_size} | override)

    def to_json(self) -> dict:
        d = asdict(self)
        if isinstance(d.get("patch_size"), tuple):
            d["patch_size"] = list(d["patch_size"])
        return d

    def check_batch_size(self):
        v = self.batch_size
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 4096:
            raise UserInputError(f"batch size must be a whole number 0..4096 (0: automatic), got {v!r}")
