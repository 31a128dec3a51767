"""Prediction of large images: peak memory and throughput, tiled (dask) vs whole-image.

For each size (square, synthetic nuclei tiled over the image, written as
Zarr chunk by chunk) this runs `dlvision predict` as its own process and
reports peak RSS and megapixels per second:
- forest and U-Net through the dask tile graph (Zarr in, Zarr out),
- the same models on the whole image in memory (TIFF in, TIFF out) where
  it fits (`--in-memory-up-to`),
- where it fits, both paths also timed inside one process after the imports
  ("compute"): at 2048 x 2048 a process spends as long starting as predicting,
- the forest on a dask.distributed LocalCluster of 2 single-threaded workers
  against local threads (`--cluster-size`),
- with `--instances`, the forest again with instances (touching objects
  split, strip by strip from the written segmentation on the tiled path).
Goals (issue "Headless at scale"): forest peak under 1 GB at every size;
tiled throughput within 10% of in-memory where that fits; the LocalCluster
no slower than local threads by more than 20%.

    .venv/bin/python bench/bench_scale.py [--sizes 2048,8192,16384,32768] [--unet-sizes 2048,8192] [--instances]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PEAK = ("import resource, sys\n"
        "from napari_dlvision.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\n"
        "sys.exit(code)\n")


def cli(*args):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", PEAK, *map(str, args)], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr)
    return time.perf_counter() - t0, int(r.stdout.split("PEAK")[-1])


# The same two paths timed inside one process, after the imports: a small
# image's process time is mostly start-up (dask and Zarr add about a second),
# which says nothing about how fast tiles are predicted.
COMPUTE = ("import sys, time\n"
           "from pathlib import Path\n"
           "import numpy as np, tifffile, zarr, dask.array\n"
           "from napari_dlvision import kinds\n"
           "from napari_dlvision.core.io import write_image\n"
           "from napari_dlvision.core.lazy import open_lazy, lazy_outputs, store\n"
           "model_file, zarr_in, tif_in, out = map(Path, sys.argv[1:5])\n"
           "model = kinds.kind_of(model_file).load(model_file)\n"
           "model.predict(np.zeros((64, 64), np.uint16))  # libraries imported, pools started\n"
           "best = [1e9, 1e9]\n"
           "for rep in range(2):  # the better of two: first uses (codecs, pools) are start-up too\n"
           "    t0 = time.perf_counter()\n"
           "    lz = open_lazy(zarr_in)\n"
           "    seg = lazy_outputs(model, lz.array[None], None, [model.MAIN_OUTPUT])\n"
           "    store({out / 'tiled.zarr': seg[model.MAIN_OUTPUT]}, lz.ome, progress=False)\n"
           "    t1 = time.perf_counter()\n"
           "    write_image(out / f'whole{rep}.tif', model.predict(tifffile.imread(tif_in)))\n"
           "    best = [min(best[0], t1 - t0), min(best[1], time.perf_counter() - t1)]\n"
           "print('COMPUTE', *best)\n")


def compute_times(model_file, zarr_in, tif_in, out):
    """(tiled, whole-image) seconds of one prediction in one process, imports excluded."""
    r = subprocess.run([sys.executable, "-c", COMPUTE, str(model_file), str(zarr_in), str(tif_in), str(out)],
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr)
    tiled, whole = map(float, r.stdout.split("COMPUTE")[-1].split())
    return tiled, whole


def make_models(d: Path, tile):
    import tifffile

    tifffile.imwrite(d / "train.tif", tile.image)
    tifffile.imwrite(d / "strokes.tif", tile.scribbles)
    subprocess.run([sys.executable, "-m", "napari_dlvision.cli", "train", "rf", "--image", d / "train.tif",
                    "--labels", d / "strokes.tif", "--out", d / "rf.dlv"], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "napari_dlvision.cli", "train", "unet", "--image", d / "train.tif",
                    "--labels", d / "strokes.tif", "--steps", "50", "--device", "cpu", "--out", d / "unet.dlv"],
                   check=True, capture_output=True)


def write_zarr(path, tile, side):
    import zarr

    z = zarr.create_array(str(path), shape=(side, side), chunks=(1024, 1024), dtype=tile.dtype)
    reps = -(-side // tile.shape[0])
    row = np.tile(tile, (1, reps))[:, :side]
    for y in range(0, side, tile.shape[0]):
        z[y:y + tile.shape[0]] = row[: min(tile.shape[0], side - y)]
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2048,8192,16384")
    ap.add_argument("--unet-sizes", default="2048,8192")
    ap.add_argument("--in-memory-up-to", type=int, default=8192)
    ap.add_argument("--cluster-size", type=int, default=8192)
    ap.add_argument("--instances", action="store_true", help="also time the forest with --instances")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from napari_dlvision.data.synthetic import nuclei

    tile = nuclei((512, 512), radius=(5.0, 8.0), n_strokes=24, seed=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        make_models(d, tile)
        sizes = [int(s) for s in args.sizes.split(",")]
        unet_sizes = {int(s) for s in args.unet_sizes.split(",") if s}
        for side in sizes:
            src = write_zarr(d / f"in{side}.zarr", tile.image, side)
            mpx = side * side / 1e6
            for model in ("rf", "unet"):
                if model == "unet" and side not in unet_sizes:
                    continue
                t, peak = cli("predict", "--model", d / f"{model}.dlv", "--image", src,
                              "--out", d / f"{model}{side}.zarr", "--overwrite")
                rows.append({"model": model, "size": side, "path": "tiled (threads)", "s": t, "mpx_s": mpx / t,
                             "peak_gb": peak / 2**30})
                print(rows[-1], flush=True)
                if model == "rf" and args.instances:
                    t, peak = cli("predict", "--model", d / "rf.dlv", "--image", src, "--out", d / f"rf{side}.zarr",
                                  "--instances", d / f"inst{side}.zarr", "--overwrite")
                    rows.append({"model": model, "size": side, "path": "tiled + instances", "s": t,
                                 "mpx_s": mpx / t, "peak_gb": peak / 2**30})
                    print(rows[-1], flush=True)
                if side <= args.in_memory_up_to:
                    import tifffile
                    import zarr

                    tifffile.imwrite(d / "whole.tif", zarr.open(str(src))[:])
                    t, peak = cli("predict", "--model", d / f"{model}.dlv", "--image", d / "whole.tif",
                                  "--out", d / "whole_seg.tif")
                    rows.append({"model": model, "size": side, "path": "whole image", "s": t, "mpx_s": mpx / t,
                                 "peak_gb": peak / 2**30})
                    print(rows[-1], flush=True)
                    if model == "rf" and args.instances:
                        t, peak = cli("predict", "--model", d / "rf.dlv", "--image", d / "whole.tif",
                                      "--out", d / "whole_seg.tif", "--instances", d / "whole_inst.tif")
                        rows.append({"model": model, "size": side, "path": "whole + instances", "s": t,
                                     "mpx_s": mpx / t, "peak_gb": peak / 2**30})
                        print(rows[-1], flush=True)
                    (d / "cmp").mkdir(exist_ok=True)
                    tiled, whole = compute_times(d / f"{model}.dlv", src, d / "whole.tif", d / "cmp")
                    shutil.rmtree(d / "cmp")
                    for path, s in (("tiled, compute", tiled), ("whole, compute", whole)):
                        rows.append({"model": model, "size": side, "path": path, "s": s, "mpx_s": mpx / s,
                                     "peak_gb": float("nan")})
                    print(rows[-2:], flush=True)
            if side == args.cluster_size:
                from distributed import LocalCluster

                with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
                    t, peak = cli("predict", "--model", d / "rf.dlv", "--image", src, "--out",
                                  d / "cluster.zarr", "--dask-address", cluster.scheduler_address)
                rows.append({"model": "rf", "size": side, "path": "LocalCluster 2x1", "s": t, "mpx_s": mpx / t,
                             "peak_gb": peak / 2**30})
                print(rows[-1], flush=True)
            for p in d.glob(f"*{side}*.zarr"):
                shutil.rmtree(p, ignore_errors=True)
    print(f"\n{'model':6} {'size':>6} {'path':18} {'s':>8} {'Mpx/s':>7} {'peak GB':>8}  ratio")
    for r in rows:
        ref = "tiled, compute" if "compute" in r["path"] else \
            "tiled + instances" if "instances" in r["path"] else "tiled (threads)"
        base = next((b for b in rows if b["model"] == r["model"] and b["size"] == r["size"]
                     and b["path"] == ref), r)
        print(f"{r['model']:6} {r['size']:>6} {r['path']:18} {r['s']:8.1f} {r['mpx_s']:7.2f} {r['peak_gb']:8.2f}"
              f"  {r['mpx_s'] / base['mpx_s']:.2f}x of tiled")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
