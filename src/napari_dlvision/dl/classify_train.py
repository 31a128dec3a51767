"""Training an image classifier on the shared training loop.

    for ev in train_classifier(clf, image_set, ClassifierSettings(arch="fast", time_limit=240)):
        show(ev.done, ev.loss, ev.metrics)      # close() the generator to stop

What is specific to image classification lives here: a stratified
train/validation split of the labelled images, the images held on the
device as one uint8 tensor (channels-last), batches drawn from an epoch
permutation with flips and translations done on the whole batch at once on
the device (no per-image Python), cross-entropy with label smoothing, the
recipe of each architecture, and after training the confusion matrix of the
validation images. `dl.loop.fit` does the rest (optimiser, schedule, mixed
precision, time limit, kept weights). Calling it again on a trained
classifier continues from its weights with a fresh optimiser.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.classification import Prediction, check_trainable, evaluate, stratified_split
from ..core.errors import UserInputError
from ..core.events import n_epochs
from .classify import ImageClassifier
from .classify_nets import AUGMENTED, n_parameters
from .devices import pick_device
from .distributed import data_seed, world_size
from .loop import fit
from .settings import FitSettings

# Per architecture: optimiser, learning rate, weight decay, batch, epochs, label smoothing, schedule.
# The course's pixel models use Adam without augmentation; the convolutional
# ones follow the fast CIFAR-10 recipes (SGD with Nesterov momentum, one
# cycle, label smoothing 0.2, flips and 2-pixel translations).
RECIPES = {
    "logreg": dict(optimiser="adamw", lr=1e-3, weight_decay=0.0, batch=256, epochs=10, smoothing=0.0,
                   schedule="cosine"),
    "mlp": dict(optimiser="adamw", lr=1e-3, weight_decay=1e-4, batch=256, epochs=10, smoothing=0.0,
                schedule="cosine"),
    "filters-mlp": dict(optimiser="adamw", lr=1e-3, weight_decay=1e-4, batch=256, epochs=10, smoothing=0.0,
                        schedule="cosine"),
    "cnn": dict(optimiser="adamw", lr=1e-3, weight_decay=1e-4, batch=128, epochs=10, smoothing=0.0,
                schedule="cosine"),
    "cnn-bn": dict(optimiser="adamw", lr=2e-3, weight_decay=5e-4, batch=128, epochs=15, smoothing=0.0,
                   schedule="cosine"),
    "resnet18": dict(optimiser="sgd", lr=0.1, weight_decay=5e-4, batch=128, epochs=30, smoothing=0.1,
                     schedule="onecycle"),
    "fast": dict(optimiser="sgd", lr=0.2, weight_decay=5e-4, batch=256, epochs=10, smoothing=0.2,
                 schedule="onecycle"),
}
GPU_WIDTH = {"fast": 64}  # on a GPU the fast net is as wide as the published recipe
GPU_BATCH = {"fast": 1024, "resnet18": 512}
MIN_AUTO_STEPS = 200  # the fewest steps of automatic training, however few the images
# Fewer held-out images than this cannot pick weights: their accuracy's standard error
# (up to sqrt(0.25 / n): 0.125 for 16 images) exceeds the gaps between checkpoints, and
# the luckiest early one won (16 held out: step 40 of 200 kept, underfit, 0.50 against
# 0.31 at the end). Their accuracy is still shown; the last weights are kept.
MIN_VALIDATION_TO_CHOOSE = 100


@dataclass
class ClassifierSettings:
    arch: str = "fast"
    width: int | None = None  # None: the architecture's default (wider on a GPU)
    epochs: float | None = None  # None: the recipe's
    batch_size: int = 0  # 0: the recipe's (bigger on a GPU)
    lr: float | None = None
    weight_decay: float | None = None
    label_smoothing: float | None = None
    augment: bool | None = None  # flips + translations; None: the recipe's
    translate: int = 2  # pixels
    val_fraction: float = 0.1
    val_cap: int = 1000  # validation images at most (ranking weights needs no more)
    validations: int = 5  # per run
    device: str = "auto"
    time_limit: float | None = None  # seconds; the schedule follows the clock to its end
    seed: int = 0
    cpu_amp: bool = True  # bfloat16 on CPUs that have it natively
    clock: str = "wall"  # "cpu": time limit in this process's CPU seconds per thread (shared machines)
    preview_every: int = 0

    def recipe(self) -> dict:
        return RECIPES[self.arch]

    def check(self):
        if self.arch not in RECIPES:
            raise UserInputError(f"unknown architecture {self.arch!r}; choose one of {', '.join(RECIPES)}")
        if self.epochs is not None and not (isinstance(self.epochs, (int, float)) and 0 < self.epochs <= 10_000):
            raise UserInputError(f"epochs must be a positive number up to 10000, got {self.epochs!r}")
        if not 0 <= self.val_fraction < 1:
            raise UserInputError("the validation fraction must be from 0 to less than 1")
        if not (isinstance(self.translate, int) and 0 <= self.translate <= 16):
            raise UserInputError("translation must be 0..16 pixels")
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise UserInputError("label smoothing must be from 0 to less than 1")

    def to_json(self) -> dict:
        return asdict(self)


class BatchSource:
    """Batches from an epoch permutation of device-resident images, augmented as a whole."""

    def __init__(self, clf: ImageClassifier, images: torch.Tensor, labels: torch.Tensor, augment: bool,
                 translate: int, seed: int):
        self.clf, self.images, self.labels = clf, images, labels
        self.augment, self.pad = augment, translate
        self.gen = torch.Generator(device=images.device).manual_seed(seed)
        self.order = torch.zeros(0, dtype=torch.long, device=images.device)

    def __call__(self, n: int):
        while len(self.order) < n:  # the next epoch's order, appended
            perm = torch.randperm(len(self.labels), device=self.images.device, generator=self.gen)
            self.order = torch.cat([self.order, perm])
        idx, self.order = self.order[:n], self.order[n:]
        x = self.clf.normalise(self.images[idx])
        if self.augment:
            x = flip_translate(x, self.pad, self.gen)
        return x, self.labels[idx]


def flip_translate(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and shifts of up to `pad` pixels (reflected borders), per image, in one go."""
    n, _, h, w = x.shape
    flip = torch.rand(n, device=x.device, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if pad <= 0 or min(h, w) <= pad:
        return x
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=gen)
    rows = torch.arange(h, device=x.device)[None] + dy[:, None]
    cols = torch.arange(w, device=x.device)[None] + dx[:, None]
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indices around a slice put their dims first: (n, h, w, c), i.e. channels-last memory.
    return xp[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _device_images(images: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).to(device)


def train_classifier(clf: ImageClassifier, data, settings: ClassifierSettings | None = None, validation=None,
                     preview_images=None):
    """Train (or continue training) `clf` on an ImageSet; a generator of Progress events.

    `validation`: another ImageSet to rank weights by; without it a
    stratified share of the labelled images (val_fraction, at most val_cap)
    is held out. Training events carry the validation accuracy in their
    metrics; the last event's payload holds the report and "evaluation", the
    confusion matrix of the validation images (None without any).
    `preview_images` (N, H, W, C): their probabilities ride on preview events.
    """
    settings = settings or ClassifierSettings(arch=clf.arch)
    settings.check()
    if clf.net is not None and settings.arch != clf.arch:
        settings.arch = clf.arch  # continuing: the model's architecture decides
    recipe = settings.recipe()
    labels = np.asarray(data.labels)
    check_trainable(labels, data.class_names)
    if data.images.dtype.kind == "f" and not np.isfinite(data.images).all():
        raise UserInputError("the images hold NaN or infinite values")
    n_classes = max(len(data.class_names), int(labels.max()) + 1)
    if validation is None:
        train_idx, val_idx = stratified_split(labels, settings.val_fraction, settings.seed, settings.val_cap)
        val_images, val_labels = data.images[val_idx], labels[val_idx]
    else:
        train_idx = np.flatnonzero(labels >= 0)
        val_images, val_labels = validation.images, np.asarray(validation.labels)
    device = pick_device(settings.device)
    torch.manual_seed(settings.seed)
    if clf.net is None:
        if clf.width is None and device.type == "cuda":
            clf.width = GPU_WIDTH.get(clf.arch)
        clf.class_names = list(data.class_names)
        clf.build(data.images.shape[3], data.images.shape[1:3], n_classes)
        clf.tta = bool(settings.augment if settings.augment is not None else clf.arch in AUGMENTED)
        clf.set_normalisation(data.images[train_idx], seed=settings.seed)
    else:
        clf.check_images(data.images[:1])
        if n_classes > clf.n_classes:
            raise UserInputError(f"this classifier knows {clf.n_classes} classes but the labels use "
                                 f"{n_classes}; start a new model to add classes")
    net = clf.net.to(device, memory_format=torch.channels_last)
    augment = settings.augment if settings.augment is not None else clf.arch in AUGMENTED
    batch = int(settings.batch_size) or (GPU_BATCH.get(clf.arch, recipe["batch"]) if device.type == "cuda"
                                         else recipe["batch"])
    if not settings.batch_size:  # a few hundred painted images still get several steps per epoch
        batch = min(batch, max(16, len(train_idx) // 8))
    batch = max(1, min(batch, len(train_idx)))
    epochs = settings.epochs or recipe["epochs"]
    # Under torchrun every rank draws its own batches: an epoch takes 1/world of the steps.
    steps = max(1, math.ceil(epochs * len(train_idx) / (batch * world_size())))
    if not settings.epochs and steps < MIN_AUTO_STEPS:
        # The recipes' epochs are for thousands of images: two dozen painted ones would get 15 steps
        # and learn next to nothing (0.58 accuracy on an easy pair of classes, 1.0 with 200 steps).
        steps = MIN_AUTO_STEPS
        epochs = steps * batch * world_size() / len(train_idx)
    source = BatchSource(clf, _device_images(data.images[train_idx], device),
                         torch.from_numpy(labels[train_idx]).to(device), augment, settings.translate,
                         data_seed(settings.seed))
    smoothing = recipe["smoothing"] if settings.label_smoothing is None else settings.label_smoothing
    fit_settings = FitSettings(
        steps=steps, batch_size=batch, lr=settings.lr or recipe["lr"],
        weight_decay=recipe["weight_decay"] if settings.weight_decay is None else settings.weight_decay,
        optimiser=recipe["optimiser"], schedule=recipe["schedule"], warmup=min(steps // 20, 200),
        grad_clip=None if recipe["optimiser"] == "sgd" else 5.0, device=settings.device,
        time_limit=settings.time_limit, seed=settings.seed, cpu_amp=settings.cpu_amp, time_schedule=True,
        val_every=max(1, steps // max(1, settings.validations)), preview_every=settings.preview_every,
        check_every=1 if device.type == "cpu" else 25, clock=settings.clock,
    )

    def loss_fn(model, batch):
        x, y = batch
        return F.cross_entropy(model(x).float(), y, label_smoothing=smoothing)

    def validate(model):
        pred = clf.predict_proba(val_images, device=device, net=model).argmax(1)
        return {"validation accuracy": float(np.mean(pred == val_labels))}

    def preview(model):
        return clf.predict_proba(preview_images, device=device, net=model)

    previous = dict(clf.training)
    counts = np.bincount(labels[train_idx], minlength=clf.n_classes)

    def on_end(report):
        clf.training = {
            **report, "arch": clf.arch, "parameters": n_parameters(net), "augment": bool(augment),
            "label_smoothing": smoothing, "epochs": round(report["steps"] * batch / len(train_idx), 3),
            "steps_total": int(previous.get("steps_total", 0)) + report["steps"],
            "seconds_total": round(float(previous.get("seconds_total", 0)) + report["seconds"], 2),
            "classifier_settings": settings.to_json(), "training_images": int(len(train_idx)),
            "validation_images": int(len(val_labels)), "images_per_class": counts.tolist(),
        }
        clf.metrics = dict(report["metrics"])

    h, w = clf.size
    few = (f" (too few to choose the weights by, at least {MIN_VALIDATION_TO_CHOOSE}: the last ones are kept)"
           if 0 < len(val_labels) < MIN_VALIDATION_TO_CHOOSE else "")
    start = (f"training {clf.arch} ({n_parameters(net) / 1e6:.2f} M parameters) on {len(train_idx)} {h}x{w} "
             f"images in {int((counts > 0).sum())} classes, {len(val_labels)} for validation{few}; batch {batch}, "
             f"{n_epochs(epochs)}{' with flips and shifts' if augment else ''}")
    for ev in fit(net, source, loss_fn, fit_settings, validate=validate if len(val_labels) else None,
                  preview=preview if preview_images is not None and settings.preview_every else None,
                  start_message=start, on_end=on_end,
                  choose_by_validation=len(val_labels) >= MIN_VALIDATION_TO_CHOOSE):
        if ev.stage == "done":
            ev.payload["evaluation"] = None
            if len(val_labels):
                pred = Prediction(clf.predict_proba(val_images, device=device))
                ev.payload["evaluation"] = evaluate(val_labels, pred.labels, clf.class_names)
                clf.metrics["validation"] = ev.payload["evaluation"].to_json()
        yield ev
