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
