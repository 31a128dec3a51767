"""A plain U-Net for 2D and 3D images whose output has the input's size.

Inputs of any size work: the network pads the far end of each axis up to a
multiple of 2**depth (reflect, or replicate for tiny axes) and crops the
result back. Padding only at the far end keeps the pooling grid anchored at
pixel 0, so a tile whose origin is a multiple of 2**depth sees exactly the
grid the whole image sees; together with `halo(depth)` this makes tiled
prediction equal to whole-image prediction with norm "batch" (eval mode)
or "none". Group norm normalises over whatever extent it is given, so with
it tiled prediction only approximates whole-image prediction.
"""

from __future__ import annotations

from numbers import Integral

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import UserInputError

NORMS = ("batch", "group", "none")
# Bounds on the architecture, checked before anything is allocated: a model
# file is hostile until checked, and one asking for a huge network must be
# refused, not allowed to exhaust memory. The presets use depth 3-4 and 16-32
# channels; these leave ample room above them.
NDIMS = (2, 3)
MAX_DEPTH = 6
MAX_BASE_CHANNELS = 128
MAX_IN_CHANNELS = 64
MAX_CLASSES = 64
# Deep and wide together grow fast (channels double per level): the bounds
# above allow a 3D net of billions of weights, so the total is bounded too.
# 2**28 float32 weights = 1 GiB; the medium 3D preset has about 22 million.
MAX_PARAMETERS = 1 << 28

PRESETS = {
    "small": {"depth": 3, "base_channels": 16},
    "medium": {"depth": 4, "base_channels": 32},
}
DEFAULT_PRESET = "small"


def receptive_radius(depth: int, convs_per_block: int = 2) -> int:
    """Pixels on each side that can influence one output pixel (an upper bound).

    Each 3x3 conv at a level with stride j reaches j further; a 2x2 pool or
    2x2 transposed conv can shift the reach by up to one cell of its level.
    """
    r, j = 0, 1
    for _ in range(depth):  # encoder
        r += convs_per_block * j
        r += j  # pool cell
        j *= 2
    r += convs_per_block * j  # bottleneck
    for _ in range(depth):  # decoder
        j //= 2
        r += j  # up-sampling cell
        r += convs_per_block * j
    return r


def halo(depth: int) -> int:
    """Context per side for tiled prediction that equals whole-image prediction.

    The receptive radius rounded up to a multiple of 2**depth, so grown tiles
    stay on the pooling grid.
    """
    m = 2**depth
    return -(-receptive_radius(depth) // m) * m


def _norm(kind: str, ndim: int, channels: int) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm2d if ndim == 2 else nn.BatchNorm3d)(channels)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


class _Block(nn.Sequential):
    def __init__(self, ndim, c_in, c_out, norm):
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        bias = norm == "none"
        super().__init__(
            conv(c_in, c_out, 3, padding=1, bias=bias), _norm(norm, ndim, c_out), nn.ReLU(inplace=True),
            conv(c_out, c_out, 3, padding=1, bias=bias), _norm(norm, ndim, c_out), nn.ReLU(inplace=True),
        )


def _whole(name: str, value, lo: int, hi: int) -> int:
    # bool is an Integral too, and a float or string must not pass through int().
    if not isinstance(value, Integral) or isinstance(value, bool) or not lo <= value <= hi:
        raise UserInputError(f"U-Net {name} must be a whole number from {lo} to {hi}, got {value!r}")
    return int(value)


def check_architecture(ndim=2, in_channels=1, n_classes=2, depth=3, base_channels=16, norm="batch") -> dict:
    """The architecture with checked types and bounds, or UserInputError (a ValueError).

    Arithmetic only: nothing is allocated, so a hostile model file asking for
    1200 channels is refused at once.
    """
    if not isinstance(ndim, Integral) or isinstance(ndim, bool) or ndim not in NDIMS:
        raise UserInputError(f"U-Net ndim must be 2 or 3, got {ndim!r}")
    if not isinstance(norm, str) or norm not in NORMS:
        raise UserInputError(f"U-Net norm must be one of {', '.join(NORMS)}, got {norm!r}")
    arch = {
        "ndim": int(ndim),
        "in_channels": _whole("in_channels", in_channels, 1, MAX_IN_CHANNELS),
        "n_classes": _whole("n_classes", n_classes, 1, MAX_CLASSES),
        "depth": _whole("depth", depth, 1, MAX_DEPTH),
        "base_channels": _whole("base_channels", base_channels, 1, MAX_BASE_CHANNELS),
        "norm": norm,
    }
    n = count_parameters(**arch)
    if n > MAX_PARAMETERS:
        raise UserInputError(
            f"U-Net of depth {arch['depth']} with {arch['base_channels']} base channels in {arch['ndim']}D "
            f"would have {n:,} weights, more than the {MAX_PARAMETERS:,} allowed"
        )
    return arch


