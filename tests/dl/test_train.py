"""Real (small) trainings on CPU: learning, stopping, time limits, odd shapes."""

import numpy as np
import pytest
import torch

from napari_dlvision.core.errors import UserInputError
from napari_dlvision.core.metrics import instance_f1, iou
from napari_dlvision.data.synthetic import NUCLEUS, nuclei
from napari_dlvision.dl.segmenter import UNetSegmenter
from napari_dlvision.dl.targets import IGNORE, sparse_targets
from napari_dlvision.dl.pixel_train import PatchSampler, TrainSettings, train_unet

QUICK = dict(patch_size=32, batch_size=2, seed=0)


def past_teacher(gen):
    """The first event after the forest teacher's (the "start" of training)."""
    ev = next(gen)
    while ev.stage == "teacher":
        ev = next(gen)
    return ev


def test_sparse_training_learns_from_scribbles(sparse_run, test2d):
    seg, events = sparse_run
    stages = [e.stage for e in events]
    assert stages[0] == "teacher" and [s for s in stages if s != "teacher"][:2] == ["start", "training"]
    assert events[-1].stage == "done"
    losses = np.array([e.loss for e in events if e.stage == "training"])
    assert len(losses) == 150 and np.all(np.isfinite(losses))
    assert losses[-20:].mean() < 0.5 * losses[:10].mean()
    timed = [e for e in events if e.stage != "teacher"]
    assert all(b.seconds >= a.seconds for a, b in zip(timed, timed[1:]))
    prob = seg.predict_proba(test2d.image)  # an image it never saw
    assert prob.shape == (2,) + test2d.image.shape and prob.dtype == np.float32
    np.testing.assert_allclose(prob.sum(0), 1, atol=1e-5)
    assert iou(seg.predict(test2d.image) == NUCLEUS, test2d.foreground) > 0.8
    assert instance_f1(seg.instances(prob), test2d.instances) > 0.6
    assert seg.training["steps_total"] == 150 and seg.training["stopped"] == "finished"
    assert seg.training["kept"]


def test_dense_training_learns_foreground_and_splits_touching_discs(dense_run, touching_pairs):
    seg, events = dense_run
    assert seg.n_classes == 3 and seg.class_names == ["background", "interior", "boundary"]
    image, inst = touching_pairs((96, 96), 4, seed=5)
    prob = seg.predict_proba(image)
    assert iou(seg.segmentation(prob) != 1, inst > 0) > 0.85
    for seed in (1, 2, 3):
        image, inst = touching_pairs((48, 48), 1, seed=seed)  # one pair, two touching discs
        found = seg.instances(seg.predict_proba(image))
        assert len(np.unique(found[found > 0])) == 2, f"pair {seed} not split in two"
        assert instance_f1(found, inst) == 1.0


def test_closing_after_the_first_event_leaves_a_usable_model(train2d):
    seg = UNetSegmenter()
    gen = train_unet(seg, train2d.image, train2d.scribbles, TrainSettings(steps=1000, **QUICK))
    first = past_teacher(gen)
    assert first.stage == "start" and ("CPU" in first.message or "GPU" in first.message)
    gen.close()
    assert seg.training["steps"] == 0 and seg.training["stopped"] == "stopped"
    assert seg.predict_proba(train2d.image).shape == (2, 128, 128)

    seg = UNetSegmenter()
    gen = train_unet(seg, train2d.image, train2d.scribbles, TrainSettings(steps=1000, **QUICK))
    past_teacher(gen)
    assert next(gen).done == 1
    gen.close()
    assert seg.training["steps"] == 1
    assert seg.training["stopped"] == "stopped"
    assert not seg.net.training  # eval mode: batch norm uses its running statistics
    assert np.isfinite(seg.predict_proba(train2d.image)).all()


def test_time_limit_stops_training(train2d):
    seg = UNetSegmenter()
    events = list(train_unet(seg, train2d.image, train2d.scribbles,
                             TrainSettings(steps=100_000, time_limit=0.5, **QUICK)))
    last_step = events[-2]
    assert "time limit" in last_step.message and last_step.seconds >= 0.5
    assert events[-1].stage == "done" and events[-1].done == last_step.done < 100_000
    assert seg.training["stopped"] == "time limit"


