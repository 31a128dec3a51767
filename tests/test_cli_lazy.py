"""Images larger than memory: `dlvision predict` as a dask graph of tiles, on
Zarr / OME-Zarr / TIFF, locally and on a dask.distributed cluster; the result
is the in-memory one (bit for bit for the forest)."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from checks import assert_denoised_alike
from cli_helpers import dlvision

from napari_dlvision.data.synthetic import nuclei

zarr = pytest.importorskip("zarr")


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
       "--probabilities", d / "rf_prob.tif", "--uncertainty", d / "rf_unc.tif", "--instances", d / "rf_inst.tif")
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


def test_instances_tile_by_tile_equal_the_in_memory_ones(files, tmp_path):
    """--instances on the tiled path: split strip by strip from the written
    segmentation, into Zarr or a memory-mapped TIFF, renamed with the others."""
    r = ok("predict", "--model", files / "rf.dlv", "--image", files / "img.tif", "--out", tmp_path / "seg.zarr",
           "--instances", tmp_path / "inst.zarr", "--chunk", "128")
    assert "in 9 blocks" in r.stdout and "inst.zarr" in r.stdout.splitlines()[-1]
    whole = tifffile.imread(files / "rf_inst.tif")
    assert whole.max() > 20
    tiled = zarr.open(str(tmp_path / "inst.zarr"))
    assert tiled.dtype == np.int32  # labels, not float64 (dask took a positional dtype as something else)
    np.testing.assert_array_equal(tiled[:], whole)
    ok("predict", "--model", files / "rf.dlv", "--image", files / "img.tif", "--out", tmp_path / "seg2.zarr",
       "--instances", tmp_path / "inst.tif", "--foreground", "2", "--chunk", "128")
    assert tifffile.imread(tmp_path / "inst.tif").dtype == np.int32
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "inst.tif"), whole)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inst.tif", "inst.zarr", "seg.zarr", "seg2.zarr"]


def test_an_image_that_fits_is_one_block_by_default_and_equals_in_memory(files, tmp_path):
    for model in ("rf", "unet"):
        r = ok("predict", "--model", files / f"{model}.dlv", "--image", files / "img.tif",
               "--out", tmp_path / f"{model}.zarr", "--probabilities", tmp_path / f"{model}_prob.zarr")
        assert "in 1 block on" in r.stdout
        np.testing.assert_array_equal(zarr.open(str(tmp_path / f"{model}.zarr"))[:],
                                      tifffile.imread(files / f"{model}_seg.tif"))
        np.testing.assert_allclose(zarr.open(str(tmp_path / f"{model}_prob.zarr"))[:],
                                   tifffile.imread(files / f"{model}_prob.tif"), atol=1e-5)


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


def test_outputs_of_a_tczyx_store_name_their_own_axes_and_keep_its_translation(files, tmp_path):
    """bioformats2raw writes every image as TCZYX; with t = c = z = 1 a 2D model takes z as its
    channel axis. The outputs' metadata said z, y, x for a 2D segmentation, and the class
    axis of the probabilities was labelled z at 2 micrometres; the image's offset was lost."""
    image = tifffile.imread(files / "img.tif")
    group = zarr.open_group(str(tmp_path / "in.ome.zarr"), mode="w", zarr_format=2)
    group.create_array("0", shape=(1, 1, 1, *image.shape), chunks=(1, 1, 1, 64, 64), dtype=image.dtype)[0, 0, 0] = image
    um = {"type": "space", "unit": "micrometer"}
    group.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}, {"name": "z", **um},
                 {"name": "y", **um}, {"name": "x", **um}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1, 1, 2.0, 0.5, 0.25]},
            {"type": "translation", "translation": [0, 0, 0, 100.0, 200.0]}]}],
    }]
    ok("predict", "--model", files / "rf.dlv", "--image", tmp_path / "in.ome.zarr", "--out", tmp_path / "seg.ome.zarr",
       "--probabilities", tmp_path / "prob.ome.zarr", "--instances", tmp_path / "inst.ome.zarr", "--chunk", "128")
    for name, axes, scale, shift in (("seg", "yx", [0.5, 0.25], [100.0, 200.0]),
                                     ("inst", "yx", [0.5, 0.25], [100.0, 200.0]),
                                     ("prob", "cyx", [1.0, 0.5, 0.25], [0.0, 100.0, 200.0])):
        out = zarr.open_group(str(tmp_path / f"{name}.ome.zarr"), mode="r")
        ms = out.attrs["multiscales"][0]
        assert "".join(a["name"] for a in ms["axes"]) == axes and out["0"].ndim == len(axes), name
        transforms = {t["type"]: t[t["type"]] for t in ms["datasets"][0]["coordinateTransformations"]}
        assert transforms == {"scale": scale, "translation": shift}, name
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "seg.ome.zarr"), mode="r")["0"][:],
                                  tifffile.imread(files / "rf_seg.tif"))


