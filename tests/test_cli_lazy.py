"""Images larger than memory: `dlvision predict` as a dask graph of tiles, on
Zarr / OME-Zarr / TIFF, locally and on a dask.distributed cluster; the result
is the in-memory one (bit for bit for the forest)."""

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_dlvision.data.synthetic import nuclei

zarr = pytest.importorskip("zarr")


def dlvision(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "napari_dlvision.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def ok(*args):
    r = dlvision(*args)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lazy")
    s = nuclei((300, 340), radius=(5.0, 8.0), n_strokes=12, seed=4)
    tifffile.imwrite(d / "img.tif", s.image)
    tifffile.imwrite(d / "strokes.tif", s.scribbles)
    ok("train", "rf", "--image", d / "img.tif", "--labels", d / "strokes.tif", "--trees", "10", "--out", d / "rf.dlv")
    ok("train", "unet", "--image", d / "img.tif", "--labels", d / "strokes.tif", "--steps", "3", "--batch-size", "2",
       "--patch-size", "32", "--device", "cpu", "--out", d / "unet.dlv")
    ok("predict", "--model", d / "rf.dlv", "--image", d / "img.tif", "--out", d / "rf_seg.tif",
       "--probabilities", d / "rf_prob.tif", "--uncertainty", d / "rf_unc.tif")
    ok("predict", "--model", d / "unet.dlv", "--image", d / "img.tif", "--out", d / "unet_seg.tif",
       "--probabilities", d / "unet_prob.tif")
    return d


def test_forest_tiff_to_zarr_in_blocks_equals_in_memory_bit_for_bit(files, tmp_path):
    before = (files / "img.tif").read_bytes()
    r = ok("predict", "--model", files / "rf.dlv", "--image", files / "img.tif", "--out", tmp_path / "seg.zarr",
           "--probabilities", tmp_path / "prob.zarr", "--uncertainty", tmp_path / "unc.tif", "--chunk", "128")
    assert "in 9 blocks" in r.stdout
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "seg.zarr"))[:], tifffile.imread(files / "rf_seg.tif"))
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "prob.zarr"))[:], tifffile.imread(files / "rf_prob.tif"))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "unc.tif"), tifffile.imread(files / "rf_unc.tif"))
    assert (files / "img.tif").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prob.zarr", "seg.zarr", "unc.tif"]  # no leftovers


def write_ome_zarr(path, image, scale):
    """An OME-Zarr 0.4 image (zarr format 2) with a singleton channel axis, as writers often make."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", shape=(1, *image.shape), chunks=(1, 64, 64), dtype=image.dtype)[:] = image[None]
    group.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, *scale]}]}],
    }]


def test_unet_on_ome_zarr_keeps_its_metadata_and_equals_in_memory(files, tmp_path):
    ome_in = tmp_path / "img.ome.zarr"
    write_ome_zarr(ome_in, tifffile.imread(files / "img.tif"), (0.5, 0.25))
    ok("predict", "--model", files / "unet.dlv", "--image", ome_in, "--out", tmp_path / "seg.ome.zarr",
       "--probabilities", tmp_path / "prob.ome.zarr", "--chunk", "128")
    seg = zarr.open_group(str(tmp_path / "seg.ome.zarr"), mode="r")
    ms = seg.attrs["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["y", "x"] and ms["axes"][0]["unit"] == "micrometer"
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.5, 0.25]
    np.testing.assert_array_equal(seg["0"][:], tifffile.imread(files / "unet_seg.tif"))
    prob = zarr.open_group(str(tmp_path / "prob.ome.zarr"), mode="r")
    assert [a["name"] for a in prob.attrs["multiscales"][0]["axes"]] == ["c", "y", "x"]
    np.testing.assert_allclose(prob["0"][:], tifffile.imread(files / "unet_prob.tif"), atol=1e-5)


def test_a_dask_distributed_cluster_gives_the_local_result_bit_for_bit(files, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        r = ok("predict", "--model", files / "rf.dlv", "--image", files / "img.tif", "--out", tmp_path / "seg.zarr",
               "--probabilities", tmp_path / "prob.tif", "--chunk", "128", "--dask-address", cluster.scheduler_address)
    assert "on the cluster at tcp://" in r.stdout
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "seg.zarr"))[:], tifffile.imread(files / "rf_seg.tif"))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "prob.tif"), tifffile.imread(files / "rf_prob.tif"))


def test_denoiser_in_blocks_returns_the_input_layout(files, tmp_path):
    ok("train", "denoiser", "--image", files / "img.tif", "--steps", "2", "--patch-size", "32", "--batch-size", "2",
       "--no-tta", "--device", "cpu", "--out", tmp_path / "n2v.dlv")
    ok("predict", "--model", tmp_path / "n2v.dlv", "--image", files / "img.tif", "--out", tmp_path / "den.tif")
    ok("predict", "--model", tmp_path / "n2v.dlv", "--image", files / "img.tif", "--out", tmp_path / "den.zarr",
       "--chunk", "128", "--scheduler", "processes", "--workers", "2")
    lazy, whole = zarr.open(str(tmp_path / "den.zarr"))[:], tifffile.imread(tmp_path / "den.tif")
    assert lazy.shape == whole.shape and lazy.dtype == np.float32
    np.testing.assert_allclose(lazy, whole, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("extra, words", [
    (["--instances", "{t}/i.zarr"], "tile by tile"),
    (["--out", "{t}/seg.png", "--chunk", "128"], ".zarr or .tif"),
    (["--scheduler", "threads", "--dask-address", "tcp://127.0.0.1:9"], "not both"),
    (["--dask-address", "tcp://127.0.0.1:9"], "no dask scheduler answered"),
])
def test_what_blocks_cannot_do_is_refused_in_one_line(files, tmp_path, extra, words):
    args = ["predict", "--model", files / "rf.dlv", "--image", files / "img.tif"]
    if "--out" not in extra:
        args += ["--out", tmp_path / "seg.zarr"]
    r = dlvision(*args, *[a.format(t=tmp_path) for a in extra], timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and words in lines[0], r.stderr
    assert list(tmp_path.iterdir()) == []
