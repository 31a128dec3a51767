"""The project's own detector: a U-Net predicting object centres and box edges.

The U-Net (dl/unet.py) outputs, at full resolution, K centre heatmaps (one
per class) and 4 distances from each pixel's centre to the top, left,
bottom and right edges of the box it belongs to. Boxes are read at the
heatmap's local maxima. Targets and losses follow CenterNet (Zhou et al.
2019: a Gaussian peak per object, penalty-reduced focal loss) and TTFNet
(Liu et al. 2020: elliptical Gaussians shaped like the box, and box
regression trained at every pixel near the centre with a GIoU loss, which
makes training converge in few steps). Full resolution and a U-Net suit
microscopy: objects are small, many and close together.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

ALPHA = 0.54  # heatmap Gaussian: sigma = ALPHA * side / 6 (TTFNet)
BETA = 0.54  # regression area: the central BETA part of the box
DIST_SCALE = 8.0  # distances are exp(output) * DIST_SCALE pixels; output 0 reads 8 px
HEAT_PRIOR = 0.1  # initial heatmap probability (bias of the heatmap head)
GIOU_WEIGHT = 5.0


def init_head(net, n_classes: int):
    """Start the heatmaps near HEAT_PRIOR and the distances near DIST_SCALE."""
    with torch.no_grad():
        net.head.bias[:n_classes].fill_(-math.log((1 - HEAT_PRIOR) / HEAT_PRIOR))
        net.head.bias[n_classes:].zero_()
        net.head.weight[n_classes:].mul_(0.1)


# -- targets (numpy, per patch) ---------------------------------------------------
def _gaussian(h: float, w: float, cy: int, cx: int, shape, factor: float):
    """Elliptical Gaussian peaking at 1 on pixel (cy, cx), sigmas from the box's sides; and its window."""
    sy, sx = max(factor * h / 6, 0.35), max(factor * w / 6, 0.35)
    ry, rx = int(math.ceil(3 * sy)), int(math.ceil(3 * sx))
    y0, y1 = max(cy - ry, 0), min(cy + ry + 1, shape[0])
    x0, x1 = max(cx - rx, 0), min(cx + rx + 1, shape[1])
    yy = (np.arange(y0, y1) - cy)[:, None]
    xx = (np.arange(x0, x1) - cx)[None, :]
    g = np.exp(-(yy**2) / (2 * sy**2) - (xx**2) / (2 * sx**2)).astype(np.float32)
    return g, (slice(y0, y1), slice(x0, x1))


def make_targets(boxes, classes, ignore, n_classes: int, size: int):
    """Heatmaps (K, P, P), heat weight (P, P), distances (4, P, P), regression weight (P, P).

    The heat weight is 0 inside ignore boxes (objects the crop cut). Where
    objects overlap the smaller one owns the regression pixels.
    """
    heat = np.zeros((n_classes, size, size), np.float32)
    heat_w = np.ones((size, size), np.float32)
    dist = np.zeros((4, size, size), np.float32)
    reg_w = np.zeros((size, size), np.float32)
    for b in ignore:
        y0, x0 = int(math.floor(b[0])), int(math.floor(b[1]))
        heat_w[y0:int(math.ceil(b[2])), x0:int(math.ceil(b[3]))] = 0
    sides = boxes[:, 2:] - boxes[:, :2]
    order = np.argsort(-np.prod(sides, axis=1))  # large first: small objects overwrite
    centres = np.arange(size, dtype=np.float32) + 0.5
    for k in order:
        b, (h, w) = boxes[k], sides[k]
        cy = min(max(int(math.floor((b[0] + b[2]) / 2)), 0), size - 1)
        cx = min(max(int(math.floor((b[1] + b[3]) / 2)), 0), size - 1)
        g, win = _gaussian(h, w, cy, cx, (size, size), ALPHA)
        c = int(classes[k]) - 1
        heat[c][win] = np.maximum(heat[c][win], g)
        # A whole object next to a cut one is learnt even where their areas overlap.
        heat_w[win] = np.maximum(heat_w[win], (g > 0.01).astype(np.float32))
        gr, win = _gaussian(h, w, cy, cx, (size, size), BETA)
        ys, xs = centres[win[0]], centres[win[1]]
        inside = ((ys > b[0]) & (ys < b[2]))[:, None] & ((xs > b[1]) & (xs < b[3]))[None, :]
        gr = np.where(inside, gr, 0)
        total = gr.sum()
        if total <= 0:
            continue
        # Each object's weights sum to log(area): big objects count a little more, not area-times more.
        wgt = gr / total * math.log(max(h * w, 2.0))
        region = wgt > 0
        sub = (slice(None),) + win
        d = np.stack([np.broadcast_to((ys - b[0])[:, None], gr.shape), np.broadcast_to((xs - b[1])[None, :], gr.shape),
                      np.broadcast_to((b[2] - ys)[:, None], gr.shape), np.broadcast_to((b[3] - xs)[None, :], gr.shape)])
        dist[sub] = np.where(region, d, dist[sub])
        reg_w[win] = np.where(region, wgt, reg_w[win])
    return heat, heat_w, dist, reg_w


