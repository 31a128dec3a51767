"""U-Net from strokes next to our random forest and scikit-image, over seeds.

For every benchmark image (synthetic nuclei 512 x 512 trained on one image
and scored on another; the real apoc-demo blobs and maize images when
../shared/data is present) this trains, from the same sparse strokes:
- scikit-image's trainable segmentation (its documented defaults),
- this project's random forest (3 random states),
- this project's U-Net at default settings, over --seeds seeds,
and prints foreground IoU and instance F1 at IoU 0.5 against the dense
ground truth as min / median / max, the U-Net's gap to the forest, and the
"stop at any time" shortfall: at each preview (every 50 steps) the weights a
Stop would keep are scored; the shortfall is the largest drop of those below
the best preview shown before. Goals (issue 6): worst seed within 0.02 IoU
of the forest or better, spread (max - min) at most 0.05, shortfall at most
0.03.

    .venv/bin/python bench/bench_unet.py [--seeds 5] [--steps 500] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pixel_classifier import data_dir, real_dataset, synthetic  # noqa: E402

from napari_dlvision.core.instances import instances_from_segmentation  # noqa: E402
from napari_dlvision.core.metrics import instance_f1, iou  # noqa: E402


def synthetic_held_out(size=512):
    """Strokes on one synthetic image, scores on another (held out)."""
    train, test = synthetic(size, 1), synthetic(size, 2)
    return dict(name=f"synthetic {size} held-out", image=train["image"], scribbles=train["scribbles"],
                eval_image=test["image"], fg_class=2, gt_fg=test["instances"] > 0, gt_inst=test["instances"],
                train_gt_fg=train["instances"] > 0, train_gt_inst=train["instances"])


def scores(seg, ds):
    inst = instances_from_segmentation(seg, ds["fg_class"])
    return iou(seg == ds["fg_class"], ds["gt_fg"]), instance_f1(inst, ds["gt_inst"], 0.5)


def eval_image(ds):
    return ds.get("eval_image", ds["image"])


def run_skimage(ds):
    from skimage.feature import multiscale_basic_features
    from skimage.future import fit_segmenter, predict_segmenter
    from sklearn.ensemble import RandomForestClassifier

    t0 = time.perf_counter()
    clf = RandomForestClassifier(n_estimators=50, n_jobs=-1, max_depth=10, max_samples=0.05, random_state=0)
    clf = fit_segmenter(ds["scribbles"], multiscale_basic_features(ds["image"]), clf)
    seg = predict_segmenter(multiscale_basic_features(eval_image(ds)), clf)
    return time.perf_counter() - t0, *scores(seg, ds)


def run_forest(ds, random_state):
    from napari_dlvision.core import pixel_classifier
    from napari_dlvision.core.pixel_classifier import PixelClassifier

    fit = pixel_classifier.fit_forest
    pixel_classifier.fit_forest = lambda *a, **k: fit(*a, **{**k, "random_state": random_state})
    try:
        t0 = time.perf_counter()
        clf = PixelClassifier().fit(ds["image"], ds["scribbles"])
        seg = clf.predict(eval_image(ds))
        return time.perf_counter() - t0, *scores(seg, ds)
    finally:
        pixel_classifier.fit_forest = fit


def run_unet(ds, seed, steps, device):
    """(seconds, IoU, F1 of the kept weights, stop-anytime shortfall, preview IoUs)."""
    from napari_dlvision.dl.pixel_train import TrainSettings, train_unet
    from napari_dlvision.dl.segmenter import UNetSegmenter

    seg = UNetSegmenter(mode="sparse", device=device)
    settings = TrainSettings(steps=steps, seed=seed, device=device, preview_every=50)
    t_train, previews, last = 0.0, [], time.perf_counter()
    for ev in train_unet(seg, ds["image"], ds["scribbles"], settings):
        t_train += time.perf_counter() - last
        if ev.stage == "training" and ev.payload and "preview" in ev.payload:
            # The preview shows the weights a Stop would keep now, on the
            # training image: score it there, off the clock.
            previews.append(scores(seg.segmentation(ev.payload["preview"]), training_truth(ds))[0])
        last = time.perf_counter()
    i, f = scores(seg.predict(eval_image(ds)), ds)
    final = scores(seg.predict(ds["image"]), training_truth(ds))[0]
    best, shortfall = -1.0, 0.0
    for p in previews + [final]:  # the end of the run is a stop too
        best = max(best, p)
        shortfall = max(shortfall, best - p)
    return t_train, i, f, shortfall, previews


def training_truth(ds):
    return {"fg_class": ds["fg_class"], "gt_fg": ds.get("train_gt_fg", ds["gt_fg"]),
            "gt_inst": ds.get("train_gt_inst", ds["gt_inst"])}


def mmm(v):
    v = np.asarray(v, float)
    return f"{v.min():.3f} / {np.median(v):.3f} / {v.max():.3f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=500, help="U-Net steps (the default setting)")
    ap.add_argument("--quick", action="store_true", help="synthetic data only, 3 seeds")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    seeds = range(3 if args.quick else args.seeds)
    datasets = [synthetic_held_out()]
    if not args.quick and (data_dir() / "blobs.tif").is_file():
        datasets.append(real_dataset("blobs", "blobs.tif", "annotations.tif", "labels.tif"))
        datasets.append(real_dataset("maize", "maize_clsm.tif", "maize_clsm_annotation.tif",
                                     "maize_clsm_labels.tif"))
    elif not args.quick:
        print(f"real data not found in {data_dir()}: synthetic only")
    results = []
    for ds in datasets:
        print(f"\n{ds['name']} {ds['image'].shape}", flush=True)
        sk = run_skimage(ds)
        rf = [run_forest(ds, r) for r in range(3)]
        un = []
        for s in seeds:
            un.append(run_unet(ds, s, args.steps, args.device))
            t, i, f, short, prev = un[-1]
            print(f"  seed {s}: IoU {i:.3f} F1 {f:.3f} in {t:.0f} s; previews "
                  + " ".join(f"{p:.2f}" for p in prev) + f"; shortfall {short:.3f}", flush=True)
        results.append({"name": ds["name"], "skimage": sk, "forest": rf, "unet": [u[:4] for u in un],
                        "previews": [u[4] for u in un]})

    print(f"\n{'image':<26}{'method':<20}{'IoU min / med / max':>22}{'F1 min / med / max':>22}{'s (med)':>9}")
    for r in results:
        sk, rf, un = r["skimage"], np.array(r["forest"]), np.array(r["unet"])
        print(f"{r['name']:<26}{'scikit-image':<20}{sk[1]:>22.3f}{sk[2]:>22.3f}{sk[0]:>9.1f}")
        print(f"{'':<26}{'forest (3 states)':<20}{mmm(rf[:, 1]):>22}{mmm(rf[:, 2]):>22}{np.median(rf[:, 0]):>9.1f}")
        print(f"{'':<26}{f'U-Net ({len(un)} seeds)':<20}{mmm(un[:, 1]):>22}{mmm(un[:, 2]):>22}"
              f"{np.median(un[:, 0]):>9.1f}")
        gap = un[:, 1].min() - np.median(rf[:, 1])
        print(f"{'':<26}worst U-Net seed - forest IoU {gap:+.3f} (goal >= -0.02); spread "
              f"{un[:, 1].max() - un[:, 1].min():.3f} (goal <= 0.05); stop-anytime shortfall max "
              f"{un[:, 3].max():.3f} (goal <= 0.03); U-Net/forest time x{np.median(un[:, 0]) / np.median(rf[:, 0]):.0f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
