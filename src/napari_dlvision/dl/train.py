"""Training the U-Net pixel classifier as a generator of progress events.

    for event in train_unet(segmenter, image, labels, TrainSettings(steps=300)):
        show(event.step, event.loss)      # stop iterating (or close()) to stop

The loop samples patches (half of them around labelled pixels, so a few
strokes on a big image are seen often), augments them, and minimises a
cross-entropy that ignores unlabelled pixels. It keeps the best weights
seen (best validation score if validation data is given, else the lowest
smoothed training loss) and puts them back into the model when it ends, is
stopped by the time limit, or is closed by the consumer. Calling it again
on the same segmenter continues from its weights with a fresh optimiser.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..core.errors import UserInputError
from ..core.features import as_channels_first
from ..core.metrics import iou
from .devices import describe, free_memory, pick_device, retry_on_oom
from .segmenter import UNetSegmenter
from .targets import IGNORE, as_label_array, balanced_weights, class_counts, dense_targets, sparse_targets

DEFAULT_PATCH = {2: 64, 3: 32}  # small patches, many steps: best from strokes on CPU


@dataclass
class TrainSettings:
    steps: int = 500
    patch_size: int | tuple | None = None  # per axis; None: 64 in 2D, 32 in 3D; clipped to the images
    batch_size: int = 0  # 0: chosen from the device's free memory (8 on CPU and MPS)
    lr: float = 3e-3
    lr_schedule: str = "cosine"  # "cosine" (to 5% over `steps`) or "constant"
    weight_decay: float = 0.0
    flips: bool = True
    rot90: bool = True  # in the last two axes, when the patch is square there
    intensity: bool = True  # random per-channel scale and shift
    elastic: bool = False  # smooth random deformation (CPU, costs time)
    labelled_fraction: float = 0.5  # share of patches centred on a labelled pixel
    class_weights: str | None = "balanced"  # "balanced" (1/sqrt frequency) or None
    device: str = "auto"
    time_limit: float | None = None  # seconds
    seed: int = 0
    preview_every: int = 0  # steps between previews of the first image; 0: none
    val_every: int = 0  # steps between validation scores; 0: ten per run

    def check(self):
        if int(self.steps) < 1:
            raise UserInputError("train for at least one step")
        if int(self.batch_size) < 0:
            raise UserInputError("batch size must be at least 1 (or 0 for automatic)")
        if not self.lr > 0:
            raise UserInputError("learning rate must be positive")
        if self.lr_schedule not in ("cosine", "constant"):
            raise UserInputError(f"unknown learning-rate schedule {self.lr_schedule!r}")
        if self.class_weights not in (None, "balanced"):
            raise UserInputError(f"class_weights must be 'balanced' or None, got {self.class_weights!r}")
        if not 0 <= self.labelled_fraction <= 1:
            raise UserInputError("labelled_fraction must be between 0 and 1")
        if self.time_limit is not None and self.time_limit <= 0:
            raise UserInputError("time limit must be positive seconds (or None)")

    def to_json(self) -> dict:
        d = asdict(self)
        if isinstance(d["patch_size"], tuple):
            d["patch_size"] = list(d["patch_size"])
        return d


@dataclass
class TrainEvent:
    stage: str  # "start" (step 0, nothing trained yet), "training", "done"
    step: int
    total: int
    loss: float | None = None  # this step's loss
    smoothed_loss: float | None = None  # bias-corrected running mean
    val_metric: float | None = None  # latest validation score (IoU), if validating
    best_step: int | None = None  # step whose weights are kept
    seconds: float = 0.0  # since the start of this run
    preview: np.ndarray | None = field(default=None, repr=False)  # (K, *spatial) of the first image
    message: str | None = None


def auto_batch_size(device, patch, base_channels: int, cap: int = 64) -> int:
    """Batch that fits a third of the free accelerator memory; 8 where unknown.

    Per sample, training keeps roughly 24 float32 maps of the base width at
    full patch resolution alive (activations and their gradients over all
    levels); the out-of-memory retry covers the estimate being off.
    """
    free = free_memory(device)
    if free is None:
        return 8
    per_sample = math.prod(patch) * base_channels * 4 * 24
    return int(max(1, min(cap, free // 3 // per_sample)))


# -- data -----------------------------------------------------------------
def _as_list(images, targets):
    if isinstance(images, (list, tuple)):
        if not isinstance(targets, (list, tuple)) or len(images) != len(targets):
            raise UserInputError("give one labels image per image")
        return list(images), list(targets)
    return [images], [targets]


def prepare_data(segmenter: UNetSegmenter, images, labels, channel_axis=None):
    """Normalised images, 0-based targets (IGNORE = unknown) and the class count."""
    images, labels = _as_list(images, labels)
    if not images:
        raise UserInputError("no training images given")
    imgs, tgts = [], []
    for image, lab in zip(images, labels):
        img = as_channels_first(image, channel_axis)
        lab = as_label_array(lab, "instance labels" if segmenter.mode == "dense" else "labels")
        if lab.shape != img.shape[1:]:
            raise UserInputError(f"labels have shape {lab.shape} but the image has {img.shape[1:]}")
        if imgs and (img.shape[0], img.ndim) != (imgs[0].shape[0], imgs[0].ndim):
            raise UserInputError("all training images need the same channel count and dimensionality")
        if segmenter.net is not None:
            segmenter.check_compatible(img)
        imgs.append(segmenter.normalisation.apply(img))
        tgts.append(dense_targets(lab) if segmenter.mode == "dense" else sparse_targets(lab))
    if segmenter.mode == "dense":
        if not any((t > 0).any() for t in tgts):
            raise UserInputError("the instance labels hold no objects: label some objects first")
        if not any((t == 0).any() for t in tgts):
            raise UserInputError("the instance labels leave no background: dense mode needs some background")
        return imgs, tgts, 3
    present = np.unique(np.concatenate([np.unique(t[t != IGNORE]) for t in tgts]))
    if present.size == 0:
        raise UserInputError("nothing is painted: paint some pixels of each class first")
    if present.size < 2:
        raise UserInputError(f"only class {int(present[0]) + 1} is painted: paint at least two classes")
    n_classes = max(int(present.max()) + 1, len(segmenter.class_names))
    if segmenter.net is not None and n_classes > segmenter.n_classes:
        raise UserInputError(
            f"this U-Net was trained for {segmenter.n_classes} classes but the labels use class "
            f"{n_classes}; start a new model to add classes"
        )
    return imgs, tgts, max(n_classes, segmenter.n_classes)


def patch_shape_for(setting, shapes, ndim: int, multiple: int) -> tuple[int, ...]:
    """Patch edge per axis: the setting, clipped to the largest image, on the pooling grid."""
    if setting is None:
        setting = DEFAULT_PATCH[ndim]
    if isinstance(setting, (int, np.integer)):
        setting = (int(setting),) * ndim
    setting = tuple(int(s) for s in setting)
    if len(setting) != ndim or min(setting) < 1:
        raise UserInputError(f"patch size {setting} does not fit {ndim}D images")
    biggest = np.max(np.array(shapes), axis=0)
    out = []
    for p, n in zip(setting, biggest):
        if p >= n:
            out.append(int(n))  # the whole axis: the network pads it internally
        else:
            out.append(max(multiple, p // multiple * multiple))
    return tuple(out)


class PatchSampler:
    """Random augmented (image, target) patches; smaller images are padded (target IGNORE)."""

    def __init__(self, images, targets, patch, settings: TrainSettings, rng):
        self.patch, self.s, self.rng = tuple(patch), settings, rng
        self.images, self.targets = [], []
        for img, tgt in zip(images, targets):
            pad = [(0, max(0, p - n)) for p, n in zip(patch, tgt.shape)]
            if any(hi for _, hi in pad):
                img = np.pad(img, [(0, 0)] + pad, mode="symmetric")
                tgt = np.pad(tgt, pad, constant_values=IGNORE)
            self.images.append(img)
            self.targets.append(tgt)
        self.labelled = [np.flatnonzero(t.reshape(-1) != IGNORE) for t in self.targets]
        n_lab = np.array([len(i) for i in self.labelled], float)
        self.p_labelled = n_lab / n_lab.sum()
        sizes = np.array([t.size for t in self.targets], float)
        self.p_any = sizes / sizes.sum()

    def _origin(self, i, centred):
        shape = self.targets[i].shape
        if centred:
            flat = self.labelled[i][self.rng.integers(len(self.labelled[i]))]
            centre = np.unravel_index(flat, shape)
            # The labelled pixel lands anywhere inside the patch, not always mid-patch.
            lo = [c - self.rng.integers(p) for c, p in zip(centre, self.patch)]
        else:
            lo = [self.rng.integers(n - p + 1) for n, p in zip(shape, self.patch)]
        return [int(min(max(o, 0), n - p)) for o, n, p in zip(lo, shape, self.patch)]

    def sample(self, n: int):
        ndim = len(self.patch)
        n_centred = math.ceil(n * self.s.labelled_fraction)
        xs, ys = [], []
        for k in range(n):
            centred = k < n_centred
            i = int(self.rng.choice(len(self.images), p=self.p_labelled if centred else self.p_any))
            o = self._origin(i, centred)
            box = tuple(slice(a, a + p) for a, p in zip(o, self.patch))
            x = self.images[i][(slice(None),) + box]
            y = self.targets[i][box]
            x, y = self._augment(x, y, ndim)
            xs.append(x)
            ys.append(y)
        return np.stack(xs), np.stack(ys)

    def _augment(self, x, y, ndim):
        rng, s = self.rng, self.s
        if s.flips:
            for ax in range(ndim):
                if rng.random() < 0.5:
                    x, y = np.flip(x, ax + 1), np.flip(y, ax)
        if s.rot90 and self.patch[-1] == self.patch[-2]:
            k = int(rng.integers(4))
            if k:
                x, y = np.rot90(x, k, axes=(-2, -1)), np.rot90(y, k, axes=(-2, -1))
        if s.elastic:
            x, y = _elastic(x, y, rng)
        x = np.ascontiguousarray(x, np.float32)
        if s.intensity:
            c = x.shape[0]
            scale = rng.uniform(0.75, 1.25, c).astype(np.float32)
            shift = rng.uniform(-0.15, 0.15, c).astype(np.float32)
            x = x * scale.reshape((c,) + (1,) * ndim) + shift.reshape((c,) + (1,) * ndim)
        return x, np.ascontiguousarray(y)


def _elastic(x, y, rng, control=4, strength=3.0):
    """Smooth random displacement (about `strength` pixels) from a coarse grid."""
    shape = y.shape
    coords = np.indices(shape, dtype=np.float32)
    for ax in range(len(shape)):
        coarse = rng.normal(0, strength, (control,) * len(shape)).astype(np.float32)
        coords[ax] += ndi.zoom(coarse, [n / control for n in shape], order=3, mode="nearest")[
            tuple(slice(0, n) for n in shape)]
    x = np.stack([ndi.map_coordinates(ch, coords, order=1, mode="mirror") for ch in x])
    y = ndi.map_coordinates(y, coords, order=0, mode="nearest")
    return x, y


# -- validation -----------------------------------------------------------
def prepare_validation(segmenter, validation, channel_axis=None):
    if validation is None:
        return []
    if isinstance(validation, tuple) and len(validation) == 2 and not isinstance(validation[0], tuple):
        validation = [validation]
    out = []
    for image, lab in validation:
        img = as_channels_first(image, channel_axis)
        lab = as_label_array(lab, "validation labels")
        if lab.shape != img.shape[1:]:
            raise UserInputError(f"validation labels have shape {lab.shape} but the image has {img.shape[1:]}")
        out.append((segmenter.normalisation.apply(img), lab))
    return out


def validation_score(segmenter: UNetSegmenter, val) -> float:
    """Mean over validation images of: dense mode, foreground IoU against
    instance masks; sparse mode with 2 classes, IoU of class 2 on labelled
    pixels; with more classes, mean IoU over classes on labelled pixels."""
    scores = []
    for img, lab in val:
        seg = segmenter.segmentation(segmenter.predict_normalised(img))
        if segmenter.mode == "dense":
            scores.append(iou(seg != 1, lab > 0))
            continue
        m = lab > 0
        k = segmenter.n_classes
        classes = [k] if k == 2 else range(1, k + 1)
        scores.append(float(np.mean([iou(seg[m] == c, lab[m] == c) for c in classes])))
    return float(np.mean(scores))


# -- the loop ---------------------------------------------------------------
def _finite(net) -> bool:
    """True when no weight or batch-norm statistic is NaN or infinite."""
    return all(bool(torch.isfinite(v).all()) for v in net.state_dict().values() if v.is_floating_point())


class _Best:
    """The best weights so far and their score (higher is better)."""

    def __init__(self, net):
        self.score, self.step, self.state = -math.inf, None, None
        self.pending = None
        # Kept to undo a run that diverges before anything better is seen.
        self.initial = self._copy(net)

    @staticmethod
    def _copy(net):
        return {k: v.detach().clone() for k, v in net.state_dict().items()}

    def offer(self, score, step, net):
        """Weights whose score was measured on themselves (validation)."""
        if score > self.score:
            self.score, self.step, self.state = score, step, self._copy(net)

    def propose(self, score, step, net):
        """Weights after `step`, scored by the loss before it: kept only once
        the next step's loss (computed with them) comes out finite."""
        self.confirm()
        if score > self.score:
            self.pending = (score, step, self._copy(net))

    def confirm(self):
        if self.pending is not None and self.pending[0] > self.score:
            self.score, self.step, self.state = self.pending
        self.pending = None


