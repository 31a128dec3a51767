"""Boxes to pixel labels and objects back to boxes (the forest detector's halves), on small arrays."""

import numpy as np
import pytest

from napari_dlvision.core import box_regions as R
from napari_dlvision.core.errors import UserInputError


def test_strokes_are_background_outside_the_boxes_and_object_in_their_centres():
    boxes = np.array([[10, 10, 30, 40], [50, 60, 51, 61], [50, 5, 52, 7]], float)  # a box, a 1-pixel and a 2x2 box
    lab = R.strokes_from_boxes((64, 80), boxes, np.array([1, 2, 1]))
    assert lab[20, 25] == 2 and lab[50, 60] == 3 and (lab[50:52, 5:7] == 2).sum() >= 1
    # The ring of each box (and a pixel around it) is left unlabelled: where the object ends is not known.
    assert lab[10, 10] == 0 and lab[9, 25] == 0 and lab[30, 25] == 0 and lab[29, 39] == 0 and lab[31, 25] == 1
    inside = np.zeros(lab.shape, bool)
    for y0, x0, y1, x1 in boxes.astype(int):
        inside[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] = True
    annotated = np.zeros(lab.shape, bool)
    annotated[10:52, 5:61] = True  # the boxes' bounding rectangle
    assert np.all(lab[~inside & annotated] == 1)  # this small plane keeps every background pixel there
    assert np.all(lab[~annotated] == 0)  # beyond it objects may just not be boxed yet: not background
    # The central ellipse: half the box's height and width.
    assert lab[20, 25] == 2 and lab[14, 25] == 0 and lab[20, 31] == 2 and lab[20, 34] == 0


def test_background_is_sampled_on_a_large_plane_and_needed_at_all():
    boxes = np.array([[100, 100, 110, 110], [880, 880, 890, 890]], float)
    lab = R.strokes_from_boxes((1000, 1000), boxes, np.array([1, 1]), np.random.default_rng(0))
    assert (lab == 1).sum() == R.MIN_BACKGROUND and (lab == 2).sum() > 0
    assert not lab[:100].any() and not lab[:, 890:].any()
    covering = R.strokes_from_boxes((20, 20), np.array([[0, 0, 12, 20], [10, 0, 20, 20]], float), np.array([1, 1]))
    with pytest.raises(UserInputError, match="no background to learn from; choose centernet"):
        R.check_background([covering])


def test_objects_become_boxes_down_to_one_pixel_with_their_class_and_mean_score():
    prob = np.zeros((3, 40, 50), np.float32)
    prob[0] = 1
    prob[:, 5:15, 5:25] = np.array([0.1, 0.8, 0.1])[:, None, None]  # class 1
    prob[:, 30, 40] = (0.2, 0.1, 0.7)  # a one-pixel object of class 2
    prob[:, 20:26, 30:34] = np.array([0.6, 0.4, 0.0])[:, None, None]  # background is likelier than 0.5: not found
    boxes, scores, classes = R.boxes_of_objects(prob, level=0.5)
    order = np.argsort(boxes[:, 0])
    np.testing.assert_array_equal(boxes[order], [[5, 5, 15, 25], [30, 40, 31, 41]])
    np.testing.assert_allclose(scores[order], [0.9, 0.8], atol=1e-6)
    np.testing.assert_array_equal(classes[order], [1, 2])
    assert len(R.boxes_of_objects(prob, level=0.7)[0]) == 3  # a looser level takes the third
    assert len(R.boxes_of_objects(np.stack([np.ones((8, 8)), np.zeros((8, 8))]))[0]) == 0


def test_touching_objects_are_split_and_the_settings_chosen_on_the_training_boxes():
    yy, xx = np.mgrid[:40, :60]
    two = ((yy - 20) ** 2 + (xx - 20) ** 2 < 100) | ((yy - 20) ** 2 + (xx - 34) ** 2 < 100)  # discs that overlap
    prob = np.stack([1.0 - two, two.astype(float)]).astype(np.float32)
    assert len(R.boxes_of_objects(prob, split=0.25)[0]) == 2
    targets = [(np.array([[10, 10, 30, 30], [10, 27, 30, 47]], float), np.array([1, 1]))]
    tuning = R.choose_settings([prob], targets, lambda found, t: (float(len(found[0][0]) == len(t[0][0])), 0.0))
    steps = []
    while True:
        try:
            steps.append(next(tuning))
        except StopIteration as end:
            chosen = end.value
            break
    assert (steps[-1].done, steps[-1].total) == (len(R.LEVELS) * len(R.SPLITS),) * 2 and steps[-1].message
    assert sum(bool(e.message) for e in steps) == len(R.LEVELS)
    # Among the pairs that find both, the default level and the split nearest the default.
    assert chosen["level"] == R.DEFAULT_LEVEL and len(R.boxes_of_objects(prob, **chosen)[0]) == 2
    finding = [s for s in R.SPLITS if len(R.boxes_of_objects(prob, s)[0]) == 2]
    assert chosen["split"] == min(finding, key=lambda s: abs(s - R.DEFAULT_SPLIT))


def test_auto_chooses_the_forest_for_one_class_of_objects_apart_else_centernet():
    apart = R.strokes_from_boxes((60, 60), np.array([[5, 5, 15, 15], [40, 40, 50, 50]], float), np.array([1, 1]),
                                 sample=False)
    packed = R.strokes_from_boxes((40, 40), np.array([[0, 0, 21, 40], [20, 0, 40, 40]], float), np.array([1, 1]),
                                  sample=False)
    arch, why = R.choose_arch([apart], 1)
    assert arch == "forest" and why.startswith("auto chose forest (objects apart: ")
    assert R.choose_arch([packed], 1) == ("centernet", "auto chose centernet (objects packed: 0% of the boxed area "
                                                       "lies between boxes)")
    assert R.choose_arch([apart], 2)[0] == "centernet"
    negative = R.strokes_from_boxes((30, 30), np.zeros((0, 4)), np.zeros(0, int))
    assert np.all(negative == 1)  # a plane without boxes given as a negative is all background
