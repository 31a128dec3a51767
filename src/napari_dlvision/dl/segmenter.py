"""The deep pixel classifier: a U-Net with its classes, normalisation and file.

Like PixelClassifier (random forest) it maps an image to class
probabilities (K, *spatial) with probability channel k for class k + 1, and
exposes `ndim`, `n_channels`, `n_classes`, `class_names`, `spacing`,
`predict_proba(image, channel_axis, spacing)` and `instances(prob)`, so
batch prediction, the CLI and the widgets treat both kinds alike.

Two modes:
- "sparse": classes are the user's painted labels (1..K);
- "dense": trained from instance masks on three classes (1 background,
  2 interior, 3 boundary); `instances` seeds a watershed from the interior.
Training lives in `pixel_train`; this module only predicts and stores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core import modelfile
from ..core.errors import UserInputError
from ..core.events import Progress
from ..core.images import as_channels_first
from ..core.instances import instances_from_interior, instances_from_segmentation
from ..core.labels import class_names_for
from ..core.normalisation import Normalisation
from ..core.pixel_model import PixelModel
from ..core.probabilities import segmentation
from .devices import describe, pick_device
from .targets import DENSE_CLASS_NAMES
from .tiled import iter_tiled, plan_tiles
from .unet import DEFAULT_PRESET, PRESETS, UNet
from .unet import halo as exact_halo

KIND = "pixel-unet"
MODES = ("sparse", "dense")
BYTES_PER_VOXEL_PER_CHANNEL = 48  # measured peak of inference: 32-48 bytes per voxel and base channel


def softmax_over(classes: list[int] | None, n_classes: int):
    """Softmax over the channels of `classes` (1-based ids) only; the others get 0.

    Strokes with ids 5 and 9 make a 9-channel network whose channels 1-4 and
    6-8 never saw a labelled pixel: their logits are noise, and must not win.
    """
    if not classes or len(classes) == n_classes:
        return lambda y: torch.softmax(y, dim=1)
    absent = [k for k in range(n_classes) if k + 1 not in classes]

    def activation(y):
        y = y.clone()
        y[:, absent] = -torch.inf
        return torch.softmax(y, dim=1)

    return activation


class UNetSegmenter(PixelModel):
    KIND = KIND

    def __init__(self, preset: str = DEFAULT_PRESET, mode: str = "sparse", class_names=None,
                 depth: int | None = None, base_channels: int | None = None, norm: str = "batch",
                 normalisation: Normalisation | None = None, device: str = "auto"):
        if preset not in PRESETS:
            raise UserInputError(f"unknown U-Net preset {preset!r}; choose one of {', '.join(PRESETS)}")
        if mode not in MODES:
            raise UserInputError(f"mode must be 'sparse' or 'dense', got {mode!r}")
        arch = dict(PRESETS[preset])
        if depth is not None:
            arch["depth"] = int(depth)
        if base_channels is not None:
            arch["base_channels"] = int(base_channels)
        arch["norm"] = norm
        self.preset, self.mode = preset, mode
        self.config = arch  # depth, base_channels, norm: the rest follows from the data
        self.class_names = list(DENSE_CLASS_NAMES if mode == "dense" else (class_names or []))
        self.normalisation = normalisation or Normalisation()
        self.device = device  # preference for prediction; training names its own
        self.net: UNet | None = None
        self.n_channels = self.ndim = None
        self.spacing = None
        self.training: dict = {}  # report of the last run and totals over all runs
        self.metrics: dict = {}
        self.classes: list[int] | None = None  # class ids that had labelled pixels; None: all

    # -- shape of the model ----------------------------------------------
    @property
    def n_classes(self) -> int:
        return 0 if self.net is None else self.net.n_classes

    @property
    def halo(self) -> int:
        """Context per side that makes tiled prediction equal whole-image prediction."""
        return exact_halo(self.config["depth"])

    def build(self, n_channels: int, ndim: int, n_classes: int) -> UNet:
        """Create a fresh network (seed torch first for reproducible weights)."""
        self.net = UNet(ndim, n_channels, n_classes, self.config["depth"], self.config["base_channels"],
                        self.config["norm"])
        self.n_channels, self.ndim = int(n_channels), int(ndim)
        self.class_names = class_names_for(self.class_names, n_classes)
        return self.net

    def check_compatible(self, img_cf: np.ndarray) -> None:
        if self.net is None:
            raise UserInputError("the U-Net is not trained yet")
        n_ch, ndim = img_cf.shape[0], img_cf.ndim - 1
        if ndim != self.ndim:
            raise UserInputError(f"the U-Net was trained on {self.ndim}D images; this image is {ndim}D")
        if n_ch != self.n_channels:
            raise UserInputError(
                f"the U-Net was trained on {self.n_channels}-channel images; this image has {n_ch} channel(s)"
            )

    def check_shape(self, shape, channel_axis=None):
        """Raise a readable error unless an image of this shape fits the model (no data read)."""
        n_ch = 1 if channel_axis is None else shape[channel_axis]
        self.check_compatible(np.empty((n_ch,) + (2,) * (len(shape) - (channel_axis is not None)), np.float32))

    def prepare(self, image, channel_axis=None, check=True) -> np.ndarray:
        """Validated, normalised (C, *spatial) float32 image."""
        img = as_channels_first(image, channel_axis)
        if check:
            self.check_compatible(img)
        return self.normalisation.apply(img)

    # -- prediction -------------------------------------------------------
    @property
    def bytes_per_voxel(self) -> float:
        return BYTES_PER_VOXEL_PER_CHANNEL * self.config["base_channels"]

    def tile_plan(self, shape, device, halo=None):
        """(tile shape, halo) that fits the device's memory (see dl.tiled.plan_tiles).

        The exact halo unless even the smallest useful tile would not fit
        with it (big 3D volumes on a CPU); a halo given explicitly is kept."""
        return plan_tiles(shape, device, self.halo if halo is None else int(halo), self.net.multiple,
                          self.bytes_per_voxel, may_halve_halo=halo is None)

    def iter_predict(self, img_norm: np.ndarray, out: np.ndarray, tile_shape=None, halo=None, device=None,
                     net=None, report=None):
        """Fill `out` (K, *spatial) with probabilities tile by tile; yields (done, total, core slices).

        `net` overrides the stored network (training previews pass the
        weights being trained). Out-of-memory halves the tile and retries.
        """
        device = pick_device(self.device if device is None else device)
        net = (self.net if net is None else net).to(device)
        if tile_shape is None:
            tile_shape, plan_halo = self.tile_plan(img_norm.shape[1:], device, halo)
            halo = plan_halo
        yield from iter_tiled(net, img_norm, out, halo=self.halo if halo is None else int(halo),
                              multiple=self.net.multiple, device=device,
                              activation=softmax_over(self.classes, self.n_classes),
                              tile_shape=tile_shape, bytes_per_voxel=self.bytes_per_voxel, report=report)

    def predict_normalised(self, img_norm, tile_shape=None, halo=None, device=None, net=None) -> np.ndarray:
        out = np.empty((self.n_classes,) + img_norm.shape[1:], np.float32)
        for _ in self.iter_predict(img_norm, out, tile_shape, halo, device, net):
            pass
        return out

    def predict_proba(self, image, channel_axis=None, spacing=None, tile_shape=None, halo=None,
                      device=None) -> np.ndarray:
        """Probabilities (K, *spatial) float32; channel k is class k + 1.

        `spacing` is accepted for parity with PixelClassifier; the network
        itself works in pixels. Tiles use the exact halo unless `halo` is
        given, so the result equals whole-image prediction.
        """
        return self.predict_normalised(self.prepare(image, channel_axis), tile_shape, halo, device)

    def block_plan(self, image_cf, spacing=None):
        """How blocks of a larger-than-memory image are predicted (core.lazy):
        normalised with the whole image's percentiles, taken from the same
        subsample as in memory."""
        from ..core.lazy import BlockPlan, network_block_side, sampled_percentile_params

        self.check_compatible(np.empty((image_cf.shape[0],) + (2,) * (image_cf.ndim - 1), np.float32))
        params = sampled_percentile_params(self.normalisation, image_cf)
        side = network_block_side(self.ndim, self.halo, self.net.multiple, self.bytes_per_voxel)
        return BlockPlan((self.halo,) * self.ndim, self.n_classes, self.net.multiple, params, side)

    def block_function(self, params, spacing=None):
        from ..core.lazy import one_pass

        def block_proba(block):
            img = self.normalisation.apply(as_channels_first(block, 0), params)
            if one_pass(img.shape[1:], self.bytes_per_voxel):  # grown by the halo already
                return self.predict_normalised(img, tile_shape=img.shape[1:], halo=0)
            return self.predict_normalised(img)

        return block_proba

    def iter_predict_proba(self, image, channel_axis=None, spacing=None, focus=None):
        """Prediction as Progress events, for workers: each "predicting" event's
        payload holds the tile just done ("block") and the whole probability
        array being filled ("probabilities"). `focus` is accepted for parity
        with the forest; tiles run in plain order."""
        img = self.prepare(image, channel_axis)
        prob = np.empty((self.n_classes,) + img.shape[1:], np.float32)
        for done, total, core in self.iter_predict(img, prob):
            yield Progress("predicting", done, total, payload={"block": core, "probabilities": prob})

    def segmentation(self, prob: np.ndarray) -> np.ndarray:
        """Class ids 1..K of the most probable class (dense: 1 bg, 2 interior, 3 boundary)."""
        return segmentation(prob)

    def predict(self, image, channel_axis=None, spacing=None) -> np.ndarray:
        return self.segmentation(self.predict_proba(image, channel_axis, spacing))

    def instances(self, prob: np.ndarray, spacing=None, foreground: int | None = None,
                  min_size: int = 8) -> np.ndarray:
        """Instance ids (int32, 0 = background) from probabilities.

        dense: seeds from the interior class, grown over the boundary class;
        sparse: the foreground class (default: the last) split by
        core.instances' distance-transform watershed.
        """
        spacing = self.spacing if spacing is None else spacing
        if self.mode == "dense":
            if foreground not in (None, 2):
                raise UserInputError("a U-Net trained on instance masks finds objects of class 2 (interior) only")
            return instances_from_interior(prob[0], prob[1], prob[2], min_size=min_size)
        fg = self.n_classes if foreground is None else int(foreground)
        if not 1 <= fg <= self.n_classes:
            raise UserInputError(f"foreground class must be between 1 and {self.n_classes}, got {fg}")
        return instances_from_segmentation(self.segmentation(prob), fg, spacing=spacing, min_size=min_size)

    # -- model file -------------------------------------------------------
    def metadata(self) -> dict:
        return {
            "kind": KIND,
            "mode": self.mode,
            "preset": self.preset,
            "classes": list(range(1, self.n_classes + 1)),
            "painted_classes": self.classes,
            "class_names": self.class_names,
            "n_channels": self.n_channels,
            "ndim": self.ndim,
            "spacing": self.spacing,
            "architecture": self.net.architecture(),
            "halo": self.halo,
            "normalisation": self.normalisation.to_json(),
            "training": self.training,
            "metrics": self.metrics,
        }

    def save(self, path) -> Path:
        from .weights import save_model_with_weights

        return save_model_with_weights(path, self, "U-Net")

    @classmethod
    def load(cls, path, device: str = "auto") -> UNetSegmenter:
        from .weights import adopt_unet, load_weights_into

        meta, _, extra = modelfile.load(path, kinds=(KIND,))
        field = modelfile.field
        with modelfile.refused_if_damaged(path, "U-Net model"):
            mode = field(meta, "mode", str, choices=MODES)
            preset = field(meta, "preset", str, optional=True, default=DEFAULT_PRESET)
            self = cls(preset if preset in PRESETS else DEFAULT_PRESET, mode, meta["class_names"],
                       normalisation=Normalisation.from_json(field(meta, "normalisation", dict)), device=device)
            n_classes = len(meta["classes"])
            adopt_unet(self, meta, n_classes)
            if mode == "dense" and n_classes != 3:
                raise ValueError("a dense-mode U-Net has 3 classes")
            self.class_names = class_names_for(meta["class_names"], n_classes)
            painted = meta.get("painted_classes")
            if painted is not None:
                painted = modelfile.number_list(meta, "painted_classes", int, lo=1, hi=n_classes)
                if len(set(painted)) < 2:
                    raise ValueError("painted_classes must name at least two classes")
            self.classes = painted
        load_weights_into(self.net, extra, path, "U-Net model")
        return self

    def describe_device(self) -> str:
        return describe(pick_device(self.device))