def train_unet(segmenter: UNetSegmenter, images, targets, settings: TrainSettings | None = None,
               validation=None, channel_axis=None, spacing=None):
    """Train (or continue training) `segmenter`; a generator of TrainEvent.

    `images`/`targets`: one array each or lists of them. Sparse mode: labels
    0 = unlabelled, 1..K = classes; dense mode: instance masks. `validation`:
    an (image, labels) pair or a list of pairs (class ids, 0 ignored; dense
    mode: instance masks); with it the kept weights are those of the best
    validation score. Close the generator to stop; the kept weights are in
    the segmenter either way.
    """
    settings = settings or TrainSettings()
    settings.check()
    imgs, tgts, n_classes = prepare_data(segmenter, images, targets, channel_axis)
    val = prepare_validation(segmenter, validation, channel_axis)
    device = pick_device(settings.device)
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    ndim, n_channels = imgs[0].ndim - 1, imgs[0].shape[0]
    if segmenter.net is None:
        segmenter.build(n_channels, ndim, n_classes)
    if spacing is not None:
        segmenter.spacing = [float(s) for s in spacing]
    net = segmenter.net.to(device)
    patch = patch_shape_for(settings.patch_size, [t.shape for t in tgts], ndim, net.multiple)
    sampler = PatchSampler(imgs, tgts, patch, settings, rng)
    weight = None
    counts = class_counts(tgts, segmenter.n_classes)
    if settings.class_weights == "balanced":
        weight = torch.from_numpy(balanced_weights(counts)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    total = int(settings.steps)
    if settings.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    else:
        sched = None
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp else None
    val_every = settings.val_every or max(1, total // 10)
    messages: list[str] = []

    def step_fn(batch):
        x, y = sampler.sample(batch)
        x = torch.from_numpy(x).to(device, non_blocking=True)
        y = torch.from_numpy(y.astype(np.int64)).to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y, weight=weight, ignore_index=IGNORE)
        if amp:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        return float(loss.detach())

    def preview():
        return segmenter.predict_normalised(imgs[0], device=device)

    best = _Best(net)
    t0 = time.perf_counter()
    ema, ema_w, val_metric, step, stopped = 0.0, 0.0, None, 0, None
    batch = int(settings.batch_size) or auto_batch_size(device, patch, segmenter.config["base_channels"])
    start_steps = int(segmenter.training.get("steps_total", 0))
    try:
        net.train()
        yield TrainEvent(
            "start", 0, total, seconds=0.0,
            message=(f"training a {ndim}D U-Net ({segmenter.mode} mode, {segmenter.n_classes} classes) on "
                     f"{describe(device)}: patches {'x'.join(map(str, patch))}, batch {batch}, "
                     f"{int((counts > 0).sum())} labelled classes, {int(counts.sum())} labelled pixels"),
        )
        for step in range(1, total + 1):
            loss, batch = retry_on_oom(step_fn, batch, report=messages.append, device=device)
            if sched is not None:
                sched.step()
            if not (math.isfinite(loss) and _finite(net)):
                best.pending = None  # the weights that produced this loss
                stopped = "diverged"
                messages.append("the loss is no longer a number: stopped; try a lower learning rate")
                break
            ema, ema_w = 0.9 * ema + 0.1 * loss, 0.9 * ema_w + 0.1
            smoothed = ema / ema_w
            if val:
                if step % val_every == 0 or step == total:
                    val_metric = validation_score(segmenter, val)
                    net.train()
                    best.offer(val_metric, step, net)
            else:
                best.propose(-smoothed, step, net)
            pv = None
            if settings.preview_every and step % settings.preview_every == 0:
                pv = preview()
                net.train()
            seconds = time.perf_counter() - t0
            over = settings.time_limit is not None and seconds >= settings.time_limit
            if over:
                stopped = "time limit"
                messages.append(f"time limit of {settings.time_limit:g} s reached after {step} steps")
            msg = "; ".join(messages) or None
            messages.clear()
            yield TrainEvent("training", step, total, loss, smoothed, val_metric, best.step,
                             seconds, pv, msg)
            if over:
                break
        stopped = stopped or "finished"
    except GeneratorExit:  # the consumer stopped iterating
        stopped = stopped or "closed"
        raise
    except BaseException:
        stopped = "error"
        raise
    finally:
        if stopped != "diverged":
            best.confirm()
        if best.state is not None:
            net.load_state_dict(best.state)
        elif stopped == "diverged" or not _finite(net):
            net.load_state_dict(best.initial)
        net.eval()
        seconds = time.perf_counter() - t0
        segmenter.training = {
            "settings": settings.to_json(),
            "steps": step,
            "steps_total": start_steps + step,
            "seconds": round(seconds, 2),
            "seconds_total": round(float(segmenter.training.get("seconds_total", 0)) + seconds, 2),
            "stopped": stopped,
            "device": describe(device),
            "patch_shape": list(patch),
            "labelled_pixels_per_class": {str(k + 1): int(c) for k, c in enumerate(counts)},
        }
        segmenter.metrics = {
            "smoothed_loss": None if ema_w == 0 else round(ema / ema_w, 5),
            "best_step": best.step,
        }
        if val:
            segmenter.metrics["validation_iou"] = None if best.step is None else round(best.score, 5)
    yield TrainEvent("done", step, total, None, segmenter.metrics["smoothed_loss"], val_metric,
                     best.step, seconds, preview() if settings.preview_every else None,
                     "; ".join(messages) or f"{stopped} after {step} steps in {seconds:.1f} s")
