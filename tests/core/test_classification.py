"""Predictions, splits, scores and the mosaic of thumbnails (pure numpy)."""

import numpy as np
import pytest

from napari_dlvision.core.classification import (
    Prediction, check_trainable, evaluate, label_next, stratified_split,
)
from napari_dlvision.core.errors import UserInputError
from napari_dlvision.core.mosaic import Mosaic, labels_from_strokes, overlay_tiles


def test_prediction_margins_and_label_next():
    p = Prediction(np.array([[0.5, 0.4, 0.1], [0.9, 0.05, 0.05], [0.34, 0.33, 0.33], [0.6, 0.3, 0.1]]))
    assert list(p.labels) == [0, 0, 0, 0]
    np.testing.assert_allclose(p.margins, [0.1, 0.85, 0.01, 0.3])
    assert list(label_next(p.margins, np.array([False, False, False, True]))) == [2, 0, 1]


def test_stratified_split_keeps_classes_and_singletons():
    labels = np.array([0] * 20 + [1] * 10 + [2] + [-1] * 5)
    train, val = stratified_split(labels, 0.2, seed=1)
    assert set(np.bincount(labels[val])) == {4, 2} and 30 not in val  # class 2's only image trains
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 31
    _, val = stratified_split(labels, 0.2, cap=3)
    assert len(val) <= 4


def test_check_trainable_messages():
    with pytest.raises(UserInputError, match="no image is labelled"):
        check_trainable(np.array([-1, -1]), ["a", "b"])
    with pytest.raises(UserInputError, match="only 'b' is labelled"):
        check_trainable(np.array([1, 1, -1]), ["a", "b"])


def test_evaluation_report():
    ev = evaluate(np.array([0, 0, 1, 1, 2, -1]), np.array([0, 1, 1, 1, 1, 2]), ["cat", "dog", "eel"])
    assert ev.n == 5 and ev.accuracy == pytest.approx(0.6)
    np.testing.assert_array_equal(ev.matrix, [[1, 1, 0], [0, 2, 0], [0, 1, 0]])
    np.testing.assert_allclose(ev.precision[:2], [1.0, 0.5])
    assert np.isnan(ev.precision[2]) and ev.recall[2] == 0
    text = ev.report()
    assert "accuracy 0.6000 (3 of 5 images)" in text and "confusion matrix" in text


def test_mosaic_round_trip_and_strokes():
    m = Mosaic.for_images(11, 6, 8)
    tiles = np.arange(11)[:, None, None] * np.ones((11, 6, 8), np.int64) + 1
    mosaic = m.assemble(tiles)
    assert mosaic.shape == m.shape
    np.testing.assert_array_equal(m.cells(mosaic)[:, :6, :8], tiles)
    assert [m.index_at(*m.centre(i)) for i in range(11)] == list(range(11))
    strokes = np.zeros(m.shape, np.uint8)
    y, x = m.origin(4)
    strokes[y + 1: y + 4, x + 2] = 2
    strokes[y + 5, x + 7] = 1  # fewer pixels of another class on the same thumbnail
    got = labels_from_strokes(strokes, m)
    assert got[4] == 2 and (np.delete(got, 4) == 0).all()
    stack = np.zeros((3, 6, 8), np.uint8)
    stack[1, 0, 0] = 3
    assert list(labels_from_strokes(stack)) == [0, 3, 0]


def test_overlay_marks_mistakes_and_veils_hidden():
    o = overlay_tiles(3, 10, 10, np.array([0, 1, 1]), np.array([1.0, 0.5, 0.2]), np.eye(4)[:2],
                      truth=np.array([0, 0, -1]), shown=np.array([True, True, False]))
    assert tuple(o[1, 0, 9]) == (230, 30, 30, 255) and tuple(o[0, 0, 9]) == (40, 200, 60, 255)
    assert o[2, 5, 5, 3] >= 190 and o[0, 5, 5, 3] == 0  # veiled / clear inside
