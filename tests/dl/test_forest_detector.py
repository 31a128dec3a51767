"""The forest detector (no network): trained from boxes in seconds, finds objects of any size, its file."""

import json
import zipfile

import numpy as np
import pytest

from napari_dlvision.core import box_regions as R
from napari_dlvision.core.box_metrics import evaluate_boxes
from napari_dlvision.core.boxes import BoxTable, boxes_from_labels
from napari_dlvision.core.errors import ModelFileError, UserInputError
from napari_dlvision.dl.detect_train import DetectSettings, train_detector
from napari_dlvision.dl.detector import Detector


def blobs(seed, shape=(128, 128)):
    """Bright (class 1) and dim (class 2) discs apart on a noisy background, blurred a little as a
    microscope does: (image, instance labels, class per instance)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    image = rng.normal(0.1, 0.04, shape).astype(np.float32)
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    classes = []
    while len(classes) < 14:
        r = rng.uniform(3, 8)
        cy, cx = rng.uniform(r + 2, shape[0] - r - 2), rng.uniform(r + 2, shape[1] - r - 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if (labels[max(int(cy - r - 3), 0):int(cy + r + 4), max(int(cx - r - 3), 0):int(cx + r + 4)] > 0).any():
            continue
        cls = int(rng.integers(1, 3))
        classes.append(cls)
        labels[disc] = len(classes)
        image[disc] = 1.0 if cls == 1 else 0.45
    return ndi.gaussian_filter(image, 0.7), labels, np.array(classes)


def table(labels, classes):
    t = boxes_from_labels(labels)
    ids = [int(labels[int(b[0]):int(b[2]), int(b[1]):int(b[3])].max()) for b in t.boxes]
    return BoxTable(t.boxes, classes[np.array(ids) - 1], ["bright", "dim"])


@pytest.fixture(scope="module")
def trained():
    image, labels, classes = blobs(1)
    det = Detector("forest")
    events = list(train_detector(det, image, table(labels, classes), DetectSettings(seed=0)))
    return det, events


def test_trained_in_one_go_it_finds_the_objects_of_another_image(trained):
    det, events = trained
    stages = [e.stage for e in events]
    assert stages == ["start"] + ["tuning"] * (len(stages) - 2) + ["done"] and len(stages) > 4
    # A status line for each level of the tuning, not for each of its pairs; the progress bar moves with each.
    assert sum(bool(e.message) for e in events) == 3 + len(R.LEVELS) and events[-2].done == events[-2].total
    assert "steps and patches do not apply" in events[0].message
    report = events[-1].payload["report"]
    assert report["kept"].startswith("a forest of 50 trees") and det.training["boxes"] == 14
    assert isinstance(events[-1].payload["preview"], BoxTable) and det.metrics["training mAP@0.5"] > 0.8
    image, labels, classes = blobs(2)
    truth = table(labels, classes)
    found = det.candidates(image)
    assert found.class_names == ["bright", "dim"] and set(found.classes.tolist()) == {1, 2}
    # Where objects are: the classes aside (told apart by intensity alone, small ones are less sure).
    one = BoxTable(truth.boxes, np.ones(len(truth), int), ["object"])
    scores = evaluate_boxes(BoxTable(found.boxes, np.ones(len(found), int), ["object"], found.scores), one, 0.3)
    assert scores["mAP@0.5"] > 0.9 and scores["recall"] == 1.0, scores


def test_its_objects_are_never_suppressed_as_duplicates_and_a_network_s_are(trained):
    det, _ = trained
    # Two objects whose boxes overlap at IoU 0.6: disjoint regions of the forest, two objects;
    # a network's two candidates there are one object found twice.
    cands = BoxTable(np.array([[0, 0, 10, 10], [0, 2, 10, 12]], np.float32), np.array([1, 1]), ["bright", "dim"],
                     np.array([0.9, 0.8], np.float32))
    assert len(det.select(cands, 0.3, 0.5)) == 2 and len(det.select(cands, 0.85, 0.5)) == 1
    assert len(Detector("centernet").select(cands, 0.3, 0.5)) == 1


def test_save_load_predicts_the_same_and_damage_is_refused(trained, tmp_path):
    det, _ = trained
    image = blobs(3)[0]
    det.save(tmp_path / "f.dlv")
    back = Detector.load(tmp_path / "f.dlv")
    assert back.arch == "forest" and back.config == det.config and back.class_names == ["bright", "dim"]
    a, b = det.predict_boxes(image), back.predict_boxes(image)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)
    with zipfile.ZipFile(tmp_path / "f.dlv") as z:
        meta, arrays = json.loads(z.read("model.json")), z.read("arrays.npz")
    for change, message in ((lambda m: m["config"].update(split=7.0), "config.split must be one of"),
                            (lambda m: m.update(arch="auto"), "arch must be one of"),
                            (lambda m: m.update(classes=[1], class_names=["bright"]), "does not match the detector"),
                            (lambda m: m["architecture"].pop("pixel_classifier"), "pixel_classifier is missing")):
        bad = json.loads(json.dumps(meta))
        change(bad)
        with zipfile.ZipFile(tmp_path / "bad.dlv", "w") as z:
            z.writestr("model.json", json.dumps(bad))
            z.writestr("arrays.npz", arrays)
        with pytest.raises(ModelFileError, match=message):
            Detector.load(tmp_path / "bad.dlv")


def test_stacks_validation_continue_and_densely_packed_boxes():
    (a, la, ca), (b, lb, cb) = blobs(4), blobs(5)
    stack = np.stack([a, b])
    ta, tb = table(la, ca), table(lb, cb)
    boxes = BoxTable(np.concatenate([ta.boxes, tb.boxes]), np.r_[ta.classes, tb.classes], ["bright", "dim"],
                     index=np.r_[np.zeros(len(ta), int), np.ones(len(tb), int)])
    det = Detector("forest")
    v_image, v_labels, v_classes = blobs(6)
    events = list(train_detector(det, stack, boxes, DetectSettings(), validation=[(v_image, table(v_labels, v_classes))]))
    assert det.training["planes"] == 2 and events[-1].metrics["validation mAP@0.5"] > 0.9
    cands = det.candidates(stack)
    assert cands.is_stack and set(cands.index.tolist()) == {0, 1}
    list(train_detector(det, a, ta, DetectSettings()))  # Continue fits anew on the boxes given
    assert det.training["planes"] == 1
    with pytest.raises(UserInputError, match="1-channel"):
        det.candidates(np.stack([a] * 3, -1), channel_axis=-1)
    cells = np.zeros((40, 40), np.float32)
    packed = BoxTable(np.array([[0, 0, 21, 40], [20, 0, 40, 40]], float), np.array([1, 1]))
    with pytest.raises(UserInputError, match="every pixel lies inside a box"):
        list(train_detector(Detector("forest"), cells, packed, DetectSettings()))


def test_a_plane_too_large_for_memory_is_refused_before_it_is_read(trained):
    import dask.array as da

    det, _ = trained
    huge = da.zeros((200_000, 200_000), dtype=np.uint8, chunks=(4096, 4096))  # 40 GB, nothing computed
    with pytest.raises(UserInputError, match="forest detector on a 200000 x 200000 plane .* choose centernet"):
        det.candidates(huge)


def test_objects_left_unboxed_among_the_boxes_are_not_taught_as_background():
    """Two objects inside the boxed region without a box: taught as background, they shrank every
    object to its core (F1 0.5 here); found by the first forest and left unlabelled, all are found."""
    image, labels, _ = blobs(1, (160, 160))
    every = boxes_from_labels(labels)
    b = every.boxes
    lo, hi = b[:, :2].min(0), b[:, 2:].max(0)
    inner = [i for i in range(len(b)) if (b[i, :2] > lo).all() and (b[i, 2:] < hi).all()]
    keep = np.ones(len(b), bool)
    keep[inner[:2]] = False
    det = Detector("forest")
    events = list(train_detector(det, image, BoxTable(b[keep], np.ones(keep.sum(), int), ["object"]),
                                 DetectSettings(seed=0)))
    assert any("look like objects" in (e.message or "") for e in events)
    assert "outside the boxes looked like objects" in det.training["notes"][-1]
    found = det.select(det.candidates(image), det.score_threshold, det.nms_iou)
    assert evaluate_boxes(found, every, det.score_threshold, 1)["F1"] >= 0.95
