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
import torch

from ..core.events import Progress, n_steps
from . import distributed
from .devices import describe, pick_device, retry_on_oom
from .settings import FitSettings

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


def average_weight(decay: float, n_averaged: int, start: int | None) -> float:
    """The weight of the newest step's weights in the average after `n_averaged` updates:
    the EMA's (ema_decay), or from step `start` on an equal share of every step since
    (before it, all of the newest: the average restarts there)."""
    if start is None:
        return 1 - ema_decay(decay, n_averaged)
    step = n_averaged + 1  # the step whose weights are averaged in now
    return 1.0 if step < start else 1.0 / (step - start + 1)


class _Averaged(torch.nn.Module):
    """Average of a network's weights and buffers (torch's AveragedModel): an EMA with
    warm-up, or an equal-weight average from a given step on (average_weight)."""

    def __init__(self, net, decay, start=None):
        super().__init__()
        from torch.optim.swa_utils import AveragedModel

        @torch.no_grad()
        def multi_avg_fn(averaged, current, n_averaged):
            if torch.is_floating_point(averaged[0]):  # torch groups the tensors by dtype
                torch._foreach_lerp_(averaged, current, average_weight(decay, int(n_averaged), start))
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
    averaged = _Averaged(net, settings.ema, settings.average_from) if settings.ema else None
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
