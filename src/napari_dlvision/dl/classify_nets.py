"""The image-classification networks, from logistic regression to ResNet-18.

The progression of the course this plugin follows, all trained from
scratch on small images (CIFAR-10's 32 x 32), plus `fast`, the default,
tuned for accuracy per second: a small residual-free VGG-like net in the
manner of the fastest published CIFAR-10 recipes (conv - pool - batch norm
- GELU blocks of growing width, a max-pooled head with a scaled linear
layer), trained with label smoothing, a one-cycle schedule and flip /
translate augmentation, and evaluated with test-time flip.

Every network takes normalised (N, C, H, W) float tensors and returns
(N, K) logits. `build(arch, n_channels, size, n_classes, width)` makes one
from the few numbers a model file stores (see `architecture()`), bounded so
a hostile file cannot ask for a huge allocation.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import UserInputError

# name -> what people call it (the widget's and the CLI's choices, in course order)
ARCHS = {
    "fast": "fast residual-free CNN (default: accuracy per second)",
    "logreg": "logistic regression on pixels",
    "mlp": "MLP on pixels (2 hidden layers)",
    "filters-mlp": "MLP on preset filters (raw, Gaussian, Laplacian)",
    "cnn": "simple CNN (3 conv blocks)",
    "cnn-bn": "CNN with batch norm (3 conv blocks)",
    "resnet18": "ResNet-18 adapted to small images",
}
DEFAULT_ARCH = "fast"
# Networks whose training uses flip/translate augmentation by default; the
# pixel-input models of the course are trained without, as recorded there.
AUGMENTED = ("fast", "cnn-bn", "resnet18")
MAX_SIZE = 512  # image edge a classifier may take
MAX_PARAMETERS = 60_000_000


class FilterBank(nn.Module):
    """Fixed filters per channel: raw, Gaussian (sigma 1) and Laplacian of it (not trained)."""

    def __init__(self, n_channels: int, sigma: float = 1.0):
        super().__init__()
        r = int(math.ceil(3 * sigma))
        x = torch.arange(-r, r + 1, dtype=torch.float32)
        g = torch.exp(-x**2 / (2 * sigma**2))
        g = g / g.sum()
        gauss = g[:, None] * g[None, :]
        d2 = (x**2 / sigma**4 - 1 / sigma**2) * g  # second derivative of the 1D Gaussian
        log = d2[:, None] * g[None, :] + g[:, None] * d2[None, :]
        log = log - log.mean()  # zero response on flat regions
        ident = torch.zeros_like(gauss)
        ident[r, r] = 1.0
        bank = torch.stack([ident, gauss, log])  # (3, k, k)
        self.n_channels, self.pad = n_channels, r
        # Buffers, not parameters: the optimiser never sees them; saved with the weights.
        self.register_buffer("weight", bank[:, None].repeat(n_channels, 1, 1, 1))

    def forward(self, x):
        x = F.pad(x, (self.pad,) * 4, mode="reflect")
        return F.conv2d(x, self.weight, groups=self.n_channels)


def _conv_block(cin, cout, bn: bool):
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    return layers


def simple_cnn(n_channels, size, n_classes, width, bn):
    h, w_ = size
    w = (width, 2 * width, 4 * width)
    layers = []
    cin = n_channels
    for c in w:
        layers += _conv_block(cin, c, bn)
        cin = c
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(cin * (h // 8) * (w_ // 8), 8 * width), nn.ReLU(inplace=True),
                         nn.Dropout(0.25), nn.Linear(8 * width, n_classes))


class Mul(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


def _fast_block(cin, cout):
    # conv -> pool -> BN -> GELU -> conv -> BN -> GELU: pooling early halves the second conv's work.
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2),
        nn.BatchNorm2d(cout, momentum=0.4), nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout, momentum=0.4), nn.GELU(),
    )


def fast_net(n_channels, size, n_classes, width):
    """width w: stem 2x2 conv to w/2 channels, blocks of w, 4w, 4w channels (airbench-like at w=64)."""
    w = (width, 4 * width, 4 * width)
    stem = max(8, width // 2)
    return nn.Sequential(
        nn.Conv2d(n_channels, stem, 2, padding=0, bias=True), nn.GELU(),
        _fast_block(stem, w[0]), _fast_block(w[0], w[1]), _fast_block(w[1], w[2]),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(w[2], n_classes, bias=False), Mul(1 / 9),
    )


def resnet18(n_channels, n_classes, width):
    """torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool, for 32 x 32 inputs."""
    from torchvision.models.resnet import BasicBlock, ResNet

    net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=n_classes, width_per_group=64)
    if width != 64:  # narrower variants for CPUs: rebuild with scaled planes
        net = _scaled_resnet(width, n_classes)
    net.conv1 = nn.Conv2d(n_channels, net.conv1.out_channels, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    return net


def _scaled_resnet(width, n_classes):
    from torchvision.models.resnet import BasicBlock, ResNet

    class Narrow(ResNet):
        def __init__(self):
            nn.Module.__init__(self)
            # ResNet.__init__ hard-codes 64 planes; replicate its layout at `width`.
            self._norm_layer = nn.BatchNorm2d
            self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.Identity()
            self.layer1 = self._make_layer(BasicBlock, width, 2)
            self.layer2 = self._make_layer(BasicBlock, 2 * width, 2, stride=2)
            self.layer3 = self._make_layer(BasicBlock, 4 * width, 2, stride=2)
            self.layer4 = self._make_layer(BasicBlock, 8 * width, 2, stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8 * width, n_classes)

    return Narrow()


DEFAULT_WIDTH = {"fast": 16, "cnn": 32, "cnn-bn": 32, "resnet18": 64, "mlp": 512, "filters-mlp": 512,
                 "logreg": 0}


def build(arch: str, n_channels: int, size: tuple[int, int], n_classes: int, width: int | None = None) -> nn.Module:
    """A fresh network; raises UserInputError for unknown or absurd settings (before allocating)."""
    if arch not in ARCHS:
        raise UserInputError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    width = DEFAULT_WIDTH[arch] if width is None else int(width)
    h, w = (int(v) for v in size)
    if not (1 <= n_channels <= 64 and 2 <= n_classes <= 1000 and 4 <= h <= MAX_SIZE and 4 <= w <= MAX_SIZE):
        raise UserInputError(f"cannot build a classifier for {n_channels} channels, {h}x{w} images, "
                             f"{n_classes} classes")
    if arch != "logreg" and not 4 <= width <= 4096:
        raise UserInputError(f"width must be 4..4096, got {width}")
    if arch in ("cnn", "cnn-bn") and min(h, w) < 8:
        raise UserInputError("the CNNs need images of at least 8 x 8 pixels")
    if arch == "fast" and min(h, w) < 9:  # its four halvings leave nothing of smaller images
        raise UserInputError(f"the fast CNN needs images of at least 9 x 9 pixels, got {h}x{w}; "
                             "choose cnn (from 8 x 8), mlp or logreg for smaller ones")
    d = n_channels * h * w
    estimate = {
        "logreg": d * n_classes, "mlp": d * width + width * width // 2,
        "filters-mlp": 3 * d * width + width * width // 2,
        "cnn": (h // 8) * (w // 8) * 4 * width * 8 * width + 30 * width * width,
        "cnn-bn": (h // 8) * (w // 8) * 4 * width * 8 * width + 30 * width * width,
        "fast": 330 * width * width, "resnet18": 2700 * width * width,
    }[arch]
    if estimate > MAX_PARAMETERS:
        raise UserInputError(f"a {arch} of width {width} on {h}x{w}x{n_channels} images would have about "
                             f"{estimate / 1e6:.0f} million parameters (at most {MAX_PARAMETERS / 1e6:.0f})")
    if arch == "logreg":
        net = nn.Sequential(nn.Flatten(), nn.Linear(d, n_classes))
    elif arch == "mlp":
        net = nn.Sequential(nn.Flatten(), nn.Linear(d, width), nn.ReLU(inplace=True),
                            nn.Linear(width, width // 2), nn.ReLU(inplace=True), nn.Linear(width // 2, n_classes))
    elif arch == "filters-mlp":
        net = nn.Sequential(FilterBank(n_channels), nn.Flatten(), nn.Linear(3 * d, width), nn.ReLU(inplace=True),
                            nn.Linear(width, width // 2), nn.ReLU(inplace=True), nn.Linear(width // 2, n_classes))
    elif arch in ("cnn", "cnn-bn"):
        net = simple_cnn(n_channels, (h, w), n_classes, width, arch == "cnn-bn")
    elif arch == "fast":
        net = fast_net(n_channels, (h, w), n_classes, width)
    else:
        net = resnet18(n_channels, n_classes, width)
        if width != 64:
            net.conv1 = nn.Conv2d(n_channels, width, 3, 1, 1, bias=False)
    return net


def n_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
