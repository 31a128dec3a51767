"""The denoiser: a U-Net mapping a noisy image to a clean one, with its file.

One model kind for three ways of training (see `denoise_train`):
- "n2v": Noise2Void, from the noisy images alone (blind-spot masking);
- "n2n": Noise2Noise, from pairs (or stacks) of independent noisy acquisitions;
- "supervised": CARE-style, from noisy images and clean targets.
All three give the same thing to predict with: a U-Net with one output
channel per input channel and no final activation (regression).

Each image is normalised by its own percentiles (the recipe travels in the
model file) and the result is mapped back with the same numbers, so the
denoised image comes back in the input's intensity units, as float32, in
the input's layout (channel axis where it was). Prediction is halo-tiled
and survives out-of-memory by shrinking tiles (dl.tiled).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core import modelfile, reinclusion
from ..core.errors import UserInputError
from ..core.events import Progress, result_of
from ..core.images import as_channels_first
from ..core.normalisation import Normalisation
from ..core.tiling import grow
from .devices import describe, pick_device
from .tiled import iter_tiled, plan_tiles
from .unet import UNet
from .unet import halo as exact_halo

KIND = "denoiser"
MODES = ("n2v", "n2n", "supervised")
MODE_TITLES = {"n2v": "Noise2Void", "n2n": "Noise2Noise", "supervised": "supervised (CARE)"}
PRESETS = {
    "small": {"depth": 2, "base_channels": 32},
    "medium": {"depth": 3, "base_channels": 32},
}
DEFAULT_PRESET = "small"
BYTES_PER_VOXEL_PER_CHANNEL = 48  # as for the segmenter's U-Net: peak of inference per base channel
# Below this span between the percentiles a channel is taken as degenerate
# (e.g. a mostly-zero integer image): its min and max scale it instead.
_DEGENERATE = 1e-6


class Denoiser:
    KIND = KIND
    TASK = "image-to-image"
    OUTPUTS = ("denoised",)
    MAIN_OUTPUT = "denoised"

    def __init__(self, mode: str = "n2v", preset: str = DEFAULT_PRESET, depth: int | None = None,
                 base_channels: int | None = None, norm: str = "batch",
                 normalisation: Normalisation | None = None, device: str = "auto"):
        if mode not in MODES:
            raise UserInputError(f"denoising mode must be one of {', '.join(MODES)}, got {mode!r}")
        if preset not in PRESETS:
            raise UserInputError(f"unknown denoiser preset {preset!r}; choose one of {', '.join(PRESETS)}")
        arch = dict(PRESETS[preset])
        if depth is not None:
            arch["depth"] = int(depth)
        if base_channels is not None:
            arch["base_channels"] = int(base_channels)
        arch["norm"] = norm
        self.mode, self.preset, self.config = mode, preset, arch
        self.normalisation = normalisation or Normalisation()
        self.device = device  # preference for prediction; training names its own
        self.net: UNet | None = None
        self.n_channels = self.ndim = None
        self.spacing = None
        self.training: dict = {}
        self.metrics: dict = {}
        # Average the results for 8 flips and rotations of the image when predicting:
        # about +0.5 dB for Noise2Void, for 8 times the prediction time.
        self.tta = True
        self.reinclude = True

    @property
    def reinclude(self) -> bool:
        """Put the noisy pixel's value back where the network is unsure (core.reinclusion).
        Noise2Void only: the other networks see the pixel, so it stays False for them."""
        return self._reinclude

    @reinclude.setter
    def reinclude(self, on: bool) -> None:
        self._reinclude = bool(on) and self.mode == "n2v"

    @property
    def title(self) -> str:
        return MODE_TITLES[self.mode]

    @property
    def halo(self) -> int:
        return exact_halo(self.config["depth"])

    def build(self, n_channels: int, ndim: int) -> UNet:
        """A fresh network (seed torch first for reproducible weights)."""
        self.net = UNet(ndim, n_channels, n_channels, self.config["depth"], self.config["base_channels"],
                        self.config["norm"])
        self.n_channels, self.ndim = int(n_channels), int(ndim)
        return self.net

    # -- inputs -------------------------------------------------------------
    def check_compatible(self, img_cf: np.ndarray) -> None:
        if self.net is None:
            raise UserInputError("the denoiser is not trained yet")
        n_ch, ndim = img_cf.shape[0], img_cf.ndim - 1
        if ndim != self.ndim:
            raise UserInputError(f"the denoiser was trained on {self.ndim}D images; this image is {ndim}D")
        if n_ch != self.n_channels:
            raise UserInputError(
                f"the denoiser was trained on {self.n_channels}-channel images; this image has {n_ch} channel(s)")

    def check_shape(self, shape, channel_axis=None):
        """Raise a readable error unless an image of this shape fits the model (no data read)."""
        n_ch = 1 if channel_axis is None else shape[channel_axis]
        self.check_compatible(np.empty((n_ch,) + (2,) * (len(shape) - (channel_axis is not None)), np.float32))

    def norm_params(self, img_cf: np.ndarray, constant_ok: bool = False) -> np.ndarray:
        """(C, 2) (low, scale) per channel: the model's percentiles, or the channel's
        min and max where the percentiles coincide. A constant channel is a
        UserInputError, unless `constant_ok` (prediction passes it through)."""
        params = self.normalisation.params(img_cf)
        for c, (lo, scale) in enumerate(params):
            if 1.0 / scale > _DEGENERATE * max(abs(lo), 1.0):
                continue
            lo_c, hi_c = float(img_cf[c].min()), float(img_cf[c].max())
            if hi_c <= lo_c:
                if not constant_ok:
                    which = "the image" if len(params) == 1 else f"channel {c + 1} of the image"
                    raise UserInputError(f"{which} is constant ({lo_c:g} everywhere): there is nothing to denoise")
                params[c] = lo_c, 1.0
            else:
                params[c] = lo_c, 1.0 / (hi_c - lo_c)
        return params

    def prepare(self, image, channel_axis=None, check=True, constant_ok=False):
        """(normalised (C, *spatial) float32 image, its params), validated."""
        img = as_channels_first(image, channel_axis)
        if check:
            self.check_compatible(img)
        params = self.norm_params(img, constant_ok=constant_ok)
        return self.normalisation.apply(img, params), params

    # -- prediction -------------------------------------------------------
    @property
    def bytes_per_voxel(self) -> float:
        return BYTES_PER_VOXEL_PER_CHANNEL * self.config["base_channels"]

    def iter_denoise_normalised(self, img_norm: np.ndarray, out: np.ndarray, device=None, net=None,
                                tile_shape=None, report=None):
        """Fill `out` (C, *spatial) with the network's output, tile by tile; yields (done, total, core)."""
        device = pick_device(self.device if device is None else device)
        net = (self.net if net is None else net).to(device)
        halo = self.halo
        if tile_shape is None:
            tile_shape, halo = plan_tiles(img_norm.shape[1:], device, halo, net.multiple, self.bytes_per_voxel,
                                          may_halve_halo=True)
        yield from iter_tiled(net, img_norm, out, halo=halo, multiple=net.multiple, device=device,
                              activation=None, tile_shape=tile_shape, bytes_per_voxel=self.bytes_per_voxel,
                              report=report)

    def denoise_region(self, img_norm: np.ndarray, params, box=None, device=None, net=None):
        """(core slices, denoised (C, *core) in the input's units) of the region `box`
        ((start, stop) per axis, clipped to the image; None: all), computed from the
        region grown by the network's reach (previews while training)."""
        shape = img_norm.shape[1:]
        core = tuple(slice(0, n) for n in shape) if box is None else tuple(
            slice(max(0, int(a)), min(n, max(int(b), int(a) + 1))) for (a, b), n in zip(box, shape))
        outer, inner = grow(core, (self.halo,) * len(shape), shape)
        region = np.ascontiguousarray(img_norm[(slice(None),) + outer])
        out = np.empty_like(region)
        for _ in self.iter_denoise_normalised(region, out, device=device, net=net):
            pass
        inner = (slice(None),) + inner
        return core, self._reincluded(Normalisation.invert(out[inner], params), Normalisation.invert(region[inner], params))

    def _reincluded(self, out_cf, raw_cf, skip=()):
        """`out_cf` (C, *spatial, input units) with the noisy values `raw_cf` put back
        where the model does that; fitted on this very image."""
        if not self.reinclude:
            return out_cf
        return reinclusion.apply_channels(reinclusion.fit_channels(out_cf, raw_cf, skip), out_cf, raw_cf)

    def _iter_views(self, img, views, out, grown=False):
        """Fill `out` with the network's output for `img` (normalised) averaged over
        `views` (test-time augmentation: (forward, back) pairs); yields (view,
        done, total, core), core being the tile just written into `out` when
        there is one view, else None (`out` is complete only at the end).
        `grown`: `img` is a block already grown by the halo, run in one pass
        where it fits."""
        from ..core.lazy import one_pass

        def tiles(view):
            return view.shape[1:] if grown and one_pass(view.shape[1:], self.bytes_per_voxel) else None

        if len(views) == 1:
            for done, total, core in self.iter_denoise_normalised(img, out, tile_shape=tiles(img)):
                yield 0, done, total, core
            return
        out[...] = 0
        for k, (forward, back) in enumerate(views):
            view = np.ascontiguousarray(forward(img))
            part = np.empty_like(view)
            for done, total, _ in self.iter_denoise_normalised(view, part, tile_shape=tiles(view)):
                yield k, done, total, None
            out += back(part)
        out /= len(views)

    def iter_predict_outputs(self, image, channel_axis=None, spacing=None, wanted=("denoised",), tta=None, **_):
        """Progress events of denoising `image`; each "predicting" event's payload holds
        the tile just done ("block", spatial slices) and the result being filled
        ("denoised", (C, *spatial) in the input's units); the last event ("done")
        carries {"denoised": array in the input's layout}.

        tta (default: the model's `tta`): average the results for the image
        flipped and rotated 8 ways (8 times the work; blocks then come at the end).
        """
        unknown = set(wanted) - set(self.OUTPUTS)
        if unknown:
            raise UserInputError(f"a denoiser cannot output {', '.join(sorted(unknown))}; it gives 'denoised'")
        img, params = self.prepare(image, channel_axis, constant_ok=True)
        views = dihedral(img.ndim - 1) if (self.tta if tta is None else tta) else [(_same, _same)]
        out = np.empty_like(img)
        for k, done, total, core in self._iter_views(img, views, out):
            payload = None
            if core is not None:  # one view: shown as its tiles come
                sl = (slice(None),) + core
                out[sl] = Normalisation.invert(out[sl], params)
                payload = {"block": core, "denoised": out}
            yield Progress("predicting", k * total + done, len(views) * total, "Denoising…", payload=payload)
        constant = [c for c, (lo, scale) in enumerate(params) if scale == 1.0 and np.ptp(img[c]) == 0]
        if len(views) > 1:
            out = Normalisation.invert(out, params)
        if len(views) > 1 or self.reinclude:
            out = self._reincluded(out, as_channels_first(image, channel_axis), skip=constant)
            whole = tuple(slice(0, n) for n in out.shape[1:])
            yield Progress("predicting", 1, 1, "Denoising…", payload={"block": whole, "denoised": out})
        for c in constant:  # nothing to denoise there: pass the channel through
            out[c] = params[c][0]
        yield Progress("done", 1, 1, None, payload={"denoised": to_layout(out, channel_axis, np.ndim(image))})

    def block_plan(self, image_cf, spacing=None):
        """How blocks of a larger-than-memory image are denoised (core.lazy):
        normalised with the whole image's parameters (as `norm_params`), the
        noisy values put back with numbers fitted on the central region (as
        in memory: `reinclusion.calibration_region`)."""
        return result_of(self.iter_block_plan(image_cf, spacing))

    def iter_block_plan(self, image_cf, spacing=None):
        """`block_plan` as a generator: Progress events ("predicting", one a view
        of test-time augmentation) while the network runs over the central region
        to fit the put-back numbers, so a Stop can end it there (seconds on a CPU);
        returns the plan."""
        from ..core.lazy import BlockPlan, network_block_side, sampled_percentile_params

        self.check_compatible(np.empty((image_cf.shape[0],) + (2,) * (image_cf.ndim - 1), np.float32))
        params = sampled_percentile_params(self.normalisation, image_cf)
        side = network_block_side(self.ndim, self.halo, self.net.multiple, self.bytes_per_voxel)
        constant = []
        for c, (lo, scale) in enumerate(params):
            if 1.0 / scale > _DEGENERATE * max(abs(lo), 1.0):
                continue
            lo_c, hi_c = (float(v) for v in (image_cf[c].min().compute(), image_cf[c].max().compute()))
            params[c] = (lo_c, 1.0) if hi_c <= lo_c else (lo_c, 1.0 / (hi_c - lo_c))
            if hi_c <= lo_c:
                constant.append(c)
        putback = None
        if self.reinclude:
            shape = image_cf.shape[1:]
            outer, inner = grow(reinclusion.calibration_region(shape), (self.halo,) * self.ndim, shape)
            block = np.asarray(image_cf[(slice(None),) + outer])
            mu = yield from self._iter_denoise_grown(block, params, constant,
                                                     "Fitting the put-back of noisy values on the central region…")
            inner = (slice(None),) + inner
            putback = reinclusion.fit_channels(mu[inner], as_channels_first(block, 0)[inner], skip=constant)
        # Putting the values back looks a few pixels further than the network.
        halo = self.halo + (reinclusion.REACH if putback is not None else 0)
        return BlockPlan((halo,) * self.ndim, self.n_channels, self.net.multiple, (params, constant, putback), side)

    def _denoise_grown(self, block, params, constant):
        """A grown (C, *spatial) block denoised in the input's units, test-time
        augmentation within the block, the noisy values not put back."""
        return result_of(self._iter_denoise_grown(block, params, constant))

    def _iter_denoise_grown(self, block, params, constant, message=None):
        """`_denoise_grown` as a generator: a Progress event after each view; returns the block."""
        views = dihedral(self.ndim) if self.tta else [(_same, _same)]
        img = self.normalisation.apply(as_channels_first(block, 0), params)
        out = np.empty_like(img)
        for k, done, total, _ in self._iter_views(img, views, out, grown=True):
            yield Progress("predicting", k * total + done, len(views) * total, message)
        out = Normalisation.invert(out, params)
        for c in constant:  # nothing to denoise there: passed through
            out[c] = params[c][0]
        return out

    def block_function(self, params, spacing=None):
        """One grown block denoised, in the input's units."""
        params, constant, putback = params

        def block_denoise(block):
            out = self._denoise_grown(block, params, constant)
            if putback is not None:
                out = reinclusion.apply_channels(putback, out, as_channels_first(block, 0))
            return out

        return block_denoise

    def predict_outputs(self, image, channel_axis=None, spacing=None, wanted=("denoised",), **options) -> dict:
        ev = None
        for ev in self.iter_predict_outputs(image, channel_axis, spacing, wanted, **options):
            pass
        return ev.payload

    def denoise(self, image, channel_axis=None, tta=None) -> np.ndarray:
        """The denoised image: float32, the input's shape and intensity units."""
        return self.predict_outputs(image, channel_axis, tta=tta)["denoised"]

    # -- model file -------------------------------------------------------
    def metadata(self) -> dict:
        return {
            "kind": KIND,
            "mode": self.mode,
            "preset": self.preset,
            # The common fields name output channels where classifiers name classes.
            "classes": list(range(1, self.n_channels + 1)),
            "class_names": [f"channel {c}" for c in range(1, self.n_channels + 1)],
            "n_channels": self.n_channels,
            "ndim": self.ndim,
            "spacing": self.spacing,
            "architecture": self.net.architecture(),
            "halo": self.halo,
            "normalisation": {**self.normalisation.to_json(), "degenerate": "min-max"},
            "output": "float32, the input's intensity units",
            "test_time_augmentation": self.tta,
            "reinclude_noisy_value": self.reinclude,
            "training": self.training,
            "metrics": self.metrics,
        }

    def save(self, path) -> Path:
        from .weights import save_model_with_weights

        return save_model_with_weights(path, self, "denoiser")

    @classmethod
    def load(cls, path, device: str = "auto") -> Denoiser:
        from .weights import adopt_unet, load_weights_into

        meta, _, extra = modelfile.load(path, kinds=(KIND,))
        field = modelfile.field
        with modelfile.refused_if_damaged(path, "denoiser model"):
            mode = field(meta, "mode", str, choices=MODES)
            preset = field(meta, "preset", str, optional=True, default=DEFAULT_PRESET)
            self = cls(mode, preset if preset in PRESETS else DEFAULT_PRESET,
                       normalisation=Normalisation.from_json(field(meta, "normalisation", dict)), device=device)
            adopt_unet(self, meta, meta["n_channels"])  # one output per input channel
            self.tta = field(meta, "test_time_augmentation", bool, optional=True, default=False)
            # Files from before this option denoised without it.
            reinclude = field(meta, "reinclude_noisy_value", bool, optional=True, default=False)
            if reinclude and mode != "n2v":
                raise ValueError("only a Noise2Void model puts the noisy value back")
            self.reinclude = reinclude
        load_weights_into(self.net, extra, path, "denoiser model")
        return self

    def describe_device(self) -> str:
        return describe(pick_device(self.device))


def _same(x):
    return x


def dihedral(ndim: int):
    """(forward, back) pairs on (C, *spatial) arrays: the 8 flips and 90-degree
    rotations of the last two axes (2D), or the 8 flips of the three axes (3D)."""
    views = []
    if ndim == 2:
        for k in range(4):
            for flip in (False, True):
                def forward(x, k=k, flip=flip):
                    return np.rot90(x[..., ::-1] if flip else x, k, axes=(-2, -1))

                def back(y, k=k, flip=flip):
                    y = np.rot90(y, -k, axes=(-2, -1))
                    return y[..., ::-1] if flip else y
                views.append((forward, back))
        return views
    for flips in range(8):
        axes = [a for a in (1, 2, 3) if flips >> (a - 1) & 1]

        def both(x, axes=axes):
            return np.flip(x, axes) if axes else x
        views.append((both, both))
    return views


def to_layout(out_cf: np.ndarray, channel_axis, ndim: int) -> np.ndarray:
    """(C, *spatial) back to the input's layout: channels where they were, or none."""
    if channel_axis is None:
        return out_cf[0]
    return np.moveaxis(out_cf, 0, int(channel_axis) % ndim)
