"""Image classifiers: every architecture builds and learns; files round-trip; bad input is refused."""

import numpy as np
import pytest
import torch

from napari_dlvision.core.errors import ModelFileError, UserInputError
from napari_dlvision.data.image_sets import ImageSet
from napari_dlvision.data.toy_classes import toy_classes
from napari_dlvision.dl.classify import ImageClassifier
from napari_dlvision.dl.classify_nets import ARCHS, build
from napari_dlvision.dl.classify_train import ClassifierSettings, flip_translate, train_classifier


@pytest.fixture(scope="module")
def toy():
    x, y, names = toy_classes(n_per_class=40, size=16, n_classes=3, seed=0)
    tx, ty, _ = toy_classes(n_per_class=20, size=16, n_classes=3, seed=1)
    return ImageSet(x, y, names, []), tx, ty


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_architecture_maps_images_to_logits(arch):
    net = build(arch, 3, (32, 32), 10, 16 if arch not in ("mlp", "filters-mlp") else 64)
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_absurd_architectures_are_refused_before_allocating():
    with pytest.raises(UserInputError, match="million parameters"):
        build("mlp", 3, (512, 512), 10, 4096)
    with pytest.raises(UserInputError, match="unknown architecture"):
        build("vgg", 3, (32, 32), 10)


def run(clf, data, **kw):
    last = None
    for last in train_classifier(clf, data, ClassifierSettings(arch=clf.arch, device="cpu", **kw)):
        pass
    return last


# Stripes of random phase are not linearly separable from pixels: the course's pixel
# models do worse than the convolutional one, but all clearly beat chance (1/3).
@pytest.mark.parametrize("arch,epochs,floor", [("fast", 10, 0.85), ("logreg", 20, 0.45), ("filters-mlp", 15, 0.6)])
def test_training_beats_chance_clearly(toy, arch, epochs, floor):
    data, tx, ty = toy
    clf = ImageClassifier(arch)
    done = run(clf, data, epochs=epochs, batch_size=32)
    assert done.stage == "done" and clf.training["steps"] > 0
    acc = np.mean(clf.predict(tx).labels == ty)
    assert acc > floor, acc
    ev = done.payload["evaluation"]
    assert ev.n == 12 and ev.matrix.shape == (3, 3)


def test_a_handful_of_validation_images_does_not_pick_the_weights(toy):
    data, _, _ = toy
    few = ImageSet(data.images[::5], data.labels[::5], data.class_names, [])  # 24 images: 3 held out
    clf = ImageClassifier("logreg")
    events = list(train_classifier(clf, few, ClassifierSettings(arch="logreg", device="cpu", epochs=5,
                                                                 batch_size=8)))
    assert "3 for validation (too few to choose the weights by" in events[0].message
    assert clf.training["validation_images"] == 3
    assert clf.training["kept"] == "the last weights" and clf.training["best_step"] is None
    assert run(ImageClassifier("logreg"), data, epochs=2, batch_size=32).payload["report"]["kept"] == \
        "the last weights"  # 12 held out: too few too
    vx, vy, _ = toy_classes(n_per_class=34, size=16, n_classes=3, seed=2)  # 102 validation images: they choose
    clf = ImageClassifier("logreg")
    last = None
    for last in train_classifier(clf, data, ClassifierSettings(arch="logreg", device="cpu", epochs=2, batch_size=32),
                                 validation=ImageSet(vx, vy, data.class_names, [])):
        pass
    assert "best validation" in last.payload["report"]["kept"]


def test_save_load_round_trip_and_continue(toy, tmp_path):
    data, tx, _ = toy
    clf = ImageClassifier("cnn")
    run(clf, data, epochs=2, batch_size=60)
    path = clf.save(tmp_path / "m.dlv")
    back = ImageClassifier.load(path, device=clf.device)  # the same device: a GPU's TF32 differs from a CPU
    assert back.class_names == data.class_names and back.size == (16, 16) and back.n_channels == 3
    np.testing.assert_allclose(back.predict_proba(tx, amp=False), clf.predict_proba(tx, amp=False), atol=1e-5)
    run(back, data, epochs=1, batch_size=60)  # continue training
    assert back.training["steps_total"] == clf.training["steps"] + back.training["steps"]


def test_wrong_images_for_a_model(toy):
    data, _, _ = toy
    clf = ImageClassifier("logreg")
    run(clf, data, epochs=1)
    with pytest.raises(UserInputError, match="takes 16x16 RGB images; these are 28x28 grey"):
        clf.predict(np.zeros((2, 28, 28, 1), np.uint8))
    with pytest.raises(UserInputError, match="NaN"):
        clf.predict(np.full((1, 16, 16, 3), np.nan, np.float32))


def test_hostile_model_fields(toy, tmp_path):
    import json
    import zipfile

    data, _, _ = toy
    clf = ImageClassifier("logreg")
    run(clf, data, epochs=1)
    path = clf.save(tmp_path / "m.dlv")
    with zipfile.ZipFile(path) as z:
        meta, weights = json.loads(z.read("model.json")), z.read("weights.pt")
    for key, value in (("height", 100000), ("std", [0, 1, 1]), ("mean", [1, 2])):
        bad = dict(meta, input=dict(meta["input"], **{key: value}))
        target = tmp_path / f"bad_{key}.dlv"
        with zipfile.ZipFile(target, "w") as z:
            z.writestr("model.json", json.dumps(bad))
            z.writestr("arrays.npz", b"")
            z.writestr("weights.pt", weights)
        with pytest.raises(ModelFileError):
            ImageClassifier.load(target)


def test_flip_translate_moves_whole_images():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    y = flip_translate(x, 2, g)
    assert y.shape == x.shape
    # Each output image is its input, flipped or not, shifted by at most 2 pixels (inside, away from borders).
    for i in range(2):
        centre = y[i, :, 3:5, 3:5]
        found = any(torch.equal(centre, src[:, 3 + dy:5 + dy, 3 + dx:5 + dx])
                    for src in (x[i], x[i].flip(2)) for dy in range(-2, 3) for dx in range(-2, 3))
        assert found


def test_label_noise_free_single_class_is_refused(toy):
    data, _, _ = toy
    one = ImageSet(data.images, np.where(data.labels == 0, 0, -1), data.class_names, [])
    with pytest.raises(UserInputError, match="only 'across' is labelled"):
        next(train_classifier(ImageClassifier("logreg"), one))
