#!/usr/bin/env python
"""Benchmark: our random-forest pixel classifier vs scikit-image's trainable segmentation.

Both pipelines get the same image and the same sparse scribbles, and run
features + fit + predict on the whole image. Accuracy is scored against dense
ground truth: foreground IoU, and instance F1 at IoU 0.5 where the instances
of BOTH pipelines come from our `instances_from_segmentation`, so the
comparison isolates pixel classification. Also reports our live-update
latency (one more stroke -> full overlay, features cached).

    python bench/bench_pixel_classifier.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from napari_dlvision.core.instances import instances_from_mask, instances_from_segmentation
from napari_dlvision.core.metrics import instance_f1, iou
from napari_dlvision.core.pixel_classifier import PixelClassifier, segmentation
from napari_dlvision.core.tiling import CACHE_BYTES
from napari_dlvision.data.synthetic import NUCLEUS, nuclei

REPO = Path(__file__).resolve().parent.parent
N_TREES = 50  # ours (the default)
SEED = 0


# -- datasets ----------------------------------------------------------------
def data_dir() -> Path:
    """apoc-demo folder: $DLVISION_DATA (the folder or its parent) or ../shared/data."""
    root = Path(os.environ.get("DLVISION_DATA", REPO.parent / "shared" / "data"))
    return root / "apoc-demo" if (root / "apoc-demo").is_dir() else root


def real_dataset(name, image_file, scribble_file, labels_file):
    import tifffile
    from skimage.segmentation import find_boundaries

    folder = data_dir()
    image = tifffile.imread(folder / image_file)
    scribbles = tifffile.imread(folder / scribble_file).astype(np.uint8)
    inst = tifffile.imread(folder / labels_file).astype(np.int32)  # blobs: float32 ids
    gt_fg = inst > 0
    if gt_fg.all():
        # maize: the cell labels tile the whole image, neighbouring cells
        # touching along the walls. The walls are the label boundaries, so the
        # "foreground" is each cell's interior (labels minus a ~2 px boundary).
        gt_fg &= ~find_boundaries(inst, mode="inner")
        inst = np.where(gt_fg, inst, 0)
    # Foreground scribble class = the one whose pixels lie mostly on GT foreground
    # (blobs: 2 = blob; maize: 1 = cell interior, 2 = wall).
    classes = [k for k in np.unique(scribbles) if k > 0]
    fg_class = max(classes, key=lambda k: gt_fg[scribbles == k].mean())
    return dict(name=name, image=image, scribbles=scribbles, fg_class=int(fg_class),
                gt_fg=gt_fg, gt_inst=inst)


def synthetic(size, seed):
    s = nuclei((size, size), seed=seed)
    return {"image": s.image, "scribbles": s.scribbles, "instances": s.instances}


def synthetic_dataset(size):
    d = synthetic(size, SEED)
    return dict(name=f"synthetic {size}", image=d["image"], scribbles=d["scribbles"],
                fg_class=NUCLEUS, gt_fg=d["instances"] > 0, gt_inst=d["instances"])


# -- the two pipelines (each returns segmentation + phase times) --------------
def run_ours(image, scribbles):
    t0 = time.perf_counter()
    clf = PixelClassifier(n_trees=N_TREES)
    # The GUI path: features computed once per tile, reused for fit and predict.
    tiles = clf.feature_tiles(image, training=True, cache_bytes=CACHE_BYTES)
    clf.fit_xy(*tiles.training_data(scribbles), tiles)
    t1 = time.perf_counter()
    prob = np.empty((clf.n_classes,) + tiles.shape, np.float32)
    for _ in clf.iter_predict(tiles, prob):
        pass
    seg = segmentation(prob)
    t2 = time.perf_counter()
    return seg, {"fit": t1 - t0, "predict": t2 - t1, "total": t2 - t0}


def run_skimage(image, scribbles):
    from skimage.feature import multiscale_basic_features
    from skimage.future import fit_segmenter, predict_segmenter
    from sklearn.ensemble import RandomForestClassifier

    t0 = time.perf_counter()
    # Raw image passed as-is: multiscale_basic_features converts it with
    # img_as_float32 itself (uint8/uint16 -> [0, 1]); ours uses raw values as
    # float32. A forest does not care about a global intensity scale.
    feats = multiscale_basic_features(image)  # defaults: intensity, edges, texture, sigma 0.5..16
    t1 = time.perf_counter()
    # Classifier of scikit-image's plot_trainable_segmentation example
    # (random_state added only for reproducibility).
    clf = RandomForestClassifier(n_estimators=50, n_jobs=-1, max_depth=10,
                                 max_samples=0.05, random_state=SEED)
    clf = fit_segmenter(scribbles, feats, clf)
    t2 = time.perf_counter()
    seg = predict_segmenter(feats, clf)
    t3 = time.perf_counter()
    return seg, {"features": t1 - t0, "fit": t2 - t1, "predict": t3 - t2, "total": t3 - t0}


def timed(fn, ds, repeats):
    """Median phase times over `repeats` runs; scores from the last run."""
    runs = [fn(ds["image"], ds["scribbles"]) for _ in range(repeats)]
    seg = runs[-1][0]
    times = {k: float(np.median([r[1][k] for r in runs])) for k in runs[0][1]}
    fg = seg == ds["fg_class"]
    inst = instances_from_segmentation(seg, ds["fg_class"])
    return {"times": times, "iou": iou(fg, ds["gt_fg"]),
            "f1": instance_f1(inst, ds["gt_inst"], 0.5)}


# -- live update ---------------------------------------------------------------
def add_stroke(labels, instances, rng):
    """Paint a horizontal 'nucleus' stroke across one not-yet-painted nucleus."""
    painted = np.unique(instances[labels > 0])
    candidates = np.setdiff1d(np.unique(instances[instances > 0]), painted)
    k = rng.choice(candidates)
    rows, cols = np.nonzero(instances == k)
    r = int(np.median(rows))
    labels[r, cols[rows == r]] = NUCLEUS


def live_update(size, repeats):
    d = synthetic(size, SEED)
    labels = d["scribbles"].copy()
    clf = PixelClassifier(n_trees=N_TREES)
    # training=True: an untrained classifier refuses feature_tiles otherwise.
    tiles = clf.feature_tiles(d["image"], cache_bytes=2 << 30, training=True)

    def stroke_to_overlay():
        t0 = time.perf_counter()
        X, y = tiles.training_data(labels)
        t1 = time.perf_counter()
        clf.fit_xy(X, y, tiles)
        t2 = time.perf_counter()
        out = np.empty((clf.n_classes, size, size), np.float32)
        for _ in clf.iter_predict(tiles, out):
            pass
        t3 = time.perf_counter()
        return {"gather": t1 - t0, "fit": t2 - t1, "predict": t3 - t2, "total": t3 - t0}

    cold = stroke_to_overlay()  # first call computes (and caches) all tile features
    rng = np.random.default_rng(SEED)
    warm = []
    for _ in range(repeats):
        add_stroke(labels, d["instances"], rng)
        warm.append(stroke_to_overlay())
    med = {k: float(np.median([w[k] for w in warm])) for k in warm[0]}
    return {"size": size, "n_tiles": len(tiles.tiles), "cold_total": cold["total"], "warm": med}


# -- report --------------------------------------------------------------------
def print_report(results, live):
    cols = f"{'dataset':<16}{'size':>11}{'ours s':>9}{'skimage s':>11}{'sk/ours':>9}" \
           f"{'IoU ours':>10}{'IoU sk':>8}{'F1 ours':>9}{'F1 sk':>7}{'F1 GT':>7}"
    print("\n" + cols + "\n" + "-" * len(cols))
    for r in results:
        o, s = r["ours"], r["skimage"]
        print(f"{r['name']:<16}{r['size']:>11}{o['times']['total']:>9.2f}{s['times']['total']:>11.2f}"
              f"{r['ratio']:>8.2f}x{o['iou']:>10.3f}{s['iou']:>8.3f}{o['f1']:>9.3f}{s['f1']:>7.3f}{r['f1_gt_mask']:>7.3f}")
    print("F1 GT: instance step run on the ground-truth mask (the best any pixel classifier can get)")
    print("\nphase times (s): ours features of labelled tiles + fit / predict (+ other tiles' features); "
          "skimage features / fit / predict")
    for r in results:
        o, s = r["ours"]["times"], r["skimage"]["times"]
        print(f"  {r['name']:<16} ours {o['fit']:6.2f} / {o['predict']:6.2f}    "
              f"skimage {s['features']:6.2f} / {s['fit']:6.2f} / {s['predict']:6.2f}")
    if live:
        w = live["warm"]
        print(f"\nlive update, synthetic {live['size']}x{live['size']} ({live['n_tiles']} tile(s), "
              f"features cached): stroke -> overlay {w['total']:.2f} s median "
              f"(gather {w['gather']:.2f}, fit {w['fit']:.2f}, predict {w['predict']:.2f}); "
              f"first call with feature computation {live['cold_total']:.2f} s")
    ratios = [r["ratio"] for r in results]
    gmean = float(np.exp(np.mean(np.log(ratios)))) if ratios else float("nan")
    print("\nskimage/ours time ratio: " + ", ".join(f"{r['name']} {r['ratio']:.2f}x" for r in results)
          + f"; geometric mean {gmean:.2f}x (>1: ours faster)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="skip 2048x2048, one timed run each")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    repeats = 1 if args.quick else 3

    datasets = []
    if (data_dir() / "blobs.tif").is_file():
        datasets.append(lambda: real_dataset("blobs", "blobs.tif", "annotations.tif", "labels.tif"))
        datasets.append(lambda: real_dataset("maize_clsm", "maize_clsm.tif",
                                             "maize_clsm_annotation.tif", "maize_clsm_labels.tif"))
    else:
        print(f"real images skipped: {data_dir()} not found (set DLVISION_DATA)")
    for size in (512,) if args.quick else (512, 2048):
        datasets.append(lambda size=size: synthetic_dataset(size))

    # Warm-up (imports, thread pools, sklearn/scipy first-call costs), not timed.
    warm = synthetic_dataset(256)
    run_ours(warm["image"], warm["scribbles"])
    run_skimage(warm["image"], warm["scribbles"])

    results = []
    for make in datasets:
        ds = make()
        big = ds["image"].size > 1024 * 1024
        n = 1 if big else repeats  # a 2048^2 run takes long enough to time once
        print(f"{ds['name']}: {ds['image'].shape}, {n} timed run(s) ...", flush=True)
        ours, sk = timed(run_ours, ds, n), timed(run_skimage, ds, n)
        # Ceiling of instance F1: the instance step applied to the GT foreground itself.
        f1_gt = instance_f1(instances_from_mask(ds["gt_fg"]), ds["gt_inst"], 0.5)
        results.append({"name": ds["name"], "size": "x".join(map(str, ds["image"].shape)),
                        "fg_class": ds["fg_class"], "repeats": n, "ours": ours, "skimage": sk,
                        "f1_gt_mask": f1_gt,
                        "ratio": sk["times"]["total"] / ours["times"]["total"]})

    print("live update 1024x1024 ...", flush=True)
    live = live_update(1024, repeats)
    print_report(results, live)

    if args.json:
        import sklearn, skimage
        env = {"python": sys.version.split()[0], "numpy": np.__version__,
               "scikit-image": skimage.__version__, "scikit-learn": sklearn.__version__,
               "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
               "machine": platform.platform(), "quick": args.quick}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"env": env, "results": results, "live": live}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
