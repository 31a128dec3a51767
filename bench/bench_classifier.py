"""Image classification on real CIFAR-10: accuracy after a fixed training budget, side by side.

For each architecture and budget (seconds of training; data loading and
test-set scoring excluded and reported separately), trains on the 50,000
training images from scratch with several seeds and scores all 10,000 test
images. `cnn-bn` is the textbook baseline the issue compares with (3 conv
blocks with batch norm, Adam, flip and crop augmentation); the ratio column
is each architecture's median accuracy over that baseline's at the same
budget. Also prints training and prediction throughput (images per second).

    .venv/bin/python bench/bench_classifier.py                       # fast + cnn-bn at 240 s, 3 seeds
    .venv/bin/python bench/bench_classifier.py --archs fast,cnn-bn,logreg,filters-mlp --budget 60,240
    .venv/bin/python bench/bench_classifier.py --device cuda --archs fast --budget 5     # the GPU goal
    .venv/bin/python bench/bench_classifier.py --clock cpu ...   # budget in CPU seconds per thread (shared machine)

On a machine shared with other jobs, threads of one process wait for each
other at every operation and wall time means little; `--threads 1 --clock
cpu --budget 480` then measures 480 CPU-seconds of one thread, about 240 s
of two cores (if two threads scaled perfectly: slightly in our favour).

CIFAR-10 comes from DLVISION_DATA (default ../shared/data relative to the
repository root) as cifar10/train.tar.gz and test.tar.gz, unpacked once into
--unpack-to (default: a folder in the system's temporary directory, never
inside the repository), or from --cifar DIR holding train/ and test/ class
folders, or a CIFAR-10 binary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def data_root() -> Path:
    return Path(os.environ.get("DLVISION_DATA", ROOT.parent / "shared" / "data"))


def cifar_folders(args) -> tuple[Path, Path]:
    if args.cifar:
        root = Path(args.cifar)
        return (root / "train", root / "test") if (root / "train").is_dir() else (root, root)
    archives = data_root() / "cifar10"
    target = Path(args.unpack_to or Path(tempfile.gettempdir()) / "dlvision-cifar10")
    for split in ("train", "test"):
        if not (target / split).is_dir():
            archive = archives / f"{split}.tar.gz"
            if not archive.is_file():
                sys.exit(f"CIFAR-10 not found: {archive} (set DLVISION_DATA or give --cifar)")
            print(f"unpacking {archive} into {target}", flush=True)
            target.mkdir(parents=True, exist_ok=True)
            with tarfile.open(archive) as tar:
                tar.extractall(target, filter="data")
    return target / "train", target / "test"


def run_one(arch, budget, seed, train, test, args):
    import numpy as np

    from napari_dlvision.dl.classify import ImageClassifier
    from napari_dlvision.dl.classify_train import ClassifierSettings, train_classifier

    clf = ImageClassifier(arch, device=args.device)
    settings = ClassifierSettings(arch=arch, time_limit=budget, seed=seed, device=args.device, clock=args.clock,
                                  epochs=args.epochs)
    t0 = time.perf_counter()
    for ev in train_classifier(clf, train, settings):
        if ev.stage == "start":
            print(f"    {ev.message}", flush=True)
    wall = time.perf_counter() - t0
    t = clf.training
    t1 = time.perf_counter()
    pred = clf.predict_proba(test.images).argmax(1)
    predict_s = time.perf_counter() - t1
    acc = float(np.mean(pred == test.labels))
    row = {"arch": arch, "budget": budget, "seed": seed, "test_accuracy": round(acc, 4),
           "train_seconds": t["seconds"], "wall_seconds": round(wall, 1), "epochs": t["epochs"],
           "train_images_per_s": round(t["steps"] * t["batch_size"] / max(t["seconds"], 1e-9), 1),
           "predict_images_per_s": round(len(test) / predict_s, 1), "kept": t["kept"],
           "parameters": t["parameters"], "device": t["device"]}
    print(f"    {arch:12s} budget {budget:5g} s seed {seed}: test accuracy {acc:.4f} after {t['epochs']:.2f} epochs "
          f"({row['train_images_per_s']:.0f} img/s training, {row['predict_images_per_s']:.0f} img/s predicting; "
          f"{wall:.0f} s wall)", flush=True)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="fast,cnn-bn")
    p.add_argument("--budget", default="240", help="training seconds, comma-separated")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--device", default="auto")
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                   help="cpu: budgets in this process's CPU seconds per thread (for shared machines)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's, one per core)")
    p.add_argument("--epochs", type=float, default=None, help="fix the epochs (default: the recipe's, cut by the budget)")
    p.add_argument("--cifar", default=None, help="folder with train/ and test/ class folders (or a binary folder)")
    p.add_argument("--unpack-to", default=None)
    p.add_argument("--json", default=str(ROOT / "bench" / "out" / "classifier.json"))
    args = p.parse_args()

    import torch

    from napari_dlvision.data.image_sets import load_image_set

    if args.threads:
        torch.set_num_threads(args.threads)

    train_dir, test_dir = cifar_folders(args)
    t0 = time.perf_counter()
    train = load_image_set(train_dir, split="train")
    test = load_image_set(test_dir, split="test", class_names=train.class_names)
    load_s = time.perf_counter() - t0
    print(f"data: {train.describe()} / test {test.describe()}; loading took {load_s:.1f} s (not counted); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, clock {args.clock}", flush=True)
    rows = []
    archs = args.archs.split(",")
    budgets = [float(b) for b in args.budget.split(",")]
    for budget in budgets:
        for arch in archs:
            for seed in (int(s) for s in args.seeds.split(",")):
                rows.append(run_one(arch, budget, seed, train, test, args))
    print("\n| arch | budget s | test accuracy min / median / max | vs cnn-bn | epochs | train img/s | predict img/s |")
    print("|---|---|---|---|---|---|---|")
    for budget in budgets:
        base = [r["test_accuracy"] for r in rows if r["arch"] == "cnn-bn" and r["budget"] == budget]
        for arch in archs:
            rs = [r for r in rows if r["arch"] == arch and r["budget"] == budget]
            acc = [r["test_accuracy"] for r in rs]
            ratio = f"{statistics.median(acc) / statistics.median(base):.2f}x" if base else "-"
            print(f"| {arch} | {budget:g} | {min(acc):.3f} / {statistics.median(acc):.3f} / {max(acc):.3f} | {ratio} "
                  f"| {statistics.median(r['epochs'] for r in rs):.2f} "
                  f"| {statistics.median(r['train_images_per_s'] for r in rs):.0f} "
                  f"| {statistics.median(r['predict_images_per_s'] for r in rs):.0f} |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"load_seconds": round(load_s, 1), "clock": args.clock, "rows": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
