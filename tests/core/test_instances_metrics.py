import numpy as np
import pytest

from napari_dlvision.core.instances import instances_from_interior, instances_from_mask, split_in_strips
from napari_dlvision.core.metrics import instance_f1, iou
from napari_dlvision.core.probabilities import segmentation


def _discs(centres, r, shape=(80, 120)):
    yy, xx = np.indices(shape)
    lab = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, 1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = k
    return lab


def test_touching_discs_are_split():
    truth = _discs([(40, 40), (40, 72)], 17)  # overlapping by 2 px
    inst = instances_from_mask(truth > 0)
    assert len(np.unique(inst[inst > 0])) == 2
    assert instance_f1(inst, truth) == 1.0


def test_single_disc_stays_whole_and_tiny_objects_survive():
    mask = _discs([(40, 60)], 20) > 0
    mask[5:8, 5:8] = True
    inst = instances_from_mask(mask, min_size=4)
    assert len(np.unique(inst[inst > 0])) == 2


def _touching_blobs(shape, seed=0):
    """Many nuclei-sized discs, a third of them touching a neighbour."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape)
    mask = np.zeros(shape, bool)
    for _ in range(shape[0] * shape[1] // 500):
        (cy, cx), r = rng.uniform(0, shape), rng.uniform(5, 9)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    return mask


def _matched_pixels(a, b):
    """Pixels of a whose id in b is the one most of their object went to."""
    fg = a > 0
    pairs, counts = np.unique(np.stack([a[fg], b[fg]]), axis=1, return_counts=True)
    best = np.zeros(a.max() + 1, np.int64)
    np.maximum.at(best, pairs[0], counts)
    return best.sum(), fg.sum()


def test_strips_give_the_objects_of_one_pass_over_the_whole_image():
    mask = _touching_blobs((300, 260))
    whole = instances_from_mask(mask, strip_pixels=mask.size)
    for strip_pixels in (1, 260 * 20, 260 * 64):
        strips = instances_from_mask(mask, strip_pixels=strip_pixels)
        assert np.array_equal(strips > 0, whole > 0)
        assert strips.max() == whole.max() > 60
        assert len(np.unique(strips[strips > 0])) == strips.max()  # ids 1..n, none skipped
        # Where two objects' flooding ties, scikit-image's watershed breaks the
        # tie by the order of its queue, which the rest of the image changes:
        # a few boundary pixels may go to the neighbour.
        matched, total = _matched_pixels(whole, strips)
        assert matched >= 0.995 * total


def test_an_object_taller_than_a_strip_stays_whole():
    mask = np.zeros((200, 40), bool)
    mask[5:195, 10:16] = True  # a thin filament crossing every strip
    mask[100:104, 16:30] = True  # and a branch
    inst = instances_from_mask(mask, strip_pixels=40 * 8)
    assert inst.max() == 1 and np.array_equal(inst > 0, mask)


def test_strips_keep_memory_flat():
    import tracemalloc

    mask = _touching_blobs((1024, 256), seed=1)

    def peak(**kw):
        tracemalloc.start()
        try:
            instances_from_mask(mask, **kw)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    whole, strips = peak(strip_pixels=mask.size), peak(strip_pixels=256 * 16)
    assert whole > 80 * mask.size  # scikit-image's h_maxima alone takes ~100 bytes a pixel
    assert strips < whole / 3


def test_a_mask_read_from_a_store_strip_by_strip_gives_the_same_objects(tmp_path):
    """split_in_strips reads only windows of rows (from a Zarr store here, as
    `dlvision predict` does on images larger than memory), without the whole
    image's labels: same objects, small parts dropped the same way."""
    zarr = pytest.importorskip("zarr")
    mask = _touching_blobs((300, 260))
    mask[20:290, 100:104] = True  # taller than any strip: the window must grow to hold it
    mask[3:5, 3:5] = True  # a speck, dropped (under min_size)
    src = zarr.create_array(str(tmp_path / "seg.zarr"), shape=mask.shape, chunks=(64, 64), dtype=np.uint8)
    src[:] = mask.astype(np.uint8) * 2
    reads = []

    def rows(lo, hi):
        reads.append(hi - lo)
        return src[lo:hi] == 2

    out = zarr.create_array(str(tmp_path / "inst.zarr"), shape=mask.shape, chunks=(64, 64), dtype=np.int32)
    done = []
    n = split_in_strips(rows, out, strip_pixels=260 * 20, on_strip=lambda d, t: done.append((d, t)))
    strips = out[:]
    whole = instances_from_mask(mask, strip_pixels=mask.size)
    assert n == strips.max() == whole.max() and np.array_equal(strips > 0, whole > 0)
    assert strips[3:5, 3:5].max() == 0
    matched, total = _matched_pixels(whole, strips)
    assert matched >= 0.995 * total
    assert max(reads) >= 270 and min(reads) < 60  # grown around the filament only
    assert done[-1] == (300, 300) and len(done) == 15


