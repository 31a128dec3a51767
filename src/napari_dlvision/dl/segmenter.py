"""The deep pixel classifier: a U-Net with its classes, normalisation and file.

Like PixelClassifier (random forest) it maps an image to class
probabilities (K, *spatial) with probability channel k for class k + 1, and
exposes `ndim`, `n_channels`, `n_classes`, `spacing` and
`predict_proba(image, channel_axis, spacing)` so batch prediction and the
CLI can treat both kinds alike.

Two modes:
- "sparse": classes are the user's painted labels (1..K);
- "dense": trained from instance masks on three classes (1 background,
  2 interior, 3 boundary); `instances` seeds a watershed from the interior.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from ..core import modelfile
from ..core.errors import ModelFileError, UserInputError
from ..core.features import as_channels_first
from ..core.instances import instances_from_segmentation
from ..core.pixel_classifier import segmentation as _argmax_segmentation
from ..core.tiling import grid, grow
from . import PIXEL_UNET_KIND as KIND
from .devices import describe, free_memory, pick_device, retry_on_oom
from .targets import DENSE_CLASS_NAMES, Normalisation
from .unet import DEFAULT_PRESET, PRESETS, UNet
from .unet import halo as exact_halo

MODES = ("sparse", "dense")
CPU_PREDICT_BYTES = 1 << 30  # activation memory of one prediction tile on the CPU
BYTES_PER_VOXEL_PER_CHANNEL = 48  # measured peak of inference: 32-48 bytes per voxel and base channel


class UNetSegmenter:
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
        self.training: dict = {}  # settings of the last run and totals over all runs
        self.metrics: dict = {}

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
        names = self.class_names + [f"class {k}" for k in range(len(self.class_names) + 1, n_classes + 1)]
        self.class_names = names[:n_classes]
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

    def prepare(self, image, channel_axis=None, check=True) -> np.ndarray:
        """Validated, normalised (C, *spatial) float32 image."""
        img = as_channels_first(image, channel_axis)
        if check:
            self.check_compatible(img)
        return self.normalisation.apply(img)

    # -- prediction -------------------------------------------------------
    def tile_plan(self, shape, device, halo=None) -> tuple[tuple[int, ...], int]:
        """(tile shape, halo) for the device's memory.

        The whole image when it fits; else tiles on the pooling grid with the
        exact halo, as long as a tile's core can stay at least as wide as its
        halo. Where even that does not fit (big 3D volumes on a CPU) the halo
        is halved: results then differ from whole-image prediction by at most
        about 0.02 in probability near tile borders, instead of by nothing.
        """
        exact = halo is None
        halo = self.halo if halo is None else int(halo)
        free = free_memory(device)
        budget = CPU_PREDICT_BYTES if free is None else free // 3
        per_voxel = BYTES_PER_VOXEL_PER_CHANNEL * self.config["base_channels"]
        voxels = max(budget // per_voxel, 1)
        if math.prod(shape) <= voxels:
            return tuple(shape), halo
        m = self.net.multiple
        budget_edge = int(voxels ** (1 / len(shape)))
        if exact and budget_edge - 2 * halo < halo:
            halo = max(m, halo // 2 // m * m)
        edge = max((budget_edge - 2 * halo) // m * m, halo, m)
        return tuple(min(n, edge) for n in shape), halo

    def _grid(self, shape, tile_shape, halo):
        m = self.net.multiple
        # Tiles and halo on multiples of 2**depth: every grown tile starts on the pooling grid.
        tile_shape = tuple(min(n, -(-int(t) // m) * m) for n, t in zip(shape, tile_shape))
        halo = -(-int(halo) // m) * m
        return tile_shape, halo, grid(shape, tile_shape)

    def iter_predict(self, img_norm: np.ndarray, out: np.ndarray, tile_shape=None, halo=None, device=None):
        """Fill `out` (K, *spatial) with probabilities tile by tile; yields (done, total, core slices)."""
        device = pick_device(self.device if device is None else device)
        shape = img_norm.shape[1:]
        if tile_shape is None:
            tile_shape, halo = self.tile_plan(shape, device, halo)
        halo = self.halo if halo is None else halo
        tile_shape = tuple(tile_shape)
        if len(tile_shape) != len(shape):
            raise UserInputError(f"tile shape {tile_shape} does not fit a {len(shape)}D image")
        tile_shape, halo, tiles = self._grid(shape, tile_shape, halo)
        net = self.net.to(device)
        was_training = net.training
        net.eval()
        try:
            for n, core in enumerate(tiles, 1):
                outer, inner = grow(core, (halo,) * len(shape), shape)
                block = np.ascontiguousarray(img_norm[(slice(None),) + outer])

                with torch.inference_mode():
                    x = torch.from_numpy(block)[None].to(device)
                    p = torch.softmax(net(x).float(), dim=1)[0]
                    out[(slice(None),) + core] = p[(slice(None),) + inner].cpu().numpy()
                del x, p
                yield n, len(tiles), core
        finally:
            net.train(was_training)

    def predict_normalised(self, img_norm, tile_shape=None, halo=None, device=None) -> np.ndarray:
        out = np.empty((self.n_classes,) + img_norm.shape[1:], np.float32)
        for _ in self.iter_predict(img_norm, out, tile_shape, halo, device):
            pass
        return out

    def predict_proba(self, image, channel_axis=None, spacing=None, tile_shape=None, halo=None,
                      device=None) -> np.ndarray:
        """Probabilities (K, *spatial) float32; channel k is class k + 1.

        `spacing` is accepted for parity with PixelClassifier; the network
        itself works in pixels. Tiles use the exact halo unless `halo` is
        given, so the result equals whole-image prediction.
        """
        img = self.prepare(image, channel_axis)
        dev = pick_device(self.device if device is None else device)
        if tile_shape is None:
            # Out of memory on a big tile: halve the tile edge and start again.
            tiles, plan_halo = self.tile_plan(img.shape[1:], dev, halo)

            def run(ts):
                return self.predict_normalised(img, ts, plan_halo, dev)

            m = self.net.multiple

            def shrink(ts):
                i = max(range(len(ts)), key=lambda k: ts[k])
                if ts[i] <= m:
                    return None
                return ts[:i] + (max(m, ts[i] // 2 // m * m),) + ts[i + 1:]

            prob, _ = retry_on_oom(run, tiles, shrink=shrink, device=dev, what="tile shape")
            return prob
        return self.predict_normalised(img, tile_shape, halo, dev)

    def segmentation(self, prob: np.ndarray) -> np.ndarray:
        """Class ids 1..K of the most probable class (dense: 1 bg, 2 interior, 3 boundary)."""
        return _argmax_segmentation(prob)

    def predict(self, image, channel_axis=None, spacing=None) -> np.ndarray:
        return self.segmentation(self.predict_proba(image, channel_axis, spacing))

    def instances(self, prob: np.ndarray, spacing=None, foreground: int | None = None,
                  min_size: int = 8) -> np.ndarray:
        """Instance ids (int32, 0 = background) from probabilities.

        dense: seeds are connected regions of interior probability > 0.5,
        grown by watershed over the boundary probability inside the
        foreground (background probability < 0.5).
        sparse: the foreground class (default: the last) is split by
        core.instances' distance-transform watershed.
        """
        spacing = self.spacing if spacing is None else spacing
        if self.mode == "sparse":
            fg = self.n_classes if foreground is None else int(foreground)
            return instances_from_segmentation(self.segmentation(prob), fg, spacing=spacing, min_size=min_size)
        return dense_instances(prob, min_size=min_size)

    # -- model file -------------------------------------------------------
    def metadata(self) -> dict:
        return {
            "kind": KIND,
            "mode": self.mode,
            "preset": self.preset,
            "classes": list(range(1, self.n_classes + 1)),
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

    def state_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}, buf)
        return buf.getvalue()

    def save(self, path) -> Path:
        if self.net is None:
            raise UserInputError("train the U-Net before saving it")
        return modelfile.save(path, self.metadata(), {}, extra={"weights.pt": self.state_bytes()})

    @classmethod
    def load(cls, path, device: str = "auto") -> UNetSegmenter:
        meta, _, extra = modelfile.load(path, kinds=(KIND,))
        try:
            arch = meta["architecture"]
            self = cls(meta.get("preset", DEFAULT_PRESET), meta["mode"], meta["class_names"],
                       depth=arch["depth"], base_channels=arch["base_channels"], norm=arch["norm"],
                       normalisation=Normalisation.from_json(meta["normalisation"]), device=device)
            n_classes = len(meta["classes"])
            if (arch["in_channels"], arch["ndim"], arch["n_classes"]) != (meta["n_channels"], meta["ndim"], n_classes):
                raise ValueError("architecture does not match channels, dimensions or classes")
            self.build(int(meta["n_channels"]), int(meta["ndim"]), n_classes)
            self.class_names = list(meta["class_names"])
            self.spacing = meta.get("spacing")
            self.training = meta.get("training", {})
            self.metrics = meta.get("metrics", {})
        except (KeyError, TypeError, ValueError, UserInputError) as e:
            raise ModelFileError(f"{path} is a damaged U-Net model ({e})") from None
        if "weights.pt" not in extra:
            raise ModelFileError(f"{path} is a damaged U-Net model (no weights.pt inside)")
        try:
            state = torch.load(io.BytesIO(extra["weights.pt"]), weights_only=True, map_location="cpu")
            if not isinstance(state, dict):
                raise ValueError("weights.pt does not hold a state dict")
            self.net.load_state_dict(state, strict=True)
        except Exception as e:  # noqa: BLE001 - any failure here means a bad file
            raise ModelFileError(f"{path} holds damaged U-Net weights ({type(e).__name__}: {e})".strip()) from None
        self.net.eval()
        return self

    def describe_device(self) -> str:
        return describe(pick_device(self.device))


def dense_instances(prob: np.ndarray, min_size: int = 8, threshold: float = 0.5) -> np.ndarray:
    """Instances from (background, interior, boundary) probabilities."""
    from skimage.segmentation import watershed

    from ..core.instances import remove_small

    p_bg, p_in, p_bd = prob[0], prob[1], prob[2]
    fg = remove_small(p_bg < threshold, min_size)
    if not fg.any():
        return np.zeros(fg.shape, np.int32)
    seeds, _ = ndi.label((p_in > threshold) & fg)
    labels = watershed(p_bd, seeds, mask=fg)
    # Foreground without any interior seed is still an object.
    orphans, n = ndi.label(fg & (labels == 0))
    if n:
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    if min_size > 1:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        if small.any():
            labels[small[labels]] = 0
    return labels.astype(np.int32)
