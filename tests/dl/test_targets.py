import numpy as np
import pytest

from napari_dlvision.core.errors import UserInputError
from napari_dlvision.core.normalisation import Normalisation
from napari_dlvision.dl.targets import (
    IGNORE, balanced_weights, class_counts, dense_targets, sparse_targets,
)


def test_sparse_targets_ignore_unlabelled():
    lab = np.array([[0, 1, 2], [3, 0, 1]], np.uint8)
    np.testing.assert_array_equal(sparse_targets(lab), [[IGNORE, 0, 1], [2, IGNORE, 0]])
    np.testing.assert_array_equal(sparse_targets(lab.astype(float)), sparse_targets(lab))
    with pytest.raises(UserInputError):
        sparse_targets(np.array([[0.5, 1.0]]))
    with pytest.raises(UserInputError):
        sparse_targets(np.array([[-1, 1]]))


def test_dense_targets_mark_the_line_between_touching_objects():
    inst = np.zeros((12, 16), np.int32)
    inst[2:10, 2:8] = 1
    inst[2:10, 8:14] = 2  # touches object 1 along column 7 | 8
    t = dense_targets(inst)
    assert t[0, 0] == 0 and t[5, 4] == 1 and t[5, 11] == 1
    assert np.all(t[3:9, 7] == 2) and np.all(t[3:9, 8] == 2)  # the shared border, both sides
    assert np.all(t[2, 2:14] == 2)  # rim against background
    assert set(np.unique(t)) == {0, 1, 2}
    assert np.all((t > 0) == (inst > 0))


def test_class_weights_favour_rare_classes():
    t = [np.array([0, 0, 0, 0, 0, 0, 1, 1, IGNORE, IGNORE])]
    counts = class_counts(t, 3)
    np.testing.assert_array_equal(counts, [6, 2, 0])
    w = balanced_weights(counts)
    assert w[1] > w[0] > 0 and w[2] == 0
    assert np.isclose(w[:2].mean(), 1)


def test_percentile_normalisation_is_per_image_and_per_channel():
    rng = np.random.default_rng(0)
    img = rng.normal(100, 10, (2, 64, 64)).astype(np.float32)
    img[1] *= 50
    norm = Normalisation()
    out = norm.apply(img)
    assert out.dtype == np.float32 and out.shape == img.shape
    for c in range(2):
        assert np.isclose(np.percentile(out[c], 1), 0, atol=1e-4)
        assert np.isclose(np.percentile(out[c], 99.8), 1, atol=1e-4)
    # Exposure changes do not change what the network sees.
    np.testing.assert_allclose(norm.apply(img * 3 + 500), out, atol=1e-4)
    assert Normalisation.from_json(norm.to_json()) == norm
    flat = norm.apply(np.full((1, 8, 8), 7.0, np.float32))
    assert np.all(np.isfinite(flat))
    with pytest.raises(ValueError):
        Normalisation(low=50, high=10)


def test_strokes_or_a_class_mask_are_refused_as_instance_masks():
    """`train unet --dense` on a strokes file trained silently: each class id
    became one scattered 'object'."""
    from napari_dlvision.core.errors import UserInputError
    from napari_dlvision.data.synthetic import nuclei

    s = nuclei((128, 128), seed=0)
    with pytest.raises(UserInputError, match="separate parts: dense training needs instance masks"):
        dense_targets(s.scribbles)
    classes = np.where(s.instances > 0, 1 + (s.instances % 2), 0).astype(np.uint8)  # a mask of two classes
    with pytest.raises(UserInputError, match="separate parts"):
        dense_targets(classes)
    cut = s.instances.copy()
    cut[:, 64] = 0  # objects cut in two by a line still are instances
    assert dense_targets(cut).max() == 2
    assert dense_targets(np.zeros((8, 8), np.uint8)).max() == 0


def test_instance_masks_with_stray_pixels_huge_ids_or_one_id_pass():
    from napari_dlvision.data.synthetic import nuclei

    inst = nuclei((128, 128), seed=0).instances.astype(np.int64)
    speckled = inst.copy()
    ys, xs = np.nonzero(inst == 0)
    speckled[ys[::300], xs[::300]] = inst.max()  # stray pixels, every one far from its object
    assert dense_targets(speckled).max() == 2
    assert dense_targets(np.where(inst > 0, inst + (1 << 40), 0)).max() == 2  # ids near 2**40: no 2**40 counts
    assert dense_targets((inst > 0).astype(np.uint8)).max() == 2  # a binary mask: one id, objects apart