def test_continue_training_starts_from_the_current_weights(train2d):
    seg = UNetSegmenter()
    list(train_unet(seg, train2d.image, train2d.scribbles, TrainSettings(steps=3, **QUICK)))
    before = seg.predict_proba(train2d.image)
    gen = train_unet(seg, train2d.image, train2d.scribbles, TrainSettings(steps=3, seed=1, **{
        k: v for k, v in QUICK.items() if k != "seed"}))
    next(gen)
    gen.close()  # stopped before any step: the weights are untouched
    np.testing.assert_array_equal(seg.predict_proba(train2d.image), before)
    list(train_unet(seg, train2d.image, train2d.scribbles, TrainSettings(steps=4, **QUICK)))
    assert seg.training["steps_total"] == 7 and seg.training["steps"] == 4
    assert not np.array_equal(seg.predict_proba(train2d.image), before)
    with pytest.raises(UserInputError, match="1-channel"):
        next(train_unet(seg, np.stack([train2d.image] * 2, -1), train2d.scribbles, channel_axis=-1))


def test_patch_larger_than_the_images(rng):
    small = nuclei((40, 27), radius=(5.0, 7.0), n_strokes=6, seed=3)
    other = nuclei((20, 52), radius=(5.0, 7.0), n_strokes=6, seed=4)
    seg = UNetSegmenter()
    events = list(train_unet(seg, [small.image, other.image], [small.scribbles, other.scribbles],
                             TrainSettings(steps=3, patch_size=128, batch_size=2)))
    assert seg.training["patch_shape"] == [40, 52]  # clipped to the largest extent per axis
    assert np.isfinite([e.loss for e in events if e.stage == "training"]).all()
    assert seg.predict_proba(small.image).shape == (2, 40, 27)
    assert seg.predict_proba(other.image).shape == (2, 20, 52)


def test_3d_training_and_prediction():
    s = nuclei((16, 32, 32), radius=(5.0, 8.0), n_strokes=8, seed=2)
    seg = UNetSegmenter(depth=2)
    events = list(train_unet(seg, s.image, s.scribbles, TrainSettings(steps=4, batch_size=2)))
    assert seg.ndim == 3 and seg.training["patch_shape"] == [16, 32, 32]
    assert len([e for e in events if e.stage == "training"]) == 4
    prob = seg.predict_proba(s.image)
    assert prob.shape == (2, 16, 32, 32)
    np.testing.assert_allclose(seg.predict_proba(s.image, tile_shape=(8, 16, 16)), prob, atol=1e-4)
    assert seg.instances(prob).shape == s.image.shape
    with pytest.raises(UserInputError, match="3D"):
        seg.predict_proba(s.image[0])


