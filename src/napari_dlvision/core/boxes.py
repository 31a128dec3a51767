"""Boxes: the table every detector reads and writes, and its conversions (pure numpy).

Coordinates are pixel edges: a box (y0, x0, y1, x1) covers rows y0..y1-1 and
columns x0..x1-1 (y1 and x1 exclusive), so the box of a single pixel (r, c)
is (r, c, r + 1, c + 1). napari draws pixel r centred on coordinate r, so a
rectangle's corners sit half a pixel before and after: edge = napari + 0.5.

Classes are ids 1..K into `class_names` (0 is never a class), as in the
painted labels of the pixel classifiers. A stack of 2D images (the leading
axis of a 3D image) carries each box's plane in `index`.

CSV (`write` / `read_csv`): a header row, `y0,x0,y1,x1,class` with the class
name, `score` for predictions, a leading `index` column for stacks.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserInputError
from .io import atomic_output, check_file

COLUMNS = ("y0", "x0", "y1", "x1", "class")
DEFAULT_CLASS = "object"
MAX_CSV_BYTES = 512 << 20  # a CSV of boxes larger than this is not one
# Shape types that are taken as their bounding box, and those that have no area of their own.
AREA_SHAPES = ("rectangle", "ellipse", "polygon")
LINE_SHAPES = ("line", "path")


@dataclass
class BoxTable:
    boxes: np.ndarray  # (N, 4) float64: y0, x0, y1, x1 (pixel edges, y1/x1 exclusive)
    classes: np.ndarray  # (N,) int64, 1..K
    class_names: list[str] = field(default_factory=lambda: [DEFAULT_CLASS])
    scores: np.ndarray | None = None  # (N,) float64 in 0..1; None: ground truth
    index: np.ndarray | None = None  # (N,) int64 plane of a stack; None: one 2D image

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float64).reshape(-1, 4)
        n = len(self.boxes)
        self.classes = np.asarray(self.classes, np.int64).reshape(-1)
        if self.classes.shape != (n,):
            raise ValueError("one class per box")
        self.class_names = [str(c) for c in self.class_names]
        if n and (self.classes.min() < 1 or self.classes.max() > len(self.class_names)):
            raise ValueError("class ids must be 1..number of class names")
        if self.scores is not None:
            self.scores = np.asarray(self.scores, np.float64).reshape(-1)
            if self.scores.shape != (n,):
                raise ValueError("one score per box")
        if self.index is not None:
            self.index = np.asarray(self.index, np.int64).reshape(-1)
            if self.index.shape != (n,):
                raise ValueError("one plane index per box")

    # -- views ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def is_stack(self) -> bool:
        return self.index is not None

    @classmethod
    def empty(cls, class_names=(DEFAULT_CLASS,), scored=False, stack=False) -> BoxTable:
        return cls(np.zeros((0, 4)), np.zeros(0, np.int64), list(class_names),
                   np.zeros(0) if scored else None, np.zeros(0, np.int64) if stack else None)

    def select(self, keep) -> BoxTable:
        if not isinstance(keep, slice):
            keep = np.asarray(keep)
        return BoxTable(self.boxes[keep], self.classes[keep], list(self.class_names),
                        None if self.scores is None else self.scores[keep],
                        None if self.index is None else self.index[keep])

    def above(self, threshold: float) -> BoxTable:
        """Boxes scoring at least `threshold` (all of them when unscored)."""
        if self.scores is None:
            return self
        return self.select(self.scores >= threshold)

    def plane(self, i: int) -> BoxTable:
        """The boxes of plane `i` of a stack, as a table of one 2D image."""
        if self.index is None:
            raise ValueError("not a stack")
        t = self.select(self.index == int(i))
        t.index = None
        return t

    def with_index(self, i: int) -> BoxTable:
        t = self.select(slice(None))
        t.index = np.full(len(t), int(i), np.int64)
        return t

    @property
    def sizes(self) -> np.ndarray:
        """(N, 2) heights and widths."""
        return self.boxes[:, 2:] - self.boxes[:, :2]

    def renamed(self, names) -> BoxTable:
        """The same boxes with ids into `names`; names this table has and `names` lacks are appended."""
        names = [str(n) for n in names]
        out = list(names)
        for n in self.class_names:
            if n not in out:
                out.append(n)
        ids = np.array([0] + [out.index(n) + 1 for n in self.class_names], np.int64)
        t = self.select(slice(None))
        t.classes, t.class_names = ids[self.classes], out
        return t

    # -- CSV -------------------------------------------------------------------
    def columns(self) -> list[str]:
        cols = (["index"] if self.is_stack else []) + list(COLUMNS)
        return cols + (["score"] if self.scores is not None else [])

    def write(self, path) -> Path:
        """Write the CSV atomically (see the module docstring)."""
        path = Path(path)
        if path.suffix.lower() != ".csv":
            raise UserInputError(f"{path}: boxes are written as CSV; give a file name ending in .csv")
        with atomic_output(path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(self.columns())
                for i in range(len(self)):
                    row = [] if self.index is None else [int(self.index[i])]
                    row += [_number(v) for v in self.boxes[i]] + [self.class_names[self.classes[i] - 1]]
                    if self.scores is not None:
                        row.append(f"{self.scores[i]:.4f}")
                    w.writerow(row)
        return path

    @classmethod
    def read_csv(cls, path, class_names=None) -> BoxTable:
        """Read a boxes CSV; `class_names` fixes the order of known names (others follow)."""
        path = check_file(path, what="boxes CSV file")
        if path.stat().st_size > MAX_CSV_BYTES:
            raise UserInputError(f"{path} is too large for a boxes CSV")
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.reader(f))
        except (UnicodeDecodeError, csv.Error) as e:
            raise UserInputError(f"{path} is not a boxes CSV ({e})") from None
        rows = [r for r in rows if any(c.strip() for c in r)]
        if not rows:
            raise UserInputError(f"{path} is empty; a boxes CSV starts with the header {','.join(COLUMNS)}")
        header = [c.strip().lower() for c in rows[0]]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise UserInputError(f"{path}: the header lacks {', '.join(missing)} "
                                 f"(expected {','.join(COLUMNS)}[,score], with a leading index column for stacks)")
        col = {c: header.index(c) for c in header}
        stack, scored = "index" in col, "score" in col
        names = [str(n) for n in (class_names or [])]
        boxes, classes, scores, index = [], [], [], []
        for line, row in enumerate(rows[1:], 2):
            if len(row) != len(header):
                raise UserInputError(f"{path}, line {line}: {len(row)} fields, the header has {len(header)}")
            try:
                b = [float(row[col[c]]) for c in COLUMNS[:4]]
                s = float(row[col["score"]]) if scored else None
                k = _whole(row[col["index"]]) if stack else None
            except ValueError:
                raise UserInputError(f"{path}, line {line}: coordinates, score and index must be numbers") from None
            if not all(math.isfinite(v) for v in b) or (s is not None and not math.isfinite(s)):
                raise UserInputError(f"{path}, line {line}: coordinates and scores must be finite numbers")
            name = row[col["class"]].strip()
            if not name:
                raise UserInputError(f"{path}, line {line}: the class is empty")
            if not name.isprintable():  # a NUL or control character would travel into every output
                raise UserInputError(f"{path}, line {line}: the class name {name!r} holds control characters")
            if name not in names:
                names.append(name)
            boxes.append(b)
            classes.append(names.index(name) + 1)
            scores.append(s)
            index.append(k)
        return cls(np.array(boxes).reshape(-1, 4), np.array(classes, np.int64), names or [DEFAULT_CLASS],
                   np.array(scores, float) if scored else None, np.array(index, np.int64) if stack else None)


def _number(v: float) -> str:
    """Short decimal: whole pixels stay whole, sub-pixel positions keep two decimals."""
    text = f"{v:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _whole(text: str) -> int:
    v = float(text)
    if not v.is_integer() or v < 0:
        raise ValueError(text)
    return int(v)


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection over union of two sets of boxes (y0, x0, y1, x1)."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


# -- checks against an image ---------------------------------------------------
def clip_to_image(table: BoxTable, shape, n_planes: int | None = None) -> tuple[BoxTable, list[str]]:
    """Boxes clipped to an image of `shape` (H, W); those left without area dropped.

    Returns the table and notices for the person ("3 boxes clipped to the
    image", "2 boxes outside the image dropped"). Stacks: boxes on planes
    that do not exist are dropped too.
    """
    h, w = int(shape[0]), int(shape[1])
    b = table.boxes.copy()
    lo, hi = np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])  # corners in any order
    flipped = np.any(b[:, :2] > b[:, 2:], axis=1)
    b = np.concatenate([lo, hi], axis=1)
    clipped = np.clip(b, 0, [h, w, h, w])
    changed = np.any(clipped != b, axis=1)
    area = np.prod(clipped[:, 2:] - clipped[:, :2], axis=1)
    outside = np.any(b[:, 2:] <= 0, axis=1) | (b[:, 0] >= h) | (b[:, 1] >= w)
    keep = area > 0
    bad_plane = np.zeros(len(b), bool)
    if table.index is not None and n_planes is not None:
        bad_plane = (table.index < 0) | (table.index >= n_planes)
        keep &= ~bad_plane
    notes = []
    n_out = int(np.sum(outside & ~bad_plane))
    n_flat = int(np.sum(~keep & ~outside & ~bad_plane))
    n_clip = int(np.sum(changed & keep))
    if n_clip:
        notes.append(f"{n_clip} box{'es' if n_clip > 1 else ''} clipped to the image's edges")
    if n_out:
        notes.append(f"{n_out} box{'es' if n_out > 1 else ''} outside the image dropped")
    if n_flat:
        notes.append(f"{n_flat} box{'es' if n_flat > 1 else ''} without area (zero height or width) dropped")
    if bad_plane.any():
        notes.append(f"{int(bad_plane.sum())} boxes on planes the stack does not have (it has {n_planes}) dropped")
    if flipped[keep].any():
        notes.append(f"{int(flipped[keep].sum())} boxes given with corners swapped were put in order")
    out = table.select(keep)
    out.boxes = clipped[keep]
    return out, notes


# -- labels -> boxes --------------------------------------------------------------
def boxes_from_labels(labels, stack: bool = False, class_name: str = DEFAULT_CLASS) -> BoxTable:
    """One box per object of an instance labels image (2D, or a stack of 2D planes).

    Objects are label ids, as painted or segmented: an id used in two
    separate places gives one box around both. On a stack each plane's
    objects get their own boxes.
    """
    from scipy import ndimage as ndi

    lab = np.asarray(labels)
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise UserInputError("instance labels must be whole numbers")
    elif lab.dtype.kind not in "iub":
        raise UserInputError(f"instance labels must be integers, got dtype {lab.dtype}")
    if lab.ndim != (3 if stack else 2):
        raise UserInputError(f"instance labels must be {'3D (a stack)' if stack else '2D'}, got shape {lab.shape}")
    planes = lab if stack else lab[None]
    boxes, index = [], []
    for i, plane in enumerate(planes):
        ids, inverse = np.unique(plane, return_inverse=True)  # compact ids: find_objects sizes by the max
        inverse = inverse.reshape(plane.shape)
        start = 1 if ids[0] == 0 else 0
        if ids[0] < 0:
            raise UserInputError("instance labels must not be negative")
        compact = inverse + (1 - start)
        if start:
            compact[plane == 0] = 0
        for sl in ndi.find_objects(compact):
            if sl is not None:
                boxes.append([sl[0].start, sl[1].start, sl[0].stop, sl[1].stop])
                index.append(i)
    n = len(boxes)
    return BoxTable(np.array(boxes, float).reshape(-1, 4), np.ones(n, np.int64), [class_name],
                    index=np.array(index, np.int64) if stack else None)


# -- napari shapes <-> boxes ----------------------------------------------------------
def affine_apply(matrix, points: np.ndarray) -> np.ndarray:
    """Apply a (D+1, D+1) homogeneous affine matrix to (N, D) points."""
    m = np.asarray(matrix, float)
    p = np.asarray(points, float)
    return p @ m[:-1, :-1].T + m[:-1, -1]


def shapes_to_boxes(vertices, shape_types, classes, class_names, stack: bool = False,
                    to_image=None) -> tuple[BoxTable, list[str]]:
    """Boxes from napari shapes: each shape's bounding box in the image's pixels.

    `vertices`: one (n, D) array per shape in the shapes layer's data
    coordinates; `to_image`: a (D+1, D+1) affine matrix to the image's data
    coordinates (the layers' scale or translation differ), None when they
    agree. The last two coordinates are (y, x); on a stack the one before is
    the plane. `classes`: one class id (1..K) per shape. Lines and paths
    are taken as their bounding box too; shapes without area are dropped
    (clip_to_image tells), shapes spanning several planes are dropped with a
    notice.
    """
    notes = []
    n = len(vertices)
    classes = np.asarray(classes, np.int64).reshape(-1)
    if classes.shape != (n,):
        raise ValueError("one class per shape")
    boxes = np.zeros((n, 4))
    index = np.zeros(n, np.int64)
    keep = np.ones(n, bool)
    need = 3 if stack else 2
    for i, v in enumerate(vertices):
        v = np.asarray(v, float)
        if to_image is not None:
            v = affine_apply(to_image, v)
        if v.ndim != 2 or v.shape[1] < need:
            raise UserInputError(
                f"the boxes layer is {v.shape[-1]}D but the image is a stack: draw boxes in a 3D Shapes "
                "layer (press New)" if stack else f"shapes must have at least 2 coordinates, got {v.shape}")
        if stack:
            planes = np.round(v[:, -3])
            if planes.min() != planes.max():
                keep[i] = False
                continue
            index[i] = int(planes[0])
        yx = v[:, -2:] + 0.5  # napari pixel centres -> pixel edges
        boxes[i] = [*yx.min(axis=0), *yx.max(axis=0)]
    lines = sum(1 for t in shape_types if t in LINE_SHAPES)
    if lines:
        notes.append(f"{lines} line{'s' if lines > 1 else ''} or path{'s' if lines > 1 else ''} taken as "
                     "their bounding boxes (draw rectangles)")
    if not keep.all():
        notes.append(f"{int((~keep).sum())} shapes spanning several planes dropped")
    table = BoxTable(boxes[keep], classes[keep], list(class_names), index=index[keep] if stack else None)
    return table, notes


def boxes_to_rectangles(table: BoxTable, from_image=None) -> list[np.ndarray]:
    """napari rectangles (4 corners each, in the order napari draws them) for the boxes.

    Coordinates are the image's data coordinates (pixel centres), with the
    plane first for stacks; `from_image` maps them to the shapes layer's.
    """
    b = table.boxes - 0.5
    corners = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [2, 3]], b[:, [0, 3]]], axis=1)  # (N, 4, 2)
    if table.index is not None:
        planes = np.broadcast_to(table.index[:, None, None].astype(float), (len(b), 4, 1))
        corners = np.concatenate([planes, corners], axis=2)
    if from_image is not None:
        corners = affine_apply(from_image, corners.reshape(-1, corners.shape[-1])).reshape(corners.shape)
    return list(corners)


def class_ids_from_feature(values, names) -> tuple[np.ndarray, list[str]]:
    """Class ids (1..K) from a shapes layer's `class` feature: ids or names.

    Whole numbers are ids; text is a class name (new names are appended to
    `names`); missing values are class 1. Returns (ids, names).
    """
    names = [str(n) for n in names] or [DEFAULT_CLASS]
    ids = np.ones(len(values), np.int64)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if isinstance(v, (bool, np.bool_)):
            raise UserInputError(f"class {v!r} is neither a class id nor a name")
        if isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer()):
            k = int(v)
            if k < 1:
                raise UserInputError(f"class ids start at 1, a box has class {k}")
            while len(names) < k:
                names.append(f"class {len(names) + 1}")
            ids[i] = k
            continue
        text = str(v).strip()
        if text.isdigit():
            ids[i] = max(1, int(text))
            while len(names) < ids[i]:
                names.append(f"class {len(names) + 1}")
            continue
        if text not in names:
            names.append(text)
        ids[i] = names.index(text) + 1
    return ids, names
