"""torchvision's detectors (BSD licensed), sized to the user's classes and objects.

    net = build("fcos-mobilenet", n_classes=2, in_channels=1, scale=1.5, pretrained="cache")

FCOS (anchor-free) and Faster R-CNN on a MobileNetV3-Large or ResNet-50
feature pyramid. Differences from torchvision's COCO set-up, for small
objects in microscopy images:
- feature maps from stride 8 (MobileNet) or 4 / 8 (ResNet-50), and anchors
  sized to those strides, not to street scenes;
- images are scaled by one fixed factor (`scale`, from the training boxes'
  sizes) instead of to 800 pixels, so tiles of any shape see objects at the
  size they trained on;
- grey images are repeated to the three channels the backbones expect.

Pretrained backbone weights (ImageNet) are used only when the user asks:
"cache" loads them if they already sit in torch's hub cache and never
downloads; "download" fetches them; "none" starts from random weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import UserInputError

from .detector_archs import PRETRAINED
from .detector_archs import TORCHVISION_ARCHS as ARCHS
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
INTERNAL_NMS = 0.8  # the detectors' own NMS is loose: the user's NMS IoU decides afterwards


def backbone_weights(backbone: str):
    from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights

    return {"mobilenet": MobileNet_V3_Large_Weights.IMAGENET1K_V1, "resnet50": ResNet50_Weights.IMAGENET1K_V1}[backbone]


def cached_weights_path(backbone: str) -> Path:
    """Where torch.hub keeps the ImageNet weights of this backbone (present or not)."""
    url = backbone_weights(backbone).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def pretrained_state(backbone: str, pretrained: str):
    """(state dict or None, note for the person)."""
    if pretrained not in PRETRAINED:
        raise UserInputError(f"pretrained must be one of {', '.join(PRETRAINED)}, got {pretrained!r}")
    if pretrained == "none":
        return None, "backbone from random weights"
    path = cached_weights_path(backbone)
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a broken cache file is the user's to fix
            raise UserInputError(f"cannot read the cached backbone weights {path}: {e}") from None
        return state, f"ImageNet backbone weights from {path}"
    if pretrained == "cache":
        return None, f"backbone from random weights (no ImageNet weights in {path.parent})"
    state = backbone_weights(backbone).get_state_dict(progress=False, check_hash=True)  # the user asked
    return state, "ImageNet backbone weights (downloaded)"


class FixedScaleTransform(nn.Module):
    """torchvision's GeneralizedRCNNTransform with one fixed scale factor instead of a target size."""

    def __init__(self, scale: float, mean, std):
        super().__init__()
        from torchvision.models.detection.transform import GeneralizedRCNNTransform

        self.inner = GeneralizedRCNNTransform(1, 1, mean, std)
        self.inner.resize = self._resize  # the rest (normalising, batching, undoing) stays torchvision's
        self.scale = float(scale)

    def _resize(self, image, target=None):
        from torchvision.models.detection.transform import resize_boxes

        if self.scale == 1.0:
            return image, target
        h, w = image.shape[-2:]
        image = F.interpolate(image[None], scale_factor=self.scale, mode="bilinear", recompute_scale_factor=True,
                              align_corners=False)[0]
        if target is not None:
            target = dict(target, boxes=resize_boxes(target["boxes"], (h, w), image.shape[-2:]))
        return image, target

    def forward(self, images, targets=None):
        return self.inner(images, targets)

    def postprocess(self, result, image_shapes, original_image_sizes):
        return self.inner.postprocess(result, image_shapes, original_image_sizes)


def _backbone(name: str, pretrained_state_dict, for_fcos: bool):
    """(feature pyramid, strides of its levels)."""
    from torchvision.models import mobilenet_v3_large, resnet50
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor
    from torchvision.ops import misc as misc_nn_ops
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

    trained = pretrained_state_dict is not None
    norm = misc_nn_ops.FrozenBatchNorm2d if trained else nn.BatchNorm2d
    if name == "mobilenet":
        body = mobilenet_v3_large(weights=None, norm_layer=norm)
        if trained:
            body.load_state_dict(pretrained_state_dict)
        # Stages 2, 3, 4 of MobileNetV3-Large sit at strides 8, 16, 32; a max-pool adds 64.
        fpn = _mobilenet_extractor(body, True, 6 if not trained else 3, returned_layers=[2, 3, 4],
                                   extra_blocks=LastLevelMaxPool())
        return fpn, (8, 16, 32, 64)
    body = resnet50(weights=None, norm_layer=norm)
    if trained:
        body.load_state_dict(pretrained_state_dict)
    layers = 5 if not trained else 3
    if for_fcos:
        fpn = _resnet_fpn_extractor(body, layers, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
        return fpn, (8, 16, 32, 64, 128)
    return _resnet_fpn_extractor(body, layers), (4, 8, 16, 32, 64)


class TorchvisionDetector(nn.Module):
    """One of torchvision's detectors behind the interface the training loop and tiling use.

    forward(x (B, C, H, W), targets) -> dict of losses (training) or a list of
    {"boxes" (x0, y0, x1, y1), "scores", "labels"} (eval), as torchvision's.
    """

    def __init__(self, arch: str, n_classes: int, in_channels: int, scale: float = 1.0,
                 pretrained_state_dict=None):
        super().__init__()
        if arch not in ARCHS:
            raise UserInputError(f"unknown detector architecture {arch!r}; choose one of {', '.join(ARCHS)}")
        if in_channels not in (1, 3):
            raise UserInputError(f"torchvision detectors take grey or RGB images; this one has {in_channels} "
                                 "channels (the centernet architecture takes any number)")
        if not 0.25 <= scale <= 8:
            raise UserInputError(f"detector scale must be between 0.25 and 8, got {scale}")
        from torchvision.models.detection import FCOS, FasterRCNN
        from torchvision.models.detection.anchor_utils import AnchorGenerator

        family, backbone = arch.split("-")
        self.arch, self.n_classes, self.in_channels, self.scale = arch, int(n_classes), int(in_channels), float(scale)
        fpn, strides = _backbone(backbone, pretrained_state_dict, family == "fcos")
        common = dict(min_size=1, max_size=1, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
        if family == "fcos":
            anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
            model = FCOS(fpn, self.n_classes + 1, anchor_generator=anchors, score_thresh=0.05,
                         nms_thresh=INTERNAL_NMS, detections_per_img=1000, topk_candidates=1000, **common)
        else:
            anchors = AnchorGenerator(tuple((2 * s, 4 * s) for s in strides), ((0.5, 1.0, 2.0),) * len(strides))
            model = FasterRCNN(fpn, self.n_classes + 1, rpn_anchor_generator=anchors, box_score_thresh=0.05,
                               box_nms_thresh=INTERNAL_NMS, box_detections_per_img=1000, **common)
        model.transform = FixedScaleTransform(scale, IMAGENET_MEAN, IMAGENET_STD)
        self.model = model

    def architecture(self) -> dict:
        return {"name": self.arch, "n_classes": self.n_classes, "in_channels": self.in_channels, "scale": self.scale}

    def forward(self, x, targets=None):
        images = list(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)
        if targets is None:
            return self.model(images)
        return self.model(images, targets)
