"""Weight averages for the U-Net's kept weights, compared on the same training runs.

For each seed, one U-Net trains at default settings (as bench_unet.py) while
several averages of its weights are updated side by side on that one
trajectory: the EMA with warm-up, and equal-weight averages from a given step
on (dl.loop.average_weight). Each average is scored at every preview (50
steps) and at the end, on the training image's truth, which gives its
"stop at any time" shortfall (issue 6: the largest drop below an earlier
preview), and at the end on the held-out image (IoU, instance F1).

    DLVISION_DATA=../shared/data python bench/bench_unet_averages.py blobs 0,1,2,3,4
    (datasets: blobs, maize, synthetic)

The column of the default average reproduces the real kept weights (checked
per seed: "kept" below).
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pixel_classifier import real_dataset  # noqa: E402
from bench_unet import eval_image, scores, synthetic_held_out, training_truth  # noqa: E402

from napari_dlvision.dl import loop  # noqa: E402
from napari_dlvision.dl.pixel_train import TrainSettings, train_unet  # noqa: E402
from napari_dlvision.dl.segmenter import UNetSegmenter  # noqa: E402

DATASETS = {"blobs": lambda: real_dataset("blobs", "blobs.tif", "annotations.tif", "labels.tif"),
            "maize": lambda: real_dataset("maize", "maize_clsm.tif", "maize_clsm_annotation.tif",
                                          "maize_clsm_labels.tif"),
            "synthetic": synthetic_held_out}
# name -> start of the equal-weight average (None: the EMA 0.99 with warm-up)
AVERAGES = {"ema": None, "equal from 0": 0, "equal from 25": 25, "equal from 50": 50, "equal from 100": 100}


def run(ds, seed):
    avgs, counts = {}, {}
    original = loop._Averaged.update

    def update(self, net):
        state = net.state_dict()
        for name, start in AVERAGES.items():
            n = counts.get(name, 0)
            if name not in avgs:
                avgs[name] = {k: v.detach().clone() for k, v in state.items()}
            else:
                w = loop.average_weight(0.99, n, start)
                for k, v in state.items():
                    if torch.is_floating_point(v):
                        avgs[name][k].lerp_(v.detach(), w)
                    else:
                        avgs[name][k].copy_(v)
            counts[name] = n + 1
        return original(self, net)

    loop._Averaged.update = update
    try:
        seg = UNetSegmenter(mode="sparse", device="cpu")
        previews = {name: [] for name in AVERAGES}
        settings = TrainSettings(seed=seed, device="cpu", preview_every=50)
        for ev in train_unet(seg, ds["image"], ds["scribbles"], settings):
            if ev.stage == "training" and ev.payload and "preview" in ev.payload:
                c = copy.deepcopy(seg)
                for name in AVERAGES:
                    c.net.load_state_dict(avgs[name])
                    previews[name].append(scores(c.predict(ds["image"]), training_truth(ds))[0])
    finally:
        loop._Averaged.update = original
    kept = scores(seg.predict(ds["image"]), training_truth(ds))[0]
    out, c = {}, copy.deepcopy(seg)
    for name in AVERAGES:
        c.net.load_state_dict(avgs[name])
        end = scores(c.predict(ds["image"]), training_truth(ds))[0]
        best, short = -1.0, 0.0
        for p in previews[name] + [end]:
            best, short = max(best, p), max(short, max(best, p) - p)
        out[name] = (short, *scores(c.predict(eval_image(ds)), ds), end)
    return kept, out


def main():
    name, seeds = sys.argv[1], [int(s) for s in sys.argv[2].split(",")] if len(sys.argv) > 2 else range(5)
    ds = DATASETS[name]()
    rows = {a: [] for a in AVERAGES}
    for seed in seeds:
        t0 = time.perf_counter()
        kept, out = run(ds, seed)
        for a, r in out.items():
            rows[a].append(r)
        default = out["equal from 50"] if TrainSettings().average_from == 50 else out["ema"]
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s; kept {kept:.3f} (the default average's end: "
              f"{default[3]:.3f})", flush=True)
    print(f"\n{name}: average | shortfall max (per seed) | IoU min / median / max | F1 median")
    for a, r in rows.items():
        r = np.asarray(r)
        print(f"{a:15s} | {r[:, 0].max():.3f} ({' '.join(f'{x:.3f}' for x in r[:, 0])}) | "
              f"{r[:, 1].min():.3f} / {np.median(r[:, 1]):.3f} / {r[:, 1].max():.3f} | {np.median(r[:, 2]):.3f}")


if __name__ == "__main__":
    main()
