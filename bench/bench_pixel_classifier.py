#!/usr/bin/env python
"""Benchmark: our random-forest pixel classifier vs scikit-image's trainable segmentation.

Four parts, side by side in one run (ratios are what to read: this project's
machines are shared, absolute times move with the load):

1. processes, as users run them: `dlvision train rf` then `dlvision predict`,
   each its own process, against scikit-image's trainable segmentation
   (features + fit + predict) in one process, both reading and writing TIFF,
   at 2048 x 2048; wall time and peak memory (max RSS), median of 3 runs
   interleaved, and the accuracy of what they wrote;
2. accuracy on every benchmark image from the same strokes: foreground IoU
   and instance F1 (IoU 0.5; instances of every method from our
   `instances_from_segmentation`, so the comparison isolates pixel
   classification) for ours, scikit-image, apoc's feature set emulated with
   our filters, and apoc itself where a Python with apoc and OpenCL is given
   (`--apoc-python`; apoc pins numpy < 2, so it lives in its own venv);
   in-process times;
3. live update: after one more stroke, the visible 1024 x 1024 region of a
   2048 x 2048 image refreshed (features cached), and the whole image;
4. memory: `dlvision predict` of an 8192 x 8192 image (peak RSS); with
   `--huge N`, an N x N uncompressed TIFF predicted out of core through
   memory maps and `predict_dask` (peak RSS).

    python bench/bench_pixel_classifier.py [--quick] [--parts 1,2,3,4] [--huge 32768] [--json PATH]

Data: $DLVISION_DATA (default ../shared/data from the repository root):
apoc-demo (blobs, maize) and stardist-3d; skipped with a message if absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
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
def data_root() -> Path:
    return Path(os.environ.get("DLVISION_DATA", REPO.parent / "shared" / "data"))


def data_dir() -> Path:
    """apoc-demo folder: $DLVISION_DATA (the folder or its parent) or ../shared/data."""
    root = data_root()
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


def synthetic_dataset(size, seed=SEED):
    d = synthetic(size, seed)
    return dict(name=f"synthetic {size}", image=d["image"], scribbles=d["scribbles"],
                fg_class=NUCLEUS, gt_fg=d["instances"] > 0, gt_inst=d["instances"])


def held_out_dataset():
    """Strokes on synthetic nuclei seed 1, scored on another image (seed 2)."""
    train, test = synthetic(512, 1), synthetic(512, 2)
    return dict(name="held-out 512", image=train["image"], scribbles=train["scribbles"],
                test_image=test["image"], fg_class=NUCLEUS, gt_fg=test["instances"] > 0,
                gt_inst=test["instances"])


def stardist_dataset():
    """StarDist's 3D nuclei sample with ~24 imitated strokes (our stroke generator)."""
    import tifffile

    from napari_dlvision.data.synthetic import _scribbles

    folder = data_root() / "stardist-3d"
    image = tifffile.imread(folder / "img3d.tif")
    inst = tifffile.imread(folder / "mask3d.tif").astype(np.int32)
    strokes = _scribbles(inst, 24, np.random.default_rng(SEED))
    return dict(name="stardist 3D", image=image, scribbles=strokes, fg_class=NUCLEUS,
                gt_fg=inst > 0, gt_inst=inst)


def datasets(quick=False):
    out = []
    if (data_dir() / "blobs.tif").is_file():
        out.append(lambda: real_dataset("apoc blobs", "blobs.tif", "annotations.tif", "labels.tif"))
        out.append(lambda: real_dataset("apoc maize", "maize_clsm.tif", "maize_clsm_annotation.tif",
                                        "maize_clsm_labels.tif"))
    else:
        print(f"apoc-demo images skipped: {data_dir()} not found (set DLVISION_DATA)")
    out.append(lambda: synthetic_dataset(512))
    if not quick:
        out.append(lambda: synthetic_dataset(2048))
    out.append(held_out_dataset)
    if (data_root() / "stardist-3d" / "img3d.tif").is_file():
        out.append(stardist_dataset)
    else:
        print("stardist-3d skipped: not found")
    return out


