"""Detectors side by side: each architecture and a classical peer, on real and synthetic images.

    DLVISION_DATA=../shared/data python bench/bench_detector.py [--time-limit 180] [--steps 600]
        [--seeds 0,1,2] [--archs centernet,fcos-mobilenet,...] [--datasets blobs,maize,stardist,nuclei]
        [--json bench/out/detector.json]

Every dataset is split in two halves of the image (rows): boxes derived from
the dense instance labels of the top half train, those of the bottom half
score (COCO mAP@0.5 and mAP@0.5:0.95 with pycocotools, precision and recall
at the model's threshold). Objects cut by the split keep the part on their
side, as a person annotating that half would draw them.

The classical peer is the usual pipeline without learning: Otsu threshold,
connected components split by a distance-transform watershed, a box per
region scored by its mean intensity; its polarity (bright or dark objects),
watershed seed distance and smallest region are chosen on the training half,
so it sees the same annotations. Every network trains from scratch (no
pretrained backbone) under the same time limit and step cap, with 3 seeds
(min / median / max). The forest detector has no network: a seed only
changes which background pixels it samples on large images. Times are wall-clock on this machine; CPU seconds are
printed too, because on a shared machine the wall clock mostly measures the
other users.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_dlvision.core.box_metrics import evaluate_boxes  # noqa: E402
from napari_dlvision.core.boxes import BoxTable, boxes_from_labels  # noqa: E402
from napari_dlvision.core.errors import UserInputError  # noqa: E402

DATASETS = ("blobs", "maize", "stardist", "nuclei")


def data_root() -> Path | None:
    root = Path(os.environ.get("DLVISION_DATA", ROOT.parent / "shared" / "data"))
    for candidate in (root, root / "data"):
        if (candidate / "apoc-demo").is_dir() or (candidate / "stardist-3d").is_dir():
            return candidate
    return None


def load(name: str):
    """(image, instance labels, stack?) or None when the files are missing."""
    import tifffile

    root = data_root()
    if name == "nuclei":
        from napari_dlvision.data.synthetic import nuclei

        s = nuclei((512, 512), seed=0)
        return s.image, s.instances, False
    files = {"blobs": ("apoc-demo/blobs.tif", "apoc-demo/labels.tif"),
             "maize": ("apoc-demo/maize_clsm.tif", "apoc-demo/maize_clsm_labels.tif"),
             "stardist": ("stardist-3d/img3d.tif", "stardist-3d/mask3d.tif")}[name]
    if root is None or not all((root / f).is_file() for f in files):
        return None
    image, labels = (tifffile.imread(root / f) for f in files)
    return image, labels.astype(np.int64), name == "stardist"


def halves(image, labels, stack):
    """((train image, train boxes), (test image, test boxes)): top and bottom half of the rows."""
    axis = 1 if stack else 0
    h = image.shape[axis] // 2
    cut = (slice(None),) * axis
    parts = []
    for rows in (slice(0, h), slice(h, None)):
        img, lab = image[cut + (rows,)], labels[cut + (rows,)]
        parts.append((img, boxes_from_labels(lab, stack)))
    return parts


# -- the classical peer ---------------------------------------------------------------------
def classical(image, bright: bool, min_distance: int, min_area: int) -> BoxTable:
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.measure import regionprops
    from skimage.segmentation import watershed

    img = image.astype(np.float32)
    lo, hi = np.percentile(img, (1, 99.8))
    norm = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    t = threshold_otsu(norm)
    mask = norm > t if bright else norm < t
    dist = ndi.distance_transform_edt(mask)
    regions, _ = ndi.label(mask)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=regions, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    lab = watershed(-dist, markers, mask=mask)
    boxes, scores = [], []
    for r in regionprops(lab, intensity_image=norm):
        if r.area < min_area:
            continue
        boxes.append(r.bbox)
        scores.append(r.intensity_mean if bright else 1 - r.intensity_mean)
    return BoxTable(np.array(boxes, float).reshape(-1, 4), np.ones(len(boxes), int), scores=np.array(scores))


def classical_stack(image, stack, **kw) -> BoxTable:
    if not stack:
        return classical(image, **kw)
    tables = [classical(p, **kw).with_index(i) for i, p in enumerate(image)]
    return BoxTable(np.concatenate([t.boxes for t in tables]), np.concatenate([t.classes for t in tables]),
                    scores=np.concatenate([t.scores for t in tables]), index=np.concatenate([t.index for t in tables]))


def tune_classical(image, truth, stack):
    """The peer's settings with the best mAP@0.5 on the training half."""
    best = None
    for bright in (True, False):
        for min_distance in (2, 4, 7, 12):
            for min_area in (1, 10, 40):
                kw = dict(bright=bright, min_distance=min_distance, min_area=min_area)
                s = evaluate_boxes(classical_stack(image, stack, **kw), truth, 0.3, _planes(image, stack))["mAP@0.5"]
                if best is None or s > best[0]:
                    best = (s, kw)
    return best[1]


def _planes(image, stack):
    return image.shape[0] if stack else None


# -- runs -----------------------------------------------------------------------------------------
def run_classical(train, test, stack):
    (tr_img, tr_boxes), (te_img, te_boxes) = train, test
    t0, c0 = time.perf_counter(), time.process_time()
    kw = tune_classical(tr_img, tr_boxes, stack)
    fit_s, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    pred = classical_stack(te_img, stack, **kw)
    pred_s = time.perf_counter() - t0
    scores = evaluate_boxes(pred, te_boxes, 0.0, _planes(te_img, stack))
    return {"train_s": fit_s, "train_cpu_s": fit_cpu, "steps": None, "predict_s": pred_s, "settings": kw, **scores}


