import json
import zipfile

import numpy as np
import pytest

from napari_dlvision.core.errors import ModelFileError, UserInputError
from napari_dlvision.core.features import FeatureSpec
from napari_dlvision.core.instances import instances_from_segmentation
from napari_dlvision.core.metrics import instance_f1, iou
from napari_dlvision.core.pixel_classifier import PixelClassifier
from napari_dlvision.core.probabilities import segmentation, uncertainty
from napari_dlvision.data.synthetic import NUCLEUS


@pytest.fixture
def trained(sample2d):
    return PixelClassifier(n_trees=40).fit(sample2d.image, sample2d.scribbles)


def test_accuracy_on_synthetic_nuclei(trained, sample2d):
    prob = trained.predict_proba(sample2d.image)
    assert prob.shape == (2,) + sample2d.image.shape
    np.testing.assert_allclose(prob.sum(0), 1, atol=1e-5)
    seg = segmentation(prob)
    assert iou(seg == NUCLEUS, sample2d.foreground) > 0.9
    inst = instances_from_segmentation(seg, NUCLEUS)
    assert instance_f1(inst, sample2d.instances) > 0.8


def test_tiled_prediction_equals_whole_image(trained, sample2d):
    whole = trained.predict_proba(sample2d.image, tile_shape=(256, 256))
    tiled = trained.predict_proba(sample2d.image, tile_shape=(70, 90))
    np.testing.assert_array_equal(tiled, whole)


def test_save_load_round_trip_is_identical(trained, sample2d, tmp_path):
    path = trained.save(tmp_path / "model.dlv")
    loaded = PixelClassifier.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(sample2d.image), trained.predict_proba(sample2d.image))
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("model.json"))
        assert set(zf.namelist()) == {"model.json", "arrays.npz"}
    assert meta["kind"] == "pixel-random-forest" and meta["classes"] == [1, 2]
    assert meta["n_channels"] == 1 and meta["features"] == trained.spec.to_json()


def test_model_file_loads_without_pickle(trained, tmp_path):
    path = trained.save(tmp_path / "m.dlv")
    with zipfile.ZipFile(path) as zf, zf.open("arrays.npz") as f:
        npz = np.load(f, allow_pickle=False)
        assert all(npz[k].dtype != object for k in npz.files)


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04 broken"])
def test_corrupted_model_files(tmp_path, content):
    p = tmp_path / "bad.dlv"
    p.write_bytes(content)
    with pytest.raises(ModelFileError):
        PixelClassifier.load(p)


def test_foreign_and_truncated_model_files(trained, tmp_path):
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as zf:
        zf.writestr("model.json", json.dumps({"format": "something-else"}))
    with pytest.raises(ModelFileError, match="not a napari-dlvision"):
        PixelClassifier.load(foreign)
    good = trained.save(tmp_path / "good.dlv").read_bytes()
    truncated = tmp_path / "trunc.dlv"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelFileError):
        PixelClassifier.load(truncated)
    with pytest.raises(ModelFileError, match="not found"):
        PixelClassifier.load(tmp_path / "missing.dlv")


def test_tampered_metadata_is_rejected(trained, tmp_path):
    path = trained.save(tmp_path / "m.dlv")
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("model.json"))
        arrays = zf.read("arrays.npz")
    meta["n_features"] = 3
    bad = tmp_path / "bad.dlv"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("model.json", json.dumps(meta))
        zf.writestr("arrays.npz", arrays)
    with pytest.raises(ModelFileError, match="damaged"):
        PixelClassifier.load(bad)


