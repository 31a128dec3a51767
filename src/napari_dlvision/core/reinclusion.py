"""Put the noisy pixel's own value back into a blind-spot prediction.

Noise2Void's network never sees the pixel it predicts (that is how it learns
without clean images), so its prediction `mu` ignores the best single piece
of evidence there is: the pixel `y` itself. Where the network is sure (flat
regions) `mu` beats `y`; at edges and fine structure often not. Weighing the
two by their error variances,

    x = mu + e2 / (e2 + s2) * (y - mu),

is the posterior mean for Gaussian errors (the idea of Laine et al. 2019 and
of probabilistic Noise2Void, in its simplest form), with
- s2 the noise variance of `y`, a function of the signal (Poisson-Gaussian
  noise: s2 = a * (mu - m0) + b, a and b >= 0);
- e2 the network's own error variance: E[(y - mu)^2] - s2, unbiased because
  `mu` does not depend on `y` at that pixel.

The rule is applied not per pixel but per frequency, as BM3D's second stage
does with its pilot estimate: in every 4 x 4 patch (all positions), each
coefficient of the residual `y - mu` in the orthonormal DCT is kept in the
proportion e2 / (e2 + s2), with e2 fitted per coefficient and per band of the
prediction's gradient magnitude, and the overlapping patches are averaged
with the precision of their estimates as weights. The network errs mostly at
high frequencies near edges, and there the residual's coefficient is kept;
at low frequencies `mu` is kept. On membrane2d (18 Noise2Void networks: 6
noise levels, 3 seeds) this gives 0.01-0.38 dB (median 0.14) more than the
same rule per pixel, and 0.3-0.8 dB over the network alone at low and medium
noise (README).

The result is a blend (BLEND = 0.4) of that residual rule and a second
estimate, BM3D's second stage with `mu` as its pilot (`_wiener`): groups of
similar patches, whose noisy 3D spectrum is kept in the proportion
P^2 / (P^2 + s2) of the prediction's. Each alone loses somewhere (the Wiener
stage by up to 1.3 dB at Gaussian noise of 0.2 on membrane2d, where the
network is better than its own spectrum suggests; the residual rule on the
fine repeated walls of maize); averaged, they were 0.03 dB under to 0.90 dB
above the residual rule alone on 39 networks (membrane2d and maize at six
noise levels, blobs at one, 3 seeds each), median +0.3. The weight 0.4 was
chosen on those same networks (0.25 to 0.6 all gave gains).

The fit is sensitive to s2: an underestimate of 10% undoes the gain, while an
overestimate only shrinks `x` towards `mu`. So s2 is the larger of two
estimates that err in different places: wavelet (Haar) detail coefficients
of `y` by signal band (robust median, fooled by dense fine structure), and
squared residuals on the flattest pixels (fooled by the network's error where
the noise is low).

Everything is fitted once on a calibration region (`calibration_region`) and
then applied by a local rule that looks REACH pixels away, so blocks of a
larger-than-memory image grown by that margin get the same numbers as the
image in memory. Units do not matter: the rule is unchanged by an affine
change of intensities.
"""

from __future__ import annotations

import numpy as np

BANDS = 16  # quantile bands of the signal (s2)
E_BANDS = 32  # quantile bands of the gradient magnitude (e2), fewer on small images
PATCH = 4  # side of the patches whose transform coefficients are weighed
STRIP_PATCHES = 1 << 16  # patches transformed at once (memory: 16 doubles each, a few arrays)
GROUP = 8  # Wiener stage: patches per group (the reference and its 7 nearest in the prediction)
SEARCH = 3  # Wiener stage: the group's patches lie within this many pixels of the reference
STRIP_GROUPS = 1 << 14  # Wiener stage: groups transformed at once (memory: 128 doubles each, a few arrays)
BLEND = 0.4  # share of the Wiener stage in the result (the rest: the residual rule)
# How far a pixel's result looks: the residual rule's patches and gradient filter
# (PATCH - 1 + 4); the Wiener stage's groups, whose references lie up to
# SEARCH + PATCH - 1 away and compare patches up to SEARCH further.
REACH = max(PATCH - 1 + 4, 2 * SEARCH + 2 * (PATCH - 1))
APPLY_VOXELS = 1 << 21  # voxels per band of rows when applying (bounds the working memory)
MIN_VOXELS = 4096  # below this the variances are too noisy to trust: `mu` is kept
CALIBRATION_VOXELS = 1 << 18  # the central region the numbers are fitted on (512 x 512 in 2D)
_MAD_TO_SD = 1 / 0.6745  # a normal distribution's standard deviation over its median absolute deviation


