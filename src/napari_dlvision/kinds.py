"""The model kinds this package knows: one registry entry per kind.

A model file's JSON names its `kind`; everything that loads, describes,
applies or trains a model goes through this table, so a new kind is one
`register(Kind(...))` here plus its own modules (see docs/architecture.md).
The registry is torch-free: implementations are named by import path and
imported only when a model of that kind is used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

# What a model maps an input to; decides outputs, file writers and widgets.
PIXELS = "pixels"  # image -> class probabilities per pixel (segmentation)
IMAGES = "images"  # image -> one class per image (classification)
BOXES = "boxes"  # image -> scored boxes (detection)
IMAGE_TO_IMAGE = "image-to-image"  # image -> image (denoising)
TASKS = (PIXELS, IMAGES, BOXES, IMAGE_TO_IMAGE)


@dataclass(frozen=True)
class Kind:
    name: str  # as written in model files, e.g. "pixel-random-forest"
    command: str  # `dlvision train <command>`
    task: str
    title: str  # what people call it
    implementation: str  # "module:Class" with load(path, device=...), save(path), metadata()
    cli: str  # module with add_arguments(parser) and run(args); must not import torch at import
    uses_torch: bool = False

    @property
    def a_title(self) -> str:
        """The title in a sentence: "an image classifier", "a deep pixel classifier (U-Net)"."""
        return f"{'an' if self.title[0].lower() in 'aeio' else 'a'} {self.title[0].lower()}{self.title[1:]}"

    def model_class(self):
        module, _, name = self.implementation.partition(":")
        return getattr(importlib.import_module(module), name)

    def load(self, path, device: str = "auto"):
        return self.model_class().load(path, device=device)


KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    if kind.task not in TASKS:
        raise ValueError(f"unknown task {kind.task!r}")
    if kind.name in KINDS or any(k.command == kind.command for k in KINDS.values()):
        raise ValueError(f"model kind {kind.name!r} (command {kind.command!r}) is already registered")
    KINDS[kind.name] = kind
    return kind


register(Kind(
    "pixel-random-forest", "rf", PIXELS, "Pixel classifier (random forest)",
    "napari_dlvision.core.pixel_classifier:PixelClassifier", "napari_dlvision.cli.train_rf",
))
register(Kind(
    "pixel-unet", "unet", PIXELS, "Deep pixel classifier (U-Net)",
    "napari_dlvision.dl.segmenter:UNetSegmenter", "napari_dlvision.cli.train_unet", uses_torch=True,
))
register(Kind(
    "image-classifier", "classifier", IMAGES, "Image classifier",
    "napari_dlvision.dl.classify:ImageClassifier", "napari_dlvision.cli.train_classifier", uses_torch=True,
))
register(Kind(
    "object-detector", "detector", BOXES, "Object detector (boxes)",
    "napari_dlvision.dl.detector:Detector", "napari_dlvision.cli.train_detector", uses_torch=True,
))
register(Kind(
    "denoiser", "denoiser", IMAGE_TO_IMAGE, "Denoiser (Noise2Void, Noise2Noise, supervised)",
    "napari_dlvision.dl.denoise:Denoiser", "napari_dlvision.cli.train_denoiser", uses_torch=True,
))


def get(name) -> Kind:
    from .core.errors import ModelFileError

    if not isinstance(name, str) or name not in KINDS:
        known = ", ".join(sorted(KINDS))
        raise ModelFileError(f"unknown model kind {name!r}; this version knows {known}")
    return KINDS[name]


def kind_of(path) -> Kind:
    """The registered kind of a model file, from its validated JSON alone."""
    from .core.errors import ModelFileError
    from .core.modelfile import read_metadata

    # Naming the known kinds makes a file of another kind fail on its kind,
    # before fields that kind may not have.
    meta = read_metadata(path, kinds=tuple(KINDS))
    try:
        return get(meta.get("kind"))
    except ModelFileError as e:
        raise ModelFileError(f"{path}: {e}") from None


def load_model(path, device: str = "auto"):
    """Load any model file this package writes, whatever its kind."""
    return kind_of(path).load(path, device=device)
