import numpy as np

from napari_dlvision.core.instances import instances_from_interior, instances_from_mask
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