# -- pipelines (each returns segmentation of the test image + phase times) ----
def run_ours(image, scribbles, test_image=None, n_trees=N_TREES, spec=None):
    t0 = time.perf_counter()
    clf = PixelClassifier(spec, n_trees=n_trees)
    if test_image is None:
        # The GUI path: features computed once per tile, reused for fit and predict.
        prob = clf.fit_predict(image, scribbles)
        t1 = t2 = time.perf_counter()
    else:
        clf.fit(image, scribbles)
        t1 = time.perf_counter()
        prob = clf.predict_proba(test_image)
        t2 = time.perf_counter()
    seg = segmentation(prob)
    return seg, {"fit": t1 - t0, "predict": t2 - t1, "total": time.perf_counter() - t0}


def apoc_like_spec():
    """apoc's default-style feature set (Gaussian, DoG, LoG, Sobel of Gaussian at
    radii 1..15 and the original), emulated with our filters: 25 features."""
    from napari_dlvision.core.features import Feature, FeatureSpec

    scales = (1.0, 2.0, 3.5, 5.0, 7.0, 10.0)
    feats = [Feature("gaussian", 0.3)]
    feats += [Feature(f, s) for f in ("gaussian", "dog", "log", "gradient") for s in scales]
    return FeatureSpec(tuple(feats))


def run_apoc_like(image, scribbles, test_image=None):
    """apoc's forest (100 trees, depth 2 by default in apoc; 10 as in the issue's run)."""
    from sklearn.ensemble import RandomForestClassifier

    from napari_dlvision.core.features import compute_features

    t0 = time.perf_counter()
    spec = apoc_like_spec()
    f = compute_features(image, spec)
    m = scribbles > 0
    clf = RandomForestClassifier(n_estimators=100, max_depth=10, n_jobs=-1, random_state=SEED)
    clf.fit(f[:, m].T, scribbles[m])
    t1 = time.perf_counter()
    ft = f if test_image is None else compute_features(test_image, spec)
    seg = clf.predict(ft.reshape(len(ft), -1).T).reshape(ft.shape[1:]).astype(np.uint8)
    t2 = time.perf_counter()
    return seg, {"fit": t1 - t0, "predict": t2 - t1, "total": t2 - t0}


def run_skimage(image, scribbles, test_image=None):
    from skimage.feature import multiscale_basic_features
    from skimage.future import fit_segmenter, predict_segmenter
    from sklearn.ensemble import RandomForestClassifier

    t0 = time.perf_counter()
    # Raw image passed as-is: multiscale_basic_features converts it with
    # img_as_float32 itself (uint8/uint16 -> [0, 1]); ours uses raw values as
    # float32. A forest does not care about a global intensity scale.
    feats = multiscale_basic_features(image)  # defaults: intensity, edges, texture, sigma 0.5..16
    # Classifier of scikit-image's plot_trainable_segmentation example
    # (random_state added only for reproducibility).
    clf = RandomForestClassifier(n_estimators=50, n_jobs=-1, max_depth=10,
                                 max_samples=0.05, random_state=SEED)
    clf = fit_segmenter(scribbles, feats, clf)
    t1 = time.perf_counter()
    if test_image is not None:
        feats = multiscale_basic_features(test_image)
    seg = predict_segmenter(feats, clf)
    t2 = time.perf_counter()
    return seg, {"fit": t1 - t0, "predict": t2 - t1, "total": t2 - t0}


APOC_FEATURES = "original " + " ".join(
    f"{f}={r}" for f in ("gaussian_blur", "difference_of_gaussian", "laplace_box_of_gaussian_blur",
                         "sobel_of_gaussian_blur") for r in (1, 2, 3, 5, 10, 15))  # 25 features
