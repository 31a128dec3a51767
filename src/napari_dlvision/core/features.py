"""Filter bank with ilastik's feature families, for 2D and 3D images.

Every feature is a small value object that knows how many outputs it makes
and how far it reaches (its halo), which is what exact tiled prediction
needs. Features that share a scale share one Gaussian smoothing: gradients,
Hessians and the Laplacian come from finite differences of the smoothed
image, which keeps the bank cheap enough to recompute live.

Scales are in physical units: with an anisotropic voxel size the sigma of
each axis is divided by that axis' spacing relative to the finest one.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from .errors import UserInputError
from .filters import gaussian
from .filters import radius as _radius
from .images import as_channels_first, check_spacing, n_threads

FAMILIES = ("gaussian", "log", "gradient", "dog", "structure_tensor", "hessian")
FAMILY_TITLES = {
    "gaussian": "Gaussian smoothing",
    "log": "Laplacian of Gaussian",
    "gradient": "Gradient magnitude",
    "dog": "Difference of Gaussians",
    "structure_tensor": "Structure tensor eigenvalues",
    "hessian": "Hessian eigenvalues",
}
SCALES = (0.3, 0.7, 1.0, 1.6, 3.5, 5.0, 10.0)
# Like ilastik, the finest scale is only meaningful for plain smoothing.
SMOOTHING_ONLY_SCALE = 0.3
# Beyond this a filter's halo is most of any image and the feature a blur of its mean (a typo, 100 for 1.0).
MAX_SCALE = 32.0
DOG_RATIO = 0.66  # DoG(s) = G(s) - G(0.66 s)
OUTER_RATIO = 0.5  # structure tensor: outer scale = 0.5 * inner scale
_EIGEN_FAMILIES = ("structure_tensor", "hessian")


@dataclass(frozen=True, order=True)
class Feature:
    family: str
    scale: float

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise UserInputError(
                f"unknown feature family {self.family!r}; choose from {', '.join(FAMILIES)}"
            )
        if not 0 < self.scale <= MAX_SCALE:
            raise UserInputError(f"feature scales go from above 0 to {MAX_SCALE:g} pixels, got {self.scale:g}")
        if self.scale < 0.5 and self.family != "gaussian":
            raise UserInputError(
                f"{self.family} needs a scale of at least 0.5 (got {self.scale}); "
                "only Gaussian smoothing is defined at the finest scale"
            )

    @property
    def name(self) -> str:
        return f"{self.family}@{self.scale:g}"

    def n_outputs(self, ndim: int) -> int:
        return ndim if self.family in _EIGEN_FAMILIES else 1

    def halo(self, sigmas: np.ndarray) -> np.ndarray:
        """Pixels per axis this feature reads beyond the pixel it describes.

        `sigmas` is the per-axis sigma in pixels (scale / relative spacing).
        """
        r = np.array([_radius(s) for s in sigmas])
        if self.family in ("gaussian", "dog"):
            return r
        if self.family == "structure_tensor":
            return r + 1 + np.array([_radius(s * OUTER_RATIO) for s in sigmas])
        return r + 2  # derivatives: one finite-difference step each way, twice


@dataclass(frozen=True)
class FeatureSpec:
    """An ordered, duplicate-free selection of features."""

    features: tuple[Feature, ...]

    def __post_init__(self):
        if not self.features:
            raise UserInputError("select at least one feature")
        object.__setattr__(self, "features", tuple(sorted(set(self.features))))

    @classmethod
    def default(cls) -> FeatureSpec:
        """Every family at 0.7-5, the structure tensor at 1.6 and 5 only.

        The structure tensor costs three extra Gaussians per scale (six in
        3D) and changes little between neighbouring scales; two of them keep
        the accuracy (bench/) at about two thirds of the time.
        """
        scales = (0.7, 1.0, 1.6, 3.5, 5.0)
        feats = [Feature("gaussian", SMOOTHING_ONLY_SCALE)]
        feats += [Feature(f, s) for f in FAMILIES if f != "structure_tensor" for s in scales]
        feats += [Feature("structure_tensor", s) for s in (1.6, 5.0)]
        return cls(tuple(feats))

    @classmethod
    def from_grid(cls, families, scales) -> FeatureSpec:
        """Every family at every scale, skipping combinations ilastik leaves out."""
        feats = [
            Feature(f, float(s))
            for f in families
            for s in scales
            if f == "gaussian" or float(s) >= 0.5
        ]
        return cls(tuple(feats))

    @classmethod
    def parse(cls, text: str, scales: str | None = None) -> FeatureSpec:
        """Parse 'gaussian@0.3,hessian@1.6,log' (a bare family takes `scales`).

        `scales` is a comma-separated list; it defaults to all of SCALES.
        """
        try:
            scale_list = [float(s) for s in scales.split(",")] if scales else list(SCALES)
        except ValueError:
            raise UserInputError(f"cannot read scales {scales!r}: use e.g. 1,1.6,3.5") from None
        feats = []
        for token in filter(None, (t.strip() for t in text.split(","))):
            family, _, scale = token.partition("@")
            if scale:
                try:
                    feats.append(Feature(family, float(scale)))
                except ValueError as e:
                    if isinstance(e, UserInputError):
                        raise
                    raise UserInputError(f"cannot read feature {token!r}") from None
            else:
                feats += cls.from_grid([family], scale_list).features
        return cls(tuple(feats))

    def to_json(self) -> list[str]:
        return [f.name for f in self.features]

    @classmethod
    def from_json(cls, names: list[str]) -> FeatureSpec:
        return cls.parse(",".join(names))

    def n_features(self, n_channels: int, ndim: int) -> int:
        return n_channels * sum(f.n_outputs(ndim) for f in self.features)

    def names(self, n_channels: int, ndim: int) -> list[str]:
        out = []
        for c in range(n_channels):
            for f in self.features:
                n = f.n_outputs(ndim)
                suffix = [f" ev{i}" for i in range(n)] if n > 1 else [""]
                out += [f"ch{c} {f.name}{s}" for s in suffix]
        return out

    def halo(self, spacing=None, ndim: int = 2) -> tuple[int, ...]:
        """Largest reach of any feature, per spatial axis, in pixels."""
        rel = relative_spacing(spacing, ndim)
        return tuple(
            int(v)
            for v in np.max([f.halo(f.scale / rel) for f in self.features], axis=0)
        )


def relative_spacing(spacing, ndim: int) -> np.ndarray:
    """Voxel size divided by the finest one (all ones when isotropic)."""
    if spacing is None:
        return np.ones(ndim)
    s = np.asarray(check_spacing(spacing, ndim), dtype=float)
    return s / s.min()


def _along(axis, ndim, sl):
    return (slice(None),) * axis + (sl,) + (slice(None),) * (ndim - axis - 1)


def _d1(a, axis, step):
    """Central difference, edges as if the border pixel repeated.

    Plain slicing: several times faster than correlate1d across rows.
    """
    out = np.zeros_like(a)
    if a.shape[axis] < 2:
        return out
    at = lambda sl: _along(axis, a.ndim, sl)  # noqa: E731
    np.subtract(a[at(slice(2, None))], a[at(slice(None, -2))], out=out[at(slice(1, -1))])
    np.subtract(a[at(slice(1, 2))], a[at(slice(0, 1))], out=out[at(slice(0, 1))])
    np.subtract(a[at(slice(-1, None))], a[at(slice(-2, -1))], out=out[at(slice(-1, None))])
    out *= 0.5 / step
    return out


def _d2(a, axis, step):
    """Second difference, edges as if the border pixel repeated."""
    out = np.zeros_like(a)
    if a.shape[axis] < 2:
        return out
    at = lambda sl: _along(axis, a.ndim, sl)  # noqa: E731
    inner = out[at(slice(1, -1))]
    np.add(a[at(slice(2, None))], a[at(slice(None, -2))], out=inner)
    inner -= 2 * a[at(slice(1, -1))]
    np.subtract(a[at(slice(1, 2))], a[at(slice(0, 1))], out=out[at(slice(0, 1))])
    np.subtract(a[at(slice(-2, -1))], a[at(slice(-1, None))], out=out[at(slice(-1, None))])
    out /= step**2
    return out


def _symmetric_eigenvalues(t: dict, ndim: int) -> list[np.ndarray]:
    """Eigenvalues (descending) of a field of symmetric matrices t[(i, j)]."""
    if ndim == 2:
        a, b, c = t[0, 0], t[0, 1], t[1, 1]
        mean = (a + c) / 2
        r = np.sqrt(((a - c) / 2) ** 2 + b**2)
        return [mean + r, mean - r]
    m = np.empty(t[0, 0].shape + (3, 3), np.float32)
    for i in range(3):
        for j in range(i, 3):
            m[..., i, j] = m[..., j, i] = t[i, j]
    ev = np.linalg.eigvalsh(m)
    return [ev[..., 2], ev[..., 1], ev[..., 0]]


def _scale_outputs(img, scale, families, rel):
    """All requested families at one scale for one channel, by family."""
    ndim = img.ndim
    sig = scale / rel
    g = gaussian(img, sig)
    out = {}
    if "gaussian" in families:
        out["gaussian"] = [g]
    if "dog" in families:
        out["dog"] = [g - gaussian(img, sig * DOG_RATIO)]
    grad = None
    if {"gradient", "structure_tensor"} & families:
        grad = [_d1(g, ax, rel[ax]) for ax in range(ndim)]
        if "gradient" in families:
            out["gradient"] = [np.sqrt(sum(d * d for d in grad))]
        if "structure_tensor" in families:
            st = {
                (i, j): gaussian(grad[i] * grad[j], sig * OUTER_RATIO)
                for i in range(ndim)
                for j in range(i, ndim)
            }
            out["structure_tensor"] = _symmetric_eigenvalues(st, ndim)
    if {"log", "hessian"} & families:
        hess = {(i, i): _d2(g, i, rel[i]) for i in range(ndim)}
        if "log" in families:
            out["log"] = [sum(hess[i, i] for i in range(ndim))]
        if "hessian" in families:
            for i in range(ndim):
                di = grad[i] if grad is not None else _d1(g, i, rel[i])
                for j in range(i + 1, ndim):
                    hess[i, j] = _d1(di, j, rel[j])
            out["hessian"] = _symmetric_eigenvalues(hess, ndim)
    return out


def compute_features(image, spec: FeatureSpec, spacing=None, channel_axis=None) -> np.ndarray:
    """Feature stack (F, *spatial) float32, F = spec.n_features(C, ndim)."""
    img = as_channels_first(image, channel_axis)
    return compute_features_cf(img, spec, spacing)


def compute_features_cf(img: np.ndarray, spec: FeatureSpec, spacing=None, out=None) -> np.ndarray:
    """Same as compute_features for an already validated (C, *spatial) float32 array.

    `out`, if given, is a float32 array of the result's shape to fill (a
    reused buffer spares the page faults of a fresh one per tile).
    """
    n_channels, spatial = img.shape[0], img.shape[1:]
    ndim = len(spatial)
    rel = relative_spacing(spacing, ndim)
    shape = (spec.n_features(n_channels, ndim),) + spatial
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {shape}, got {out.dtype} {out.shape}")
    by_scale: dict[float, set] = {}
    for f in spec.features:
        by_scale.setdefault(f.scale, set()).add(f.family)
    # Offsets of each feature's outputs, in spec order, within one channel.
    per_channel = spec.n_features(1, ndim)
    offsets, k = {}, 0
    for f in spec.features:
        offsets[f] = k
        k += f.n_outputs(ndim)

    def run(job):
        c, scale, families = job
        for family, arrays in _scale_outputs(img[c], scale, families, rel).items():
            start = c * per_channel + offsets[Feature(family, scale)]
            for i, a in enumerate(arrays):
                out[start + i] = a

    jobs = [(c, s, fam) for c in range(n_channels) for s, fam in by_scale.items()]
    # OpenCV and numpy release the GIL for most of the work: threads help.
    workers = min(len(jobs), n_threads())
    if workers > 1:
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(run, jobs))
    else:
        for job in jobs:
            run(job)
    return out
