"""The detector: augmentation moving boxes, targets, a short real training, tiles, files, torchvision archs."""

import numpy as np
import pytest
import torch

from napari_dlvision.core.box_metrics import evaluate_boxes
from napari_dlvision.core.boxes import BoxTable, boxes_from_labels
from napari_dlvision.core.errors import ModelFileError, UserInputError
from napari_dlvision.data.synthetic import nuclei
from napari_dlvision.dl import centernet
from napari_dlvision.dl.box_sampler import BoxAugmentation, BoxPatchSampler
from napari_dlvision.dl.detect_train import DetectSettings, train_detector
from napari_dlvision.dl.detector import Detector, select


def _painted(shape, boxes):
    img = np.zeros(shape, np.float32)
    for y0, x0, y1, x1 in boxes.astype(int):
        img[y0:y1, x0:x1] = 1
    return img


@pytest.mark.parametrize("scale", [1.0, 1.6])
def test_augmented_boxes_follow_the_image(scale):
    boxes = np.array([[10, 12, 20, 30], [40, 40, 47, 45], [3, 50, 9, 60]], float)
    img = _painted((64, 80), boxes)
    sampler = BoxPatchSampler([img[None]], [(boxes, np.ones(3, int))], 48,
                              BoxAugmentation(scale=scale, intensity=False, keep_fraction=0.99), 0.7,
                              np.random.default_rng(0))
    seen = 0
    for _ in range(40):
        x, b, c, ignore = sampler.sample_one()
        if scale == 1.0:  # plain crops: the boxes are exactly the painted pixels, cut boxes ignored
            inside = _painted(x.shape[1:], b) + _painted(x.shape[1:], ignore)
            np.testing.assert_array_equal(x[0] > 0.5, inside > 0)
        for y0, x0, y1, x1 in b:  # zoomed: each box's interior is painted, the ring around it is not
            y0, x0, y1, x1 = int(np.ceil(y0)), int(np.ceil(x0)), int(np.floor(y1)), int(np.floor(x1))
            assert x[0, y0:y1, x0:x1].min() > 0.4
            seen += 1
    assert seen > 20


def test_targets_peak_at_the_centre_and_hold_the_edge_distances():
    boxes = np.array([[10, 20, 30, 30]], np.float32)
    heat, heat_w, dist, reg_w = centernet.make_targets(boxes, np.array([1]), np.zeros((0, 4)), 1, 64)
    assert heat.max() == 1 and np.argwhere(heat[0] == 1).tolist() == [[20, 25]]
    np.testing.assert_allclose(dist[:, 20, 25], [10.5, 5.5, 9.5, 4.5])  # from pixel centre (20.5, 25.5)
    assert reg_w.sum() == pytest.approx(np.log(200)) and heat_w.min() == 1
    _, heat_w, _, _ = centernet.make_targets(np.zeros((0, 4)), np.zeros(0, int), np.array([[0, 0, 8, 8.0]]), 1, 16)
    assert heat_w[:8, :8].max() == 0 and heat_w[8:, 8:].min() == 1


@pytest.fixture(scope="module")
def trained():
    """A centre-net detector trained briefly on synthetic nuclei: (detector, events, test image, true boxes)."""
    train, test = nuclei((128, 128), radius=(7.0, 11.0), seed=4), nuclei((128, 128), radius=(7.0, 11.0), seed=9)
    det = Detector("centernet", class_names=["nucleus"])
    settings = DetectSettings(steps=120, seed=0, scale=1.0)
    events = list(train_detector(det, train.image, boxes_from_labels(train.instances, class_name="nucleus"),
                                 settings))
    return det, events, test.image, boxes_from_labels(test.instances, class_name="nucleus")


def test_short_training_reaches_a_clear_map(trained):
    det, events, image, truth = trained
    # No preview was asked for, so none was shown.
    assert events[-1].payload["report"]["steps"] == 120 and det.training["kept"] == "the averaged weights"
    scores = evaluate_boxes(select(det.candidates(image), 0.0, 0.5), truth, 0.3)
    assert scores["mAP@0.5"] > 0.6, scores
    boxes = det.predict_boxes(image)
    assert boxes.scores.min() >= det.score_threshold and boxes.class_names == ["nucleus"]


def test_tiles_give_the_whole_image_result(trained):
    det, _, image, _ = trained
    # On the CPU: a GPU's TF32 convolutions differ by ~1e-3 between tile shapes (tests/test_cuda.py).
    whole = det.candidates(image, device="cpu")
    tiled = det.candidates(image, tile_shape=(48, 48), device="cpu")
    order_w, order_t = np.lexsort(whole.boxes.T), np.lexsort(tiled.boxes.T)
    np.testing.assert_allclose(whole.boxes[order_w], tiled.boxes[order_t], atol=1e-3)
    np.testing.assert_allclose(whole.scores[order_w], tiled.scores[order_t], atol=1e-5)


