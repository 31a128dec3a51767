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
