"""Training the denoiser on the shared loop: Noise2Void, Noise2Noise, supervised.

    for event in train_denoiser(denoiser, noisy, settings=DenoiseSettings(steps=400)):
        show(event.done, event.loss)        # close() the generator to stop

Training data is a list of *fields*: each field is one or more noisy
acquisitions of the same scene (same shape), and optionally a clean target.
- Noise2Void: one acquisition per field; the input is the patch with random
  pixels hidden (dl.blind_spot) and the loss looks at those pixels only.
- Noise2Noise: two or more acquisitions per field (two layers, two files, or
  the frames of a stack); input one acquisition, target another.
- supervised: input an acquisition, target the clean image.
Every acquisition is normalised by its own percentiles and its target by the
same numbers, so targets stay in the input's units. Patches are flipped and
rotated with their targets. `dl.loop.fit` does the rest: with no validation
data the averaged (EMA) weights are kept, never those of the lowest loss.
Calling it again on the same denoiser continues from its weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import UserInputError
from ..core.images import as_channels_first, check_spacing
from .augment import Augmentation, patch_edges
from .blind_spot import blind_spot_batch, check_settings
from .denoise import Denoiser
from .devices import free_memory, pick_device
from .distributed import data_seed
from .loop import fit
from .settings import KindSettings

DEFAULT_PATCH = {2: 64, 3: 32}


@dataclass
class DenoiseSettings(KindSettings):
    steps: int = 400
    patch_size: int | tuple | None = None  # per axis; None: 64 in 2D, 32 in 3D; clipped to the images
    batch_size: int = 0  # 0: from the device's free memory (16 on CPU and MPS)
    lr: float = 8e-3  # high with a short CPU budget: 200 steps on membrane2d, 2e-3: 33.0 dB, 4e-3: 33.4, 8e-3: 33.6
    weight_decay: float = 0.0
    warmup: int = 20
    ema: float | None = 0.99  # the averaged weights are previewed and kept
    flips: bool = True
    rot90: bool = True
    masked_fraction: float = 0.1  # Noise2Void: share of pixels hidden per patch (more: faster learning)
    radius: int = 2  # Noise2Void: replacements come from this neighbourhood
    replacement: str = "random"  # Noise2Void: "random" neighbour or "median" of the neighbours
    channels: str = "independent"  # Noise2Void: mask channels "independent"ly or "joint"ly
    device: str = "auto"
    time_limit: float | None = None
    # bfloat16 where the CPU runs it natively: about 1.6x the steps in the same
    # time, and the steps matter more than the last digits here (membrane2d,
    # Gaussian 0.1, 180 s: 987 steps and 34.9 dB against 603 and 34.6 dB).
    cpu_amp: bool = True
    seed: int = 0
    preview_every: int = 0  # steps between previews; 0: none

    def check(self):
        check_settings(self.masked_fraction, self.radius, self.replacement, self.channels)
        self.check_batch_size()
        self.fit_settings(1).check()


def auto_batch_size(device, patch, base_channels: int, cap: int = 64) -> int:
    """A third of the free accelerator memory (about 24 float32 maps of the base
    width per sample at full resolution); 16 where unknown (CPU, MPS)."""
    free = free_memory(device)
    if free is None:
        return 16
    return int(max(1, min(cap, free // 3 // (math.prod(patch) * base_channels * 4 * 24))))


# -- data -----------------------------------------------------------------
@dataclass
class Field:
    """Noisy acquisitions of one scene (raw float32, channels first) and an optional clean target."""

    noisy: list
    params: list  # per acquisition: (C, 2) normalisation (low, scale)
    clean: np.ndarray | None = None

    @property
    def shape(self):
        return self.noisy[0].shape[1:]


def _as_list(x):
    if x is None:
        return None
    return list(x) if isinstance(x, (list, tuple)) else [x]


def prepare_fields(denoiser: Denoiser, noisy, pairs=None, targets=None, channel_axis=None,
                   frames: bool = False) -> list[Field]:
    """Fields for `denoiser.mode` from images (lists or single arrays).

    noisy: the noisy images; pairs: one second noisy acquisition per image
    (Noise2Noise); targets: one clean image per image (supervised); frames:
    each noisy image's first axis holds repeated acquisitions (Noise2Noise).
    """
    noisy, pairs, targets = _as_list(noisy), _as_list(pairs), _as_list(targets)
    mode = denoiser.mode
    if not noisy:
        raise UserInputError("no noisy images given")
    if pairs is not None and targets is not None:
        raise UserInputError("give either second noisy acquisitions (Noise2Noise) or clean targets, not both")
    if mode == "n2n" and pairs is None and not frames:
        raise UserInputError("Noise2Noise needs a second noisy acquisition of each image, or a stack of frames")
    if mode == "supervised" and targets is None:
        raise UserInputError("supervised denoising needs a clean target for each noisy image")
    if mode == "n2v" and (pairs is not None or targets is not None or frames):
        raise UserInputError("Noise2Void trains from the noisy images alone; pick Noise2Noise or supervised")
    for name, extra in (("second noisy image", pairs), ("clean target", targets)):
        if extra is not None and len(extra) != len(noisy):
            raise UserInputError(f"give one {name} per noisy image ({len(noisy)} noisy, {len(extra)} given)")

    def channels_first(img, what):
        img = as_channels_first(img, channel_axis)
        if img.ndim - 1 not in (2, 3):
            raise UserInputError(f"the {what} must be 2D or 3D (plus channels), got shape {img.shape[1:]}")
        return img

    fields_ = []
    for i, img in enumerate(noisy):
        if frames:
            arr = np.asarray(img)
            if arr.ndim < 3 or arr.shape[0] < 2:
                raise UserInputError(
                    f"a stack of repeated frames needs at least 2 frames along its first axis, got shape {arr.shape}")
            axis = None if channel_axis is None else (channel_axis % arr.ndim) - 1
            acquisitions = [as_channels_first(f, axis) for f in arr]
        else:
            acquisitions = [channels_first(img, "noisy image")]
            if pairs is not None:
                acquisitions.append(channels_first(pairs[i], "second noisy image"))
        clean = None if targets is None else channels_first(targets[i], "clean target")
        first = acquisitions[0]
        for other, what in [(a, "second noisy image") for a in acquisitions[1:]] + [(clean, "clean target")]:
            if other is not None and other.shape != first.shape:
                raise UserInputError(
                    f"the {what} has shape {_shape(other)} but the noisy image has {_shape(first)}: "
                    "they must show the same field")
        if fields_ and (first.shape[0], first.ndim) != (fields_[0].noisy[0].shape[0], fields_[0].noisy[0].ndim):
            raise UserInputError("all training images need the same channel count and dimensionality")
        if denoiser.net is not None:
            denoiser.check_compatible(first)
        params = [denoiser.norm_params(a) for a in acquisitions]
        fields_.append(Field(acquisitions, params, clean))
    return fields_


def _shape(img_cf):
    return tuple(img_cf.shape[1:]) if img_cf.shape[0] == 1 else tuple(img_cf.shape)


def patch_shape_for(setting, shapes, ndim: int, multiple: int) -> tuple[int, ...]:
    """Patch edge per axis: the setting, at most the smallest image (no padding,
    which could copy a hidden pixel's value next to it), on the pooling grid."""
    setting = patch_edges(setting, ndim, DEFAULT_PATCH[ndim], lo=4)
    smallest = np.min(np.array(shapes), axis=0)
    out = []
    for p, n in zip(setting, smallest):
        p = min(p, int(n))
        out.append(p // multiple * multiple if p >= multiple else p)
    return tuple(out)


class PatchSampler:
    """Random (input, target, loss weight) batches of patches for one training mode."""

    def __init__(self, fields_: list[Field], mode: str, patch, settings: DenoiseSettings, rng):
        self.fields, self.mode, self.patch, self.s, self.rng = fields_, mode, tuple(patch), settings, rng
        self.augment = Augmentation(settings.flips, settings.rot90, intensity=False, elastic=False)
        sizes = np.array([math.prod(f.shape) for f in fields_], float)
        self.p = sizes / sizes.sum()

    def one(self):
        rng, ndim = self.rng, len(self.patch)
        f = self.fields[int(rng.choice(len(self.fields), p=self.p))]
        lo = [int(rng.integers(n - p + 1)) for n, p in zip(f.shape, self.patch)]
        box = (slice(None),) + tuple(slice(a, a + p) for a, p in zip(lo, self.patch))
        i = int(rng.integers(len(f.noisy)))
        if self.mode == "n2n":
            j = int(rng.integers(len(f.noisy) - 1))
            target = f.noisy[j + (j >= i)]
        else:
            target = f.clean if self.mode == "supervised" else f.noisy[i]
        params = f.params[i]
        scale = params[:, 1].astype(np.float32).reshape((-1,) + (1,) * ndim)
        low = params[:, 0].astype(np.float32).reshape((-1,) + (1,) * ndim)
        x = (f.noisy[i][box] - low) * scale
        y = (target[box] - low) * scale
        x, (y,) = self.augment(x, [y], ndim, rng)
        return x, y.astype(np.float32, copy=False)

    def sample(self, n: int):
        xs, ys = zip(*(self.one() for _ in range(n)))
        x, y = np.stack(xs), np.stack(ys)
        if self.mode != "n2v":
            return x, y, np.ones_like(y)
        s = self.s  # the whole batch's blind spots in one pass (per patch, it bounded GPU training)
        x, w = blind_spot_batch(x, s.masked_fraction, self.rng, s.radius, s.replacement, s.channels)
        return x, y, w


def masked_mse(model, batch):
    """Mean squared error over the pixels whose weight is 1 (Noise2Void: the hidden ones)."""
    x, y, w = batch
    err = (model(x).float() - y) ** 2 * w
    return err.sum() / w.sum().clamp_min(1.0)


# -- training -------------------------------------------------------------
def train_denoiser(denoiser: Denoiser, noisy, pairs=None, targets=None, settings: DenoiseSettings | None = None,
                   channel_axis=None, frames: bool = False, spacing=None, view=None):
    """Train (or continue training) `denoiser`; a generator of core.events.Progress.

    `view`, when given, is a dict the caller may update at any time with
    "box": the region of the first image to preview ((start, stop) per
    axis, None for all of it) and "acquisition" (which frame of a stack);
    previews, every `preview_every` steps, carry {"core": spatial slices,
    "acquisition": k, "denoised": (C, *core) in the input's units}. The last
    event's payload holds the report. Close the generator to stop; the
    kept weights are in the denoiser either way.
    """
    settings = settings or DenoiseSettings()
    settings.check()
    fields_ = prepare_fields(denoiser, noisy, pairs, targets, channel_axis, frames)
    device = pick_device(settings.device)
    rng = np.random.default_rng(data_seed(settings.seed))  # each torchrun rank its own patches
    torch.manual_seed(settings.seed)
    first = fields_[0].noisy[0]
    ndim, n_channels = first.ndim - 1, first.shape[0]
    if denoiser.net is None:
        denoiser.build(n_channels, ndim)
    if spacing is not None:
        denoiser.spacing = list(check_spacing(spacing, ndim))
    net = denoiser.net
    patch = patch_shape_for(settings.patch_size, [f.shape for f in fields_], ndim, net.multiple)
    sampler = PatchSampler(fields_, denoiser.mode, patch, settings, rng)
    batch = int(settings.batch_size) or auto_batch_size(device, patch, denoiser.config["base_channels"])
    view = {} if view is None else view
    shown = {}  # normalised acquisitions of the first field, made when first previewed

    def preview(model):
        k = min(max(int(view.get("acquisition") or 0), 0), len(fields_[0].noisy) - 1)
        if k not in shown:
            shown[k] = denoiser.normalisation.apply(fields_[0].noisy[k], fields_[0].params[k])
        core, values = denoiser.denoise_region(shown[k], fields_[0].params[k], view.get("box"), device, model)
        return {"core": core, "acquisition": k, "denoised": values}

    previous = dict(denoiser.training)
    n_acq = sum(len(f.noisy) for f in fields_)

    def on_end(report):
        denoiser.training = {
            **report,
            "mode": denoiser.mode,
            "steps_total": int(previous.get("steps_total", 0)) + report["steps"],
            "seconds_total": round(float(previous.get("seconds_total", 0)) + report["seconds"], 2),
            "settings": settings.to_json(),
            "patch_shape": list(patch),
            "images": len(fields_),
            "acquisitions": n_acq,
        }
        denoiser.metrics = dict(report["metrics"])

    smallest = np.min(np.array([f.shape for f in fields_]), axis=0)
    asked = settings.patch_size or DEFAULT_PATCH[ndim]  # None or 0: the default
    asked = (asked,) * ndim if isinstance(asked, (int, np.integer)) else tuple(asked)
    clipped = " (clipped to the image)" if any(a > n for a, n in zip(asked, smallest)) else ""
    what = {"n2v": f"{len(fields_)} noisy image(s)",
            "n2n": f"{n_acq} noisy acquisitions of {len(fields_)} field(s)",
            "supervised": f"{len(fields_)} noisy/clean pair(s)"}[denoiser.mode]
    start = (f"training a {ndim}D {denoiser.title} denoiser on {what}: patches "
             f"{'x'.join(map(str, patch))}{clipped}, batch {batch}")
    yield from fit(net, sampler.sample, masked_mse, settings.fit_settings(batch), preview=preview,
                   start_message=start, on_end=on_end)
