"""The one training loop every network in this package trains with.

    for event in fit(net, batches, loss_fn, FitSettings(steps=300)):
        show(event.done, event.loss)        # close() the generator to stop

`batches(n)` returns a batch of n samples (arrays or tensors, nested in
tuples, lists or dicts); the loop moves it to the device and calls
`loss_fn(net, batch)` for a scalar loss, so detectors that compute their own
losses fit as well as pixel classifiers. The loop owns what every kind
needs: optimiser and learning-rate schedule with warm-up, gradient
clipping, mixed precision on CUDA, an exponential moving average (EMA) of
the weights, batch halving on out-of-memory, a stop when the loss diverges,
a time limit, optional validation and previews, and which weights are kept.

Which weights are kept, whether the run finishes, hits its time limit or is
closed by the consumer at any step:
- with validation data: those with the best validation score;
- else with EMA on: the averaged weights (what the previews showed);
- else the last weights.
The training loss never picks weights: on few labels it keeps falling while
the prediction of unlabelled pixels gets worse.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields

import torch

from ..core.errors import UserInputError
from ..core.events import Progress, n_steps
from . import distributed
from .devices import describe, pick_device, retry_on_oom

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


def cpu_bf16_supported() -> bool:
    """True where oneDNN runs bfloat16 natively (AVX-512 BF16 or AMX); elsewhere it is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def to_device(batch, device):
    """Move tensors and numpy arrays, nested in tuples, lists and dicts, to `device`."""
    import numpy as np

    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, np.ndarray):
        return torch.from_numpy(batch).to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def finite_state(net) -> bool:
    """True when no weight or buffer is NaN or infinite."""
    return all(bool(torch.isfinite(v).all()) for v in net.state_dict().values() if v.is_floating_point())


def _copy_state(net, device=None) -> dict:
    return {k: v.detach().to(device, copy=True) for k, v in net.state_dict().items()}


def _make_optimiser(net, s: FitSettings):
    params = [p for p in net.parameters() if p.requires_grad]
    if s.optimiser == "sgd":
        return torch.optim.SGD(params, lr=s.lr, momentum=0.9, nesterov=True, weight_decay=s.weight_decay)
    return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)


def ema_decay(decay: float, n_averaged: int) -> float:
    """Decay of the update after `n_averaged` updates: min(decay, (1 + n) / (10 + n)).

    The warm-up lets the average follow the fast early progress; a fixed 0.99
    would still hold a fifth of the random initial weights after 150 steps.
    """
    return min(decay, (1 + n_averaged) / (10 + n_averaged))


class _Averaged(torch.nn.Module):
    """EMA of a network's weights and buffers (torch's AveragedModel), with warm-up."""

    def __init__(self, net, decay):
        super().__init__()
        from torch.optim.swa_utils import AveragedModel

        @torch.no_grad()
        def multi_avg_fn(averaged, current, n_averaged):
            if torch.is_floating_point(averaged[0]):  # torch groups the tensors by dtype
                torch._foreach_lerp_(averaged, current, 1 - ema_decay(decay, int(n_averaged)))
            else:  # counters such as batch norm's num_batches_tracked
                for a, c in zip(averaged, current):
                    a.copy_(c)

        self.avg = AveragedModel(net, multi_avg_fn=multi_avg_fn, use_buffers=True)

    def update(self, net):
        self.avg.update_parameters(net)

    @property
    def module(self):
        return self.avg.module


