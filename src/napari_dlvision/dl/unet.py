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

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "group", "none")

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


class UNet(nn.Module):
    def __init__(self, ndim: int = 2, in_channels: int = 1, n_classes: int = 2, depth: int = 3,
                 base_channels: int = 16, norm: str = "batch"):
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if not (1 <= depth <= 6) or base_channels < 1 or in_channels < 1 or n_classes < 1:
            raise ValueError("depth must be 1..6 and channel counts positive")
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
        keys = ("ndim", "in_channels", "n_classes", "depth", "base_channels", "norm")
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