def calibration_region(shape) -> tuple[slice, ...]:
    """The central region of a spatial `shape` holding at most CALIBRATION_VOXELS."""
    shape = tuple(int(n) for n in shape)
    shrink = min(1.0, (CALIBRATION_VOXELS / max(1, int(np.prod(shape)))) ** (1 / len(shape)))
    sides = [max(1, int(n * shrink)) for n in shape]
    return tuple(slice((n - s) // 2, (n - s) // 2 + s) for n, s in zip(shape, sides))


def _gradient(mu: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    return ndi.gaussian_gradient_magnitude(mu, 1.0)


def _quantile_edges(values: np.ndarray, n: int) -> np.ndarray:
    return np.quantile(values, np.linspace(0, 1, n + 1)[1:-1])


def _haar_points(mu: np.ndarray, y: np.ndarray):
    """(signal, detail) per 2x2 cell of the last two axes: the diagonal Haar
    coefficient has the noise's variance and almost no smooth signal."""
    h, w = (s - s % 2 for s in y.shape[-2:])
    y = y[..., :h, :w].reshape(-1, h, w)
    mu = mu[..., :h, :w].reshape(-1, h, w)
    corners = [(slice(None), slice(i, None, 2), slice(j, None, 2)) for i in (0, 1) for j in (0, 1)]
    d = (y[corners[0]] - y[corners[1]] - y[corners[2]] + y[corners[3]]) / 2
    m = sum(mu[c] for c in corners) / 4
    return m.ravel(), d.ravel()


def _affine_fit(x: np.ndarray, v: np.ndarray, m0: float):
    """(a, b) >= 0 of v ~ a * (x - m0) + b, least squares."""
    from scipy.optimize import nnls

    (a, b), _ = nnls(np.stack([x - m0, np.ones_like(x)], 1), v)
    return float(a), float(b)


def _noise_variance(mu: np.ndarray, y: np.ndarray, grad: np.ndarray, m0: float):
    """(a, b): two fits of s2 = a * (mu - m0) + b; see the module's note."""
    m, d = _haar_points(mu, y)
    band = np.searchsorted(_quantile_edges(m, BANDS), m)
    points = []
    for i in range(BANDS):
        di = d[band == i]
        if di.size >= 16:
            mad = np.median(np.abs(di - np.median(di)))
            points.append((float(m[band == i].mean()), float((mad * _MAD_TO_SD) ** 2)))
    haar = _affine_fit(*np.array(points).T, m0) if len(points) >= 2 else (0.0, 0.0)
    flat = grad <= np.quantile(grad, 1 / BANDS)
    residual = _affine_fit(mu[flat], (y[flat] - mu[flat]) ** 2, m0)
    return haar, residual


def fit(mu: np.ndarray, y: np.ndarray) -> dict | None:
    """The numbers of the rule for one channel (spatial arrays, same units), or
    None where there is too little or nothing to fit (the prediction is kept)."""
    mu = np.asarray(mu, np.float64)
    y = np.asarray(y, np.float64)
    if mu.size < MIN_VOXELS or min(mu.shape[-2:]) < PATCH or not (np.all(np.isfinite(mu)) and np.all(np.isfinite(y))):
        return None
    if np.ptp(y) == 0:
        return None
    grad = _gradient(mu)
    m0 = float(mu.min())
    (a1, b1), (a2, b2) = _noise_variance(mu, y, grad, m0)
    # Taking the larger everywhere: both are affine with a common origin, so the
    # pointwise maximum is max(a) and max(b) only where the lines do not cross;
    # keep both lines and take the maximum at each pixel.
    params = {"m0": m0, "lines": [[a1, b1], [a2, b2]]}
    s2 = _noise(params, mu)
    g, s, r2 = [], [], []
    for gp, sp, rc in _patches(y - mu, grad, s2):
        g.append(gp)
        s.append(sp)
        r2.append(rc**2)
    g, s, r2 = np.concatenate(g), np.concatenate(s), np.concatenate(r2)
    bands = int(np.clip(g.size // 512, 1, E_BANDS))
    band = np.searchsorted(_quantile_edges(g, bands), g)
    used = [j for j in range(bands) if np.any(band == j)]
    # E2 as a continuous function of the gradient (linear between band medians):
    # a step function would let a rounding difference between a block and the
    # whole image move a patch to the next band and change it by a visible jump.
    centres = [float(np.median(g[band == j])) for j in used]
    e2 = [np.maximum((r2[band == j] - s[band == j, None]).mean(0), 0.0).tolist() for j in used]
    params.update(centres=centres, e2=e2)
    return params


def _noise(params: dict, mu: np.ndarray) -> np.ndarray:
    x = mu - params["m0"]
    (a1, b1), (a2, b2) = params["lines"]
    # A floor keeps the weight defined where both lines give 0 (a noiseless image).
    floor = 1e-12 * max(1.0, float(np.abs(mu).max(initial=0.0))) ** 2
    return np.maximum(np.maximum(a1 * x + b1, a2 * x + b2), floor)


# The orthonormal 4-point DCT-II as a matrix: D @ v is the transform of v.
_DCT = None


def _dct_matrix() -> np.ndarray:
    global _DCT
    if _DCT is None:
        _DCT = _dct(PATCH)
    return _DCT


def _dct(n: int) -> np.ndarray:
    """The orthonormal n-point DCT-II as a matrix."""
    from scipy.fft import dct

    return dct(np.eye(n), norm="ortho", axis=0)


def _patches(r: np.ndarray, grad: np.ndarray, s2: np.ndarray, rows_out=None):
    """Every PATCH x PATCH patch of the last two axes (all positions, stride 1),
    in strips of rows to bound memory; yields per patch its mean gradient (n,),
    mean noise variance (n,) and the transform of the residual `r` (n, PATCH**2).
    `rows_out`: a list receiving (plane index, first row, strip shape) per strip."""
    from numpy.lib.stride_tricks import sliding_window_view as windows

    d = _dct_matrix()
    shape = r.shape[-2:]
    r, grad, s2 = (a.reshape((-1,) + shape) for a in (r, grad, s2))
    width = shape[1] - PATCH + 1
    rows = shape[0] - PATCH + 1
    step = max(1, STRIP_PATCHES // max(1, width))
    for k in range(r.shape[0]):
        for top in range(0, rows, step):
            sl = slice(top, min(rows, top + step) + PATCH - 1)
            win = (PATCH, PATCH)
            rc = d @ windows(r[k, sl], win) @ d.T
            if rows_out is not None:
                rows_out.append((k, top, rc.shape[:2]))
            yield (windows(grad[k, sl], win).mean((-2, -1)).ravel(), windows(s2[k, sl], win).mean((-2, -1)).ravel(),
                   rc.reshape(-1, PATCH * PATCH))


def apply(params: dict | None, mu: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The rule for one channel: the residual rule (in every patch, each
    transform coefficient of `y - mu` kept in the proportion e2 / (e2 + s2),
    patches averaged with the weights of their estimates' precision) blended
    with the Wiener stage (`_wiener`) as BLEND says; `mu` where `params` is None.
    Large images go in bands of rows grown by REACH (the same values, a
    bounded working memory of about 50 bytes a voxel of a band)."""
    if params is None or min(np.shape(mu)[-2:]) < PATCH:
        return mu
    rows = mu.shape[-2]
    step = max(4 * REACH, APPLY_VOXELS // max(1, mu.size // rows))
    if rows <= step + 2 * REACH:
        return _apply(params, mu, y)
    out = np.empty_like(mu)
    for top in range(0, rows, step):
        a, b = max(0, top - REACH), min(rows, top + step + REACH)
        band = (Ellipsis, slice(a, b), slice(None))
        part = _apply(params, mu[band], y[band])
        n = min(step, rows - top)
        out[..., top:top + n, :] = part[..., top - a:top - a + n, :]
    return out


def _apply(params: dict, mu: np.ndarray, y: np.ndarray) -> np.ndarray:
    mu64, y64 = np.asarray(mu, np.float64), np.asarray(y, np.float64)
    s2 = _noise(params, mu64)  # one noise map for both estimates
    residual = _residual_rule(params, mu64, y64, s2)
    plane = (-1,) + mu64.shape[-2:]
    wiener = np.stack([_wiener(m, v, s) for m, v, s in zip(mu64.reshape(plane), y64.reshape(plane),
                                                            s2.reshape(plane))]).reshape(mu64.shape)
    out = residual + BLEND * (wiener - residual)
    return out.astype(np.asarray(mu).dtype, copy=False)


def _residual_rule(params: dict, mu: np.ndarray, y: np.ndarray, s2: np.ndarray | None = None) -> np.ndarray:
    mu64 = np.asarray(mu, np.float64)
    shape = mu64.shape[-2:]
    r = np.asarray(y, np.float64) - mu64
    s2 = _noise(params, mu64) if s2 is None else s2
    centres, e2 = np.asarray(params["centres"]), np.asarray(params["e2"])
    d = _dct_matrix()
    add = np.zeros((r.size // (shape[0] * shape[1]),) + shape)
    weight = np.zeros_like(add)
    where = []
    for g, s, rc in _patches(r, _gradient(mu64), s2, where):
        k, top, (h, w) = where[-1]
        e = _interp_rows(g, centres, e2)
        keep = e / (e + s[:, None])
        # Each patch weighted by the precision of its estimate (as BM3D aggregates).
        prec = 1.0 / np.maximum((keep * s[:, None]).sum(1), 1e-9 * s)
        x = (d.T @ (keep * rc).reshape(h, w, PATCH, PATCH) @ d) * prec.reshape(h, w, 1, 1)
        prec = prec.reshape(h, w)
        for i in range(PATCH):
            for j in range(PATCH):
                add[k, top + i:top + i + h, j:j + w] += x[:, :, i, j]
                weight[k, top + i:top + i + h, j:j + w] += prec
    return mu64 + (add / weight).reshape(mu64.shape)


def _wiener(mu: np.ndarray, y: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """BM3D's second stage with the network's prediction as its pilot, on one plane.

    Every PATCH x PATCH patch (all positions) is a reference; its group is
    itself and the GROUP - 1 patches within SEARCH pixels most alike in the
    prediction. The noisy group's coefficients in a 3D transform (2D DCT of
    each patch, DCT along the group) are kept in the proportion
    P^2 / (P^2 + s2), P being the prediction's coefficient, and the groups'
    estimates are averaged with the precision of their estimates as weights.
    Similar patches share their signal but not their noise, and the weights
    follow each group's own spectrum: this keeps fine repeated structure
    (cell walls) that the network smooths over.
    """
    from numpy.lib.stride_tricks import sliding_window_view as windows

    mu, y, s2 = (np.asarray(a, np.float64) for a in (mu, y, s2))
    h, w = mu.shape
    ph, pw = h - PATCH + 1, w - PATCH + 1
    if ph < 1 or pw < 1:
        return mu.copy()
    # Transforms as matrices on flattened patches: the 2D DCT of a row-major patch
    # is kron(D, D) @ patch, one matrix product for a whole strip of patches.
    d2, dk = np.kron(_dct_matrix(), _dct_matrix()), _dct(GROUP).astype(np.float32)
    d2_inverse = d2.astype(np.float32)  # orthonormal: coefficients @ d2 gives the patch back
    s2_patch = windows(s2, (PATCH, PATCH)).mean((-2, -1))
    offsets = [(a, b) for a in range(-SEARCH, SEARCH + 1) for b in range(-SEARCH, SEARCH + 1)]
    own = offsets.index((0, 0))
    padded = np.pad(mu, SEARCH, mode="edge")  # shifted copies for the distances (out-of-range ones are dropped)
    add, weight = np.zeros(h * w), np.zeros(h * w)
    pixel = (np.arange(PATCH)[:, None] * w + np.arange(PATCH)[None]).ravel()  # a patch's pixels from its corner
    rows_per_strip = max(1, STRIP_GROUPS // pw)
    for top in range(0, ph, rows_per_strip):
        bottom = min(ph, top + rows_per_strip)
        ri, rj = (a.ravel() for a in np.meshgrid(np.arange(top, bottom), np.arange(pw), indexing="ij"))
        dist = np.empty((len(offsets), ri.size))
        here = padded[SEARCH + top:SEARCH + bottom + PATCH - 1, SEARCH:SEARCH + w]
        for k, (dy, dx) in enumerate(offsets):
            there = padded[SEARCH + top + dy:SEARCH + bottom + PATCH - 1 + dy, SEARCH + dx:SEARCH + w + dx]
            e = (here - there) ** 2
            # The same sums in the same order wherever the strip starts (a block of a larger image
            # then ranks its patches exactly as the whole image does).
            e = sum(e[:, i:i + pw] for i in range(PATCH))
            dist[k] = sum(e[i:i + bottom - top] for i in range(PATCH)).ravel()
            out = (ri + dy < 0) | (ri + dy >= ph) | (rj + dx < 0) | (rj + dx >= pw)
            dist[k, out] = np.inf
        dist[own] = -1.0  # the reference itself leads its group
        # The GROUP nearest, in order of distance.
        pick = np.argpartition(dist, GROUP - 1, axis=0)[:GROUP]
        pick = np.take_along_axis(pick, np.argsort(np.take_along_axis(dist, pick, 0), axis=0, kind="stable"), 0)
        mi, mj = ri + np.array(offsets)[pick, 0], rj + np.array(offsets)[pick, 1]  # (GROUP, n)
        lo, hi = max(0, top - SEARCH), min(ph, bottom + SEARCH)

        def spectrum(a):
            """(GROUP, n, PATCH**2): the members' 2D DCTs, then the DCT along the group."""
            coef = windows(a[lo:hi + PATCH - 1], (PATCH, PATCH)).reshape(hi - lo, pw, PATCH * PATCH) @ d2.T
            coef = coef.astype(np.float32)  # half the memory traffic; the weights need no more digits
            return (dk @ coef[mi - lo, mj].reshape(GROUP, -1)).reshape(GROUP, ri.size, PATCH * PATCH)

        noisy, pilot = spectrum(y), spectrum(mu)
        s = s2_patch[mi, mj].mean(0).astype(np.float32)[None, :, None]
        keep = pilot**2 / (pilot**2 + s)
        prec = 1.0 / np.maximum((keep**2).sum((0, 2), dtype=np.float64) * s[0, :, 0], 1e-300)  # (n,)
        est = (dk.T @ (keep * noisy).reshape(GROUP, -1)).reshape(GROUP, ri.size, PATCH * PATCH) @ d2_inverse
        where = ((mi * w + mj)[..., None] + pixel).ravel()
        add += np.bincount(where, (est * prec[None, :, None]).ravel(), h * w)
        weight += np.bincount(where, np.broadcast_to(prec[None, :, None], est.shape).ravel(), h * w)
    covered = weight > 0
    out = mu.ravel().copy()
    out[covered] = add[covered] / weight[covered]
    return out.reshape(h, w)


def _interp_rows(x: np.ndarray, xp: np.ndarray, table: np.ndarray) -> np.ndarray:
    """`np.interp` of every column of `table` (len(xp), m) at `x` (clamped at the ends)."""
    if len(xp) == 1:
        return np.broadcast_to(table[0], (x.size, table.shape[1]))
    i = np.clip(np.searchsorted(xp, x) - 1, 0, len(xp) - 2)
    t = np.clip((x - xp[i]) / np.maximum(xp[i + 1] - xp[i], 1e-300), 0.0, 1.0)[:, None]
    return (1 - t) * table[i] + t * table[i + 1]


def fit_channels(mu_cf: np.ndarray, y_cf: np.ndarray, skip=()) -> list:
    """`fit` per channel of (C, *spatial) arrays, on their calibration region; None for channels in `skip`."""
    region = (Ellipsis,) + calibration_region(mu_cf.shape[1:])
    return [None if c in skip else fit(mu_cf[c][region], y_cf[c][region]) for c in range(mu_cf.shape[0])]


def apply_channels(params: list, mu_cf: np.ndarray, y_cf: np.ndarray) -> np.ndarray:
    """`apply` per channel, in place in `mu_cf` (returned)."""
    for c, p in enumerate(params):
        if p is not None:
            mu_cf[c] = apply(p, mu_cf[c], y_cf[c])
    return mu_cf