APOC_SCRIPT = """
import sys, time, numpy as np, tifffile, apoc
image, strokes, test = (tifffile.imread(p) for p in sys.argv[1:4])
t0 = time.perf_counter()
clf = apoc.PixelClassifier(opencl_filename=sys.argv[5], max_depth=10, num_ensembles=100)
clf.train(features=sys.argv[6], ground_truth=strokes, image=image)
t1 = time.perf_counter()
seg = np.asarray(clf.predict(image=test)).astype(np.uint8)
t2 = time.perf_counter()
tifffile.imwrite(sys.argv[4], seg)
print(t1 - t0, t2 - t1)
"""


def run_apoc(image, scribbles, test_image=None):
    """Real apoc (OpenCL on the CPU through pocl) in the Python of --apoc-python."""
    import tifffile

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = [tmp / n for n in ("image.tif", "strokes.tif", "test.tif", "seg.tif", "apoc.cl")]
        for path, a in zip(paths, (image, scribbles, image if test_image is None else test_image)):
            tifffile.imwrite(path, a)
        done = subprocess.run([APOC_PYTHON, "-c", APOC_SCRIPT, *map(str, paths), APOC_FEATURES],
                              capture_output=True, text=True, cwd=tmp)
        if done.returncode:
            raise RuntimeError(f"apoc failed: {done.stderr[-500:]}")
        fit, predict = (float(v) for v in done.stdout.split()[-2:])
        return tifffile.imread(paths[3]), {"fit": fit, "predict": predict, "total": fit + predict}


APOC_PYTHON = None  # set by --apoc-python
APOC_MAX_PIXELS = 1 << 20


METHODS = {
    "ours": run_ours,
    "skimage": run_skimage,
    "apoc-like": run_apoc_like,
    "apoc": run_apoc,
}


def score(seg, ds):
    fg = seg == ds["fg_class"]
    inst = instances_from_segmentation(seg, ds["fg_class"])
    return {"iou": iou(fg, ds["gt_fg"]), "f1": instance_f1(inst, ds["gt_inst"], 0.5)}


def accuracy_part(quick, methods):
    results = []
    for make in datasets(quick):
        ds = make()
        print(f"{ds['name']}: {ds['image'].shape}", flush=True)
        row = {"name": ds["name"], "size": "x".join(map(str, ds["image"].shape)), "methods": {}}
        for m in methods:
            if m == "apoc" and ds["image"].size > APOC_MAX_PIXELS:
                continue  # OpenCL on the CPU (pocl) takes many minutes here
            seg, times = METHODS[m](ds["image"], ds["scribbles"], ds.get("test_image"))
            row["methods"][m] = {"times": times, **score(seg, ds)}
        row["f1_gt_mask"] = instance_f1(instances_from_mask(ds["gt_fg"]), ds["gt_inst"], 0.5)
        results.append(row)
    print("\nAccuracy from the same strokes (IoU foreground / instance F1 at IoU 0.5; s = in-process time)")
    head = f"{'dataset':<16}" + "".join(f"{m:>24}" for m in methods) + f"{'F1 GT':>7}"
    print(head + "\n" + "-" * len(head))
    for r in results:
        cells = "".join(f"{r['methods'][m]['iou']:>9.3f} /{r['methods'][m]['f1']:6.3f} {r['methods'][m]['times']['total']:5.2f}s"
                        if m in r["methods"] else f"{'-':>24}" for m in methods)
        print(f"{r['name']:<16}{cells}{r['f1_gt_mask']:>7.3f}")
    print("F1 GT: the instance step run on the ground-truth mask (the best any pixel classifier can get)")
    return results


