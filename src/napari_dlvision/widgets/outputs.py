"""What a pixel classifier shows: segmentation, instances, optionally probabilities.

By default two layers per image: the segmentation in the annotation's class
colours with the background class left transparent (the image stays
visible), and the instances drawn as outlines. Probabilities and uncertainty
are one tick away. Layers are updated in place on every run.
"""

from __future__ import annotations

import time

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QWidget

from ..core.probabilities import segmentation, uncertainty
from .layers import class_colormap, place_output, show_output

REFRESH_S = 0.15  # redraw output layers at most this often while predicting
SEG_OPACITY = 0.4  # strokes (opacity 1) stay visible over a segmentation of their colour
# napari draws outlines by computing them on the main thread at every redraw:
# 0.1 s for a 2048 x 2048 plane, 0.4 s at 4096 x 4096. Larger planes show
# their instances filled and see-through instead, so the viewer never stalls.
OUTLINE_MAX_PIXELS = 2048 * 2048


def with_displayable_instances(events):
    """A job's events with any instances already as instances_for_display
    makes them, converted in the worker (40 ms of the viewer's thread at 4096 x 4096)."""
    try:
        for ev in events:
            payload = getattr(ev, "payload", None)
            if isinstance(payload, dict) and isinstance(payload.get("instances"), np.ndarray):
                payload["instances"] = instances_for_display(payload["instances"])
            yield ev
    finally:
        events.close()  # a Stop reaches the job's own clean-up (which weights are kept) at once


def instances_for_display(inst: np.ndarray) -> np.ndarray:
    """Instance ids as uint16 when they fit: napari maps wider integers to
    colours with a modulo over the whole plane on the main thread at every
    redraw (0.5 s at 4096 x 4096), while uint16 goes to the GPU as it is."""
    if inst.dtype == np.uint16 or inst.dtype.kind not in "iu" or not inst.size or inst.max() > 65535:
        return inst
    return inst.astype(np.uint16)


def background_classes(names) -> set[int]:
    """Classes drawn transparent: those named background, else class 1."""
    bg = {k for k, n in enumerate(names, 1) if n.strip().lower() in ("background", "bg", "back")}
    return bg or {1}


