"""Boxes from napari layers through world coordinates, and back (layers without a viewer)."""

import numpy as np
from napari.layers import Image, Labels, Shapes

from napari_dlvision.core.boxes import BoxTable
from napari_dlvision.widgets.box_layers import boxes_from_layer, layer_to_image


def test_shapes_on_another_scale_and_translation_land_on_the_right_pixels():
    image = Image(np.zeros((50, 60)), scale=(2, 2), translate=(10, 0))
    # In world units the rectangle spans y 29..49 and x 19..39: image pixels (y - 10) / 2 and x / 2.
    rect = np.array([[29, 19], [49, 19], [49, 39], [29, 39]], float)
    shapes = Shapes([rect], shape_type="rectangle")
    assert layer_to_image(shapes, image) is not None
    table, names, notes = boxes_from_layer(shapes, image, ["object"])
    np.testing.assert_allclose(table.boxes, [[10, 10, 20, 20]])
    same = Shapes([rect / 2], shape_type="rectangle", scale=(2, 2), translate=(10, 0))
    assert layer_to_image(same, image) is None
    np.testing.assert_allclose(boxes_from_layer(same, image, ["object"])[0].boxes, [[15, 10, 25, 20]])


def test_class_names_from_the_class_feature_and_stack_planes():
    image = Image(np.zeros((4, 30, 30)))
    rect = np.array([[2, 1, 1], [2, 5, 1], [2, 5, 9], [2, 1, 9]], float)
    shapes = Shapes([rect, rect + [1, 0, 0]], shape_type="rectangle", features={"class": ["dead", "alive"]})
    table, names, _ = boxes_from_layer(shapes, image, ["alive"])
    assert names == ["alive", "dead"] and table.classes.tolist() == [2, 1] and table.index.tolist() == [2, 3]
    assert isinstance(table, BoxTable)


def test_instance_labels_give_one_box_per_object():
    lab = np.zeros((30, 40), np.int32)
    lab[2:6, 3:9], lab[20:25, 30:33] = 4, 9
    table, names, _ = boxes_from_layer(Labels(lab), Image(np.zeros((30, 40))), ["cell"])
    assert names == ["cell"] and sorted(map(tuple, table.boxes.tolist())) == [(2, 3, 6, 9), (20, 30, 25, 33)]


def test_predicted_boxes_are_filled_faintly_and_edged_thinner_than_the_users(make_napari_viewer):
    from napari_dlvision.widgets.box_layers import EDGE_WIDTH, PREDICTION_EDGE_WIDTH, show_boxes

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((40, 40)), name="img")
    table = BoxTable([[2, 2, 10, 10], [20, 20, 30, 30]], [1, 2], ["cell", "dead"], scores=[0.9, 0.5])
    layer = show_boxes(viewer, "img detections", table, image)
    assert np.allclose(layer.face_color[:, 3], 0.2) and len({tuple(c) for c in layer.face_color[:, :3]}) == 2
    assert np.allclose(layer.edge_color[:, :3], layer.face_color[:, :3])  # one colour per class, edge and fill
    assert list(layer.edge_width) == [PREDICTION_EDGE_WIDTH] * 2 and PREDICTION_EDGE_WIDTH < EDGE_WIDTH
    layer = show_boxes(viewer, "img detections", table.select([1]), image)  # the live threshold redraws it
    assert len(layer.data) == 1 and np.allclose(layer.face_color[:, 3], 0.2)
