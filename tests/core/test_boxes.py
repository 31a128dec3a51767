"""Boxes: CSV, clipping, labels -> boxes, shapes <-> boxes with world coordinates, and COCO scores."""

import math

import numpy as np
import pytest

from napari_dlvision.core.box_metrics import evaluate_boxes
from napari_dlvision.core.boxes import (
    BoxTable, boxes_from_labels, boxes_to_rectangles, class_ids_from_feature, clip_to_image, pairwise_iou,
    shapes_to_boxes,
)
from napari_dlvision.core.errors import UserInputError


def test_csv_round_trip_2d_and_stack(tmp_path):
    t = BoxTable([[1, 2, 10, 12.5], [0, 0, 3, 4]], [2, 1], ["cell", "debris"], scores=[0.91234, 0.5])
    t.write(tmp_path / "b.csv")
    text = (tmp_path / "b.csv").read_text().splitlines()
    assert text[0] == "y0,x0,y1,x1,class,score"
    assert text[1] == "1,2,10,12.5,debris,0.9123"
    back = BoxTable.read_csv(tmp_path / "b.csv", ["cell", "debris"])
    np.testing.assert_allclose(back.boxes, t.boxes)
    assert back.classes.tolist() == [2, 1] and back.class_names == ["cell", "debris"]
    np.testing.assert_allclose(back.scores, [0.9123, 0.5])

    s = BoxTable([[1, 2, 3, 4]], [1], ["nucleus"], index=[7])
    s.write(tmp_path / "s.csv")
    assert (tmp_path / "s.csv").read_text().splitlines() == ["index,y0,x0,y1,x1,class", "7,1,2,3,4,nucleus"]
    back = BoxTable.read_csv(tmp_path / "s.csv")
    assert back.is_stack and back.index.tolist() == [7] and back.scores is None


def test_csv_header_only_is_an_image_without_boxes(tmp_path):
    (tmp_path / "e.csv").write_text("y0,x0,y1,x1,class\n")
    t = BoxTable.read_csv(tmp_path / "e.csv")
    assert len(t) == 0 and not t.is_stack


@pytest.mark.parametrize("text,message", [
    ("", "empty"),
    ("y0,x0,y1,class\n1,2,3,a\n", "lacks x1"),
    ("y0,x0,y1,x1,class\n1,2,3,a\n", "4 fields"),
    ("y0,x0,y1,x1,class\n1,2,3,x,a\n", "must be numbers"),
    ("y0,x0,y1,x1,class\n1,2,3,nan,a\n", "finite"),
    ("y0,x0,y1,x1,class\n1,2,3,4, \n", "class is empty"),
    ("y0,x0,y1,x1,class\n1,2,3,4,a\x00b\n", "holds control characters"),
    ("index,y0,x0,y1,x1,class\n1.5,1,2,3,4,a\n", "must be numbers"),
])
def test_bad_csv_is_one_clear_message(tmp_path, text, message):
    (tmp_path / "b.csv").write_text(text)
    with pytest.raises(UserInputError, match=message):
        BoxTable.read_csv(tmp_path / "b.csv")


def test_csv_is_written_only_as_csv_and_atomically(tmp_path):
    with pytest.raises(UserInputError, match="ending in .csv"):
        BoxTable([[0, 0, 1, 1]], [1]).write(tmp_path / "boxes.tif")
    assert list(tmp_path.iterdir()) == []


def test_clip_drops_and_tells():
    t = BoxTable([[-5, -5, 10, 10],   # clipped
                  [20, 20, 30, 30],   # kept
                  [200, 5, 210, 9],   # outside
                  [5, 5, 5, 9],       # no area
                  [30, 40, 20, 35]],  # corners swapped: put in order
                 [1] * 5)
    out, notes = clip_to_image(t, (100, 100))
    np.testing.assert_array_equal(out.boxes, [[0, 0, 10, 10], [20, 20, 30, 30], [20, 35, 30, 40]])
    text = "; ".join(notes)
    assert "1 box clipped" in text and "1 box outside the image dropped" in text
    assert "without area" in text and "swapped" in text
    stack = BoxTable([[0, 0, 5, 5], [0, 0, 5, 5]], [1, 1], index=[0, 9])
    out, notes = clip_to_image(stack, (10, 10), n_planes=3)
    assert out.index.tolist() == [0] and "planes the stack does not have" in notes[0]


def test_boxes_from_labels_2d_float_ids_and_stack():
    lab = np.zeros((20, 30), np.float32)
    lab[2:5, 3:9] = 7
    lab[10, 20] = 1000.0  # one pixel, large id
    t = boxes_from_labels(lab)
    assert sorted(map(tuple, t.boxes.tolist())) == [(2, 3, 5, 9), (10, 20, 11, 21)]
    stack = np.zeros((3, 20, 30), np.uint16)
    stack[0, 1:4, 1:4] = 1
    stack[2, 5:9, 6:8] = 1  # the same id on another plane is another object
    s = boxes_from_labels(stack, stack=True, class_name="nucleus")
    assert s.index.tolist() == [0, 2] and s.class_names == ["nucleus"]
    np.testing.assert_array_equal(s.boxes, [[1, 1, 4, 4], [5, 6, 9, 8]])
    with pytest.raises(UserInputError, match="whole numbers"):
        boxes_from_labels(lab + 0.5)


