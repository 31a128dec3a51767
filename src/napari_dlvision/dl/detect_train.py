"""Training a detector on the shared training loop.

    for event in train_detector(detector, [image], [boxes], DetectSettings(steps=400)):
        show(event.done, event.loss)     # close() the generator to stop

What is specific to detection lives here: boxes checked against their
images (clipped or dropped, with notices), stacks cut into planes, patches
whose boxes move with the augmentation (dl/box_sampler.py), the
architecture's loss, validation mAP (pycocotools) and previews of the
first image's boxes. `dl.loop.fit` does the rest: optimiser, schedule,
EMA, out-of-memory, time limit, Stop, and which weights are kept. Calling
it again on the same detector continues from its weights. The "forest"
detector has no network: `train_forest` fits it in one go instead (and
fits it anew on Continue, on all the boxes) without importing torch: the
default (auto) often chooses it, and torch with torchvision takes 4-7 s
to import on a CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ..core.box_metrics import evaluate_boxes
from ..core.boxes import BoxTable, clip_to_image
from ..core.errors import UserInputError
from ..core.events import Progress
from ..core.planes import Planes
from .box_sampler import BORDER_FRACTION, BoxAugmentation, BoxPatchSampler
from .detector import Detector
from .detector_archs import AUTO, FOREST
from .process_group import ranks_train_together
from .settings import FitSettings, KindSettings

EMPTY_PLANES = ("skip", "negative")


MIN_PATCH = 16


@dataclass
class DetectSettings(KindSettings):
    steps: int = 400
    patch_size: int = 0  # 0: from the objects' sizes (at least 64; 128 for torchvision's detectors)
    batch_size: int = 0  # 0: from the patch, about 8 x 64^2 pixels (U-Net) or 4 x 128^2 (torchvision)
    lr: float = 0.0  # 0: 3e-3 for the U-Net detector, 1e-3 for torchvision's
    weight_decay: float = 1e-4
    warmup: int = 0  # 0: 5% of the steps, at most 50
    ema: float | None = 0.99
    flips: bool = True
    rot90: bool = True
    scale: float = 1.25  # zoom range [1/scale, scale]; 1: off
    intensity: bool = True
    object_fraction: float = 0.5  # share of patches cut around a box
    empty_planes: str = "skip"  # stack planes without boxes: "skip" (not annotated) or "negative"
    device: str = "auto"
    time_limit: float | None = None
    time_schedule: bool = True  # with a time limit, the learning rate decays by the time limit
    seed: int = 0
    val_every: int = 0
    preview_every: int = 0

    def check(self):
        if self.empty_planes not in EMPTY_PLANES:
            raise UserInputError(f"empty_planes must be 'skip' or 'negative', got {self.empty_planes!r}")
        if not (isinstance(self.scale, (int, float)) and 1 <= self.scale <= 4):
            raise UserInputError("scale augmentation must be between 1 (off) and 4")
        if not (isinstance(self.object_fraction, (int, float)) and 0 <= self.object_fraction <= 1):
            raise UserInputError("object_fraction must be between 0 and 1")
        for name in ("patch_size", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 4096:
                raise UserInputError(f"{name.replace('_', ' ')} must be a whole number 0..4096 (0: automatic)")
        if 0 < self.patch_size < MIN_PATCH:  # a few pixels hold no object and its surroundings
            raise UserInputError(f"patch size must be 0 (automatic) or at least {MIN_PATCH}, got {self.patch_size}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and 0 <= self.lr <= 10):
            raise UserInputError(f"learning rate must be 0 (automatic) or a positive number up to 10, got {self.lr!r}")
        self.fit_settings(1, 1e-3).check()

    def augmentation(self) -> BoxAugmentation:
        return BoxAugmentation(self.flips, self.rot90, float(self.scale), self.intensity)

    def fit_settings(self, batch_size: int, lr: float) -> FitSettings:
        return super().fit_settings(batch_size, lr=lr, warmup=self.warmup or max(1, min(50, int(0.05 * self.steps))))


# -- data -----------------------------------------------------------------------------
def training_planes(detector: Detector, images, tables, channel_axis=None, empty_planes: str = "skip",
                    normalised: bool = True):
    """(normalised planes, [(boxes, classes)], class names, notices) from images and their BoxTables.

    normalised=False: the planes' own values (C, H, W), which the forest learns.

    Boxes are clipped to their image (or dropped, with a notice); stacks give
    one training image per plane. Class names are the detector's first, then
    the tables' new ones.
    """
    if not isinstance(images, (list, tuple)):
        images, tables = [images], [tables]
    if len(images) != len(tables):
        raise UserInputError("give one boxes table per image")
    if not images:
        raise UserInputError("no training images given")
    names = list(detector.class_names)
    for t in tables:
        for n in t.class_names:
            if n not in names and np.any(t.classes == t.class_names.index(n) + 1):
                names.append(n)
    names = names or ["object"]
    planes_out, targets, notes = [], [], []
    n_channels, skipped, n_planes = None, 0, 0
    for k, (image, table) in enumerate(zip(images, tables)):
        planes = Planes(image, channel_axis)
        if n_channels is not None and planes.n_channels != n_channels:
            raise UserInputError(f"all training images need the same number of channels: "
                                 f"{n_channels} and {planes.n_channels} given")
        n_channels = planes.n_channels
        if table.is_stack != planes.stack:
            raise UserInputError(
                "the boxes have a plane index but the image is not a stack" if table.is_stack else
                "the image is a stack: the boxes need a plane index (an `index` column, or a 3D Shapes layer)")
        table, clip_notes = clip_to_image(table.renamed(names), planes.shape, planes.n_planes)
        notes += clip_notes
        for p in range(planes.n_planes):
            sub = table.plane(p) if planes.stack else table
            if planes.stack and len(sub) == 0 and empty_planes == "skip":
                skipped += 1
                continue
            n_planes += 1
            planes_out.append(planes.plane_normalised(detector.normalisation, p) if normalised else planes.read(p))
            targets.append((sub.boxes, sub.classes))
    if skipped:
        notes.append(f"{skipped} plane{'s' if skipped > 1 else ''} without boxes skipped (taken as not annotated; "
                     "choose empty planes 'negative' if they hold no objects)")
    if not planes_out:
        raise UserInputError("no plane of the stack has boxes: draw boxes on some planes first")
    n_boxes = sum(len(b) for b, _ in targets)
    if n_boxes == 0:
        raise UserInputError("there are no boxes to learn from: draw rectangles around some objects first")
    if detector.net is not None:
        detector.check_channels(n_channels)
        if len(names) > detector.n_classes:
            raise UserInputError(f"this detector was trained for {detector.n_classes} classes "
                                 f"({', '.join(detector.class_names)}); the boxes add "
                                 f"{', '.join(names[detector.n_classes:])}: start a new detector to add classes")
    present = {int(c) for _, cl in targets for c in np.unique(cl)}
    unused = [names[i - 1] for i in range(1, len(names) + 1) if i not in present]
    if unused and len(names) > 1:
        notes.append(f"no boxes of class {', '.join(unused)}: the detector will not find it")
    return planes_out, targets, names, n_channels, notes


def prepare_validation(detector: Detector, validation, channel_axis=None):
    if validation is None:
        return []
    if isinstance(validation, tuple) and len(validation) == 2 and isinstance(validation[1], BoxTable):
        validation = [validation]
    out = []
    for image, table in validation:
        planes = Planes(image, channel_axis)
        table, _ = clip_to_image(table, planes.shape, planes.n_planes)
        out.append((image, table, planes.n_planes if planes.stack else None))
    return out


def auto_patch(sides: np.ndarray, shapes, arch: str) -> int:
    """Patch edge: most objects whole with room around them, on the pooling grid, within the images.

    Sized from the 95th percentile of the objects' longer sides, not the
    largest: a few giant objects would make every step many times dearer.
    """
    typical = float(np.percentile(sides.max(axis=1), 95)) if len(sides) else 32.0
    lo = 64 if arch == "centernet" else 128
    p = int(min(max(math.ceil(2 * typical / 16) * 16, lo), 256))
    largest_image = max(max(s) for s in shapes)
    return int(max(32, min(p, math.ceil(largest_image / 16) * 16)))


def auto_batch(patch: int, arch: str) -> int:
    """About the same pixels per step whatever the patch: 8 x 64^2 (U-Net), 4 x 128^2 (torchvision)."""
    if arch == "centernet":
        return int(min(8, max(2, round(8 * (64 / patch) ** 2))))
    return int(min(4, max(1, round(4 * (128 / patch) ** 2))))


# -- training -----------------------------------------------------------------------------
def train_detector(detector: Detector, images, boxes, settings: DetectSettings | None = None, validation=None,
                   channel_axis=None, prepare_network=None):
    """Train (or continue training) `detector`; a generator of core.events.Progress.

    `images`: an image or a list (2D grey or colour, or stacks of 2D planes);
    `boxes`: one core.boxes.BoxTable per image (with `index` for stacks).
    `validation`: (image, BoxTable) pairs; with them the kept weights are
    those of the best validation mAP@0.5. Preview payloads hold the first
    image's candidate boxes ({"preview": BoxTable}); the last event's payload
    the report. Close the generator to stop; the kept weights are in the
    detector either way. `prepare_network()`, if given, is called before a
    network's modules (torch) are imported, once the architecture is known:
    the widget imports torch its own way there. The forest imports none.
    """
    settings = settings or DetectSettings()
    settings.check()
    planes, targets, names, n_channels, notes = training_planes(
        detector, images, boxes, channel_axis, settings.empty_planes, normalised=detector.arch not in (AUTO, FOREST))
    if detector.arch == AUTO:
        planes = resolve_auto(detector, planes, targets, names, notes)
    val = prepare_validation(detector, validation, channel_axis)
    if detector.arch == FOREST:
        if ranks_train_together():
            raise UserInputError("the forest detector trains in one process: run it without torchrun, "
                                 "or choose centernet")
        yield from train_forest(detector, images, planes, targets, names, n_channels, notes, settings, val,
                                channel_axis)
        return
    if prepare_network is not None:
        prepare_network()
    import torch

    from . import centernet
    from .devices import pick_device
    from .distributed import data_seed
    from .loop import fit

    device = pick_device(settings.device)
    rng = np.random.default_rng(data_seed(settings.seed))  # each torchrun rank its own patches
    torch.manual_seed(settings.seed)
    sides = np.concatenate([b[:, 2:] - b[:, :2] for b, _ in targets])
    if detector.net is None:
        detector.class_names = names
        detector.build(n_channels, len(names), sides, notes)
    net, arch = detector.net, detector.arch
    patch = settings.patch_size or auto_patch(sides, [p.shape[1:] for p in planes], arch)
    sampler = BoxPatchSampler(planes, targets, patch, settings.augmentation(), settings.object_fraction, rng)
    if "border" not in detector.config:  # prediction pads images as far as training windows reach past them
        detector.config["border"] = int(math.ceil(BORDER_FRACTION * patch * settings.scale / 8) * 8)
    centre = arch == "centernet"
    batch = settings.batch_size or auto_batch(patch, arch)
    lr = settings.lr or (3e-3 if centre else 1e-3)
    k = detector.n_classes

    if centre:
        def batches(n):
            return centernet.batch_targets(*sampler.sample(n), k)

        def loss_fn(model, b):
            x, heat, heat_w, dist, reg_w = b
            return centernet.loss(model(x), heat, heat_w, dist, reg_w, k)
    else:
        def batches(n):
            x, tgts = sampler.sample(n)
            return x, [{"boxes": b[:, [1, 0, 3, 2]].copy(), "labels": c.astype(np.int64)} for b, c, _ in tgts]

        def loss_fn(model, b):
            x, tgts = b
            return sum(model(x, tgts).values())

    def validate(model):
        return validation_scores(detector, val, channel_axis, device=device, net=model)

    preview_image = images[0] if isinstance(images, (list, tuple)) else images

    def preview(model):
        return detector.candidates(preview_image, channel_axis, device=device, net=model)

    previous = dict(detector.training)
    n_boxes = int(sum(len(b) for b, _ in targets))

    def on_end(report):
        detector.training = {
            **report,
            "steps_total": int(previous.get("steps_total", 0)) + report["steps"],
            "seconds_total": round(float(previous.get("seconds_total", 0)) + report["seconds"], 2),
            "settings": settings.to_json(), "patch_size": patch, "lr": lr,
            "boxes": n_boxes, "planes": len(planes), "notes": notes,
        }
        detector.metrics = dict(report["metrics"])

    start = (f"training a {arch} detector ({k} class{'es' if k > 1 else ''}: {', '.join(detector.class_names)}) "
             f"on {n_boxes} boxes in {len(planes)} image{'s' if len(planes) > 1 else ''}: "
             f"patches {patch}, batch {batch}")
    if notes:
        start = "; ".join(notes) + ". " + start
    yield from fit(net, batches, loss_fn, settings.fit_settings(batch, lr), validate=validate if val else None,
                   preview=preview, start_message=start, on_end=on_end,
                   preview_weights=False)  # no preview history for boxes: no copy of big backbones


def resolve_auto(detector: Detector, planes, targets, names, notes: list) -> list:
    """Set an "auto" detector's architecture from the boxes (core.box_regions.choose_arch), say which
    in `notes`, and give back the planes as that architecture learns them (centernet: normalised)."""
    from ..core.box_regions import choose_arch, strokes_from_boxes

    if ranks_train_together():  # ranks that train together are for a network
        detector.arch, why = "centernet", "auto chose centernet (training across ranks with torchrun)"
    else:
        labels = [strokes_from_boxes(p.shape[1:], b, c, sample=False) for p, (b, c) in zip(planes, targets)]
        detector.arch, why = choose_arch(labels, len(names))
    notes.append(why)
    if detector.arch == FOREST:
        return planes
    return [Planes(p, 0).plane_normalised(detector.normalisation) for p in planes]  # as training_planes does


def validation_scores(detector: Detector, val, channel_axis=None, **kw) -> dict[str, float]:
    """Mean validation mAP@0.5 and mAP@0.5:0.95 (kw: the network being trained, its device)."""
    scores = []
    for image, truth, n_planes in val:
        cands = detector.candidates(image, channel_axis, **kw)
        # mAP ranks every candidate; precision and recall count those above the threshold.
        scores.append(evaluate_boxes(detector.select(cands, 0.0, detector.nms_iou), truth, detector.score_threshold,
                                     n_planes))
    return {"validation mAP@0.5": float(np.nanmean([s["mAP@0.5"] for s in scores])),
            "validation mAP@0.5:0.95": float(np.nanmean([s["mAP@0.5:0.95"] for s in scores]))}


UNBOXED_ROUNDS = 2  # fits without the background found to hold objects (core.box_regions.unboxed_background)


def train_forest(detector: Detector, images, planes, targets, names, n_channels, notes, settings, val,
                 channel_axis=None):
    """Fit the forest detector (core/box_regions.py): strokes from the boxes, the pixel random forest,
    then the edge level and split depth that best find the training boxes. Progress events as
    train_detector's; the detector changes only at the end, so a Stop keeps the last one whole."""
    from ..core.box_regions import (boxes_of_objects, check_background, choose_settings, strokes_from_boxes,
                                    table_of, unboxed_background)
    from ..core.pixel_classifier import PixelClassifier

    t0 = time.perf_counter()
    k, n_boxes = len(names), int(sum(len(b) for b, _ in targets))
    start = (f"training a forest detector ({k} class{'es' if k > 1 else ''}: {', '.join(names)}) on {n_boxes} "
             f"boxes in {len(planes)} image{'s' if len(planes) > 1 else ''}; steps and patches do not apply")
    yield Progress("start", 0, 0, "; ".join(notes + [start]), seconds=0.0)
    rng = np.random.default_rng(settings.seed)
    labels = [strokes_from_boxes(p.shape[1:], b, c, rng) for p, (b, c) in zip(planes, targets)]
    check_background(labels)
    forest = PixelClassifier(class_names=["outside the boxes"] + list(names))
    forest.fit(list(planes), labels, channel_axis=0)
    yield Progress("tuning", 0, 0, "forest fitted; predicting the training images…", seconds=time.perf_counter() - t0)
    probs = [forest.predict_proba(p, channel_axis=0) for p in planes]
    unboxed = 0
    for _ in range(UNBOXED_ROUNDS):  # a refitted forest finds more of the objects the first one shrank
        cleaned = [unboxed_background(lab, prob, b) for lab, prob, (b, _) in zip(labels, probs, targets)]
        found = sum(n for _, n in cleaned)
        if not found:
            break
        unboxed += found
        labels = [lab for lab, _ in cleaned]
        yield Progress("tuning", 0, 0, f"{found} spots outside the boxes look like objects: fitting the forest "
                       "without them as background…", seconds=time.perf_counter() - t0)
        forest.fit(list(planes), labels, channel_axis=0)
        probs = [forest.predict_proba(p, channel_axis=0) for p in planes]
    if unboxed:
        notes.append(f"{unboxed} spot{'s' if unboxed > 1 else ''} outside the boxes looked like objects and "
                     f"{'were' if unboxed > 1 else 'was'} not taught as background: box every object in the part "
                     "of the image you annotate")

    def evaluate(found, targets):
        truth = BoxTable(np.concatenate([b for b, _ in targets]), np.concatenate([c for _, c in targets]), list(names),
                         index=np.concatenate([np.full(len(b), i) for i, (b, _) in enumerate(targets)]))
        scores = evaluate_boxes(table_of(found, names, True), truth, detector.score_threshold, len(targets))
        return scores["mAP@0.5"], scores["mAP@0.5:0.95"]

    chosen = yield from choose_settings(probs, targets, evaluate)
    training_map = evaluate([boxes_of_objects(p, **chosen) for p in probs], targets)
    del probs
    how = f"background below {chosen['level']}, split depth {chosen['split']}"
    sides = np.concatenate([b[:, 2:] - b[:, :2] for b, _ in targets])
    detector.net, detector.n_channels, detector.class_names = forest, int(n_channels), list(names)
    detector.config = {**chosen, "largest_object": round(float(sides.max()), 1)}
    metrics = {"training mAP@0.5": round(training_map[0], 5), "training mAP@0.5:0.95": round(training_map[1], 5)}
    if val:
        metrics.update({name: round(v, 5) for name, v in validation_scores(detector, val, channel_axis).items()})
    seconds = round(time.perf_counter() - t0, 2)
    pixels = forest.training["pixels_per_class"]
    kept = f"a forest of {forest.n_trees} trees ({how})"
    report = {"steps": 0, "seconds": seconds, "stopped": "finished", "kept": kept, "best_step": None,
              "device": detector.describe_device(), "smoothed_loss": None, "metrics": metrics,
              "pixels_per_class": pixels}
    detector.training = {**report, "settings": settings.to_json(), "boxes": n_boxes, "planes": len(planes),
                         "notes": notes}
    detector.metrics = dict(metrics)
    preview_image = images[0] if isinstance(images, (list, tuple)) else images
    preview = detector.candidates(preview_image, channel_axis)
    message = (f"forest detector trained in {seconds:.1f} s on {sum(pixels.values())} pixels of {n_boxes} boxes "
               f"({how}; training mAP@0.5 {training_map[0]:.3f})")
    yield Progress("done", 1, 1, message, None, None, metrics, seconds, {"report": report, "preview": preview})
