"""Boxes in napari: reading Shapes or Labels layers, showing predictions, class colours.

Conversions between layers go through world coordinates, so boxes drawn
on a layer with another scale or translation than the image's land on the
right pixels. Output layers are made with `layers.show_output` and hold
rectangles with `class` (name) and `score` features, an edge colour per
class (the class table's swatch) and the score as text. The user's
annotation layer is written only when the user asks (Accept).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from napari.layers import Labels, Shapes

from ..core.boxes import BoxTable, boxes_from_labels, boxes_to_rectangles, class_ids_from_feature, shapes_to_boxes
from ..core.errors import UserInputError
from .layers import class_colour, find_output, show_output

EDGE_WIDTH = 2  # the user's boxes
PREDICTION_EDGE_WIDTH = 1
PREDICTION_FILL = 0.2  # alpha of the class colour inside predicted boxes


def data_to_world_matrix(layer) -> np.ndarray:
    """(D+1, D+1) affine from the layer's data to world coordinates, probed with D+1 points."""
    d = layer.ndim
    origin = np.asarray(layer.data_to_world(np.zeros(d)), float)
    m = np.eye(d + 1)
    for i in range(d):
        m[:d, i] = np.asarray(layer.data_to_world(np.eye(d)[i]), float) - origin
    m[:d, d] = origin
    return m


def layer_to_image(layer, image) -> np.ndarray | None:
    """Affine from `layer`'s data to `image`'s data coordinates (trailing axes), None when equal."""
    n = min(layer.ndim, image.ndim)
    a, b = data_to_world_matrix(layer), data_to_world_matrix(image)
    a = np.block([[a[-n - 1:-1, -n - 1:-1], a[-n - 1:-1, -1:]], [np.zeros((1, n)), np.ones((1, 1))]])
    b = np.block([[b[-n - 1:-1, -n - 1:-1], b[-n - 1:-1, -1:]], [np.zeros((1, n)), np.ones((1, 1))]])
    m = np.linalg.inv(b) @ a
    if np.allclose(m, np.eye(n + 1)):
        return None
    if layer.ndim > n:  # extra leading coordinates pass through unchanged
        full = np.eye(layer.ndim + 1)
        full[-n - 1:, -n - 1:] = m
        m = full
    return m


def is_stack(image) -> bool:
    """A 3D image layer is a stack of 2D planes to a detector (napari's ndim leaves out RGB)."""
    return image.ndim == 3


def boxes_from_layer(layer, image, class_names) -> tuple[BoxTable, list[str], list[str]]:
    """(boxes in the image's pixels, class names, notices) from a Shapes or an instance Labels layer."""
    stack = is_stack(image)
    if isinstance(layer, Labels):
        if layer.ndim != image.ndim or tuple(layer.data.shape) != tuple(image.data.shape[:image.ndim]):
            raise UserInputError(f"the labels {layer.name!r} have shape {layer.data.shape}; the image "
                                 f"{image.name!r} has {image.data.shape[:image.ndim]}")
        name = class_names[0] if class_names else "object"
        table = boxes_from_labels(np.asarray(layer.data), stack, name)
        return table, list(class_names) or [name], []
    if not isinstance(layer, Shapes):
        raise UserInputError("boxes come from a Shapes layer (rectangles) or an instance Labels layer")
    values = layer.features["class"].tolist() if "class" in layer.features else [None] * layer.nshapes
    ids, names = class_ids_from_feature(values, class_names)
    if layer.nshapes and layer.ndim < (3 if stack else 2):
        raise UserInputError(f"{layer.name!r} is {layer.ndim}D but {image.name!r} is a stack: draw boxes in a "
                             "3D Shapes layer (press New)")
    table, notes = shapes_to_boxes(layer.data, layer.shape_type, ids, names, stack, layer_to_image(layer, image))
    return table, names, notes


def class_colours(n: int) -> dict[int, np.ndarray]:
    """Edge colour of class k: the colour the class table shows for it."""
    return {k: class_colour(None, k) for k in range(1, n + 1)}


def new_boxes_layer(viewer, image, names) -> Shapes:
    """An empty Shapes layer for drawing boxes on `image` (3D for a stack), in rectangle mode."""
    n = image.ndim
    with warnings.catch_warnings():  # "class looks categorical": it is, and the cycle map below says so
        warnings.simplefilter("ignore", RuntimeWarning)
        layer = _add_boxes_layer(viewer, image, names, n)
    layer.edge_color_cycle_map = class_colours(max(2, len(names)))
    layer.current_edge_color = class_colour(None, 1)
    layer.mode = "add_rectangle"
    return layer


