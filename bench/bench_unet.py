"""U-Net vs random forest vs scikit-image, from the same sparse strokes.

For each dataset (synthetic nuclei 512 x 512 with ~20 strokes; the real
apoc-demo blobs and maize images when ../shared/data is present) this trains:
- scikit-image's trainable segmentation (documented defaults),
- this project's random forest (features + fit + predict),
- this project's U-Net from the same strokes, with a wall-clock budget,
and prints foreground IoU and instance F1 at IoU 0.5 against the dense
ground truth, and the training wall time to reach them. U-Net checkpoints
are scored at fixed training times (scoring time excluded). It ends with the
throughput of tiled prediction in megapixels per second.

    .venv/bin/python bench/bench_unet.py [--budget 240] [--quick] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pixel_classifier import real_dataset, run_ours, run_skimage, synthetic_dataset  # noqa: E402

from napari_dlvision.core.instances import instances_from_segmentation  # noqa: E402
from napari_dlvision.core.metrics import instance_f1, iou  # noqa: E402


def scores(seg, ds):
    inst = instances_from_segmentation(seg, ds["fg_class"])
    return iou(seg == ds["fg_class"], ds["gt_fg"]), instance_f1(inst, ds["gt_inst"])


def run_unet(ds, budget, checkpoints, device, steps):
    from napari_dlvision.dl.segmenter import UNetSegmenter
    from napari_dlvision.dl.train import TrainSettings, train_unet

    seg = UNetSegmenter("small", "sparse", device=device)
    settings = TrainSettings(steps=steps, time_limit=budget, device=device)
    todo, rows, t_train, last = list(checkpoints), [], 0.0, time.perf_counter()
    gen = train_unet(seg, ds["image"], ds["scribbles"], settings)
    for ev in gen:
        now = time.perf_counter()
        t_train += now - last
        if todo and (t_train >= todo[0] or ev.stage == "done"):
            while todo and t_train >= todo[0]:
                todo.pop(0)
            i, f = scores(seg.predict(ds["image"]), ds)  # scoring, off the clock
            rows.append({"seconds": round(t_train, 1), "step": ev.step, "iou": i, "f1": f})
            print(f"    U-Net {t_train:6.1f} s  step {ev.step:5d}  IoU {i:.3f}  F1 {f:.3f}", flush=True)
        last = time.perf_counter()
    return seg, rows


def throughput(fn, image, repeats=1):
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn(image)
    return image.size / 1e6 / ((time.perf_counter() - t0) / repeats)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=240.0, help="U-Net training seconds per dataset")
    ap.add_argument("--steps", type=int, default=2000, help="U-Net step cap (the budget usually ends first)")
    ap.add_argument("--quick", action="store_true", help="60 s budget, synthetic data only")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    budget = 60.0 if args.quick else args.budget
    checkpoints = [c for c in (30, 60, 120, 180, 240, 480) if c < budget] + [budget]
    datasets = [synthetic_dataset(512)]
    from bench_pixel_classifier import data_dir

    if not args.quick and (data_dir() / "blobs.tif").is_file():
        datasets.append(real_dataset("blobs", "blobs.tif", "annotations.tif", "labels.tif"))
        datasets.append(real_dataset("maize_clsm", "maize_clsm.tif", "maize_clsm_annotation.tif",
                                     "maize_clsm_labels.tif"))
    elif not args.quick:
        print(f"real data not found in {data_dir()}: synthetic only")
    results = []
    for ds in datasets:
        print(f"\n{ds['name']} {ds['image'].shape}", flush=True)
        sk_seg, sk_t = run_skimage(ds["image"], ds["scribbles"])
        rf_seg, rf_t = run_ours(ds["image"], ds["scribbles"])
        seg, rows = run_unet(ds, budget, checkpoints, args.device, args.steps)
        reach = next((r["seconds"] for r in rows if r["f1"] >= 0.85), None)
        results.append({
            "name": ds["name"], "skimage": (sk_t["total"], *scores(sk_seg, ds)),
            "rf": (rf_t["total"], *scores(rf_seg, ds)), "unet": rows, "unet_f1_085_at": reach,
            "device": seg.describe_device(),
        })
    print(f"\n{'dataset':<14}{'method':<22}{'time s':>8}{'IoU':>7}{'F1@0.5':>8}")
    for r in results:
        print(f"{r['name']:<14}{'scikit-image':<22}{r['skimage'][0]:>8.2f}{r['skimage'][1]:>7.3f}{r['skimage'][2]:>8.3f}")
        print(f"{'':<14}{'ours: random forest':<22}{r['rf'][0]:>8.2f}{r['rf'][1]:>7.3f}{r['rf'][2]:>8.3f}")
        best = max(r["unet"], key=lambda x: x["f1"])
        last = r["unet"][-1]
        print(f"{'':<14}{'ours: U-Net (' + r['device'].split(' ')[0] + ')':<22}{last['seconds']:>8.1f}"
              f"{last['iou']:>7.3f}{last['f1']:>8.3f}   best F1 {best['f1']:.3f} at {best['seconds']} s; "
              f"F1 >= 0.85 {'at ' + str(r['unet_f1_085_at']) + ' s' if r['unet_f1_085_at'] else 'not reached'}")

    # Tiled prediction throughput on a 2048 x 2048 image.
    from napari_dlvision.core.pixel_classifier import PixelClassifier
    from napari_dlvision.dl.segmenter import UNetSegmenter
    from napari_dlvision.dl.train import TrainSettings, train_unet
    from napari_dlvision.data.synthetic import nuclei

    big = nuclei((2048, 2048), seed=5)
    small = datasets[0]
    rf = PixelClassifier().fit(small["image"], small["scribbles"])
    un = UNetSegmenter("small", "sparse", device=args.device)
    for _ in train_unet(un, small["image"], small["scribbles"], TrainSettings(steps=5, device=args.device)):
        pass
    mp_rf = throughput(rf.predict_proba, big.image)
    mp_un = throughput(un.predict_proba, big.image)
    print(f"\ntiled prediction, 2048 x 2048: random forest {mp_rf:.2f} MP/s, U-Net {mp_un:.2f} MP/s "
          f"({un.describe_device()})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results, "mp_s": {"rf": mp_rf, "unet": mp_un}}, indent=2))


if __name__ == "__main__":
    main()
