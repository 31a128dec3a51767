"""Reading napari layers for the core, and writing results into output layers.

Output layers are created through `show_output` with their type said
explicitly; each carries a tag in `layer.metadata`, so the plugin only ever
updates layers it made (a user's layer that happens to share a name is never
touched) and finds its layers again even after the user renamed them.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import numpy as np
from napari.layers import Image, Labels

from ..core.errors import UserInputError

OUTPUT_TAG = "napari_dlvision_output"  # layer.metadata key marking layers we made
LAYER_TYPES = ("labels", "image", "shapes")


def image_input(image: Image):
    """(data, channel_axis, spacing) of an image layer, as the core wants them.

    RGB(A) layers carry channels last; the voxel size comes from the layer's
    scale and is None when isotropic. The data is not copied or converted
    here: that happens in the worker.
    """
    if image.multiscale:
        raise UserInputError(
            f"{image.name!r} is a multiscale image; open its full-resolution level as a plain layer")
    data = image.data
    axis = -1 if image.rgb else None
    spatial = data.ndim - (1 if image.rgb else 0)
    spacing = tuple(float(s) for s in image.scale[-spatial:])
    return data, axis, (None if len(set(spacing)) == 1 else spacing)


def spatial_shape(image: Image) -> tuple[int, ...]:
    shape = image.data.shape
    return tuple(shape[:-1] if image.rgb else shape)


def visible_box(viewer, image: Image, shape):
    """Box of data pixels on screen, (start, stop) per axis; None when unknown."""
    try:
        canvas = getattr(viewer, "canvas", None)  # napari >= 0.6
        size = np.asarray(canvas.size if canvas is not None else viewer._canvas_size, float)
        zoom = float(viewer.camera.zoom)
        centre = np.asarray(viewer.camera.center)[-2:]
        half = size / zoom / 2
        lo = image.world_to_data(np.r_[viewer.dims.point[:-2], centre - half])
        hi = image.world_to_data(np.r_[viewer.dims.point[:-2], centre + half])
    except Exception:  # odd dims or camera state: predict in plain order
        return None
    lo, hi = np.asarray(lo)[-len(shape):], np.asarray(hi)[-len(shape):]
    box = []
    for a, b, n in zip(lo, hi, shape):
        a, b = sorted((a, b))
        if a == b:  # a sliced axis: the current plane
            a, b = a - 0.5, a + 1.5
        box.append((int(np.clip(np.floor(a), 0, n)), int(np.clip(np.ceil(b), 0, n))))
    return tuple(box)


_SOURCE_NAMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # image layer -> its last name


def _follow_renames(viewer, image) -> None:
    """Outputs are named (and tagged) after their image: when the user renames
    the image, its outputs follow, so the next run updates them instead of
    adding a second set beside stale ones."""
    if image in _SOURCE_NAMES:
        return
    _SOURCE_NAMES[image] = image.name
    viewer_ref = weakref.ref(viewer)

    def renamed(event=None):
        old, new, viewer = _SOURCE_NAMES.get(image), image.name, viewer_ref()
        _SOURCE_NAMES[image] = new
        if viewer is None or old is None or old == new:
            return
        for layer in list(viewer.layers):
            tag = layer.metadata.get(OUTPUT_TAG)
            if isinstance(tag, str) and tag.startswith(old + " "):
                layer.metadata[OUTPUT_TAG] = new + tag[len(old):]
                if layer.name == tag:  # unless the user renamed it
                    layer.name = new + tag[len(old):]

    image.events.name.connect(renamed)


def find_output(viewer, key: str):
    for layer in viewer.layers:
        if layer.metadata.get(OUTPUT_TAG) == key:
            return layer
    return None


def show_output(viewer, key: str, data, layer_type: str, like=None, keep_selected=None, update=True,
                **create_kw):
    """The output layer `key` showing `data`: updated in place when it fits, else (re)made.

    With `update` False a fitting layer is returned as it is (a new run
    then overwrites it block by block, without flashing empty first).

    `like` (an image layer) lends its scale and translation; `create_kw`
    (colormap, opacity, visible, ...) applies when the layer is created, so
    the user's later changes to it stay. `keep_selected` (the user's
    annotation layer) stays above the outputs; the selection stays the user's
    (that layer while they paint), never the new output, so painting goes on.
    """
    if layer_type not in LAYER_TYPES:
        raise ValueError(f"layer_type must be one of {LAYER_TYPES}")
    layer = find_output(viewer, key)
    if layer is not None and layer_type != "shapes" and layer._type_string == layer_type \
            and layer.data.shape == np.shape(data) and layer.data.dtype == np.asarray(data).dtype:
        if update:
            layer.data[...] = data
            layer.refresh()
        return layer
    if layer is not None and layer_type == "shapes" and layer._type_string == "shapes":
        return layer  # callers replace shapes data themselves
    if layer is not None:
        viewer.layers.remove(layer)
    kw = dict(create_kw)
    if like is not None:
        _follow_renames(viewer, like)
        n = np.ndim(data) if layer_type != "shapes" else len(like.data.shape) - (1 if like.rgb else 0)
        if layer_type == "image" and kw.get("rgb"):
            n -= 1
        kw.setdefault("scale", like.scale[-n:])
        kw.setdefault("translate", like.translate[-n:])
    kw.setdefault("name", key)
    kw["metadata"] = {**kw.get("metadata", {}), OUTPUT_TAG: key}
    after = {k: kw.pop(k) for k in ("contour",) if k in kw}  # properties the constructor lacks
    from napari import layers as napari_layers

    cls = {"labels": napari_layers.Labels, "image": napari_layers.Image, "shapes": napari_layers.Shapes}[layer_type]
    layer = cls(data, **kw)
    for k, v in after.items():
        setattr(layer, k, v)
    place_output(viewer, layer, keep_selected, above=like)
    return layer


def place_output(viewer, layer, keep_selected=None, above=None) -> None:
    """Insert an output layer below `keep_selected` (the user's annotation
    layer) but above `above` (the image it was predicted from), leaving the
    selection the user's (see show_output)."""
    keep = keep_selected if keep_selected is not None and keep_selected in viewer.layers else None
    # Straight below the annotation layer, which is selected again: no move
    # afterwards. Adding a layer is napari's most expensive step on the main
    # thread (0.1-0.3 s here), so each saved event counts.
    where = viewer.layers.index(keep) if keep is not None else len(viewer.layers)
    if above is not None and above in viewer.layers and viewer.layers.index(above) >= where:
        # The annotation layer lies below the image predicted (strokes of another
        # image, or the image opened last): straight above the image, or it hides the output.
        where = viewer.layers.index(above) + 1
        while where < len(viewer.layers) and OUTPUT_TAG in viewer.layers[where].metadata:
            where += 1  # above the outputs already there, in the order they came
    before = viewer.layers.selection.active
    with _not_activated(viewer.layers):
        viewer.layers.insert(where, layer)
    # The user's choice stands (they may have picked the image to change its
    # contrast while training runs); napari's own pick of the new layer does not.
    after = viewer.layers.selection.active
    if after is not before:
        restored = before if before is not None and before in viewer.layers else keep
        if restored is not None:
            viewer.layers.selection.active = restored