# -- processes ---------------------------------------------------------------
SKIMAGE_SCRIPT = """
import sys, numpy as np, tifffile
from skimage.feature import multiscale_basic_features
from skimage.future import fit_segmenter, predict_segmenter
from sklearn.ensemble import RandomForestClassifier
image, strokes = tifffile.imread(sys.argv[1]), tifffile.imread(sys.argv[2])
feats = multiscale_basic_features(image)
clf = RandomForestClassifier(n_estimators=50, n_jobs=-1, max_depth=10, max_samples=0.05, random_state=0)
seg = predict_segmenter(feats, fit_segmenter(strokes, feats, clf)).astype(np.uint8)
tifffile.imwrite(sys.argv[3], seg, compression="zlib")
"""


BASELINE_SRC = None  # --baseline-src: another version's src/ folder, run side by side


def run_process(args, src=None, stdout=subprocess.DEVNULL):
    """(wall seconds, peak RSS MiB) of one command; raises if it fails.

    `src` is the folder holding the napari_dlvision package to run (this
    checkout's by default; --baseline-src gives another version's).
    """
    src = src or REPO / "src"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    p = subprocess.Popen(args, env=env, stdout=stdout, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise RuntimeError(f"{args[:4]} failed: {p.stderr.read().decode()[-500:]}")
    CPU_SECONDS.append(usage.ru_utime + usage.ru_stime)
    return wall, usage.ru_maxrss / 1024


CPU_SECONDS: list[float] = []  # user + system time of each run_process, in order (less load-sensitive)


def process_part(size, repeats):
    import tifffile

    ds = synthetic_dataset(size)
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        img, strokes = tmp / "image.tif", tmp / "strokes.tif"
        tifffile.imwrite(img, ds["image"])
        tifffile.imwrite(strokes, ds["scribbles"])
        cli = [py, "-m", "napari_dlvision.cli"]
        runs = {"ours train": [], "ours predict": [], "skimage": [], "baseline": []}
        cpu = {"ours": [], "skimage": [], "baseline": []}
        for _ in range(repeats):  # interleaved, so load changes hit all alike
            runs["ours train"].append(run_process(cli + ["train", "rf", "--image", str(img), "--labels", str(strokes),
                                                         "--out", str(tmp / "m.dlv")]))
            runs["ours predict"].append(run_process(cli + ["predict", "--model", str(tmp / "m.dlv"), "--image",
                                                           str(img), "--out", str(tmp / "ours.tif")]))
            cpu["ours"].append(sum(CPU_SECONDS[-2:]))
            runs["skimage"].append(run_process([py, "-c", SKIMAGE_SCRIPT, str(img), str(strokes), str(tmp / "sk.tif")]))
            cpu["skimage"].append(CPU_SECONDS[-1])
            if BASELINE_SRC:
                a = run_process(cli + ["train", "rf", "--image", str(img), "--labels", str(strokes),
                                       "--out", str(tmp / "b.dlv")], BASELINE_SRC)
                b = run_process(cli + ["predict", "--model", str(tmp / "b.dlv"), "--image", str(img),
                                       "--out", str(tmp / "base.tif")], BASELINE_SRC)
                runs["baseline"].append((a[0] + b[0], max(a[1], b[1])))
                cpu["baseline"].append(sum(CPU_SECONDS[-2:]))
        ours_seg, sk_seg = tifffile.imread(tmp / "ours.tif"), tifffile.imread(tmp / "sk.tif")
    ours_total = [a[0] + b[0] for a, b in zip(runs["ours train"], runs["ours predict"])]
    sk_total = [s[0] for s in runs["skimage"]]
    res = {
        "size": size, "repeats": repeats,
        "ours_train_s": float(np.median([r[0] for r in runs["ours train"]])),
        "ours_predict_s": float(np.median([r[0] for r in runs["ours predict"]])),
        "ours_s": float(np.median(ours_total)), "skimage_s": float(np.median(sk_total)),
        "ratio": float(np.median(np.array(sk_total) / np.array(ours_total))),
        "ours_rss_mib": max(r[1] for k in ("ours train", "ours predict") for r in runs[k]),
        "skimage_rss_mib": max(r[1] for r in runs["skimage"]),
        "ours": score(ours_seg, ds), "skimage": score(sk_seg, ds),
        "all": {k: [r[0] for r in v] for k, v in runs.items()},
        "cpu_s": {k: float(np.median(v)) for k, v in cpu.items() if v},
    }
    if runs["baseline"]:
        base = [r[0] for r in runs["baseline"]]
        res.update(baseline_s=float(np.median(base)), baseline_rss_mib=max(r[1] for r in runs["baseline"]),
                   speedup_vs_baseline=float(np.median(np.array(base) / np.array(ours_total))),
                   baseline_ratio=float(np.median(np.array(sk_total) / np.array(base))))
    print(f"\nProcesses at {size}x{size} (median of {repeats}, interleaved): ours train {res['ours_train_s']:.2f} s"
          f" + predict {res['ours_predict_s']:.2f} s = {res['ours_s']:.2f} s, peak {res['ours_rss_mib']:.0f} MiB;"
          f" scikit-image {res['skimage_s']:.2f} s, peak {res['skimage_rss_mib']:.0f} MiB;"
          f" ratio sk/ours {res['ratio']:.2f}x (median of per-run ratios)")
    print(f"  accuracy of the written files: ours IoU {res['ours']['iou']:.3f} F1 {res['ours']['f1']:.3f};"
          f" scikit-image IoU {res['skimage']['iou']:.3f} F1 {res['skimage']['f1']:.3f}")
    print("  CPU time (user + system, median): " + ", ".join(f"{k} {v:.2f} s" for k, v in res["cpu_s"].items()))
    if "baseline_s" in res:
        print(f"  baseline ({BASELINE_SRC}): train + predict {res['baseline_s']:.2f} s, peak {res['baseline_rss_mib']:.0f} MiB;"
              f" ours {res['speedup_vs_baseline']:.2f}x faster; sk/baseline {res['baseline_ratio']:.2f}x")
    return res


# -- live update ---------------------------------------------------------------
def add_stroke(labels, instances, rng):
    """Paint a horizontal 'nucleus' stroke across one not-yet-painted nucleus."""
    painted = np.unique(instances[labels > 0])
    candidates = np.setdiff1d(np.unique(instances[instances > 0]), painted)
    k = rng.choice(candidates)
    rows, cols = np.nonzero(instances == k)
    r = int(np.median(rows))
    labels[r, cols[rows == r]] = NUCLEUS


def live_update(size, visible, repeats):
    """Stroke -> visible region refreshed, and -> whole image, features cached."""
    d = synthetic(size, SEED)
    labels = d["scribbles"].copy()
    clf = PixelClassifier(n_trees=N_TREES)
    tiles = clf.feature_tiles(d["image"], cache_bytes=CACHE_BYTES, training=True)
    lo = (size - visible) // 2
    focus = ((lo, lo + visible), (lo, lo + visible))

    def stroke_to_overlay():
        t0 = time.perf_counter()
        X, y = tiles.training_data(labels)
        t1 = time.perf_counter()
        clf.fit_xy(X, y, tiles)
        t2 = time.perf_counter()
        out = np.empty((clf.n_classes, size, size), np.float32)
        t_visible = t_preview = None
        for done, _, band in clf.iter_predict(tiles, out, focus):
            if done == 0:  # the coarse preview of the visible region (versions that have one)
                t_preview = time.perf_counter()
                continue
            inside = all(s.start < hi and s.stop > lo_ for s, (lo_, hi) in zip(band, focus))
            if not inside and t_visible is None:
                t_visible = time.perf_counter()
        t3 = time.perf_counter()
        t_visible = t_visible or t3
        return {"gather": t1 - t0, "fit": t2 - t1, "preview": (t_preview or t_visible) - t0,
                "visible": t_visible - t0, "total": t3 - t0}

    cold = stroke_to_overlay()  # first call computes (and caches) all tile features
    rng = np.random.default_rng(SEED)
    warm = []
    for _ in range(repeats):
        add_stroke(labels, d["instances"], rng)
        warm.append(stroke_to_overlay())
    med = {k: float(np.median([w[k] for w in warm])) for k in warm[0]}
    print(f"\nLive update, {size}x{size} image, visible {visible}x{visible} (features cached, median of {repeats}):"
          f" stroke -> preview of the visible region {med['preview']:.3f} s, exact {med['visible']:.3f} s,"
          f" whole image {med['total']:.3f} s"
          f" (gather {med['gather']:.3f}, fit {med['fit']:.3f}); first run with features {cold['total']:.2f} s")
    return {"size": size, "visible": visible, "cold_total": cold["total"], "warm": med}


def live_side_by_side(size, visible, repeats):
    """The live-update measurement for this checkout and the baseline, alternating processes."""
    results = {"ours": [], "baseline": []}
    for _ in range(2):
        for who, src in (("ours", None), ("baseline", BASELINE_SRC)):
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                code = (f"import sys, json; sys.path.insert(0, {str(REPO / 'bench')!r}); import bench_pixel_classifier as b; "
                        f"json.dump(b.live_update({size}, {visible}, {repeats}), open({f.name!r}, 'w'))")
                run_process([sys.executable, "-c", code], src, stdout=None)
                results[who].append(json.loads(Path(f.name).read_text()))
    med = {who: {k: float(np.median([r["warm"][k] for r in rs])) for k in rs[0]["warm"]} for who, rs in results.items()}
    print(f"  side by side (median of 2 processes each): preview ours {med['ours']['preview']:.3f} s; "
          f"visible region ours {med['ours']['visible']:.3f} s, "
          f"baseline {med['baseline']['visible']:.3f} s ({med['baseline']['visible'] / med['ours']['visible']:.2f}x); "
          f"whole image ours {med['ours']['total']:.3f} s, baseline {med['baseline']['total']:.3f} s "
          f"({med['baseline']['total'] / med['ours']['total']:.2f}x)")
    return {"size": size, "visible": visible, "ours": med["ours"], "baseline": med["baseline"], "runs": results}


# -- memory --------------------------------------------------------------------
def memory_part(size):
    import tifffile

    d = nuclei((512, 512), seed=SEED)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tifffile.imwrite(tmp / "small.tif", d.image)
        tifffile.imwrite(tmp / "strokes.tif", d.scribbles)
        cli = [sys.executable, "-m", "napari_dlvision.cli"]
        run_process(cli + ["train", "rf", "--image", str(tmp / "small.tif"), "--labels", str(tmp / "strokes.tif"),
                           "--out", str(tmp / "m.dlv")])
        reps = -(-size // 512)
        big = np.tile(d.image, (reps, reps))[:size, :size]
        tifffile.imwrite(tmp / "big.tif", big)
        del big
        wall, rss = run_process(cli + ["predict", "--model", str(tmp / "m.dlv"), "--image", str(tmp / "big.tif"),
                                       "--out", str(tmp / "seg.tif")])
    print(f"\nMemory: dlvision predict of a {size}x{size} uint16 image: peak {rss:.0f} MiB, {wall:.1f} s")
    return {"size": size, "peak_rss_mib": rss, "seconds": wall}


OUT_OF_CORE_SCRIPT = """
import sys, dask, dask.array as da, numpy as np, tifffile
from napari_dlvision.core.pixel_classifier import PixelClassifier
clf = PixelClassifier.load(sys.argv[1])
image = tifffile.memmap(sys.argv[2], mode="r")               # nothing read yet
prob = clf.predict_dask(da.from_array(image, chunks=(2048, 2048)))
seg = (prob.argmax(axis=0) + 1).astype(np.uint8)
out = tifffile.memmap(sys.argv[3], shape=image.shape, dtype=np.uint8)
with dask.config.set(scheduler="threads", num_workers=2):
    da.store(seg, out, lock=False)                            # chunk by chunk into the file
out.flush()
"""


def out_of_core_part(size):
    """A size x size uncompressed TIFF predicted through memory maps and dask (`--huge`)."""
    import tifffile

    d = nuclei((512, 512), seed=SEED)
    with tempfile.TemporaryDirectory(dir=os.environ.get("DLVISION_BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        tifffile.imwrite(tmp / "small.tif", d.image)
        tifffile.imwrite(tmp / "strokes.tif", d.scribbles)
        cli = [sys.executable, "-m", "napari_dlvision.cli"]
        run_process(cli + ["train", "rf", "--image", str(tmp / "small.tif"), "--labels", str(tmp / "strokes.tif"),
                           "--out", str(tmp / "m.dlv")])
        big = tifffile.memmap(tmp / "big.tif", shape=(size, size), dtype=np.uint16)
        for r in range(0, size, 512):  # written strip by strip: this process stays small too
            big[r:r + 512] = np.tile(d.image, (1, -(-size // 512)))[: min(512, size - r), :size]
        big.flush()
        del big
        wall, rss = run_process([sys.executable, "-c", OUT_OF_CORE_SCRIPT, str(tmp / "m.dlv"), str(tmp / "big.tif"),
                                 str(tmp / "seg.tif")])
    print(f"\nOut of core: {size}x{size} uint16 TIFF ({size * size * 2 / 2**30:.1f} GiB) through predict_dask: "
          f"peak {rss:.0f} MiB, {wall:.0f} s")
    return {"size": size, "peak_rss_mib": rss, "seconds": wall}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one run each")
    ap.add_argument("--parts", default="1,2,3,4", help="which parts to run (1 processes, 2 accuracy, 3 live, 4 memory)")
    ap.add_argument("--methods", default="ours,skimage,apoc-like", help="methods of part 2 (add apoc with --apoc-python)")
    ap.add_argument("--apoc-python", metavar="PYTHON",
                    help="a Python with apoc and an OpenCL platform (e.g. pocl), used for the 'apoc' method")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--baseline-src", type=Path, metavar="DIR",
                    help="the src/ folder of another version (e.g. `git archive main src | tar -x -C /tmp/base`): "
                         "parts 1 and 3 run it side by side with this checkout")
    ap.add_argument("--huge", type=int, metavar="N", default=0,
                    help="also predict an N x N uncompressed TIFF out of core (e.g. 32768: 2 GiB, long)")
    args = ap.parse_args(argv)
    parts = {int(p) for p in args.parts.split(",")}
    global APOC_PYTHON, BASELINE_SRC
    APOC_PYTHON = args.apoc_python
    BASELINE_SRC = args.baseline_src
    methods = args.methods.split(",")
    if args.apoc_python and "apoc" not in methods:
        methods.append("apoc")
    repeats = 1 if args.quick else 3
    out = {}
    if 1 in parts:
        out["processes"] = process_part(512 if args.quick else 2048, repeats)
    if 2 in parts:
        out["accuracy"] = accuracy_part(args.quick, methods)
    if 3 in parts:
        size, visible = (1024, 512) if args.quick else (2048, 1024)
        if BASELINE_SRC:
            out["live"] = live_side_by_side(size, visible, repeats)
        else:
            out["live"] = live_update(size, visible, repeats)
    if 4 in parts:
        out["memory"] = memory_part(2048 if args.quick else 8192)
    if args.huge:
        out["out_of_core"] = out_of_core_part(args.huge)
    if args.json:
        import sklearn
        import skimage

        env = {"python": sys.version.split()[0], "numpy": np.__version__,
               "scikit-image": skimage.__version__, "scikit-learn": sklearn.__version__,
               "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
               "load_average": os.getloadavg(), "machine": platform.platform(), "quick": args.quick}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"env": env, **out}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