def test_rgb_training_and_channel_mismatch(sample2d):
    rgb = np.stack([sample2d.image, sample2d.image // 2, sample2d.image // 3], axis=-1)
    clf = PixelClassifier(FeatureSpec.parse("gaussian,hessian", "1,3.5"), n_trees=10)
    clf.fit(rgb, sample2d.scribbles, channel_axis=-1)
    assert clf.n_channels == 3
    assert clf.predict(rgb, channel_axis=-1).shape == sample2d.image.shape
    with pytest.raises(UserInputError, match="3-channel"):
        clf.predict(sample2d.image)


def test_3d_anisotropic_training(sample3d):
    clf = PixelClassifier(FeatureSpec.parse("gaussian,hessian,gradient", "1,1.6"), n_trees=20)
    clf.fit(sample3d.image, sample3d.scribbles, spacing=(2.0, 1.0, 1.0))
    seg = clf.predict(sample3d.image)
    assert seg.shape == sample3d.image.shape
    assert iou(seg == NUCLEUS, sample3d.foreground) > 0.7
    with pytest.raises(UserInputError, match="3D"):
        clf.predict(sample3d.image[0])


def test_training_on_several_images(sample2d):
    half = sample2d.image.shape[0] // 2
    clf = PixelClassifier(n_trees=10).fit(
        [sample2d.image[:half], sample2d.image[half:]],
        [sample2d.scribbles[:half], sample2d.scribbles[half:]],
    )
    total = sum(clf.training["pixels_per_class"].values())
    assert total == int((sample2d.scribbles > 0).sum())


@pytest.mark.parametrize(
    "labels,message",
    [
        (lambda s: np.zeros_like(s.scribbles), "nothing is painted"),
        (lambda s: (s.scribbles > 0).astype(np.uint8), "only class 1"),
        (lambda s: s.scribbles[:-1], "shape"),
        (lambda s: s.scribbles.astype(np.float32) + 0.5, "whole numbers"),
        (lambda s: s.scribbles.astype(np.int32) - 1, "negative"),
    ],
)
def test_bad_labels(sample2d, labels, message):
    with pytest.raises(UserInputError, match=message):
        PixelClassifier(n_trees=5).fit(sample2d.image, labels(sample2d))


def test_labels_untouched_by_training(sample2d):
    labels = sample2d.scribbles.copy()
    PixelClassifier(n_trees=5).fit(sample2d.image, labels)
    np.testing.assert_array_equal(labels, sample2d.scribbles)


def test_uncertainty_range():
    prob = np.array([[[1.0, 0.5]], [[0.0, 0.5]]], np.float32)
    np.testing.assert_allclose(uncertainty(prob), [[0.0, 1.0]])


def test_dask_prediction_equals_in_memory(trained, sample2d):
    import dask.array as da

    lazy = trained.predict_dask(da.from_array(sample2d.image, chunks=(100, 90)))
    assert lazy.chunks[1] == (100, 100, 56)
    np.testing.assert_array_equal(lazy.compute(scheduler="threads"), trained.predict_proba(sample2d.image))
    with pytest.raises(UserInputError, match="channel"):
        trained.predict_dask(da.zeros((64, 64, 3), chunks=32), channel_axis=-1)


def test_fit_predict_matches_fit_then_predict(sample2d):
    a = PixelClassifier(n_trees=10)
    prob = a.fit_predict(sample2d.image, sample2d.scribbles)
    b = PixelClassifier(n_trees=10).fit(sample2d.image, sample2d.scribbles)
    np.testing.assert_array_equal(prob, b.predict_proba(sample2d.image))


def test_class_ids_with_gaps_keep_their_ids(sample2d):
    labels = np.where(sample2d.scribbles > 0, sample2d.scribbles + 1, 0)  # ids 2 and 3
    clf = PixelClassifier(n_trees=10).fit(sample2d.image, labels)
    prob = clf.predict_proba(sample2d.image)
    assert prob.shape[0] == 3 and prob[0].max() == 0  # class 1 was never painted
    seg = segmentation(prob)
    assert set(np.unique(seg)) == {2, 3}
    # Same strokes with ids 1 and 2 give the same forest: the result is shifted by one.
    plain = PixelClassifier(n_trees=10).fit(sample2d.image, sample2d.scribbles)
    np.testing.assert_array_equal(seg, plain.predict(sample2d.image) + 1)


def test_instance_mask_by_mistake_is_refused(sample2d):
    with pytest.raises(UserInputError, match="instance mask"):
        PixelClassifier(n_trees=5).fit(sample2d.image, sample2d.instances)


def test_empty_training_lists_and_huge_values_are_user_errors():
    from napari_dlvision.core.errors import UserInputError

    with pytest.raises(UserInputError, match="no training images"):
        PixelClassifier().fit([], [])
    img = np.full((32, 32), 1e38, np.float32)
    img[:16] = 0
    lab = np.zeros((32, 32), np.uint8)
    lab[2, 2], lab[30, 30] = 1, 2
    with pytest.raises(UserInputError, match="too large"):
        PixelClassifier(n_trees=2).fit(img, lab)


def test_rgb_picture_given_to_a_volume_model_is_refused():
    from napari_dlvision.core.errors import UserInputError
    from napari_dlvision.core.io import channel_axis_for

    with pytest.raises(UserInputError, match="2D colour image"):
        channel_axis_for((512, 512, 3), 3, 1)
    assert channel_axis_for((16, 64, 64), 3, 1) is None


def test_an_image_of_tiny_values_is_refused_not_predicted_as_one_class(sample2d):
    """scikit-learn's trees do not split between values closer than 1e-7."""
    img = sample2d.image.astype(np.float64)
    img = (img - img.min()) / (img.max() - img.min())
    with pytest.raises(UserInputError, match="multiply the image by a large factor"):
        PixelClassifier(n_trees=5).fit(img * 1e-9, sample2d.scribbles)
    clf = PixelClassifier(n_trees=5).fit(img * 1e-4, sample2d.scribbles)  # small, but learnable
    seg = segmentation(clf.predict_proba(img * 1e-4))
    assert iou(seg == 2, sample2d.instances > 0) > 0.8