def test_a_dask_distributed_cluster_gives_the_local_result_bit_for_bit(files, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        r = ok("predict", "--model", files / "rf.dlv", "--image", files / "img.tif", "--out", tmp_path / "seg.zarr",
               "--probabilities", tmp_path / "prob.tif", "--chunk", "128", "--dask-address", cluster.scheduler_address)
        # A Zarr named relative to the user's folder: the workers, started
        # elsewhere, read it as all fill values (zeros) before paths were made absolute.
        zarr.create_array(str(tmp_path / "img.zarr"), data=tifffile.imread(files / "img.tif"), chunks=(128, 128))
        rel = dlvision("predict", "--model", files / "rf.dlv", "--image", "img.zarr", "--out", "rel.zarr",
                       "--dask-address", cluster.scheduler_address, cwd=tmp_path)
        assert rel.returncode == 0, rel.stderr
        # Workers without the shared file system wrote the chunks to their own disks: all zeros here, exit 0.
        # Here a file missing everywhere stands for one the workers do not see.
        from napari_dlvision.core.errors import UserInputError
        from napari_dlvision.core.lazy import check_cluster_sees

        with distributed.Client(cluster.scheduler_address, set_as_default=True) as client:
            check_cluster_sees([files / "img.tif", tmp_path])
            with pytest.raises(UserInputError, match=r"worker tcp://.* cannot see .*elsewhere\.zarr: a cluster"):
                check_cluster_sees([files / "img.tif", tmp_path / ".elsewhere.zarr.0123456789ab.partial.zarr"])
            # A stopped worker: Client.run waited for good.
            pid = next(iter(client.run(os.getpid).values()))
            os.kill(pid, signal.SIGSTOP)
            try:
                with pytest.MonkeyPatch.context() as mp:
                    mp.setenv("DLVISION_DASK_CONNECT_S", "2")
                    with pytest.raises(UserInputError, match="did not answer within 2 s"):
                        check_cluster_sees([files / "img.tif"])
            finally:
                os.kill(pid, signal.SIGCONT)
    assert "on the cluster at tcp://" in r.stdout
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "seg.zarr"))[:], tifffile.imread(files / "rf_seg.tif"))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "prob.tif"), tifffile.imread(files / "rf_prob.tif"))
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "rel.zarr"))[:], tifffile.imread(files / "rf_seg.tif"))


