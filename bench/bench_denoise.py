"""Denoising, side by side: our Noise2Void, Noise2Noise and supervised U-Nets vs
scikit-image (non-local means, total variation, wavelets), BM3D and a Gaussian blur.

Clean images are real ones from ../shared/data (apoc-demo blobs, membrane2d,
maize; on request a montage of stardist-3d planes, which are themselves noisy),
scaled to 0..1; synthetic cells stand in when the data is absent. Noise is added at three levels of each kind:
Gaussian with a standard deviation of 0.05, 0.1 and 0.2 of the range, and
Poisson with 100, 30 and 10 photons for the brightest pixel. Every method
sees the same noisy image and is scored by PSNR and SSIM against the clean
one (data range 1):
- the classical methods at their best parameter for that image and noise,
  found by a small grid search scored against the clean image (an oracle
  choice that favours them); time of one run at that parameter;
- ours trained under a wall-clock budget (--budget, default 180 s) per run,
  over several seeds (min / median / max): Noise2Void from the noisy image
  alone; Noise2Noise from it and a second, independent noisy acquisition;
  supervised from it and the clean image of the same field (so an upper
  bound, not a test of generalisation). Time = training + prediction.
  Noise2Void puts each pixel's own value back where the network is unsure
  (core.reinclusion); its line also shows the network's output alone.

    python bench/bench_denoise.py                                  # everything (hours on 2 cores)
    python bench/bench_denoise.py --images membrane --noise g0.1 --methods n2v --seeds 0,1,2
    python bench/bench_denoise.py --quick                          # synthetic, 1 level, 1 seed, 30 s
    python bench/bench_denoise.py --images maize --methods n2v --tta --save-outputs out/maize
    python bench/bench_denoise.py --reapply out/maize              # the current put-back on those networks

Data root: $DLVISION_DATA (default ../shared/data from the repository root).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

NOISE = {"g0.05": ("gaussian", 0.05), "g0.1": ("gaussian", 0.1), "g0.2": ("gaussian", 0.2),
         "p100": ("poisson", 100.0), "p30": ("poisson", 30.0), "p10": ("poisson", 10.0)}
IMAGES = ("blobs", "membrane", "maize", "stardist")
# The stardist planes are not clean: scikit-image's estimate_sigma finds noise of
# sd 0.050 in them (membrane 0.003, maize 0.004, blobs 0.008), so no method can
# score above ~26 dB against them and a denoiser is marked down for removing
# their own noise. Runnable by name, left out by default.
DEFAULT_IMAGES = ("blobs", "membrane", "maize")
METHODS = ("n2v", "n2n", "supervised")


# -- data -------------------------------------------------------------------
def data_root() -> Path:
    return Path(os.environ.get("DLVISION_DATA", REPO.parent / "shared" / "data"))


def unit(img) -> np.ndarray:
    img = np.asarray(img, np.float64)
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


def load_clean(name: str):
    """A clean 2D image scaled to 0..1, or None when the data is absent."""
    import tifffile

    root = data_root()
    files = {"blobs": "apoc-demo/blobs.tif", "membrane": "apoc-demo/membrane2d.tif",
             "maize": "apoc-demo/maize_clsm.tif", "stardist": "stardist-3d/img3d.tif"}
    if name == "synthetic":
        from napari_dlvision.data.noisy import clean_cells

        return clean_cells((256, 256), seed=0)
    path = root / files[name]
    if not path.is_file():
        return None
    img = tifffile.imread(path)
    if name == "stardist":  # 8 planes of the 3D nuclei, 2 x 4, as one 2D image
        planes = img[np.linspace(4, img.shape[0] - 5, 8).astype(int)]
        img = np.vstack([np.hstack(planes[:4]), np.hstack(planes[4:])])
    return unit(img)


def noisy_pair(clean, noise: str, seed: int):
    """Two independent noisy acquisitions of `clean` (the first is the one denoised)."""
    from napari_dlvision.data.noisy import add_noise

    kind, level = NOISE[noise]
    rng = np.random.default_rng(seed)
    kw = {"gaussian": level} if kind == "gaussian" else {"poisson_peak": level}
    return add_noise(clean, rng, **kw), add_noise(clean, rng, **kw)


# -- scores -------------------------------------------------------------------
def scores(clean, x):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    x = np.asarray(x, np.float32)
    return peak_signal_noise_ratio(clean, x, data_range=1.0), structural_similarity(clean, x, data_range=1.0)


# -- classical methods, each at its best parameter ---------------------------
def classical_methods(sigma: float):
    """{name: (function(noisy, parameter), parameter grid)}; `sigma` is the estimated noise level."""
    from scipy import ndimage as ndi
    from skimage.restoration import denoise_nl_means, denoise_tv_chambolle, denoise_wavelet

    methods = {
        "gaussian blur": (lambda x, s: ndi.gaussian_filter(x, s), [0.5, 0.75, 1.0, 1.5, 2.0, 3.0]),
        "tv_chambolle": (lambda x, w: denoise_tv_chambolle(x, weight=w),
                         [f * sigma for f in (0.5, 0.75, 1.0, 1.5, 2.0)]),
        "wavelet": (lambda x, s: denoise_wavelet(x, sigma=s, method="BayesShrink", mode="soft", rescale_sigma=True),
                    [f * sigma for f in (0.5, 0.75, 1.0, 1.5, 2.0)]),
        "nl_means": (lambda x, h: denoise_nl_means(x, h=h, sigma=sigma, patch_size=5, patch_distance=6,
                                                   fast_mode=True),
                     [f * sigma for f in (0.5, 0.7, 0.9, 1.1, 1.4)]),
    }
    try:
        import bm3d

        methods["bm3d"] = (lambda x, s: bm3d.bm3d(x, sigma_psd=s), [f * sigma for f in (0.75, 1.0, 1.25, 1.5)])
    except ImportError:
        print("  (bm3d is not installed: pip install bm3d)")
    return methods


def run_classical(clean, noisy):
    from skimage.restoration import estimate_sigma

    sigma = float(estimate_sigma(noisy))
    rows = []
    for name, (fn, grid) in classical_methods(sigma).items():
        best = None
        for p in grid:
            t0 = time.perf_counter()
            out = fn(noisy, p)
            seconds = time.perf_counter() - t0
            psnr, ssim = scores(clean, out)
            if best is None or psnr > best["psnr"]:
                best = {"method": name, "param": round(float(p), 4), "psnr": psnr, "ssim": ssim, "seconds": seconds}
        rows.append(best)
        print(f"    {name:14s} param {best['param']:<8g} PSNR {best['psnr']:6.2f}  SSIM {best['ssim']:.3f}  "
              f"{best['seconds']:6.2f} s", flush=True)
    return rows


# -- ours ---------------------------------------------------------------------
def run_ours(method, clean, noisy, second, seed, budget, device, preset, steps, tta=False, save_to=None):
    from napari_dlvision.dl.denoise import Denoiser
    from napari_dlvision.dl.denoise_train import DenoiseSettings, train_denoiser

    d = Denoiser(method, preset, device=device)
    settings = DenoiseSettings(steps=steps, time_limit=budget, seed=seed, device=device)
    pairs = second if method == "n2n" else None
    targets = clean if method == "supervised" else None
    t0 = time.perf_counter()
    for _ in train_denoiser(d, noisy, pairs=pairs, targets=targets, settings=settings):
        pass
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = d.denoise(noisy, tta=tta)
    t_pred = time.perf_counter() - t0
    psnr, ssim = scores(clean, out)
    run = {"method": method, "seed": seed, "psnr": psnr, "ssim": ssim, "train_seconds": t_train,
           "predict_seconds": t_pred, "steps": d.training["steps"]}
    if d.reinclude:  # the same network without the noisy value put back, for the record
        d.reinclude = False
        alone = d.denoise(noisy, tta=tta)
        run["psnr_network_only"] = scores(clean, alone)[0]
        if save_to is not None:  # to try post-processing offline on the same networks
            np.savez_compressed(save_to, mu=alone, noisy=noisy, clean=clean)
    return run


def summarise(runs):
    p = sorted(r["psnr"] for r in runs)
    med = statistics.median(p)
    alone = [r["psnr_network_only"] for r in runs if "psnr_network_only" in r]
    return {"psnr_min": p[0], "psnr_median": med, "psnr_max": p[-1],
            "psnr_network_only_median": statistics.median(alone) if alone else None,
            "ssim_median": statistics.median(r["ssim"] for r in runs),
            "seconds_median": statistics.median(r["train_seconds"] + r["predict_seconds"] for r in runs),
            "steps_median": statistics.median(r["steps"] for r in runs), "seeds": len(runs)}


def reapply(folder: Path) -> None:
    """The current put-back (core.reinclusion, as in `predict`) on saved network outputs: rules
    compared on the very same networks, in seconds instead of hours of training."""
    from napari_dlvision.core import reinclusion

    runs: dict = {}
    for path in sorted(folder.glob("*_s*.npz")):
        with np.load(path) as z:
            mu, noisy, clean = (z[k].astype(np.float64) for k in ("mu", "noisy", "clean"))
        put_back = reinclusion.apply_channels(reinclusion.fit_channels(mu[None], noisy[None]), mu[None].copy(),
                                              noisy[None])[0]
        key = path.stem.rsplit("_s", 1)[0]
        runs.setdefault(key, []).append((scores(clean, mu)[0], scores(clean, put_back)[0]))
    if not runs:
        sys.exit(f"no saved outputs (<image>_<noise>_s<seed>.npz) in {folder}")
    print("image_noise | seeds | network alone min / median / max | put back min / median / max")
    for key, rows in runs.items():
        alone, back = np.array(rows).T
        print(f"{key} | {len(rows)} | {mmm(alone)} | {mmm(back)}")


def mmm(v) -> str:
    return f"{np.min(v):.2f} / {np.median(v):.2f} / {np.max(v):.2f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", default=",".join(DEFAULT_IMAGES),
                    help=f"comma-separated: {', '.join(IMAGES)}, synthetic (default: all but stardist, whose "
                         "reference is itself noisy)")
    ap.add_argument("--noise", default=",".join(NOISE), help=f"comma-separated: {', '.join(NOISE)}")
    ap.add_argument("--methods", default=",".join(METHODS), help="ours, comma-separated: n2v, n2n, supervised")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget", type=float, default=180.0, help="training seconds per run of ours")
    ap.add_argument("--steps", type=int, default=100_000, help="step cap of ours (the budget usually ends first)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--tta", action="store_true", help="ours: average 8 flips/rotations at prediction")
    ap.add_argument("--quick", action="store_true", help="synthetic image, g0.1, Noise2Void, 1 seed, 30 s")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--save-outputs", type=Path, metavar="DIR",
                    help="Noise2Void: save each network's output (without the noisy values put back), the noisy "
                         "and the clean image per run, as DIR/<image>_<noise>_s<seed>.npz")
    ap.add_argument("--reapply", type=Path, metavar="DIR",
                    help="train nothing: put the noisy values back, as `predict` does now, into the network "
                         "outputs saved in DIR by --save-outputs, and print PSNR per image and noise")
    args = ap.parse_args(argv)
    if args.reapply is not None:
        return reapply(args.reapply)
    if args.quick:
        args.images, args.noise, args.methods, args.seeds, args.budget = "synthetic", "g0.1", "n2v", "0", 30.0
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    results = []
    images = [i for i in args.images.split(",") if i]
    real = [i for i in images if i != "synthetic"]
    if real and all(load_clean(i) is None for i in real):
        print(f"no data under {data_root()}: using the synthetic image (set DLVISION_DATA)")
        images = ["synthetic"]
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"ours: budget {args.budget:g} s per run, seeds {seeds}", flush=True)
    for image in images:
        clean = load_clean(image)
        if clean is None:
            print(f"{image}: not found under {data_root()}, skipped")
            continue
        for k, noise in enumerate(args.noise.split(",")):
            noisy, second = noisy_pair(clean, noise, seed=1000 + k)
            p0, s0 = scores(clean, noisy)
            print(f"\n{image} {clean.shape[1]}x{clean.shape[0]}, noise {noise}: noisy PSNR {p0:.2f} SSIM {s0:.3f}",
                  flush=True)
            classical = run_classical(clean, noisy)
            best = max(classical, key=lambda r: r["psnr"])
            row = {"image": image, "noise": noise, "noisy_psnr": p0, "noisy_ssim": s0, "classical": classical,
                   "ours": {}}
            for method in methods:
                runs = []
                for seed in seeds:
                    save_to = None
                    if args.save_outputs is not None:
                        args.save_outputs.mkdir(parents=True, exist_ok=True)
                        save_to = args.save_outputs / f"{image}_{noise}_s{seed}.npz"
                    r = run_ours(method, clean, noisy, second, seed, args.budget, args.device, args.preset, args.steps,
                                 args.tta, save_to)
                    runs.append(r)
                    plain = f" (network only {r['psnr_network_only']:.2f})" if "psnr_network_only" in r else ""
                    print(f"    ours {method:10s} seed {seed}: PSNR {r['psnr']:6.2f}{plain}  SSIM {r['ssim']:.3f}  "
                          f"{r['steps']} steps in {r['train_seconds']:.0f} s + predict {r['predict_seconds']:.2f} s",
                          flush=True)
                s = summarise(runs)
                row["ours"][method] = {"runs": runs, **s}
                alone = s["psnr_network_only_median"]
                alone = f" (network only: median {alone:.2f})" if alone is not None else ""
                print(f"  => {method}: PSNR min/median/max {s['psnr_min']:.2f} / {s['psnr_median']:.2f} / "
                      f"{s['psnr_max']:.2f}{alone}, SSIM {s['ssim_median']:.3f}; vs best classical ({best['method']}, "
                      f"{best['psnr']:.2f}): {s['psnr_median'] - best['psnr']:+.2f} dB, time ratio ours/"
                      f"{best['method']} {s['seconds_median'] / max(best['seconds'], 1e-3):.0f}x", flush=True)
            results.append(row)
    print("\nsummary: PSNR (dB), ours = median of seeds")
    head = ["image", "noise", "noisy"] + [m for m in ("gaussian blur", "tv_chambolle", "wavelet", "nl_means", "bm3d")]
    head += methods + [f"{m}-best" for m in methods]
    print(" | ".join(head))
    for row in results:
        cl = {r["method"]: r["psnr"] for r in row["classical"]}
        best = max(cl.values())
        cells = [row["image"], row["noise"], f"{row['noisy_psnr']:.2f}"]
        cells += [f"{cl[m]:.2f}" if m in cl else "-" for m in head[3:8]]
        cells += [f"{row['ours'][m]['psnr_median']:.2f}" for m in methods]
        cells += [f"{row['ours'][m]['psnr_median'] - best:+.2f}" for m in methods]
        print(" | ".join(cells))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=float))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