def test_stack_predicts_every_plane_and_nms_threshold_select(trained):
    det, _, image, _ = trained
    stack = np.stack([image, image[::-1]])
    cands = det.candidates(stack)
    assert cands.is_stack and set(cands.index.tolist()) == {0, 1}
    kept = select(cands, 0.3, 0.5)
    assert np.all(kept.scores >= 0.3) and len(select(cands, 0.3, 0.05)) <= len(kept)
    with pytest.raises(UserInputError, match="1-channel"):
        det.candidates(np.stack([image] * 3, -1), channel_axis=-1)


def test_save_load_predicts_the_same_and_refuses_damage(trained, tmp_path):
    import json
    import zipfile

    det, _, image, _ = trained
    det.save(tmp_path / "d.dlv")
    back = Detector.load(tmp_path / "d.dlv")
    a, b = det.predict_boxes(image), back.predict_boxes(image)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
    assert back.class_names == ["nucleus"] and back.training["steps_total"] == 120
    with zipfile.ZipFile(tmp_path / "d.dlv") as z:
        meta, weights = json.loads(z.read("model.json")), z.read("weights.pt")
    meta["architecture"]["n_classes"] = 9  # does not fit the classes
    with zipfile.ZipFile(tmp_path / "bad.dlv", "w") as z:
        z.writestr("model.json", json.dumps(meta))
        z.writestr("weights.pt", weights)
    with pytest.raises(ModelFileError, match="damaged detector"):
        Detector.load(tmp_path / "bad.dlv")


def test_continue_training_and_bad_data(trained):
    det, _, _, _ = trained
    s = nuclei((96, 96), seed=3)
    truth = boxes_from_labels(s.instances, class_name="nucleus")
    events = list(train_detector(det, s.image, truth, DetectSettings(steps=2)))
    assert det.training["steps_total"] == 122 and events[-1].stage == "done"
    with pytest.raises(UserInputError, match="start a new detector"):
        mitoses = BoxTable(truth.boxes, np.full(len(truth), 2), ["nucleus", "mitosis"])
        list(train_detector(det, s.image, mitoses, DetectSettings(steps=1)))
    fresh = Detector()
    with pytest.raises(UserInputError, match="no boxes to learn from"):
        list(train_detector(fresh, s.image, BoxTable.empty(), DetectSettings(steps=1)))
    with pytest.raises(UserInputError, match="needs? a plane index|is a stack"):
        list(train_detector(fresh, np.stack([s.image] * 2), truth, DetectSettings(steps=1)))


def test_stack_with_boxes_on_some_planes_skips_the_others_and_says_so():
    s = nuclei((64, 64), seed=2)
    truth = boxes_from_labels(s.instances).with_index(1)
    stack = np.stack([s.image, s.image, s.image])
    for arch in ("centernet", "auto"):  # auto: the forest here, whose negative planes are all background
        det = Detector(arch)
        events = list(train_detector(det, stack, truth, DetectSettings(steps=1)))
        assert "2 planes without boxes skipped" in events[0].message
        assert det.training["planes"] == 1
        det = Detector(arch)
        list(train_detector(det, stack, truth, DetectSettings(steps=1, empty_planes="negative")))
        assert det.training["planes"] == 3 and det.arch == ("forest" if arch == "auto" else arch)


@pytest.mark.parametrize("arch", ["fcos-mobilenet", "fasterrcnn-mobilenet"])
def test_torchvision_detectors_train_predict_and_round_trip(arch, tmp_path):
    s = nuclei((96, 96), seed=1)
    det = Detector(arch, pretrained="none")
    events = list(train_detector(det, s.image, boxes_from_labels(s.instances),
                                 DetectSettings(steps=2, batch_size=2, patch_size=64)))
    assert events[-1].stage == "done" and det.config["pretrained_backbone"] is False
    assert "random weights" in events[0].message
    cands = det.candidates(s.image)
    assert cands.boxes.shape[1] == 4 and np.all(cands.scores >= 0.05)
    det.save(tmp_path / "tv.dlv")
    back = Detector.load(tmp_path / "tv.dlv")
    torch.testing.assert_close(back.net.state_dict(), {k: v.cpu() for k, v in det.net.state_dict().items()})


def test_pretrained_backbones_come_from_the_cache_only(tmp_path, monkeypatch):
    from torchvision.models import mobilenet_v3_large

    from napari_dlvision.dl import tv_detectors

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    state, note = tv_detectors.pretrained_state("mobilenet", "cache")
    assert state is None and "no ImageNet weights" in note  # and nothing was downloaded
    assert not any(tmp_path.rglob("*.pth"))
    path = tv_detectors.cached_weights_path("mobilenet")
    path.parent.mkdir(parents=True)
    torch.save(mobilenet_v3_large(weights=None).state_dict(), path)
    state, note = tv_detectors.pretrained_state("mobilenet", "cache")
    assert state is not None and str(path) in note
    det = Detector("fcos-mobilenet", pretrained="cache")
    det.build(1, 1, np.array([[10.0, 12.0]]))
    assert det.config["pretrained_backbone"] is True
