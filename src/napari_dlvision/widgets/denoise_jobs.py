"""The denoiser widget's worker side: training and prediction generators.

They run in a napari thread worker: torch is imported there, arrays are
converted there, and every result block is handed over already in the
layer's layout, as {"index": slices into the layer's data, "values": array},
so the main thread only copies it in.

A layer's layout: `axis` is where its channels are (None: grey, -1: RGB, 0:
the first axis), `frames` says its first axis holds repeated acquisitions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.events import Progress


@dataclass(frozen=True)
class Layout:
    axis: int | None = None  # channel axis of the layer's data
    frames: bool = False  # first axis: repeated acquisitions of one field

    def frame_axis(self):
        """Channel axis inside one frame."""
        if self.axis is None or not self.frames:
            return self.axis
        return -1 if self.axis == -1 else self.axis - 1

    def spatial_box(self, box, ndim: int):
        """The spatial part of a box over the layer's dimensions (an RGB axis is none):
        frames and a channel axis dropped."""
        if box is None:
            return None
        box = list(box)
        if self.frames:
            box = box[1:]
        if self.axis not in (None, -1):
            del box[self.frame_axis()]
        return tuple(box[-ndim:])

    def block(self, core, values_cf: np.ndarray, frame: int | None = None) -> dict:
        """{"index", "values"} placing a (C, *core) result into the layer's data."""
        axis = self.frame_axis()
        if axis is None:
            index, values = tuple(core), values_cf[0]
        elif axis == -1:
            index, values = tuple(core) + (slice(None),), np.moveaxis(values_cf, 0, -1)
        else:
            index, values = (slice(None),) + tuple(core), values_cf
        if self.frames:
            index = (frame or 0,) + index
        return {"index": index, "values": np.ascontiguousarray(values, np.float32)}


def train_job(holder, resume_from, mode, preset, device, noisy, other, layout: Layout, spacing, settings_kw, view,
              reinclude=True):
    """Build (or reuse) the denoiser and train it; previews come as layer blocks
    (with the noisy value put back as `reinclude` says, like the result)."""
    from .torch_import import import_torch

    import_torch()
    from ..dl.denoise import Denoiser
    from ..dl.denoise_train import DenoiseSettings, train_denoiser

    d = resume_from or Denoiser(mode, preset, device=device)
    d.reinclude = reinclude  # the model keeps it off but for Noise2Void
    holder["denoiser"] = d
    pairs = [other] if mode == "n2n" and other is not None else None
    targets = [other] if mode == "supervised" else None
    gen = train_denoiser(d, [noisy], pairs, targets, DenoiseSettings(**settings_kw), channel_axis=layout.axis,
                         frames=layout.frames, spacing=spacing, view=view)
    try:
        for ev in gen:
            preview = ev.payload.get("preview") if isinstance(ev.payload, dict) else None
            if preview is not None:
                ev.payload = {**ev.payload, "preview": layout.block(preview["core"], preview["denoised"],
                                                                    preview["acquisition"])}
            yield ev
    finally:
        gen.close()  # the loop puts the kept weights back into the network


def predict_job(model, data, layout: Layout):
    """Denoise a layer's data (every frame of a stack); events carry layer blocks."""
    from .torch_import import import_torch

    import_torch()
    frames = list(range(np.shape(data)[0])) if layout.frames else [None]
    for n, t in enumerate(frames):
        image = np.asarray(data if t is None else data[t])
        for ev in model.iter_predict_outputs(image, layout.frame_axis()):
            if ev.stage != "predicting":
                continue
            block = None
            if ev.payload is not None:  # a finished block (all at the end when averaging flips)
                core = ev.payload["block"]
                block = layout.block(core, ev.payload["denoised"][(slice(None),) + core], t)
            fraction = (n + ev.done / ev.total) / len(frames)
            yield Progress("predicting", int(round(1000 * fraction)), 1000, "Denoising…", payload=block)
    yield Progress("done", 1, 1, None)