def test_multichannel_validation_and_previews(train2d, test2d):
    rgb = np.stack([train2d.image, train2d.image[::-1], train2d.image // 2], -1)
    val_img = np.stack([test2d.image, test2d.image[::-1], test2d.image // 2], -1)
    val_lab = test2d.foreground.astype(np.uint8) + 1  # 1 background, 2 nucleus everywhere
    seg = UNetSegmenter()
    settings = TrainSettings(steps=4, preview_every=2, val_every=2, **QUICK)
    events = list(train_unet(seg, rgb, train2d.scribbles, settings, validation=(val_img, val_lab),
                             channel_axis=-1, spacing=(1.0, 1.0)))
    steps = [e for e in events if e.stage == "training"]
    assert [e.payload is not None for e in steps] == [False, True, False, True]
    assert steps[1].payload["preview"].shape == (2, 128, 128)
    assert steps[0].metrics == {} and 0 <= steps[1].metrics["validation IoU"] <= 1
    assert seg.training["best_step"] in (2, 4) and "best" in seg.metrics
    assert events[-1].payload["preview"].shape == (2, 128, 128)
    assert seg.n_channels == 3 and seg.spacing == [1.0, 1.0]
    assert seg.predict_proba(val_img, channel_axis=-1).shape == (2, 128, 128)


def test_dense_mode_trains_from_several_images():
    a = nuclei((48, 48), radius=(5.0, 8.0), seed=30)
    b = nuclei((40, 56), radius=(5.0, 8.0), seed=31)
    seg = UNetSegmenter(mode="dense")
    list(train_unet(seg, [a.image, b.image], [a.instances, b.instances], TrainSettings(steps=3, **QUICK)))
    prob = seg.predict_proba(a.image)
    assert prob.shape == (3, 48, 48)
    assert seg.instances(prob).dtype == np.int32


@pytest.mark.parametrize("labels,message", [
    (np.zeros((64, 64), np.uint8), "nothing is painted"),
    (np.pad(np.ones((4, 4), np.uint8), 30), "only class 1"),
    (np.zeros((60, 64), np.uint8), "shape"),
])
def test_too_few_or_bad_labels(labels, message):
    image = np.random.default_rng(0).random((64, 64))
    with pytest.raises(UserInputError, match=message):
        next(train_unet(UNetSegmenter(), image, labels))


def test_dense_mode_needs_objects_and_background():
    image = np.random.default_rng(0).random((32, 32))
    with pytest.raises(UserInputError, match="no objects"):
        next(train_unet(UNetSegmenter(mode="dense"), image, np.zeros((32, 32), np.int32)))
    with pytest.raises(UserInputError, match="no background"):
        next(train_unet(UNetSegmenter(mode="dense"), image, np.ones((32, 32), np.int32)))


def test_bad_settings_and_devices(train2d):
    with pytest.raises(UserInputError):
        next(train_unet(UNetSegmenter(), train2d.image, train2d.scribbles, TrainSettings(steps=0)))
    with pytest.raises(UserInputError):
        next(train_unet(UNetSegmenter(), train2d.image, train2d.scribbles, TrainSettings(patch_size=(32, 32, 32))))
    if not torch.cuda.is_available():
        with pytest.raises(UserInputError, match="cuda"):
            next(train_unet(UNetSegmenter(), train2d.image, train2d.scribbles, TrainSettings(device="cuda")))


def test_patch_sampler_centres_on_labels_and_augments(train2d):
    img = np.random.default_rng(1).random((1, 128, 128)).astype(np.float32)
    tgt = sparse_targets(train2d.scribbles)
    settings = TrainSettings(elastic=True, labelled_fraction=0.5)
    sampler = PatchSampler([img], [tgt], (32, 32), settings.augmentation(), 0.5, np.random.default_rng(0))
    for _ in range(5):
        x, y = sampler.sample(4)
        assert x.shape == (4, 1, 32, 32) and x.dtype == np.float32 and y.shape == (4, 32, 32)
        assert set(np.unique(y)) <= {IGNORE, 0, 1}
        assert all((y[i] != IGNORE).any() for i in range(2))  # the first half holds labels


def test_automatic_batch_size_on_cpu():
    from napari_dlvision.dl.pixel_train import auto_batch_size

    assert auto_batch_size(torch.device("cpu"), (64, 64), 16) == 8
    s = nuclei((64, 64), seed=3)
    seg = UNetSegmenter()
    settings = TrainSettings(steps=1, patch_size=32, batch_size=0, device="cpu")
    first = past_teacher(iter(train_unet(seg, s.image, s.scribbles, settings)))
    assert "batch 8" in first.message


def test_class_ids_with_gaps_come_back_as_painted(train2d):
    """Strokes with ids 5 and 9 give a 9-channel network; only 5 and 9 may be predicted."""
    strokes = np.where(train2d.scribbles == 1, 5, np.where(train2d.scribbles == 2, 9, 0)).astype(np.uint8)
    seg = UNetSegmenter()
    list(train_unet(seg, train2d.image, strokes, TrainSettings(steps=20, **QUICK)))
    assert seg.n_classes == 9 and seg.classes == [5, 9]
    assert set(np.unique(seg.predict(train2d.image))) <= {5, 9}


def test_batch_that_cannot_fit_in_ram_is_refused(train2d):
    with pytest.raises(UserInputError, match="GiB"):
        next(train_unet(UNetSegmenter(), train2d.image, train2d.scribbles,
                        TrainSettings(batch_size=4096, patch_size=128, device="cpu")))  # a GPU retries smaller


def test_an_instance_mask_as_strokes_is_refused(train2d):
    many = (np.arange(128 * 128).reshape(128, 128) // 97 % 300).astype(np.uint16)  # 169 "classes"
    with pytest.raises(UserInputError, match="instance mask"):
        next(train_unet(UNetSegmenter(), train2d.image, many, TrainSettings(**QUICK)))


def test_forest_teacher_labels_confident_unlabelled_pixels_and_strokes_win(train2d):
    from napari_dlvision.dl.pixel_train import forest_teacher, teacher_loss

    (q,) = forest_teacher(train2d.image, train2d.scribbles, 3)
    assert q.shape == (3, 128, 128) and q.dtype == np.uint8
    assert (q[2] == 0).all()  # a class nobody painted is never a target
    sure = q[:2].max(0) > 0.8 * 255
    assert (sure & (train2d.scribbles == 0)).mean() > 0.5  # the forest is sure of most unlabelled pixels
    agree = np.argmax(q[:2], 0)[sure] + 1 == (train2d.instances[sure] > 0) + 1
    assert agree.mean() > 0.9

    logits = torch.zeros(1, 2, 4, 4, requires_grad=True)
    soft = torch.full((1, 2, 4, 4), 0, dtype=torch.uint8)
    soft[:, 1] = 255
    unlabelled = torch.full((1, 4, 4), IGNORE)
    assert teacher_loss(logits, unlabelled, soft, 0.8).item() == pytest.approx(np.log(2))
    painted = torch.ones((1, 4, 4), dtype=torch.int64)  # strokes everywhere: the teacher has no say
    loss = teacher_loss(logits, painted, soft, 0.8)
    assert loss.item() == 0 and loss.requires_grad
    with pytest.raises(UserInputError, match="teacher"):
        TrainSettings(teacher="svm").check()


def test_the_forest_teacher_reports_progress_and_a_stop_there_keeps_nothing(train2d):
    """On a big image the teacher takes a while: it is a stage with progress
    events, and closing the generator during it leaves a new segmenter empty."""
    seg = UNetSegmenter()
    gen = train_unet(seg, train2d.image, train2d.scribbles, TrainSettings(**QUICK))
    first = next(gen)
    assert first.stage == "teacher" and "forest" in first.message and first.total >= 2
    gen.close()
    assert seg.net is None and not seg.training
    gen = train_unet(seg, train2d.image, train2d.scribbles, TrainSettings(**QUICK))
    events = [next(gen)]
    while events[-1].stage == "teacher":
        events.append(next(gen))
    gen.close()
    assert events[-1].stage == "start" and len(events) >= 3
    fractions = [e.fraction for e in events[:-1]]
    assert fractions == sorted(fractions) and fractions[-1] > fractions[0]
    # Without the teacher, training starts at once.
    assert next(train_unet(UNetSegmenter(), train2d.image, train2d.scribbles,
                           TrainSettings(**{**QUICK, "teacher": None}))).stage == "start"


def test_a_patch_size_of_0_is_the_default_per_dimension():
    """The docks' "auto": 64 in 2D, 32 in 3D (64 cubes take seconds per step on a CPU)."""
    from napari_dlvision.dl.denoise_train import patch_shape_for as denoise_patch
    from napari_dlvision.dl.pixel_train import patch_shape_for

    assert patch_shape_for(0, [(40, 200, 200)], 3, 8) == (32, 32, 32) == patch_shape_for(None, [(40, 200, 200)], 3, 8)
    assert patch_shape_for(0, [(200, 200)], 2, 8) == (64, 64)
    assert denoise_patch(0, [(40, 200, 200)], 3, 8) == (32, 32, 32)
