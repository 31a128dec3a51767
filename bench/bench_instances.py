#!/usr/bin/env python
"""Benchmark: splitting touching objects, in strips of whole objects (ours)
against one pass of the same scikit-image recipe over the whole image.

Each method runs in its own process on the same synthetic mask (nuclei-sized
discs, many touching); wall time, peak memory (max RSS, and its growth per
pixel over the process before the call), objects found, and how many pixels
the two disagree on (where two objects' flooding ties, scikit-image's
watershed breaks the tie by the order of its queue).

    python bench/bench_instances.py [--sizes 2048,4096] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi


def mask_of(n: int, seed: int = 0) -> np.ndarray:
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    m = np.zeros((n, n), bool)
    for _ in range(n * n // 700):
        rr, cc = disk(tuple(rng.uniform(0, n, 2)), rng.uniform(5, 9), shape=m.shape)
        m[rr, cc] = True
    return m


def one_pass(mask, h=1.5, min_size=8):
    """The recipe over the whole image at once (as before strips)."""
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    from napari_dlvision.core.instances import remove_small

    mask = remove_small(mask, min_size)
    smooth = ndi.gaussian_filter(ndi.distance_transform_edt(mask), 1.0)
    seeds, _ = ndi.label(h_maxima(smooth, h) & mask)
    labels = watershed(-smooth, seeds, mask=mask)
    orphans, n = ndi.label(mask & (labels == 0))
    if n:
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    return labels.astype(np.int32)


def child(n: int, method: str, out: str) -> None:
    from skimage.morphology import h_maxima  # noqa: F401 - imports outside the measured growth
    from skimage.segmentation import watershed  # noqa: F401

    from napari_dlvision.core.instances import instances_from_mask

    mask = mask_of(n)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.perf_counter()
    labels = one_pass(mask) if method == "one pass" else instances_from_mask(mask)
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    np.save(out, labels)
    print(json.dumps({"s": dt, "peak": peak, "per_px": (peak - before) / mask.size, "objects": int(labels.max())}))


def disagreeing_pixels(a: np.ndarray, b: np.ndarray) -> int:
    fg = a > 0
    pairs, counts = np.unique(np.stack([a[fg], b[fg]]), axis=1, return_counts=True)
    best = np.zeros(int(a.max()) + 1, np.int64)
    np.maximum.at(best, pairs[0], counts)
    return int(fg.sum() - best.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2048,4096")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(int(a.child[0]), a.child[1], a.child[2])
    print("| size | method | wall s (each run) | peak MiB | growth B/px | objects | pixels disagreeing |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in map(int, a.sizes.split(",")):
            rows = {}
            for _ in range(a.repeats):  # interleaved, so load changes hit both
                for method in ("one pass", "strips"):
                    path = str(Path(tmp) / f"{method.replace(' ', '_')}_{n}.npy")
                    res = subprocess.run([sys.executable, __file__, "--child", str(n), method, path],
                                         capture_output=True, text=True, check=True)
                    rows.setdefault(method, []).append(json.loads(res.stdout.splitlines()[-1]))
            diff = disagreeing_pixels(np.load(Path(tmp) / f"one_pass_{n}.npy"), np.load(Path(tmp) / f"strips_{n}.npy"))
            for method, runs in rows.items():
                walls = " / ".join(f"{r['s']:.1f}" for r in runs)
                print(f"| {n}² | {method} | {walls} | "
                      f"{max(r['peak'] for r in runs) / 2**20:.0f} | {max(r['per_px'] for r in runs):.0f} | "
                      f"{runs[0]['objects']} | {diff if method == 'strips' else ''} |")
            one, ours = (np.median([r["s"] for r in rows[m]]) for m in ("one pass", "strips"))
            mem = max(r["peak"] for r in rows["one pass"]) / max(r["peak"] for r in rows["strips"])
            print(f"|  | ratio one pass / strips | {one / ours:.2f}x time | {mem:.2f}x memory | | | |")


if __name__ == "__main__":
    main()