def test_shapes_and_boxes_round_trip_in_pixel_edges():
    t = BoxTable([[2, 3, 10, 12], [0, 0, 1, 1]], [1, 2], ["a", "b"])
    rects = boxes_to_rectangles(t)
    # napari draws pixel r centred on r: the one-pixel box's corners sit at -0.5 and 0.5.
    np.testing.assert_array_equal(rects[1], [[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    back, notes = shapes_to_boxes(rects, ["rectangle"] * 2, t.classes, t.class_names)
    np.testing.assert_allclose(back.boxes, t.boxes)
    assert notes == []
    s = BoxTable([[2, 3, 10, 12]], [1], index=[4])
    rects = boxes_to_rectangles(s)
    assert rects[0].shape == (4, 3) and np.all(rects[0][:, 0] == 4)
    back, _ = shapes_to_boxes(rects, ["rectangle"], [1], ["object"], stack=True)
    assert back.index.tolist() == [4]
    np.testing.assert_allclose(back.boxes, s.boxes)


def test_other_shapes_are_taken_as_their_bounding_boxes_and_world_coordinates_apply():
    ellipse = np.array([[10, 10], [10, 30], [20, 30], [20, 10]], float)
    line = np.array([[0, 0], [5, 8]], float)
    # The shapes layer has scale 2 and is shifted by (4, 6) in world units against a plain image:
    # shapes data -> world: 2 * p + (4, 6); world -> image data: identity.
    to_image = np.array([[2, 0, 4], [0, 2, 6], [0, 0, 1]], float)
    t, notes = shapes_to_boxes([ellipse, line], ["ellipse", "line"], [1, 1], ["object"], to_image=to_image)
    np.testing.assert_allclose(t.boxes, [[24.5, 26.5, 44.5, 66.5], [4.5, 6.5, 14.5, 22.5]])
    assert "1 line or path taken as their bounding boxes" in notes[0]
    spanning = np.array([[0, 1, 1], [2, 5, 5], [0, 5, 1], [2, 1, 5]], float)
    t, notes = shapes_to_boxes([spanning], ["polygon"], [1], ["object"], stack=True)
    assert len(t) == 0 and "spanning several planes" in notes[0]
    with pytest.raises(UserInputError, match="3D Shapes"):
        shapes_to_boxes([ellipse], ["ellipse"], [1], ["object"], stack=True)


def test_class_feature_as_ids_or_names():
    ids, names = class_ids_from_feature([1, 3, None, np.nan], ["cell"])
    assert ids.tolist() == [1, 3, 1, 1] and names == ["cell", "class 2", "class 3"]
    ids, names = class_ids_from_feature(["dead", "cell", "2", "dead"], ["cell"])
    assert ids.tolist() == [2, 1, 2, 2] and names == ["cell", "dead"]
    with pytest.raises(UserInputError, match="start at 1"):
        class_ids_from_feature([0], ["cell"])


def test_pairwise_iou():
    iou = pairwise_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [0, 5, 10, 15], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou, [[1, 50 / 150, 0]])


def test_coco_scores():
    truth = BoxTable([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [1, 1, 2], ["cell", "dead"])
    perfect = BoxTable(truth.boxes, truth.classes, truth.class_names, scores=[0.9, 0.8, 0.7])
    s = evaluate_boxes(perfect, truth, 0.5)
    assert [round(s[m], 9) for m in ("mAP@0.5", "mAP@0.5:0.95", "precision", "recall", "F1")] == [1.0] * 5
    # Classes match by name, whatever their order in each table.
    swapped = BoxTable(truth.boxes, [2, 2, 1], ["dead", "cell"], scores=[0.9, 0.8, 0.7])
    assert evaluate_boxes(swapped, truth, 0.5)["mAP@0.5"] == 1.0
    # A shifted box is right at IoU 0.5 only; a false positive scoring below the threshold
    # lowers mAP a little, not precision.
    shifted = BoxTable([[0, 0, 10, 10], [20, 23, 30, 33], [40, 40, 50, 50], [60, 60, 70, 70]], [1, 1, 2, 1],
                       ["cell", "dead"], scores=[0.9, 0.8, 0.7, 0.2])
    s = evaluate_boxes(shifted, truth, 0.5)
    assert s["mAP@0.5"] == 1.0 and s["mAP@0.5:0.95"] < 0.9
    assert s["precision"] == 1.0 and s["recall"] == 1.0 and s["predicted boxes"] == 3
    s = evaluate_boxes(shifted, truth, 0.1)
    assert s["precision"] == 0.75
    # Stacks: a box never matches one of another plane.
    truth3 = BoxTable([[0, 0, 10, 10]], [1], index=[0])
    pred3 = BoxTable([[0, 0, 10, 10]], [1], scores=[0.9], index=[1])
    s = evaluate_boxes(pred3, truth3, 0.5, n_planes=2)
    assert s["mAP@0.5"] == 0.0 and s["recall"] == 0.0
    s = evaluate_boxes(BoxTable.empty(scored=True), BoxTable.empty(), 0.5)
    assert math.isnan(s["mAP@0.5"])
    with pytest.raises(UserInputError, match="scores"):
        evaluate_boxes(truth, truth)


def test_crowded_images_count_every_box():
    n = 300  # COCO's default cap is 100 detections per image
    b = np.array([[i // 20 * 12, i % 20 * 12, i // 20 * 12 + 10, i % 20 * 12 + 10] for i in range(n)], float)
    truth = BoxTable(b, np.ones(n, int))
    s = evaluate_boxes(BoxTable(b, np.ones(n, int), scores=np.linspace(1, 0.5, n)), truth, 0.3)
    assert s["mAP@0.5"] == 1.0 and s["recall"] == 1.0