def test_a_speck_cut_by_a_window_edge_decides_nothing():
    """A 3-pixel speck (under min_size) crossing a window's last row was kept
    there, joined a strip's blob to a line of the strip above, and the blob,
    owned by no strip, was left out without a word."""
    mask = np.zeros((64, 40), bool)
    mask[0:39, 20] = True  # a line of the first strip
    mask[39:42, 21] = True  # the speck, diagonal to the line's end, across the second window's last row
    mask[20:39, 22:30] = True  # a blob of the second strip, diagonal to the speck
    out = np.zeros(mask.shape, np.int32)
    n = split_in_strips(lambda lo, hi: mask[lo:hi], out, strip_pixels=16 * 40)
    assert n == 2 and out[25, 25] > 0 and out[39:42, 21].max() == 0
    np.testing.assert_array_equal(out > 0, instances_from_mask(mask) > 0)


def test_empty_mask():
    assert instances_from_mask(np.zeros((10, 10), bool)).max() == 0


def test_metrics():
    a = np.zeros((10, 10), bool)
    a[:5] = True
    b = np.zeros((10, 10), bool)
    b[:, :5] = True
    assert iou(a, b) == 25 / 75
    truth = _discs([(20, 20), (20, 60), (60, 100)], 10)
    pred = truth.copy()
    pred[pred == 3] = 0  # one missed object
    assert instance_f1(pred, truth) == 2 * 2 / (2 + 3)
    assert instance_f1(truth, truth) == 1.0


def test_dense_instances_from_probabilities():
    """Two interiors separated by a boundary line become two objects; stray fg stays one."""
    prob = np.zeros((3, 32, 32), np.float32)
    prob[0] = 1
    fg = np.zeros((32, 32), bool)
    fg[4:20, 4:28] = True
    prob[:, fg] = np.array([0, 1, 0])[:, None]
    prob[:, 4:20, 15:17] = np.array([0, 0, 1])[:, None, None]  # the boundary between them
    prob[:, 26:30, 26:30] = np.array([0.1, 0.2, 0.7])[:, None, None]  # boundary-only blob
    inst = instances_from_interior(*prob)
    assert len(np.unique(inst[inst > 0])) == 3
    assert inst[10, 8] != inst[10, 22] and inst[10, 8] > 0 and inst[10, 22] > 0
    assert (inst[fg] > 0).all()
    assert instances_from_interior(*np.stack([np.ones((8, 8)), np.zeros((8, 8)), np.zeros((8, 8))])).max() == 0
    # Background most probable though under 0.5: background in the segmentation, so no object either.
    unsure = np.stack([np.full((8, 8), 0.4), np.full((8, 8), 0.35), np.full((8, 8), 0.25)])
    assert (segmentation(unsure) == 1).all() and instances_from_interior(*unsure).max() == 0
