"""Many small images shown as one mosaic of thumbnails, and strokes read back per image.

A Mosaic lays N tiles of h x w pixels on a grid with a gap; `assemble`
makes the picture (images, or the RGBA overlay of predictions) and
`labels_from_strokes` turns an annotation array painted over it (or over
a stack of the images) into one class per image: the class painted most on
that thumbnail, 0 where nothing is painted. Pure numpy: the widget shows
these arrays, the core never needs Qt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

GAP = 2
MAX_TILES = 2500  # thumbnails in one mosaic (50 x 50); bigger sets are browsed as a stack


@dataclass(frozen=True)
class Mosaic:
    n: int
    h: int
    w: int
    cols: int
    gap: int = GAP

    @classmethod
    def for_images(cls, n: int, h: int, w: int, gap: int = GAP) -> Mosaic:
        cols = max(1, math.ceil(math.sqrt(n * h / w)))  # about square on screen
        return cls(int(n), int(h), int(w), int(min(cols, n)), gap)

    @property
    def rows(self) -> int:
        return math.ceil(self.n / self.cols)

    @property
    def cell(self) -> tuple[int, int]:
        return self.h + self.gap, self.w + self.gap

    @property
    def shape(self) -> tuple[int, int]:
        ch, cw = self.cell
        return self.rows * ch, self.cols * cw

    def origin(self, i: int) -> tuple[int, int]:
        """Top-left pixel of thumbnail i."""
        ch, cw = self.cell
        return (i // self.cols) * ch, (i % self.cols) * cw

    def centre(self, i: int) -> tuple[float, float]:
        y, x = self.origin(i)
        return y + self.h / 2, x + self.w / 2

    def index_at(self, y: float, x: float) -> int | None:
        """The thumbnail under pixel (y, x), or None in a gap or outside."""
        ch, cw = self.cell
        r, c = int(y // ch), int(x // cw)
        if y < 0 or x < 0 or c >= self.cols or y - r * ch >= self.h or x - c * cw >= self.w:
            return None
        i = r * self.cols + c
        return i if i < self.n else None

    def assemble(self, tiles: np.ndarray, fill=0) -> np.ndarray:
        """(N, h, w[, C]) -> the mosaic (H, W[, C]) of the same dtype."""
        tiles = np.asarray(tiles)
        if tiles.shape[:3] != (self.n, self.h, self.w):
            raise ValueError(f"tiles of shape {tiles.shape} do not fit a mosaic of {self.n} x {self.h}x{self.w}")
        ch, cw = self.cell
        rest = tiles.shape[3:]
        grid = np.full((self.rows * self.cols, ch, cw) + rest, fill, tiles.dtype)
        grid[: self.n, : self.h, : self.w] = tiles
        grid = grid.reshape((self.rows, self.cols, ch, cw) + rest).swapaxes(1, 2)
        return grid.reshape((self.rows * ch, self.cols * cw) + rest)

    def cells(self, mosaic: np.ndarray) -> np.ndarray:
        """The mosaic cut back into (N, h + gap, w + gap) cells (a copy)."""
        ch, cw = self.cell
        a = np.asarray(mosaic)[: self.rows * ch, : self.cols * cw]
        a = a.reshape(self.rows, ch, self.cols, cw).swapaxes(1, 2).reshape(self.rows * self.cols, ch, cw)
        return a[: self.n]


def majority_labels(per_image: np.ndarray, max_class: int = 64) -> np.ndarray:
    """(N, ...) painted ids -> (N,) the id painted most per image (0: nothing painted)."""
    flat = np.asarray(per_image).reshape(len(per_image), -1)
    out = np.zeros(len(flat), np.int64)
    painted = np.flatnonzero((flat > 0).any(1))
    for i in painted:
        v = flat[i]
        counts = np.bincount(np.clip(v[v > 0], 0, max_class + 1).astype(np.int64), minlength=max_class + 2)
        counts[max_class + 1:] = 0  # ids beyond the classes are not classes
        out[i] = int(counts.argmax()) if counts.any() else 0
    return out


def labels_from_strokes(strokes: np.ndarray, mosaic: Mosaic | None = None) -> np.ndarray:
    """(N,) painted class per image: strokes over a mosaic, or over a stack (N, h, w)."""
    return majority_labels(mosaic.cells(strokes) if mosaic is not None else strokes)


def overlay_tiles(n: int, h: int, w: int, predicted: np.ndarray | None, scores: np.ndarray | None,
                  colours: np.ndarray, truth: np.ndarray | None = None, shown: np.ndarray | None = None,
                  frame: int = 1) -> np.ndarray:
    """(N, h, w, 4) uint8 RGBA drawn over each image.

    A frame in the predicted class's colour, a bar along the bottom as long
    as the confidence, a red corner where the prediction contradicts a known
    label (green where it agrees), and a dark veil over images the current
    filter hides (`shown` False).
    """
    out = np.zeros((n, h, w, 4), np.uint8)
    colours = (np.asarray(colours, float)[:, :3] * 255).astype(np.uint8)
    if predicted is not None:
        rgb = colours[np.clip(predicted, 0, len(colours) - 1)]
        for sl in (np.s_[:, :frame, :], np.s_[:, -frame:, :], np.s_[:, :, :frame], np.s_[:, :, -frame:]):
            out[(slice(None),) + sl[1:] + (slice(0, 3),)] = rgb[:, None, None]
            out[(slice(None),) + sl[1:] + (3,)] = 255
        if scores is not None:
            bar = np.arange(w)[None, :] < np.round(np.asarray(scores) * w)[:, None]  # (N, w)
            rows = slice(max(0, h - 1 - 2 * frame), h - frame)
            out[:, rows, :, :3] = np.where(bar[:, None, :, None], rgb[:, None, None], out[:, rows, :, :3])
            out[:, rows, :, 3] = np.where(bar[:, None, :], 255, out[:, rows, :, 3])
        if truth is not None:
            known = np.asarray(truth) >= 0
            right = known & (np.asarray(truth) == predicted)
            wrong = known & ~right
            k = max(2, min(h, w) // 5)
            out[wrong, :k, w - k:] = (230, 30, 30, 255)
            out[right, :k, w - k:] = (40, 200, 60, 255)
    if shown is not None:
        hidden = ~np.asarray(shown, bool)
        veil = out[hidden]
        veil[..., :3] //= 3
        veil[..., 3] = np.maximum(veil[..., 3], 190)
        out[hidden] = veil
    return out