def run_net(arch, train, test, stack, seed, time_limit, steps, device):
    import torch

    from napari_dlvision.dl.detect_train import DetectSettings, train_detector
    from napari_dlvision.dl.detector import Detector

    (tr_img, tr_boxes), (te_img, te_boxes) = train, test
    det = Detector(arch, pretrained="none", device=device)
    settings = DetectSettings(steps=steps, time_limit=time_limit, seed=seed, device=device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in train_detector(det, tr_img, tr_boxes, settings):
        pass
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    cands = det.candidates(te_img)
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()
    pred_s = time.perf_counter() - t0
    scores = evaluate_boxes(det.select(cands, 0.0, det.nms_iou), te_boxes, det.score_threshold, _planes(te_img, stack))
    return {"train_s": train_s, "train_cpu_s": train_cpu, "steps": det.training["steps"], "predict_s": pred_s,
            "kept": det.training["kept"], **scores}, det


def predict_speed(det, size=1024) -> float:
    """Megapixels per second of tiled prediction on a synthetic image of size x size."""
    from napari_dlvision.data.synthetic import nuclei

    image = nuclei((size, size), seed=5).image
    det.candidates(image[:128, :128])  # warm-up
    t0 = time.perf_counter()
    det.candidates(image)
    return size * size / 1e6 / (time.perf_counter() - t0)


def summary(values):
    v = [x for x in values if x is not None and np.isfinite(x)]
    if not v:
        return "n/a"
    return f"{min(v):.3f} / {np.median(v):.3f} / {max(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def main(argv=None):
    from napari_dlvision.dl.detector_archs import ARCHS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--time-limit", type=float, default=180.0, help="training seconds per run (default 180)")
    p.add_argument("--steps", type=int, default=600, help="step cap per run (default 600)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--speed-size", type=int, default=1024, help="edge of the image for prediction speed (0: skip)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    import torch

    if args.device == "cpu":
        torch.set_num_threads(max(1, min(os.cpu_count() or 1, 8)))
    seeds = [int(s) for s in args.seeds.split(",")]
    archs = [a for a in args.archs.split(",") if a]
    results = {}
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; torch threads "
          f"{torch.get_num_threads()}", flush=True)
    for name in args.datasets.split(","):
        data = load(name)
        if data is None:
            print(f"{name}: data not found under {data_root() or 'DLVISION_DATA'}; skipped", flush=True)
            continue
        image, labels, stack = data
        train, test = halves(image, labels, stack)
        print(f"\n== {name}: image {image.shape}, {len(train[1])} training boxes, {len(test[1])} test boxes "
              f"({int((test[1].sizes.min(axis=1) < 6).sum())} of them thinner than 6 pixels)", flush=True)
        res = {"classical": [run_classical(train, test, stack)]}
        print(f"  classical: mAP@0.5 {res['classical'][0]['mAP@0.5']:.3f}  settings {res['classical'][0]['settings']}",
              flush=True)
        for arch in archs:
            runs = []
            for seed in seeds:
                try:
                    r, det = run_net(arch, train, test, stack, seed, args.time_limit, args.steps, args.device)
                except UserInputError as e:  # the forest on densely packed cells: no background to learn
                    print(f"  {arch}: refused: {e}", flush=True)
                    break
                if seed == seeds[0] and args.speed_size:
                    r["speed_mp_s"] = predict_speed(det, args.speed_size)
                runs.append(r)
                print(f"  {arch} seed {seed}: {r['steps']} steps in {r['train_s']:.0f} s ({r['train_cpu_s']:.0f} CPU s), "
                      f"mAP@0.5 {r['mAP@0.5']:.3f}, mAP@0.5:0.95 {r['mAP@0.5:0.95']:.3f}, "
                      f"P {r['precision']:.3f} R {r['recall']:.3f}, load {os.getloadavg()[0]:.1f}", flush=True)
            if runs:
                res[arch] = runs
        results[name] = res
        peer = res["classical"][0]["mAP@0.5"]
        print(f"\n| {name} | method | train s (wall) | CPU s | steps | mAP@0.5 min/med/max | mAP@0.5:0.95 min/med/max "
              f"| mAP@0.5 / classical | predict s (test half) | MP/s at {args.speed_size}^2 |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for method, runs in res.items():
            med50 = float(np.median([r["mAP@0.5"] for r in runs]))
            speed = next((r["speed_mp_s"] for r in runs if "speed_mp_s" in r), None)
            steps = summary([r["steps"] for r in runs]) if runs[0]["steps"] else "-"  # classical, forest: none
            print(f"| | {method} | {np.median([r['train_s'] for r in runs]):.1f} | "
                  f"{np.median([r['train_cpu_s'] for r in runs]):.0f} | {steps} | "
                  f"{summary([r['mAP@0.5'] for r in runs])} | {summary([r['mAP@0.5:0.95'] for r in runs])} | "
                  f"{med50 / peer if peer > 0 else float('inf'):.2f}x | "
                  f"{np.median([r['predict_s'] for r in runs]):.2f} | {'' if speed is None else f'{speed:.2f}'} |",
                  flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=float))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