def test_ctrl_c_during_a_cluster_run_leaves_nothing_once_its_running_blocks_end(files, tmp_path):
    """Blocks running on the workers cannot be stopped and wrote their chunks
    after the temporary store was removed, bringing it back (hidden); asyncio
    also printed a 6-line AllExit traceback above our line."""
    import signal
    import time

    distributed = pytest.importorskip("distributed")
    big = np.tile(tifffile.imread(files / "img.tif"), (11, 10))[:3072, :3072]  # nuclei, without generating them
    zarr.create_array(str(tmp_path / "big.zarr"), data=big, chunks=(512, 512))
    out = tmp_path / "out"
    out.mkdir()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        p = subprocess.Popen([sys.executable, "-m", "napari_dlvision.cli", "predict", "--model", files / "rf.dlv",
                              "--image", tmp_path / "big.zarr", "--out", out / "seg.zarr", "--chunk", "512",
                              "--dask-address", cluster.scheduler_address],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout.readline().startswith("predicting")
        # Interrupt once a block is written, with most still to run: a fixed
        # sleep raced the run's end on a fast machine.
        deadline = time.monotonic() + 90
        while not any(f.is_file() for f in out.glob("*/c/*/*")):  # a chunk, in Zarr 3's layout
            assert p.poll() is None and time.monotonic() < deadline, "no block was written"
            time.sleep(0.02)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
        time.sleep(2.0)  # anything still running on the cluster would have written by now
    assert p.returncode == 130, err
    assert err.strip().splitlines() == ["dlvision: interrupted; no partial output was left behind"], err
    assert list(out.iterdir()) == []


def test_a_boolean_zarr_image_is_predicted_by_a_unet(files, tmp_path):
    # np.percentile refuses booleans: the normalisation gave a TypeError traceback.
    zarr.create_array(str(tmp_path / "mask.zarr"), data=tifffile.imread(files / "img.tif") > 0.5, chunks=(128, 128))
    ok("predict", "--model", files / "unet.dlv", "--image", tmp_path / "mask.zarr", "--out", tmp_path / "seg.zarr")
    assert zarr.open(str(tmp_path / "seg.zarr")).shape == (300, 340)


def test_denoiser_in_blocks_returns_the_input_layout(files, tmp_path):
    ok("train", "denoiser", "--image", files / "img.tif", "--steps", "2", "--patch-size", "32", "--batch-size", "2",
       "--no-tta", "--device", "cpu", "--out", tmp_path / "n2v.dlv")
    ok("predict", "--model", tmp_path / "n2v.dlv", "--image", files / "img.tif", "--out", tmp_path / "den.tif")
    ok("predict", "--model", tmp_path / "n2v.dlv", "--image", files / "img.tif", "--out", tmp_path / "den.zarr",
       "--chunk", "128", "--scheduler", "processes", "--workers", "2")
    lazy, whole = zarr.open(str(tmp_path / "den.zarr"))[:], tifffile.imread(tmp_path / "den.tif")
    assert lazy.shape == whole.shape and lazy.dtype == np.float32
    # Worker processes run the network with other thread counts than the whole
    # image's run: the put-back's block matching may regroup a patch at a near-tie.
    assert_denoised_alike(lazy, whole)


@pytest.mark.parametrize("extra, words", [
    (["--foreground", "1"], "give --instances too"),
    (["--out", "{t}/seg.png", "--chunk", "128"], ".zarr or .tif"),
    (["--scheduler", "threads", "--dask-address", "tcp://127.0.0.1:9"], "not both"),
    (["--dask-address", "tcp://127.0.0.1:9"], "no dask scheduler answered"),
])
def test_what_blocks_cannot_do_is_refused_in_one_line(files, tmp_path, extra, words):
    args = ["predict", "--model", files / "rf.dlv", "--image", files / "img.tif"]
    if "--out" not in extra:
        args += ["--out", tmp_path / "seg.zarr"]
    r = dlvision(*args, *[a.format(t=tmp_path) for a in extra], timeout=120, DLVISION_DASK_CONNECT_S="2")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and words in lines[0], r.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_is_kept_unless_overwrite_and_a_missing_store_is_named(files, tmp_path):
    out = tmp_path / "seg.zarr"
    args = ["predict", "--model", files / "rf.dlv", "--image", files / "img.tif", "--out", out, "--chunk", "128"]
    ok(*args)
    first = zarr.open(str(out))[:]
    zarr.open(str(out), mode="r+")[:5] = 9  # the user's edits, to be kept
    r = dlvision(*args)
    assert r.returncode == 1 and "exists; add --overwrite" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (zarr.open(str(out))[:5] == 9).all()
    ok(*args, "--overwrite")
    np.testing.assert_array_equal(zarr.open(str(out))[:], first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.zarr"]  # the old store swapped out and removed
    r = dlvision("predict", "--model", files / "rf.dlv", "--image", tmp_path / "nothing.zarr", "--out", tmp_path / "x.zarr")
    assert r.returncode == 1 and "nothing.zarr" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_overwrite_never_deletes_an_input_inside_the_output_or_a_folder_that_is_no_store(files, tmp_path):
    import hashlib

    store = tmp_path / "d.zarr"
    store.mkdir()
    img = store / "img.tif"
    img.write_bytes((files / "img.tif").read_bytes())
    before = hashlib.sha256(img.read_bytes()).hexdigest()
    r = dlvision("predict", "--model", files / "rf.dlv", "--image", img, "--out", store, "--overwrite")
    assert r.returncode == 1 and "lies inside the output" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert hashlib.sha256(img.read_bytes()).hexdigest() == before
    notes = tmp_path / "keep.zarr"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    r = dlvision("predict", "--model", files / "rf.dlv", "--image", files / "img.tif", "--out", notes, "--overwrite")
    assert r.returncode == 1 and "is not a Zarr store" in r.stderr
    assert (notes / "notes.txt").read_text() == "mine"


def test_a_disk_too_small_for_the_tiff_is_one_line_before_any_block(files, tmp_path):
    """A memory-mapped TIFF on a full disk used to end in SIGBUS with no message."""
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "none", str(small)], capture_output=True).returncode:
        pytest.skip("mounting a small file system needs root")
    try:
        r = dlvision("predict", "--model", files / "rf.dlv", "--image", files / "img.tif", "--out", small / "seg.tif",
                     "--probabilities", small / "p.tif", "--chunk", "128")
        assert r.returncode == 1 and "No space left on device" in r.stderr, r.stderr
        assert "seg.tif" in r.stderr and ".partial" not in r.stderr
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)])


