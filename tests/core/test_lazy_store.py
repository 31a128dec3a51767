"""Blocks written into a Zarr store at once are all there afterwards."""

import dask
import numpy as np
import pytest
import tifffile

da = pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")

from napari_dlvision.core.lazy import store  # noqa: E402


def test_irregular_blocks_written_at_once_into_zarr_lose_no_pixels(tmp_path):
    """Zarr rewrites a whole chunk to change part of it: blocks that share a chunk,
    written at once, lost each other's pixels (a network's halo larger than the last
    block makes dask's blocks irregular: 300 rows in blocks of 128 became 128, 112, 60)."""
    data = np.arange(1, 1 + 60 * 400, dtype=np.float32).reshape(60, 400)
    image = da.from_array(data, chunks=((8, 6) * 3 + (18,), 400))
    with dask.config.set(scheduler="threads", num_workers=8):
        for k in range(3):
            written = store({tmp_path / f"out{k}.zarr": image, tmp_path / f"out{k}.tif": image}, progress=False)
            for path in written:
                got = zarr.open(str(path))[:] if path.suffix == ".zarr" else tifffile.imread(path)
                np.testing.assert_array_equal(got, data, err_msg=str(path))


def test_torch_keeps_its_thread_count_after_blocks_ran_one_thread_each():
    """Blocks run one thread each; afterwards torch had as many threads as there are
    cores, whatever the user (or OMP_NUM_THREADS) had set."""
    torch = pytest.importorskip("torch")
    from napari_dlvision.core.lazy import one_thread_per_block_here

    before = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            with one_thread_per_block_here():
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("when", ["deleting an old output", "renaming the second new one"])
def test_an_interrupt_while_outputs_go_into_place_leaves_all_old_or_all_new(tmp_path, monkeypatch, when):
    """Deleting a large old Zarr store takes minutes: a Ctrl-C then left the first output
    new, the second old, and the first's old copy as a hidden folder."""
    import os

    from napari_dlvision.core import lazy

    seg, prob = tmp_path / "seg.zarr", tmp_path / "prob.tif"

    def outputs(value):
        return {p: da.full((64, 64), value, dtype=np.uint8, chunks=32) for p in (seg, prob)}

    store(outputs(1), progress=False)
    remove, replace, renamed = lazy._remove, os.replace, []

    def interrupted_remove(path):
        if when == "deleting an old output" and path.name.endswith(".old"):
            monkeypatch.setattr(lazy, "_remove", remove)  # once: the user pressed Ctrl-C once
            raise KeyboardInterrupt
        remove(path)

    def interrupted_replace(src, dst):
        if ".partial." in os.path.basename(src):  # a new output going into place (zarr renames its chunks too)
            renamed.append(dst)
            if when == "renaming the second new one" and len(renamed) == 2:
                raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(lazy, "_remove", interrupted_remove)
    monkeypatch.setattr(os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        store(outputs(2), progress=False)
    monkeypatch.undo()
    values = {int(np.unique(zarr.open(str(seg))[:])[0]), int(np.unique(tifffile.imread(prob))[0])}
    assert values == ({2} if when == "deleting an old output" else {1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prob.tif", "seg.zarr"]


def test_a_cluster_whose_workers_do_not_see_the_files_writes_nothing(tmp_path, monkeypatch):
    """Workers without the shared file system wrote the chunks to their own disks: all zeros here,
    exit 0. Workers in this process see what it sees, so their look is told to find nothing."""
    distributed = pytest.importorskip("distributed")
    from napari_dlvision.core import lazy
    from napari_dlvision.core.errors import UserInputError

    monkeypatch.setattr(lazy, "_missing", lambda paths: list(paths))
    image = da.ones((64, 64), dtype=np.uint8, chunks=32)
    with distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        with pytest.raises(UserInputError, match=r"cannot see .*img\.tif: a cluster needs"):
            store({tmp_path / "out.zarr": image}, progress=False, inputs=[tmp_path / "img.tif"])
    assert list(tmp_path.iterdir()) == []


def test_outputs_through_a_link_or_named_like_a_folder(tmp_path):
    """A link named as the output is replaced, its target kept, and no hidden copy is left; a
    folder of the user's named *.tif was deleted by --overwrite."""
    from napari_dlvision.core.errors import UserInputError
    from napari_dlvision.core.lazy import check_lazy_output

    image = da.full((64, 64), 3, dtype=np.uint8, chunks=32)
    (tmp_path / "elsewhere").mkdir()
    store({tmp_path / "elsewhere" / "real.zarr": image * 0}, progress=False)
    (tmp_path / "link.zarr").symlink_to(tmp_path / "elsewhere" / "real.zarr")
    store({tmp_path / "link.zarr": image}, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "link.zarr"]
    assert int(zarr.open(str(tmp_path / "link.zarr"))[:].min()) == 3
    assert int(zarr.open(str(tmp_path / "elsewhere" / "real.zarr"))[:].max()) == 0
    (tmp_path / "mine.tif").mkdir()
    with pytest.raises(UserInputError, match="is a folder"):
        check_lazy_output(tmp_path / "mine.tif")