def count_parameters(ndim, in_channels, n_classes, depth, base_channels, norm) -> int:
    """Number of trainable parameters of UNet(...), computed without building it."""
    k, kt = 3**ndim, 2**ndim
    norm_params = 0 if norm == "none" else 2  # weight and bias per channel (batch and group)
    bias = 1 if norm == "none" else 0

    def block(c_in, c_out):
        return (c_in * c_out + c_out * c_out) * k + 2 * c_out * (bias + norm_params)

    ch = [base_channels * 2**level for level in range(depth + 1)]
    n = sum(block(in_channels if level == 0 else ch[level - 1], ch[level]) for level in range(depth))
    n += block(ch[depth - 1], ch[depth])
    n += sum(ch[level + 1] * ch[level] * kt + ch[level] for level in range(depth))  # up-sampling
    n += sum(block(2 * ch[level], ch[level]) for level in range(depth))
    return n + ch[0] * n_classes + n_classes  # head


class UNet(nn.Module):
    def __init__(self, ndim: int = 2, in_channels: int = 1, n_classes: int = 2, depth: int = 3,
                 base_channels: int = 16, norm: str = "batch"):
        super().__init__()
        arch = check_architecture(ndim, in_channels, n_classes, depth, base_channels, norm)
        ndim, in_channels, n_classes = arch["ndim"], arch["in_channels"], arch["n_classes"]
        depth, base_channels = arch["depth"], arch["base_channels"]
        self.ndim, self.in_channels, self.n_classes = int(ndim), int(in_channels), int(n_classes)
        self.depth, self.base_channels, self.norm = int(depth), int(base_channels), norm
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        up = nn.ConvTranspose2d if ndim == 2 else nn.ConvTranspose3d
        self.pool = (nn.MaxPool2d if ndim == 2 else nn.MaxPool3d)(2)
        ch = [base_channels * 2**level for level in range(depth + 1)]
        self.encoder = nn.ModuleList(
            _Block(ndim, in_channels if level == 0 else ch[level - 1], ch[level], norm) for level in range(depth)
        )
        self.bottleneck = _Block(ndim, ch[depth - 1], ch[depth], norm)
        self.upsample = nn.ModuleList(up(ch[level + 1], ch[level], 2, stride=2) for level in range(depth))
        self.decoder = nn.ModuleList(_Block(ndim, 2 * ch[level], ch[level], norm) for level in range(depth))
        self.head = conv(ch[0], n_classes, 1)

    @property
    def multiple(self) -> int:
        return 2**self.depth

    @property
    def halo(self) -> int:
        return halo(self.depth)

    def architecture(self) -> dict:
        return {
            "name": "unet", "ndim": self.ndim, "in_channels": self.in_channels, "n_classes": self.n_classes,
            "depth": self.depth, "base_channels": self.base_channels, "norm": self.norm,
        }

    @classmethod
    def from_architecture(cls, arch: dict) -> UNet:
        """Build from architecture() output (e.g. a model file's), checked before allocating."""
        if not isinstance(arch, dict):
            raise UserInputError(f"U-Net architecture must be a JSON object, got {type(arch).__name__}")
        if arch.get("name", "unet") != "unet":
            raise UserInputError(f"unknown network {arch.get('name')!r}; this version builds 'unet'")
        keys = ("ndim", "in_channels", "n_classes", "depth", "base_channels", "norm")
        missing = [k for k in keys if k not in arch]
        if missing:
            raise UserInputError(f"U-Net architecture lacks {', '.join(missing)}")
        return cls(**{k: arch[k] for k in keys})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[2:]
        pad = [(-s) % self.multiple for s in shape]
        if any(pad):
            mode = "reflect" if all(p < s for p, s in zip(pad, shape)) else "replicate"
            # F.pad lists the last axis first: (last_lo, last_hi, ..., first_lo, first_hi).
            x = F.pad(x, [v for p in reversed(pad) for v in (0, p)], mode=mode)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for level in reversed(range(self.depth)):
            x = self.upsample[level](x)
            x = self.decoder[level](torch.cat([skips[level], x], dim=1))
        x = self.head(x)
        if any(pad):
            x = x[(slice(None), slice(None)) + tuple(slice(0, s) for s in shape)]
        return x