PEAK_RSS = ("import resource, sys\n"
            "from napari_dlvision.cli import main\n"
            "code = main(sys.argv[1:])\n"
            "print('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\n"
            "sys.exit(code)\n")


def test_memory_stays_flat_for_a_zarr_image_much_larger_than_a_block(files, tmp_path):
    peaks = {}
    for side in (1024, 4096):
        src = zarr.create_array(str(tmp_path / f"in{side}.zarr"), shape=(side, side), chunks=(512, 512), dtype="uint16")
        tile = tifffile.imread(files / "img.tif")[:256, :256]
        for y in range(0, side, 512):  # written chunk by chunk: the test never holds the image either
            src[y:y + 512] = np.tile(tile, (2, side // 256))
        r = subprocess.run([sys.executable, "-c", PEAK_RSS, "predict", "--model", files / "rf.dlv",
                            "--image", tmp_path / f"in{side}.zarr", "--out", tmp_path / f"seg{side}.zarr",
                            "--probabilities", tmp_path / f"p{side}.zarr", "--chunk", "512", "--workers", "2"],
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr
        peaks[side] = int(r.stdout.split("peak")[-1])
    # 16x the pixels: in memory the float32 probabilities alone would add 128 MB
    # (and the feature stack gigabytes); in blocks the peak barely moves.
    assert peaks[4096] - peaks[1024] < 64 * 2**20, peaks
    seg = zarr.open(str(tmp_path / "seg4096.zarr"))
    assert seg.shape == (4096, 4096) and seg.dtype == np.uint8


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_a_compressed_tiled_tiff_is_read_tile_by_tile_with_the_same_result(files, tmp_path, scheduler):
    """Worker processes read it by file name: tifffile's reader (a lock, an open file) cannot be sent there."""
    tifffile.imwrite(tmp_path / "comp.tif", tifffile.imread(files / "img.tif"), compression="zlib", tile=(64, 64))
    ok("predict", "--model", files / "rf.dlv", "--image", tmp_path / "comp.tif", "--out", tmp_path / "seg.tif",
       "--chunk", "128", "--scheduler", scheduler, "--workers", "2")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "seg.tif"), tifffile.imread(files / "rf_seg.tif"))


def test_a_tiff_goes_to_worker_processes_by_name_not_as_its_pixels(tmp_path):
    """A plain TIFF was put in the graph as a memory map, which pickles to the whole image:
    every worker process of a cluster was sent all of it."""
    import cloudpickle

    from napari_dlvision.core.lazy import open_lazy

    tifffile.imwrite(tmp_path / "plain.tif", np.ones((2048, 2048), np.uint16))  # 8 MB
    tifffile.imwrite(tmp_path / "tiled.tif", np.ones((2048, 2048), np.uint16), compression="zlib", tile=(256, 256))
    for name in ("plain.tif", "tiled.tif"):
        arr = open_lazy(tmp_path / name).array
        assert len(cloudpickle.dumps(dict(arr.__dask_graph__()))) < 100_000, name
        assert int(arr[1000:1100, 2000:].sum()) == 100 * 48, name


def test_zarr_chunks_that_do_not_fit_the_network_are_regrouped(files, tmp_path):
    image = tifffile.imread(files / "img.tif")
    src = zarr.create_array(str(tmp_path / "odd.zarr"), shape=image.shape, chunks=(100, 90), dtype=image.dtype)
    src[:] = image
    ok("predict", "--model", files / "unet.dlv", "--image", tmp_path / "odd.zarr", "--out", tmp_path / "seg.zarr",
       "--probabilities", tmp_path / "prob.zarr")
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "seg.zarr"))[:], tifffile.imread(files / "unet_seg.tif"))
    np.testing.assert_allclose(zarr.open(str(tmp_path / "prob.zarr"))[:], tifffile.imread(files / "unet_prob.tif"),
                               atol=1e-5)


def test_a_service_that_is_no_dask_scheduler_is_one_line_not_a_hang(files, tmp_path):
    """It accepts the connection and never answers: distributed waited for good."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held = []
    threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
    try:
        r = dlvision("predict", "--model", files / "rf.dlv", "--image", files / "img.tif",
                     "--out", tmp_path / "seg.zarr", "--dask-address", f"tcp://127.0.0.1:{server.getsockname()[1]}",
                     timeout=60, DLVISION_DASK_CONNECT_S="2")  # 10 s (+ 5 s) by default
    finally:
        server.close()
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "no dask scheduler answered" in lines[0], r.stderr
    assert list(tmp_path.iterdir()) == []
