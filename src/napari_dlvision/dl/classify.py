"""The image classifier: a network with its classes, input size, normalisation and file.

    clf = ImageClassifier("fast")
    for ev in train_classifier(clf, image_set): ...          # dl.classify_train
    prob = clf.predict_proba(images)                          # (N, K) from (N, H, W, C)
    clf.save("cifar.dlv"); clf = ImageClassifier.load("cifar.dlv")

Images are (N, H, W, C) arrays (uint8 or float) of the size and channel
count the model was trained on; normalisation is per channel with the
training set's mean and standard deviation (of values scaled to 0..1 for
uint8), stored in the model file. Prediction runs in batches, channels-last,
with the horizontal flip averaged in for models trained with flips.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core import modelfile
from ..core.classification import Prediction
from ..core.errors import UserInputError
from ..core.labels import class_names_for
from .classify_nets import ARCHS, DEFAULT_ARCH, build
from .devices import describe, pick_device, retry_on_oom

KIND = "image-classifier"
PREDICT_BATCH = 512


def scale_of(dtype) -> float:
    """Factor bringing raw values to about 0..1: 1/255 for 8-bit, 1/65535 for 16-bit, 1 for floats."""
    dtype = np.dtype(dtype)
    return 1 / 255 if dtype == np.uint8 else (1 / 65535 if dtype == np.uint16 else 1.0)


class ImageClassifier:
    KIND = KIND
    TASK = "images"
    OUTPUTS = ("classes",)
    MAIN_OUTPUT = "classes"
    OUTPUT_SUFFIXES = {"classes": ".csv"}

    def __init__(self, arch: str = DEFAULT_ARCH, width: int | None = None, class_names=None, device: str = "auto"):
        if arch not in ARCHS:
            raise UserInputError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
        self.arch, self.width = arch, width
        self.class_names = list(class_names or [])
        self.device = device
        self.net: torch.nn.Module | None = None
        self.size: tuple[int, int] | None = None
        self.n_channels: int | None = None
        self.ndim = 2
        self.mean = self.std = None  # per channel, of values scaled to 0..1
        self.input_scale = 1 / 255
        self.tta = False  # average the horizontal flip in at prediction
        self.training: dict = {}
        self.metrics: dict = {}

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def build(self, n_channels: int, size, n_classes: int):
        from .classify_nets import DEFAULT_WIDTH

        # The width actually used is stored, so a changed default never breaks old model files.
        self.width = DEFAULT_WIDTH[self.arch] if self.width is None else int(self.width)
        self.net = build(self.arch, n_channels, size, n_classes, self.width)
        self.n_channels, self.size = int(n_channels), (int(size[0]), int(size[1]))
        self.class_names = class_names_for(self.class_names, n_classes)
        return self.net

    # -- inputs -----------------------------------------------------------
    def set_normalisation(self, images: np.ndarray, sample: int = 10_000, seed: int = 0):
        """Per-channel mean and std of (a sample of) the training images."""
        self.input_scale = scale_of(images.dtype)
        rng = np.random.default_rng(seed)
        pick = images if len(images) <= sample else images[rng.choice(len(images), sample, replace=False)]
        x = pick.reshape(-1, pick.shape[-1]).astype(np.float64) * self.input_scale
        self.mean = x.mean(0).tolist()
        self.std = [max(float(s), 1e-6) for s in x.std(0)]

    def check_images(self, images) -> np.ndarray:
        """(N, H, W, C) array the model takes, or a UserInputError saying what it expects."""
        from ..data.image_sets import size_text

        if self.net is None:
            raise UserInputError("train or load a classifier first")
        x = np.asarray(images)
        if x.ndim == 3 and self.n_channels == 1:
            x = x[..., None]
        if x.ndim != 4 or x.shape[0] == 0:
            raise UserInputError(f"expected a stack of images (N, H, W, C), got shape {x.shape}")
        if x.dtype.kind not in "uif" or x.dtype == np.float16:
            raise UserInputError(f"images must hold numbers, got {x.dtype}")
        if x.shape[3] != self.n_channels or tuple(x.shape[1:3]) != tuple(self.size):
            raise UserInputError(f"the classifier takes {size_text(self.size, self.n_channels)} images; "
                                 f"these are {size_text(x.shape[1:3], x.shape[3])}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise UserInputError("the images hold NaN or infinite values")
        return x

    def to_tensor(self, images: np.ndarray, device) -> torch.Tensor:
        """Normalised float32 (N, C, H, W) channels-last tensor on `device`."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        return self.normalise(x)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(N, H, W, C) raw tensor -> normalised (N, C, H, W) float32, channels-last in memory."""
        mean = torch.tensor(self.mean, device=x.device)
        std = torch.tensor(self.std, device=x.device)
        x = (x.float() * self.input_scale - mean) / std
        return x.permute(0, 3, 1, 2)  # a view: NHWC memory is channels-last NCHW

    # -- prediction ---------------------------------------------------------
    def logits_to_proba(self, net, x: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(net(x).float(), dim=1)
        if self.tta:
            p = 0.5 * (p + torch.softmax(net(x.flip(3)).float(), dim=1))
        return p

    def iter_predict_proba(self, images, batch_size: int = PREDICT_BATCH, device=None, net=None, amp=True):
        """Yields (done, total, probabilities so far (N, K) float32); the last one is complete.

        amp: float16 on CUDA, bfloat16 on CPUs that have it natively (twice
        as fast; the class ranking is unchanged but for near-ties)."""
        from .loop import cpu_bf16_supported

        x = self.check_images(images) if net is None else images
        device = pick_device(self.device if device is None else device)
        dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        amp = amp and (device.type == "cuda" or (device.type == "cpu" and cpu_bf16_supported()))
        net = (self.net if net is None else net).to(device, memory_format=torch.channels_last)
        was = net.training
        net.eval()
        out = np.empty((len(x), self.n_classes), np.float32)
        try:
            start = 0
            while start < len(x):
                def run(bs):
                    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=amp):
                        stop = min(len(x), start + bs)
                        return stop, self.logits_to_proba(net, self.to_tensor(x[start:stop], device)).cpu().numpy()
                (stop, p), batch_size = retry_on_oom(run, batch_size, device=device)
                out[start:stop] = p
                start = stop
                yield start, len(x), out
        finally:
            net.train(was)

    def predict_proba(self, images, batch_size: int = PREDICT_BATCH, device=None, net=None, amp=True) -> np.ndarray:
        out = None
        for _, _, out in self.iter_predict_proba(images, batch_size, device, net, amp):
            pass
        return out

    def predict(self, images, **kw) -> Prediction:
        return Prediction(self.predict_proba(images, **kw))

    # -- model file ---------------------------------------------------------
    def metadata(self) -> dict:
        return {
            "kind": KIND,
            "classes": list(range(1, self.n_classes + 1)),
            "class_names": self.class_names,
            "n_channels": self.n_channels,
            "ndim": 2,
            "spacing": None,
            "architecture": {"arch": self.arch, "width": self.width},
            "input": {"height": self.size[0], "width": self.size[1], "scale": self.input_scale,
                      "mean": self.mean, "std": self.std, "test_time_flip": self.tta},
            "training": self.training,
            "metrics": self.metrics,
        }

    def save(self, path) -> Path:
        from .weights import save_model_with_weights

        return save_model_with_weights(path, self, "classifier")

    @classmethod
    def load(cls, path, device: str = "auto") -> ImageClassifier:
        from .weights import load_weights_into

        meta, _, extra = modelfile.load(path, kinds=(KIND,))
        field, numbers = modelfile.field, modelfile.number_list
        with modelfile.refused_if_damaged(path, "image classifier"):
            arch = field(meta, "architecture.arch", str, choices=tuple(ARCHS))
            width = field(meta, "architecture.width", int, lo=0, hi=4096, optional=True)
            n_ch = field(meta, "n_channels", int, lo=1, hi=64)
            size = (field(meta, "input.height", int, lo=4, hi=512), field(meta, "input.width", int, lo=4, hi=512))
            self = cls(arch, width, meta["class_names"], device=device)
            self.build(n_ch, size, len(meta["classes"]))  # bounded: refuses absurd sizes before allocating
            self.input_scale = field(meta, "input.scale", float, gt=0, hi=1)
            self.mean = numbers(meta, "input.mean", float, length=n_ch, lo=-1e6, hi=1e6)
            self.std = numbers(meta, "input.std", float, length=n_ch, gt=0, hi=1e6)
            self.tta = field(meta, "input.test_time_flip", bool, optional=True, default=False)
            self.training = field(meta, "training", dict, optional=True, default={})
            self.metrics = field(meta, "metrics", dict, optional=True, default={})
        load_weights_into(self.net, extra, path, "image classifier")
        return self

    def describe(self) -> str:
        from ..data.image_sets import size_text

        return (f"{ARCHS[self.arch]} for {size_text(self.size, self.n_channels)} images, "
                f"{self.n_classes} classes")

    def describe_device(self) -> str:
        return describe(pick_device(self.device))