class PixelOutputs(QWidget):
    def __init__(self, viewer, suffix: str = "", instances: bool = True):
        super().__init__()
        self.viewer, self.suffix = viewer, suffix
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.instances_check = QCheckBox("Instances")
        self.instances_check.setToolTip("Split the last class into objects (touching ones separated)")
        self.instances_check.setChecked(instances)
        self.prob_check = QCheckBox("Probabilities and uncertainty")
        self.prob_check.setToolTip("Also show one probability layer per class and the uncertainty (hidden at first)")
        row.addWidget(self.instances_check)
        row.addWidget(self.prob_check)
        row.addStretch()
        self.target = None
        self._last_refresh = 0.0

    def wanted(self) -> tuple[str, ...]:
        out = ["segmentation"]
        if self.instances_check.isChecked():
            out.append("instances")
        if self.prob_check.isChecked():
            out += ["probabilities", "uncertainty"]
        return tuple(out)

    def name(self, image, what: str) -> str:
        return f"{image.name} {what}{self.suffix}"

    def segmentation_style(self, class_names, annotations, n_classes) -> dict:
        """How the segmentation layer is drawn (also for large layers, see lazy_layers)."""
        names = list(class_names) + [f"class {k}" for k in range(len(class_names) + 1, n_classes + 1)]
        return {"colormap": class_colormap(annotations, n_classes, background_classes(names)),
                "opacity": SEG_OPACITY, "keep_selected": annotations}

    def lazy_note(self, instances_ok: bool = True) -> str:
        """What a large layer's block-by-block prediction leaves out of the ticked
        outputs: probabilities, and instances where they need them (instances_ok False)."""
        probabilities = self.prob_check.isChecked()
        instances = self.instances_check.isChecked() and not instances_ok
        if probabilities and instances:
            return "Segmentation only (instances and probabilities need the whole image in memory). "
        if probabilities:
            return "No probabilities (they need the whole image in memory). "
        if instances:
            return "No instances (this model's need its probabilities of the whole image in memory). "
        return ""

    def lazy_instances(self, image, model) -> dict | None:
        """How a large layer's instances are made (LazyPredictions.predict), or None:
        split strip by strip from the segmentation file, for models whose
        instances split one class of the segmentation."""
        if not self.instances_check.isChecked() or getattr(model, "mode", None) == "dense":
            return None
        return {"key": self.name(image, "instances"), "foreground": model.n_classes, "opacity": 0.5}

    # -- one prediction -----------------------------------------------------
    def begin(self, image, class_names, annotations):
        """Start showing a prediction of `image`; layers appear with the first block."""
        self.target = {"image": image, "names": list(class_names), "annotations": annotations,
                       "wanted": self.wanted(), "layers": {}}

    def _layers(self, n_classes, shape):
        t = self.target
        if t["layers"]:
            return t["layers"]
        image, ann = t["image"], t["annotations"]
        names = t["names"] + [f"class {k}" for k in range(len(t["names"]) + 1, n_classes + 1)]
        dtype = np.uint8 if n_classes < 255 else np.uint16
        layers = {"segmentation": show_output(
            self.viewer, self.name(image, "segmentation"), np.zeros(shape, dtype), "labels", like=image, keep_selected=ann,
            update=False, colormap=class_colormap(ann, n_classes, background_classes(names)), opacity=SEG_OPACITY)}
        if "probabilities" in t["wanted"]:
            for k in range(n_classes):
                layers[f"p{k}"] = show_output(
                    self.viewer, self.name(image, f"p({names[k]})"), np.zeros(shape, np.float32), "image",
                    like=image, keep_selected=ann, update=False, colormap="magma", contrast_limits=(0, 1), visible=False,
                    blending="additive")
            layers["uncertainty"] = show_output(
                self.viewer, self.name(image, "uncertainty"), np.zeros(shape, np.float32), "image", like=image,
                keep_selected=ann, update=False, colormap="inferno", contrast_limits=(0, 1), visible=False, blending="additive")
        # The colours may have changed since the layer was made (classes added).
        layers["segmentation"].colormap = class_colormap(ann, n_classes, background_classes(names))
        t["layers"] = layers
        return layers

    def write_block(self, block, prob, final=False, seg=None):
        """Show probabilities `prob` (K, *spatial) inside `block` (slices), and its
        class ids `seg` when the worker computed them; throttled redraw."""
        if self.target is None:
            return
        layers = self._layers(prob.shape[0], prob.shape[1:])
        p = prob[(slice(None),) + tuple(block)]
        layers["segmentation"].data[tuple(block)] = segmentation(p) if seg is None else seg
        if "uncertainty" in layers:
            for k in range(prob.shape[0]):
                layers[f"p{k}"].data[tuple(block)] = p[k]
            layers["uncertainty"].data[tuple(block)] = uncertainty(p)
        self.refresh(force=final)

    def write_all(self, prob):
        self.write_block(tuple(slice(None) for _ in prob.shape[1:]), prob, final=True)

    def finish(self, results: dict):
        """The final outputs (a dict from core.pixel_model); instances get their own layer."""
        t = self.target
        if t is None:
            return
        if "probabilities" in results and not t["layers"]:
            self.write_all(results["probabilities"])
        self._restore_removed(t)
        self.refresh(force=True)
        inst = results.get("instances")
        if inst is not None:
            # A new layer costs napari 0.1-0.2 s plus its first draw: made in the
            # next turn of the event loop, after the segmentation has been drawn,
            # so the two costs do not add up into one longer freeze.
            QTimer.singleShot(0, lambda: self._show_instances(t, inst))

    def _restore_removed(self, t):
        """Output layers removed while the run filled them come back, placed as
        when made: they hold this run's result, which the status line reports
        (the next run would make them again anyway)."""
        if t["image"] not in self.viewer.layers:
            return
        for layer in t["layers"].values():
            if layer not in self.viewer.layers:
                place_output(self.viewer, layer, keep_selected=t["annotations"], above=t["image"])

    def _show_instances(self, t, inst):
        if self.target is not t or t["image"] not in self.viewer.layers:
            return  # another run began, or the image was closed
        outline = np.prod(inst.shape[-2:]) <= OUTLINE_MAX_PIXELS
        t["layers"]["instances"] = show_output(
            self.viewer, self.name(t["image"], "instances"), instances_for_display(inst), "labels",
            like=t["image"], keep_selected=t["annotations"], contour=2 if outline else 0,
            opacity=0.9 if outline else 0.5)

    def refresh(self, force=False):
        now = time.perf_counter()
        if self.target is None or (not force and now - self._last_refresh < REFRESH_S):
            return
        if not force and self.viewer.dims.ndisplay == 3:
            # Drawn as volumes, each refresh re-sends and re-renders every layer:
            # live update in the 3D view took 35-57 s instead of 2 s. Shown once, at the end.
            return
        self._last_refresh = now
        for layer in self.target["layers"].values():
            if layer in self.viewer.layers:
                layer.refresh()

    def end(self):
        if self.target is not None and self.target["layers"]:
            self.refresh(force=True)