def batch_targets(xs, targets, n_classes: int):
    """The training batch of a BoxPatchSampler sample, with CenterNet targets."""
    size = xs.shape[-1]
    parts = [make_targets(b, c, ign, n_classes, size) for b, c, ign in targets]
    return (xs, np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]),
            np.stack([p[2] for p in parts]), np.stack([p[3] for p in parts]))


# -- loss (torch) ---------------------------------------------------------------------
def distances(raw: torch.Tensor) -> torch.Tensor:
    return torch.exp(raw.float().clamp(-6.0, 8.0)) * DIST_SCALE


def loss(out: torch.Tensor, heat, heat_w, dist, reg_w, n_classes: int) -> torch.Tensor:
    """Penalty-reduced focal loss on the heatmaps + weighted GIoU loss on the boxes."""
    from torchvision.ops import generalized_box_iou_loss

    logits = out[:, :n_classes].float()
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = heat.eq(1).float()
    w = heat_w[:, None]
    pos_loss = torch.log(p) * (1 - p) ** 2 * pos * w
    neg_loss = torch.log(1 - p) * p**2 * (1 - heat) ** 4 * (1 - pos) * w
    heat_loss = -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)
    mask = reg_w > 0
    if not mask.any():
        return heat_loss
    pred = distances(out[:, n_classes:n_classes + 4]).permute(0, 2, 3, 1)[mask]  # (n, 4): t, l, b, r
    true = dist.permute(0, 2, 3, 1)[mask]
    # Boxes relative to the pixel centre; IoU does not care where the origin is.
    pb = torch.cat([-pred[:, :2], pred[:, 2:]], dim=1)
    tb = torch.cat([-true[:, :2], true[:, 2:]], dim=1)
    weight = reg_w[mask]
    giou = generalized_box_iou_loss(pb, tb, reduction="none")
    return heat_loss + GIOU_WEIGHT * (giou * weight).sum() / weight.sum().clamp(min=1e-6)


# -- decoding (torch) -------------------------------------------------------------------
def decode(out: torch.Tensor, n_classes: int, min_score: float, max_boxes: int, core=None):
    """Boxes at the heatmap peaks of one network output (1, K + 4, H, W).

    Returns numpy (boxes (n, 4) in the output's pixel-edge coordinates,
    scores, classes 1..K). `core` ((y0, y1), (x0, x1)): keep only peaks
    there (tiles keep the peaks of their own core).
    """
    heat = torch.sigmoid(out[:, :n_classes].float())
    peaks = heat * (heat == F.max_pool2d(heat, 3, stride=1, padding=1))
    if core is not None:
        (y0, y1), (x0, x1) = core
        keep = torch.zeros_like(peaks)
        keep[..., y0:y1, x0:x1] = 1
        peaks = peaks * keep
    flat = peaks.reshape(-1)
    n = int(min(max_boxes, int((flat >= min_score).sum())))
    if n == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    scores, idx = torch.topk(flat, n)
    h, w = heat.shape[-2:]
    cls, rem = idx // (h * w), idx % (h * w)
    ys, xs = rem // w, rem % w
    d = distances(out[0, n_classes:n_classes + 4])[:, ys, xs]  # (4, n)
    cy, cx = ys.float() + 0.5, xs.float() + 0.5
    boxes = torch.stack([cy - d[0], cx - d[1], cy + d[2], cx + d[3]], dim=1)
    return boxes.cpu().numpy(), scores.cpu().numpy(), (cls + 1).cpu().numpy().astype(np.int64)
