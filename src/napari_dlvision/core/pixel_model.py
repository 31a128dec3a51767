"""What every pixel classifier shares, whatever computes its probabilities.

A pixel model (the random forest, the U-Net) implements
`iter_predict_proba(image, channel_axis, spacing, focus)` and
`instances(prob, spacing, foreground)`; this mixin derives the outputs users
ask for (segmentation, probabilities, uncertainty, instances) the same way
for all of them, for the CLI, folder prediction and the widgets.
"""

from __future__ import annotations

import numpy as np

from .errors import UserInputError
from .events import Progress
from .probabilities import segmentation, uncertainty

PIXEL_OUTPUTS = ("segmentation", "probabilities", "uncertainty", "instances")


class PixelModel:
    TASK = "pixels"
    OUTPUTS = PIXEL_OUTPUTS
    MAIN_OUTPUT = "segmentation"

    def outputs_from_probabilities(self, prob: np.ndarray, wanted=PIXEL_OUTPUTS, foreground=None,
                                   spacing=None) -> dict:
        unknown = set(wanted) - set(PIXEL_OUTPUTS)
        if unknown:
            raise UserInputError(f"a pixel classifier cannot output {', '.join(sorted(unknown))}")
        out = {"segmentation": segmentation(prob)}
        if "probabilities" in wanted:
            out["probabilities"] = prob
        if "uncertainty" in wanted:
            out["uncertainty"] = uncertainty(prob)
        if "instances" in wanted:
            out["instances"] = self.instances(prob, spacing=spacing, foreground=foreground)
        return out

    def iter_predict_outputs(self, image, channel_axis=None, spacing=None, wanted=("segmentation",),
                             foreground=None, focus=None, **predict_options):
        """Progress events of prediction; the last ("done") carries the outputs dict."""
        prob = None
        for ev in self.iter_predict_proba(image, channel_axis, spacing, focus=focus, **predict_options):
            prob = ev.payload["probabilities"]
            ev.message = ev.message or "Predicting…"
            # The block's class ids, computed here (a worker thread in the docks):
            # on the viewer's thread this argmax stalled it 0.15 s per band at 4096 x 4096.
            ev.payload["segmentation"] = segmentation(prob[(slice(None),) + tuple(ev.payload["block"])])
            yield ev
        if "instances" in wanted:
            yield Progress("instances", 0, 1, "Splitting touching objects…")
        results = self.outputs_from_probabilities(prob, wanted, foreground, spacing)
        yield Progress("done", 1, 1, None, payload=results)

    def predict_outputs(self, image, channel_axis=None, spacing=None, wanted=("segmentation",),
                        foreground=None) -> dict:
        ev = None
        for ev in self.iter_predict_outputs(image, channel_axis, spacing, wanted, foreground):
            pass
        return ev.payload