@contextmanager
def _not_activated(layer_list):
    """Insert without napari selecting the new layer (then the annotation
    layer again): two selection changes, each rebuilding the layer controls,
    saved. napari's own switch; without it (another napari) only slower."""
    real = getattr(layer_list, "__wrapped__", layer_list)  # plugins get a proxy
    before = getattr(real, "_activate_on_insert", None)
    if not isinstance(before, bool):
        yield
        return
    real._activate_on_insert = False
    try:
        yield
    finally:
        real._activate_on_insert = before


def class_colour(labels: Labels | None, class_id: int):
    """RGBA (0..1) napari draws class `class_id` with in this annotation layer."""
    if labels is None:  # no annotation layer: the plugin's own bright colours (as New paints with)
        from ..palette import annotation_colormap

        return np.asarray(annotation_colormap(max(1, int(class_id)))[int(class_id)], float)
    return np.asarray(labels.colormap.map(class_id), float).ravel()[:4]


def class_colormap(labels: Labels | None, n_classes: int, transparent=(1,)):
    """Colours of the annotation's classes for a segmentation layer; `transparent`
    classes (the background) are not drawn, so the image stays visible."""
    from napari.utils.colormaps import DirectLabelColormap

    colours = {None: np.zeros(4), 0: np.zeros(4)}
    for k in range(1, n_classes + 1):
        colours[k] = np.zeros(4) if k in transparent else class_colour(labels, k)
    return DirectLabelColormap(color_dict=colours)