def fit(net: torch.nn.Module, batches, loss_fn, settings: FitSettings, *, validate=None, preview=None,
        start_message: str = "", on_end=None, preview_weights: bool = True, choose_by_validation: bool = True):
    """Train `net`; a generator of Progress events (see the module docstring).

    validate(net) -> {metric name: value}, higher is better for the first
    one; preview(net) -> any payload shown to the user; both get the
    weights that would be kept now, in eval mode. A preview's event carries
    {"preview": that payload, "weights": those weights' state dict, on the
    CPU}, so a consumer can go back to what it showed (`preview_weights=False`:
    no copy, for kinds without such a history). `choose_by_validation=False`:
    validation figures are shown but do not pick the kept weights (a handful
    of validation images scores in coarse steps, and the first of the ties,
    often an early step, would win). on_end(report) runs when
    the loop ends for any reason, after the kept weights are in `net`.
    """
    settings.check()
    device = pick_device(settings.device)
    torch.manual_seed(settings.seed)
    net.to(device)
    # Under torchrun (dl.distributed) steps go through DistributedDataParallel,
    # which averages the gradients of all ranks; everything else sees `net`.
    stepped = distributed.wrap(net, device)
    opt = _make_optimiser(net, settings)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, settings.lr_factor)
    amp = settings.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp else None
    # bfloat16 has float32's range: no loss scaling needed.
    bf16 = settings.cpu_amp and device.type == "cpu" and cpu_bf16_supported()
    averaged = _Averaged(net, settings.ema) if settings.ema else None
    total = int(settings.steps)
    val_every = settings.val_every or max(1, total // 10)
    messages: list[str] = []

    def step_fn(n):
        batch = to_device(batches(n), device)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16 if bf16 else torch.float16, enabled=amp or bf16):
            loss = loss_fn(stepped, batch)
        loss = loss.float()
        if amp:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), settings.grad_clip)
        if amp:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        return float(loss.detach())

    def current():
        """The network whose weights would be kept now."""
        return averaged.module if averaged is not None else net

    def evaluated(fn):
        target = current()
        was = target.training
        target.eval()
        try:
            with torch.no_grad():
                return fn(target)
        finally:
            target.train(was)

    best = {"score": -math.inf, "step": None, "state": None}
    previewed = False  # whether the consumer has been shown a preview ("as previewed" says so)
    last_good = _copy_state(net)
    clock = time.perf_counter if settings.clock == "wall" else (
        lambda: time.process_time() / max(1, torch.get_num_threads()))
    t0 = clock()
    ema_loss = ema_w = 0.0
    metrics: dict[str, float] = {}
    step, batch, stopped = 0, int(settings.batch_size), None
    try:
        net.train()
        yield Progress("start", 0, total, message=f"{start_message} on {describe(device)}".strip(), seconds=0.0)
        for step in range(1, total + 1):
            loss, batch = retry_on_oom(step_fn, batch, report=messages.append, device=device)
            if settings.time_schedule and settings.time_limit:
                # Where a time limit ends the run before its steps, the schedule
                # must still reach its end: follow the clock when it is ahead.
                ahead = distributed.from_rank0((clock() - t0) / settings.time_limit * total, device)
                sched.last_epoch = max(step, min(total - 1, int(ahead))) - 1
            sched.step()
            checked = step % settings.check_every == 0 or step == total
            bad = not (math.isfinite(loss) and (not checked or finite_state(net)))
            if distributed.any_rank(bad, device):  # ranks stop together, or the others would wait forever
                stopped = "diverged"
                messages.append("the loss is no longer a number: stopped; try a lower learning rate")
                net.load_state_dict(last_good)
                break
            distributed.sync_buffers(net)
            if averaged is not None:
                averaged.update(net)
            if step % 25 == 0:
                last_good = _copy_state(net)
            ema_loss, ema_w = 0.9 * ema_loss + 0.1 * loss, 0.9 * ema_w + 0.1
            over = distributed.any_rank(settings.time_limit is not None and clock() - t0 >= settings.time_limit,
                                        device)
            # The last step is validated however the run ends, so a time limit keeps the best weights too.
            if validate is not None and (step % val_every == 0 or step == total or over):
                metrics = {k: float(v) for k, v in evaluated(validate).items()}
                score = next(iter(metrics.values()), -math.inf)
                if choose_by_validation and math.isfinite(score) and score > best["score"]:
                    best.update(score=score, step=step, state=_copy_state(current()))
            payload = None
            if preview is not None and settings.preview_every and step % settings.preview_every == 0:
                # The weights shown travel with their preview (a copy in CPU memory), so
                # a user can go back to any preview they saw (the widgets' history).
                payload = {"preview": evaluated(preview)}
                previewed = True
                if preview_weights:
                    payload["weights"] = _copy_state(current(), "cpu")
            seconds = clock() - t0
            if over:
                stopped = "time limit"
                messages.append(f"time limit of {settings.time_limit:g} s reached after {n_steps(step)}")
            yield Progress("training", step, total, "; ".join(messages) or None, loss, ema_loss / ema_w,
                           dict(metrics), seconds, payload)
            messages.clear()
            if over:
                break
        stopped = stopped or "finished"
    except GeneratorExit:  # the consumer stopped iterating
        stopped = stopped or "stopped"
        raise
    except BaseException:
        stopped = "error"
        raise
    finally:
        if stopped == "diverged":
            kept = "the last good weights"
        elif best["state"] is not None:
            net.load_state_dict(best["state"])
            kept = f"the best validation weights (step {best['step']})"
        elif averaged is not None and step > 0:
            net.load_state_dict(averaged.module.state_dict())
            kept = "the averaged weights, as previewed" if previewed else "the averaged weights"
        else:
            kept = "the last weights"
        net.eval()
        seconds = clock() - t0
        report = {
            "steps": step, "seconds": round(seconds, 2), "stopped": stopped, "kept": kept,
            "best_step": best["step"], "device": describe(device),
            "smoothed_loss": None if ema_w == 0 else round(ema_loss / ema_w, 5),
            "metrics": {k: round(v, 5) for k, v in metrics.items()},
            "settings": settings.to_json(), "batch_size": batch,
        }
        if best["state"] is not None:
            report["metrics"] = {**report["metrics"], "best": round(best["score"], 5)}
        if on_end is not None:
            on_end(report)
    final = evaluated(preview) if preview is not None and settings.preview_every else None
    how = {"finished": "finished", "stopped": "stopped", "time limit": "reached its time limit",
           "diverged": "diverged"}.get(stopped, stopped)
    message = "; ".join(messages) or f"training {how} after {n_steps(step)} in {seconds:.1f} s; kept {kept}"
    yield Progress("done", step, total, message, None, report["smoothed_loss"], report["metrics"], seconds,
                   {"report": report, "preview": final})
