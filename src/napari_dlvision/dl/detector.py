"""The object detector: boxes with classes and scores, its file and its tiled prediction.

    det = Detector("centernet", class_names=["nucleus"])     # train with dl.detect_train
    table = det.predict_boxes(image)                         # core.boxes.BoxTable, scored
    det.save("nuclei.dlv"); det = Detector.load("nuclei.dlv")

Architectures: "centernet" (the project's U-Net predicting centres and box
edges, dl/centernet.py); "forest", no network at all: the pixel random
forest taught which pixels lie inside and outside the boxes, with a box
around each object it finds (core/box_regions.py; trained in seconds,
predicted a whole plane at a time); torchvision's FCOS and Faster R-CNN
(dl/tv_detectors.py); and "auto", the default, which becomes centernet or
the forest when training starts (dl.detect_train.resolve_auto). The
networks predict tile by tile on each plane: the
U-Net's tiles carry its exact halo and keep the peaks of their core, the
torchvision detectors' tiles overlap by more than the largest training
object and keep the boxes centred in their core; non-maximum suppression
(torchvision.ops) then removes the duplicates. `iter_predict` returns all
candidates above a low floor, so the score threshold and the NMS IoU can be
changed afterwards (`select`) without running the network again.

torch is imported only by what runs a network: a forest detector is loaded,
predicted, evaluated and refused for export without it (the CLI pays no 4-7 s
of importing torch and torchvision for it). The forest's objects are disjoint
regions, one candidate each, so its boxes skip non-maximum suppression,
which could only remove real objects (`Detector.select`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..core import modelfile
from ..core.boxes import BoxTable
from ..core.errors import UserInputError
from ..core.events import Progress
from ..core.labels import class_names_for
from ..core.normalisation import Normalisation
from ..core.planes import Planes, guess_channel_axis
from ..core.tiling import grid, grow
from .detector_archs import ARCHS, DEFAULT_ARCH, FOREST, MODEL_ARCHS

KIND = "object-detector"
CANDIDATE_FLOOR = 0.05  # candidates kept for later thresholds (and for mAP)
MAX_CANDIDATES_PER_TILE = 5000
MAX_CLASSES = 60  # the U-Net head has K + 4 outputs and is bounded at 64
BYTES_PER_PIXEL = {"centernet": 48 * 16, "mobilenet": 6000, "resnet50": 30000}  # inference peak, measured roughly
FOREST_WORK_BYTES = 16  # per pixel of a plane, beyond it and its probabilities: objects, their ids and scores


def select(candidates: BoxTable, score_threshold: float, nms_iou: float) -> BoxTable:
    """The boxes the user sees: non-maximum suppression per class (and plane), then the threshold."""
    import torch
    from torchvision.ops import batched_nms

    if len(candidates) == 0:
        return candidates.above(score_threshold)
    groups = candidates.classes.copy()
    if candidates.index is not None:
        groups = groups + candidates.index * (len(candidates.class_names) + 1)
    keep = batched_nms(torch.from_numpy(candidates.boxes.astype(np.float32)),
                       torch.from_numpy(candidates.scores.astype(np.float32)),
                       torch.from_numpy(groups), float(nms_iou)).numpy()
    kept = candidates.select(np.sort(keep))
    return kept.above(score_threshold)


class Detector:
    KIND = KIND
    TASK = "boxes"
    OUTPUTS = ("boxes",)
    MAIN_OUTPUT = "boxes"
    OUTPUT_SUFFIXES = {"boxes": ".csv"}
    ndim = 2  # planes; stacks are predicted plane by plane

    def __init__(self, arch: str = DEFAULT_ARCH, class_names=None, pretrained: str = "cache",
                 normalisation: Normalisation | None = None, device: str = "auto",
                 score_threshold: float = 0.3, nms_iou: float = 0.5, base_channels: int = 16):
        if arch not in ARCHS:
            raise UserInputError(f"unknown detector architecture {arch!r}; choose one of {', '.join(ARCHS)}")
        self.arch, self.pretrained = arch, pretrained
        self.class_names = [str(n) for n in (class_names or [])]
        self.normalisation = normalisation or Normalisation()
        self.device = device
        self.score_threshold, self.nms_iou = float(score_threshold), float(nms_iou)
        self.net = None
        self.n_channels = None
        self.base_channels = int(base_channels)  # width of the U-Net (centernet)
        self.config: dict = {}  # network sizes chosen from the training boxes (see build)
        self.training: dict = {}
        self.metrics: dict = {}

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    # -- network ----------------------------------------------------------------
    def build(self, n_channels: int, n_classes: int, sides: np.ndarray, notes: list | None = None):
        """A fresh network sized for these objects (sides: (N, 2) heights and widths of the training boxes)."""
        if not 1 <= n_classes <= MAX_CLASSES:
            raise UserInputError(f"a detector takes 1 to {MAX_CLASSES} classes, got {n_classes}")
        biggest = float(sides.max()) if len(sides) else 32.0
        median = float(np.median(sides)) if len(sides) else 32.0
        if self.arch == "centernet":
            # The U-Net must see a whole object from its centre: depth 3 reaches 58 pixels, depth 4 122.
            depth = 3 if biggest <= 80 else (4 if biggest <= 200 else 5)
            self.config = {"depth": depth, "base_channels": self.base_channels, "norm": "batch"}
            from . import centernet
            from .unet import UNet

            self.net = UNet(2, n_channels, n_classes + 4, depth, self.base_channels, "batch")
            centernet.init_head(self.net, n_classes)
        else:
            from .tv_detectors import TorchvisionDetector, pretrained_state

            # Objects of about 32 pixels after scaling suit the feature maps' strides.
            scale = float(min(4.0, max(1.0, round(32 / max(median, 1.0) * 4) / 4)))
            state, note = pretrained_state(self.arch.split("-")[1], self.pretrained)
            if notes is not None:
                notes.append(note)
            self.config = {"scale": scale, "pretrained_backbone": state is not None}
            self.net = TorchvisionDetector(self.arch, n_classes, n_channels, scale, state)
        self.config["largest_object"] = round(biggest, 1)
        self.n_channels = int(n_channels)
        self.class_names = class_names_for(self.class_names, n_classes)
        return self.net

    @property
    def halo(self) -> int:
        """Context around each tile: the U-Net's exact reach, else more than the largest object."""
        if self.arch == "centernet":
            from .unet import halo

            return halo(self.config["depth"])
        return int(max(32, math.ceil(1.25 * self.config.get("largest_object", 64) / 32) * 32))

    @property
    def multiple(self) -> int:
        return 2 ** self.config["depth"] if self.arch == "centernet" else 32

    def bytes_per_pixel(self) -> float:
        if self.arch == "centernet":
            return BYTES_PER_PIXEL["centernet"] * self.config["base_channels"] / 16
        return BYTES_PER_PIXEL[self.arch.split("-")[1]] * self.config.get("scale", 1.0) ** 2

    def check_channels(self, n_channels: int):
        if self.net is None:
            raise UserInputError("the detector is not trained yet")
        if n_channels != self.n_channels:
            raise UserInputError(f"the detector was trained on {self.n_channels}-channel images; "
                                 f"this image has {n_channels} channel(s)")

    def guess_channel_axis(self, shape):
        """core.apply asks this for files: stacks of planes are images to a detector."""
        return guess_channel_axis(shape, self.n_channels)

    def check_shape(self, shape, channel_axis=None):
        """Raise a readable error unless an image of this shape fits (no data read)."""
        self.check_channels(1 if channel_axis is None else shape[channel_axis])

    # -- prediction -------------------------------------------------------------------
    def _tile_candidates(self, net, x, inner):
        """Candidates of one tile (1, C, h, w) kept in its core: boxes, scores, classes (tile coordinates)."""
        (y0, y1), (x0, x1) = [(s.start, s.stop) for s in inner]
        if self.arch == "centernet":
            from . import centernet

            out = net(x)
            return centernet.decode(out, self.n_classes, CANDIDATE_FLOOR, MAX_CANDIDATES_PER_TILE, ((y0, y1), (x0, x1)))
        det = net(x)[0]
        b = det["boxes"].float().cpu().numpy()[:, [1, 0, 3, 2]]  # torchvision's (x0, y0, x1, y1) -> ours
        s, c = det["scores"].float().cpu().numpy(), det["labels"].cpu().numpy().astype(np.int64)
        cy, cx = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        keep = (cy >= y0) & (cy < y1) & (cx >= x0) & (cx < x1) & (s >= CANDIDATE_FLOOR) & (c >= 1)
        return b[keep], s[keep], c[keep]

    def _read_padded(self, planes: Planes, p: int, outer, pad: int, params, fill) -> np.ndarray:
        """Normalised tile `outer` of the image padded by `pad` pixels of `fill` on every side."""
        (r, c), (h, w) = outer, planes.shape
        tile = np.empty((planes.n_channels, r.stop - r.start, c.stop - c.start), np.float32)
        tile[:] = fill[:, None, None]
        r0, r1 = max(r.start - pad, 0), min(r.stop - pad, h)
        c0, c1 = max(c.start - pad, 0), min(c.stop - pad, w)
        if r1 > r0 and c1 > c0:
            raw = planes.read(p, slice(r0, r1), slice(c0, c1))
            tile[:, r0 + pad - r.start:r1 + pad - r.start, c0 + pad - c.start:c1 + pad - c.start] = \
                self.normalisation.apply(raw, params)
        return tile

    def iter_predict(self, image, channel_axis=None, device=None, net=None, tile_shape=None):
        """Candidates of an image or stack, as Progress events ("predicting", then "done").

        The "done" event's payload is {"candidates": BoxTable} (scores >=
        CANDIDATE_FLOOR, before NMS). `net` overrides the stored network
        (training previews pass the weights being trained).
        """
        planes = Planes(image, channel_axis)
        self.check_channels(planes.n_channels)
        if self.arch == FOREST:
            yield from self._iter_forest(planes, self.net if net is None else net)
            return
        import torch

        from .devices import describe, empty_cache, is_out_of_memory, pick_device
        from .tiled import plan_tiles

        device = pick_device(self.device if device is None else device)
        net = (self.net if net is None else net).to(device)
        was_training = net.training
        net.eval()
        halo, multiple = self.halo, self.multiple
        if tile_shape is None:
            tile_shape, _ = plan_tiles(planes.shape, device, halo, multiple, self.bytes_per_pixel())
        # The image is predicted as if padded by `border` pixels of background: training
        # windows reach past the image's edge the same way, so objects cut by the edge look alike.
        pad = int(self.config.get("border", 0))
        shape = (planes.shape[0] + 2 * pad, planes.shape[1] + 2 * pad)
        all_b, all_s, all_c, all_i = [], [], [], []
        try:
            while True:
                tiles = grid(shape, tile_shape)
                total, done = len(tiles) * planes.n_planes, 0
                try:
                    for p in range(planes.n_planes):
                        params, fill = planes.norm_params(self.normalisation, p, with_median=True)
                        for core in tiles:
                            outer, inner = grow(core, (halo, halo), shape)
                            tile = self._read_padded(planes, p, outer, pad, params, fill)
                            x = torch.from_numpy(tile)[None].to(device)
                            with torch.inference_mode():
                                b, s, c = self._tile_candidates(net, x, inner)
                            del x
                            b = b + np.array([outer[0].start - pad, outer[1].start - pad] * 2, np.float32)
                            all_b.append(b), all_s.append(s), all_c.append(c), all_i.append(np.full(len(s), p))
                            done += 1
                            yield Progress("predicting", done, total)
                    break
                except Exception as e:  # noqa: BLE001 - only out-of-memory is handled here
                    if not is_out_of_memory(e):
                        raise
                empty_cache(device)
                all_b, all_s, all_c, all_i = [], [], [], []
                if max(tile_shape) <= 2 * multiple:
                    raise UserInputError(f"out of memory on {describe(device)} even with small tiles; "
                                         "close other programs using the GPU or choose device 'cpu'")
                tile_shape = tuple(max(multiple, t // 2 // multiple * multiple) for t in tile_shape)
        finally:
            net.train(was_training)
        boxes = np.concatenate(all_b) if all_b else np.zeros((0, 4))
        h, w = planes.shape
        boxes = np.clip(boxes, 0, [h, w, h, w])
        scores = np.concatenate(all_s) if all_s else np.zeros(0)
        ok = np.all(boxes[:, 2:] - boxes[:, :2] > 0, axis=1)
        cands = BoxTable(boxes[ok], (np.concatenate(all_c) if all_c else np.zeros(0, np.int64))[ok],
                         list(self.class_names), scores[ok],
                         (np.concatenate(all_i) if all_i else np.zeros(0, np.int64))[ok] if planes.stack else None)
        yield Progress("done", total, total, payload={"candidates": cands})

    def _iter_forest(self, planes: Planes, forest):
        """iter_predict of the forest detector: a plane's probabilities, then a box per object."""
        from ..core.box_regions import boxes_of_objects, table_of
        from ..core.memory import check_fits_in_ram

        h, w = planes.shape
        per_pixel = planes.n_channels * planes.dtype.itemsize + 4 * (self.n_classes + 1) + FOREST_WORK_BYTES
        check_fits_in_ram(h * w * per_pixel, f"the forest detector on a {h} x {w} plane (read whole)",
                          "choose centernet, which predicts tile by tile")
        found = []
        for p in range(planes.n_planes):
            prob = forest.predict_proba(planes.read(p), channel_axis=0)  # the forest learnt the image's own values
            found.append(boxes_of_objects(prob, self.config["split"], self.config["level"]))
            del prob
            yield Progress("predicting", p + 1, planes.n_planes)
        yield Progress("done", planes.n_planes, planes.n_planes,
                       payload={"candidates": table_of(found, self.class_names, planes.stack)})

    def candidates(self, image, channel_axis=None, on_progress=None, **kw) -> BoxTable:
        """Candidates of `image`; `on_progress(done, total)` after each tile, if given."""
        last = None
        for last in self.iter_predict(image, channel_axis, **kw):
            if on_progress is not None and last.stage == "predicting":
                on_progress(last.done, last.total)
        return last.payload["candidates"]

    def predict_boxes(self, image, channel_axis=None, score_threshold=None, nms_iou=None,
                      on_progress=None) -> BoxTable:
        """Scored boxes of a 2D image (or, with an `index`, of every plane of a stack)."""
        return self.select(self.candidates(image, channel_axis, on_progress),
                           self.score_threshold if score_threshold is None else score_threshold,
                           self.nms_iou if nms_iou is None else nms_iou)

    def select(self, candidates: BoxTable, score_threshold: float, nms_iou: float) -> BoxTable:
        """`select` for this detector's candidates: the forest's are disjoint objects, never suppressed."""
        if self.arch == FOREST:
            return candidates.above(score_threshold)
        return select(candidates, score_threshold, nms_iou)

    def predict_outputs(self, image, channel_axis=None, spacing=None, wanted=("boxes",), score_threshold=None,
                        nms_iou=None, on_progress=None, **_):
        """What core.apply and the CLI write: {"boxes": BoxTable} (written as CSV)."""
        if score_threshold is not None and not 0 <= score_threshold <= 1:
            raise UserInputError(f"score threshold must be between 0 and 1, got {score_threshold}")
        return {"boxes": self.predict_boxes(image, channel_axis, score_threshold, nms_iou, on_progress)}

    # -- model file -----------------------------------------------------------------------
    def metadata(self) -> dict:
        arch = {"name": FOREST, "pixel_classifier": self.net.metadata()} if self.arch == FOREST \
            else self.net.architecture()
        return {
            "kind": KIND, "arch": self.arch, "classes": list(range(1, self.n_classes + 1)),
            "class_names": self.class_names, "n_channels": self.n_channels, "ndim": 2,
            "architecture": arch, "config": self.config, "normalisation": self.normalisation.to_json(),
            "score_threshold": self.score_threshold, "nms_iou": self.nms_iou,
            "training": self.training, "metrics": self.metrics,
        }

    def save(self, path) -> Path:
        if self.arch == FOREST:
            if self.net is None:
                raise UserInputError("train the detector before saving it")
            return modelfile.save(path, self.metadata(), self.net.ensemble.arrays)
        from .weights import save_model_with_weights

        return save_model_with_weights(path, self, "detector")

    @classmethod
    def load(cls, path, device: str = "auto") -> Detector:
        meta, arrays, extra = modelfile.load(path, kinds=(KIND,))
        field = modelfile.field
        with modelfile.refused_if_damaged(path, "detector model"):
            arch = field(meta, "arch", str, choices=MODEL_ARCHS)
            names = [str(n) for n in field(meta, "class_names", list)]
            n_classes = len(field(meta, "classes", list))
            n_channels = field(meta, "n_channels", int, lo=1, hi=64)
            config = field(meta, "config", dict)
            net_arch = field(meta, "architecture", dict)
            self = cls(arch, names, pretrained="none",
                       normalisation=Normalisation.from_json(field(meta, "normalisation", dict)), device=device,
                       score_threshold=field(meta, "score_threshold", float, lo=0, hi=1),
                       nms_iou=field(meta, "nms_iou", float, lo=0, hi=1))
            if not 1 <= n_classes <= MAX_CLASSES:
                raise ValueError(f"{n_classes} classes")
            if arch == FOREST:
                self._load_forest(meta, arrays, path, n_channels, n_classes)
                return self
            if arch == "centernet":
                from .unet import UNet

                net = UNet.from_architecture(net_arch)  # bounded: refuses absurd sizes before allocating
                if (net.in_channels, net.ndim, net.n_classes) != (n_channels, 2, n_classes + 4):
                    raise ValueError("architecture does not match channels or classes")
                config = {"depth": net.depth, "base_channels": net.base_channels, "norm": net.norm,
                          "largest_object": float(config.get("largest_object", 64))}
                config["border"] = field(meta, "config.border", int, lo=0, hi=1024, optional=True, default=0)
            else:
                scale = field(meta, "architecture.scale", float, lo=0.25, hi=8)
                if net_arch.get("name") != arch or net_arch.get("n_classes") != n_classes \
                        or net_arch.get("in_channels") != n_channels:
                    raise ValueError("architecture does not match the detector's arch, channels or classes")
                from .tv_detectors import TorchvisionDetector

                net = TorchvisionDetector(arch, n_classes, n_channels, scale, None)
                largest = config.get("largest_object", 64)
                if not isinstance(largest, (int, float)) or not 0 < largest < 1e5:
                    raise ValueError("largest_object out of range")
                config = {"scale": scale, "largest_object": float(largest),
                          "pretrained_backbone": bool(config.get("pretrained_backbone", False)),
                          "border": field(meta, "config.border", int, lo=0, hi=1024, optional=True, default=0)}
            self.net, self.n_channels, self.config = net, n_channels, config
            self.class_names = class_names_for(names, n_classes)
            self.training = field(meta, "training", dict, optional=True, default={})
            self.metrics = field(meta, "metrics", dict, optional=True, default={})
        from .weights import load_weights_into

        load_weights_into(self.net, extra, path, "detector model")
        return self

    def _load_forest(self, meta, arrays, path, n_channels: int, n_classes: int):
        """The forest detector's part of load: its pixel classifier checked like a pixel model file's."""
        from ..core.box_regions import LEVELS, SPLITS
        from ..core.pixel_classifier import PixelClassifier

        field = modelfile.field
        forest = PixelClassifier.from_metadata(field(meta, "architecture.pixel_classifier", dict), arrays, path)
        if forest.n_channels != n_channels or forest.ndim != 2 or not 2 <= forest.n_classes <= n_classes + 1:
            raise ValueError("the forest does not match the detector's channels or classes")
        self.net, self.n_channels = forest, n_channels
        self.config = {"split": field(meta, "config.split", float, choices=SPLITS),
                       "level": field(meta, "config.level", float, choices=LEVELS),
                       "largest_object": field(meta, "config.largest_object", float, gt=0, hi=1e5)}
        self.class_names = class_names_for(self.class_names, n_classes)
        self.training = field(meta, "training", dict, optional=True, default={})
        self.metrics = field(meta, "metrics", dict, optional=True, default={})

    def describe_device(self) -> str:
        if self.arch == FOREST:
            return "CPU (random forest)"
        from .devices import describe, pick_device

        return describe(pick_device(self.device))
