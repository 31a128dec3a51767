"""Training the U-Net pixel classifier, on the shared training loop.

    for event in train_unet(segmenter, image, labels, TrainSettings(steps=300)):
        show(event.done, event.loss)      # close() the generator to stop

This module prepares what is specific to pixel classification: targets
from strokes or instance masks, patches (half of them around labelled
pixels, so a few strokes on a big image are seen often) with augmentation,
a masked cross-entropy that ignores unlabelled pixels, validation scores
and whole-image previews. `dl.loop.fit` does the rest. Calling it again on
the same segmenter continues from its weights with a fresh optimiser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import UserInputError
from ..core.events import Progress
from ..core.images import as_channels_first, check_spacing
from ..core.labels import as_label_array, as_strokes, check_classes
from ..core.metrics import iou
from .augment import Augmentation, patch_edges
from .devices import check_fits_in_ram, free_memory, pick_device
from .distributed import data_seed
from .loop import fit
from .settings import KindSettings
from .segmenter import UNetSegmenter
from .targets import IGNORE, balanced_weights, class_counts, dense_targets, sparse_targets

DEFAULT_PATCH = {2: 64, 3: 32}  # small patches, many steps: best from strokes on CPU


@dataclass
class TrainSettings(KindSettings):
    steps: int = 500
    patch_size: int | tuple | None = None  # per axis; None: 64 in 2D, 32 in 3D; clipped to the images
    batch_size: int = 0  # 0: chosen from the device's free memory (8 on CPU and MPS)
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup: int = 0
    # Previews and the kept model use an average of the weights: single
    # weights swing between good and bad on unlabelled pixels from step to step.
    ema: float | None = 0.99
    # From step 50 on, the average weighs every step alike instead of the EMA, which
    # follows the newest steps: what a Stop keeps then drifts less after a good preview
    # (bench/bench_unet.py, 5 seeds: the largest drop below an earlier preview went from
    # 0.074-0.108 to 0.032-0.033 on blobs, 0.205 to 0.145 on maize with 4 seeds of 5
    # under 0.02, 0.037 to 0.037 on the synthetic nuclei; IoU as good or better).
    average_from: int | None = 50
    # Sparse mode: a random forest fitted on the same strokes labels the
    # unlabelled pixels it is sure of (max probability above the threshold);
    # the U-Net learns those as soft targets next to the strokes. Without it a
    # U-Net from few strokes drifts on everything it was not shown.
    teacher: str | None = "forest"  # "forest" or None
    teacher_threshold: float = 0.8
    teacher_weight: float = 1.0
    flips: bool = True
    rot90: bool = True
    intensity: bool = True
    elastic: bool = False
    labelled_fraction: float = 0.5  # share of patches around a labelled pixel
    class_weights: str | None = "balanced"  # "balanced" (1/frequency) or None
    device: str = "auto"
    time_limit: float | None = None  # seconds
    seed: int = 0
    preview_every: int = 0  # steps between previews of the first image; 0: none
    val_every: int = 0  # steps between validation scores; 0: ten per run

    def check(self):
        if self.class_weights not in (None, "balanced"):
            raise UserInputError(f"class_weights must be 'balanced' or None, got {self.class_weights!r}")
        if self.teacher not in (None, "forest"):
            raise UserInputError(f"teacher must be 'forest' or None, got {self.teacher!r}")
        for name in ("teacher_threshold", "teacher_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= (1 if "threshold" in name else 10):
                raise UserInputError(f"{name.replace('_', ' ')} must be a number in range, got {v!r}")
        if not (isinstance(self.labelled_fraction, (int, float)) and 0 <= self.labelled_fraction <= 1):
            raise UserInputError("labelled_fraction must be between 0 and 1")
        self.check_batch_size()
        self.fit_settings(1).check()

    def augmentation(self) -> Augmentation:
        return Augmentation(self.flips, self.rot90, self.intensity, self.elastic)


def training_bytes_per_sample(patch, base_channels: int) -> int:
    """Roughly 24 float32 maps of the base width at full patch resolution stay
    alive per sample (activations and their gradients over all levels)."""
    return math.prod(patch) * base_channels * 4 * 24


def auto_batch_size(device, patch, base_channels: int, cap: int = 64) -> int:
    """Batch that fits a third of the free accelerator memory; 8 where unknown.

    The out-of-memory retry covers the estimate being off.
    """
    free = free_memory(device)
    if free is None:
        return 8
    return int(max(1, min(cap, free // 3 // training_bytes_per_sample(patch, base_channels))))


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
        lab = as_label_array(lab, "instance labels") if segmenter.mode == "dense" else as_strokes(lab)
        if lab.shape != img.shape[1:]:
            raise UserInputError(f"labels have shape {lab.shape} but the image has {img.shape[1:]}")
        if imgs and (img.shape[0], img.ndim) != (imgs[0].shape[0], imgs[0].ndim):
            raise UserInputError(
                f"all training images need the same channel count and dimensionality: "
                f"{imgs[0].shape[0]}-channel {imgs[0].ndim - 1}D and {img.shape[0]}-channel {img.ndim - 1}D given")
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
    present = np.unique(np.concatenate([np.unique(t[t != IGNORE]) for t in tgts])) + 1
    n_classes = check_classes(present, len(segmenter.class_names))
    if segmenter.net is not None and n_classes > segmenter.n_classes:
        raise UserInputError(
            f"this U-Net was trained for {segmenter.n_classes} classes but the labels use class "
            f"{n_classes}; start a new model to add classes"
        )
    return imgs, tgts, max(n_classes, segmenter.n_classes)


def patch_shape_for(setting, shapes, ndim: int, multiple: int) -> tuple[int, ...]:
    """Patch edge per axis: the setting, clipped to the largest image, on the pooling grid."""
    setting = patch_edges(setting, ndim, DEFAULT_PATCH[ndim], lo=1)
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

    def __init__(self, images, targets, patch, augmentation: Augmentation, labelled_fraction: float, rng,
                 teachers=None):
        self.patch, self.augment, self.rng = tuple(patch), augmentation, rng
        self.labelled_fraction = labelled_fraction
        self.images, self.targets, self.teachers = [], [], None if teachers is None else []
        for k, (img, tgt) in enumerate(zip(images, targets)):
            pad = [(0, max(0, p - n)) for p, n in zip(patch, tgt.shape)]
            if any(hi for _, hi in pad):
                img = np.pad(img, [(0, 0)] + pad, mode="symmetric")
                tgt = np.pad(tgt, pad, constant_values=IGNORE)
            self.images.append(img)
            self.targets.append(tgt)
            if teachers is not None:  # padding gets probability 0: never a teacher pixel
                self.teachers.append(np.pad(teachers[k], [(0, 0)] + pad) if any(hi for _, hi in pad) else teachers[k])
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
        n_centred = math.ceil(n * self.labelled_fraction)
        xs, ys, qs = [], [], []
        for k in range(n):
            centred = k < n_centred
            i = int(self.rng.choice(len(self.images), p=self.p_labelled if centred else self.p_any))
            box = tuple(slice(a, a + p) for a, p in zip(self._origin(i, centred), self.patch))
            targets = [self.targets[i][box]]
            if self.teachers is not None:
                targets.append(self.teachers[i][(slice(None),) + box])
            x, out = self.augment(self.images[i][(slice(None),) + box], targets, ndim, self.rng)
            xs.append(x)
            ys.append(out[0])
            qs.append(out[-1])
        if self.teachers is None:
            return np.stack(xs), np.stack(ys).astype(np.int64)
        return np.stack(xs), np.stack(ys).astype(np.int64), np.stack(qs)


def forest_teacher(images, labels, n_classes: int, channel_axis=None, spacing=None) -> list[np.ndarray]:
    """Per image, the probabilities (n_classes, *spatial) of a random forest
    fitted on the strokes, as uint8 (0..255) to keep big volumes small."""
    out: list[np.ndarray] = []
    for _ in iter_forest_teacher(images, labels, n_classes, out, channel_axis, spacing):
        pass
    return out


def iter_forest_teacher(images, labels, n_classes: int, out: list, channel_axis=None, spacing=None):
    """forest_teacher as Progress events (stage "teacher"), filling `out`: on a big
    image it takes a while, and a Stop must not wait for it."""
    from ..core.pixel_classifier import PixelClassifier

    images, labels = _as_list(images, labels)
    total = len(images) + 1
    yield Progress("teacher", 0, total, "a random forest learns the strokes first (its sure pixels guide the U-Net)…")
    forest = PixelClassifier().fit(images, labels, channel_axis=channel_axis, spacing=spacing)
    for i, image in enumerate(images, 1):
        tiles = forest.feature_tiles(image, channel_axis, spacing)
        prob = np.empty((forest.n_classes,) + tiles.shape, np.float32)
        yield Progress("teacher", i, total, f"the forest labels image {i}/{len(images)}…")
        for _ in forest.iter_predict(tiles, prob):
            yield Progress("teacher", i, total)  # a chance to stop between bands
        q = np.zeros((n_classes,) + prob.shape[1:], np.uint8)  # classes the forest never saw: 0
        k = min(n_classes, prob.shape[0])
        np.multiply(prob[:k], 255, out=prob[:k])
        q[:k] = np.rint(prob[:k])
        out.append(q)


def teacher_loss(logits, targets, q, threshold: float):
    """Cross-entropy towards the teacher's probabilities on the unlabelled
    pixels where the teacher is sure; zero when there are none."""
    q = q.float() / 255
    use = (q.amax(1) > threshold) & (targets == IGNORE)
    if not bool(use.any()):
        return logits.sum() * 0
    ce = -(q * F.log_softmax(logits, 1)).sum(1)
    return ce[use].mean()


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


def validation_score(segmenter: UNetSegmenter, net, val, device) -> float:
    """Mean over validation images of: dense mode, foreground IoU against
    instance masks; sparse mode with 2 classes, IoU of class 2 on labelled
    pixels; with more classes, mean IoU over classes on labelled pixels."""
    scores = []
    for img, lab in val:
        seg = segmenter.segmentation(segmenter.predict_normalised(img, device=device, net=net))
        if segmenter.mode == "dense":
            scores.append(iou(seg != 1, lab > 0))
            continue
        m = lab > 0
        k = segmenter.n_classes
        classes = [k] if k == 2 else range(1, k + 1)
        scores.append(float(np.mean([iou(seg[m] == c, lab[m] == c) for c in classes])))
    return float(np.mean(scores))


# -- training ---------------------------------------------------------------
def train_unet(segmenter: UNetSegmenter, images, targets, settings: TrainSettings | None = None,
               validation=None, channel_axis=None, spacing=None):
    """Train (or continue training) `segmenter`; a generator of core.events.Progress.

    `images`/`targets`: one array each or lists of them. Sparse mode: labels
    0 = unlabelled, 1..K = classes; dense mode: instance masks. `validation`:
    an (image, labels) pair or a list of pairs (class ids, 0 ignored; dense
    mode: instance masks); with it the kept weights are those of the best
    validation score. Training events carry a preview, the probabilities
    (K, *spatial) of the first image, every `preview_every` steps; the last
    event's payload holds the report. Close the generator to stop; the kept
    weights are in the segmenter either way.
    """
    settings = settings or TrainSettings()
    settings.check()
    imgs, tgts, n_classes = prepare_data(segmenter, images, targets, channel_axis)
    val = prepare_validation(segmenter, validation, channel_axis)
    device = pick_device(settings.device)
    rng = np.random.default_rng(data_seed(settings.seed))  # each torchrun rank its own patches
    torch.manual_seed(settings.seed)
    ndim, n_channels = imgs[0].ndim - 1, imgs[0].shape[0]
    fresh = segmenter.net is None
    if fresh:
        segmenter.build(n_channels, ndim, n_classes)
    if spacing is not None:
        segmenter.spacing = list(check_spacing(spacing, ndim))
    net = segmenter.net
    patch = patch_shape_for(settings.patch_size, [t.shape for t in tgts], ndim, net.multiple)
    counts = class_counts(tgts, segmenter.n_classes)
    if segmenter.mode == "sparse":  # continuing may add classes painted since
        seen = {int(k) + 1 for k in np.flatnonzero(counts)}
        segmenter.classes = sorted(seen | set(segmenter.classes or ())) if segmenter.training else sorted(seen)
    weight = None
    if settings.class_weights == "balanced":
        weight = torch.from_numpy(balanced_weights(counts)).to(device)
    batch = int(settings.batch_size) or auto_batch_size(device, patch, segmenter.config["base_channels"])
    check_fits_in_ram(device, batch * training_bytes_per_sample(patch, segmenter.config["base_channels"]),
                      f"training with batch size {batch} and patches {'x'.join(map(str, patch))}",
                      "choose a smaller batch or patch size")

    teachers = None
    if settings.teacher == "forest" and segmenter.mode == "sparse":
        teachers = []
        try:
            yield from iter_forest_teacher(images, targets, segmenter.n_classes, teachers, channel_axis,
                                           segmenter.spacing)
        except GeneratorExit:
            if fresh:
                segmenter.net = None  # stopped before any training: nothing to keep
            raise
    sampler = PatchSampler(imgs, tgts, patch, settings.augmentation(), settings.labelled_fraction, rng, teachers)

    def loss_fn(model, batch):
        x, y = batch[:2]
        logits = model(x).float()
        loss = F.cross_entropy(logits, y, weight=weight, ignore_index=IGNORE)
        if len(batch) == 3:
            loss = loss + settings.teacher_weight * teacher_loss(logits, y, batch[2], settings.teacher_threshold)
        return loss

    def validate(model):
        return {"validation IoU": validation_score(segmenter, model, val, device)}

    def preview(model):
        return segmenter.predict_normalised(imgs[0], device=device, net=model)

    previous = dict(segmenter.training)

    def on_end(report):
        segmenter.training = {
            **report,
            "steps_total": int(previous.get("steps_total", 0)) + report["steps"],
            "seconds_total": round(float(previous.get("seconds_total", 0)) + report["seconds"], 2),
            "settings": settings.to_json(),
            "patch_shape": list(patch),
            "labelled_pixels_per_class": {str(k + 1): int(c) for k, c in enumerate(counts)},
        }
        segmenter.metrics = dict(report["metrics"])

    start = (f"training a {ndim}D U-Net ({segmenter.mode} mode, {segmenter.n_classes} classes): "
             f"patches {'x'.join(map(str, patch))}, batch {batch}, "
             f"{int(counts.sum())} labelled pixels in {int((counts > 0).sum())} classes"
             + (", a forest's confident pixels as extra targets" if teachers is not None else ""))
    yield from fit(net, sampler.sample, loss_fn, settings.fit_settings(batch),
                   validate=validate if val else None, preview=preview, start_message=start, on_end=on_end)