def _add_boxes_layer(viewer, image, names, n):
    return viewer.add_shapes(
        None, ndim=n, name=f"{image.name} boxes", scale=image.scale[-n:], translate=image.translate[-n:],
        features=pd.DataFrame({"class": np.zeros(0, np.int64)}), feature_defaults={"class": 1},
        edge_color="class", edge_color_cycle=list(class_colours(max(2, len(names))).values()),
        face_color="transparent", edge_width=EDGE_WIDTH)


def choose_class(layer, class_id: int):
    """The class the next drawn box gets (and, in select mode, the selected boxes get)."""
    if not isinstance(layer, Shapes):
        return
    if "class" in layer.features and layer.features["class"].dtype.kind in "iuf":
        layer.current_properties = {"class": np.array([class_id])}
    elif "class" in layer.features:
        layer.current_properties = {"class": np.array([str(class_id)])}
    else:
        layer.feature_defaults = {"class": class_id}
    if getattr(layer, "_edge_color_property", "") != "class":
        layer.current_edge_color = class_colour(None, class_id)
    else:
        layer.edge_color_cycle_map = {**layer.edge_color_cycle_map, class_id: class_colour(None, class_id)}


def box_counts(layer) -> dict[int, int]:
    """{class id: boxes} of a Shapes layer with a `class` feature of ids (the New layer's)."""
    if not isinstance(layer, Shapes) or "class" not in layer.features or layer.features["class"].dtype.kind not in "iu":
        return {1: layer.nshapes} if isinstance(layer, Shapes) and layer.nshapes else {}
    ids, n = np.unique(layer.features["class"].to_numpy(), return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, n) if i >= 1}


def show_boxes(viewer, key: str, table: BoxTable, image, keep_selected=None):
    """The output layer `key` showing `table` (rectangles, class and score features)."""
    rects = boxes_to_rectangles(table)  # the layer shares the image's scale and translation
    names = table.class_names
    classes = pd.Categorical(np.array(names, dtype=object)[table.classes - 1] if len(table) else [], categories=names)
    scores = table.scores if table.scores is not None else np.ones(len(table))
    features = pd.DataFrame({"class": classes, "score": scores})
    colours = {names[k - 1]: c for k, c in class_colours(len(names)).items()}
    # Predictions are filled faintly and edged thinner than the user's boxes (same class colours,
    # no fill), so the two tell apart where they overlap.
    fills = {name: np.r_[np.asarray(c, float)[:3], PREDICTION_FILL] for name, c in colours.items()}
    layer = find_output(viewer, key)
    if layer is None:
        n = image.ndim
        layer = show_output(viewer, key, rects, "shapes", like=image, keep_selected=keep_selected,
                            shape_type="rectangle", features=features, edge_color="class",
                            edge_color_cycle=list(colours.values()), face_color="class",
                            face_color_cycle=list(fills.values()), edge_width=PREDICTION_EDGE_WIDTH,
                            text={"string": "{score:.2f}", "size": 8, "color": "white", "anchor": "upper_left"},
                            ndim=n)
    else:
        layer.data = []
        if rects:
            layer.add_rectangles(np.asarray(rects), edge_width=PREDICTION_EDGE_WIDTH)
        layer.features = features
    layer.edge_color_cycle_map = colours
    layer.face_color_cycle_map = fills
    layer.refresh_colors(update_color_mapping=False)
    return layer


def accept_boxes(layer: Shapes, table: BoxTable, image, class_names, min_iou: float = 0.5) -> int:
    """Add predicted boxes to the user's annotation layer (asked for); those overlapping one there are skipped.

    Returns how many were added. Classes become the layer's ids (names via the class table).
    """
    from ..core.boxes import pairwise_iou

    existing, _, _ = boxes_from_layer(layer, image, class_names)
    table = table.renamed(class_names)
    if len(existing) and len(table):
        same_plane = np.ones((len(table), len(existing)), bool) if table.index is None else \
            table.index[:, None] == existing.index[None, :]
        overlap = (pairwise_iou(table.boxes, existing.boxes) * same_plane).max(axis=1) >= min_iou
        table = table.select(~overlap)
    if not len(table):
        return 0
    rects = boxes_to_rectangles(table, np.linalg.inv(m) if (m := layer_to_image(layer, image)) is not None else None)
    numeric = "class" not in layer.features or layer.features["class"].dtype.kind in "iuf"
    before = layer.nshapes
    defaults = layer.feature_defaults.copy() if "class" in layer.features else None
    layer.add_rectangles(np.asarray(rects), edge_width=EDGE_WIDTH)
    values = table.classes if numeric else np.array(table.class_names, dtype=object)[table.classes - 1]
    feats = layer.features.copy()
    if "class" not in feats:
        feats["class"] = 1
    feats.loc[before:, "class"] = values
    layer.features = feats
    if defaults is not None:
        layer.feature_defaults = defaults
    if getattr(layer, "_edge_color_property", "") == "class":
        layer.refresh_colors(update_color_mapping=False)
    return len(table)
