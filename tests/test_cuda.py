"""On a CUDA GPU (skipped on machines without one, CI included).

Users train where the GPU is and predict where they are: every torch model
kind is trained here through the CLI with `--device cuda`, and its model file
must then predict on a machine without a GPU (CUDA hidden from the process)
what it predicts on the GPU. Run by the session that is lent a GPU; see the
README's "GPU" section.
"""

import csv

import numpy as np
import pytest
import tifffile
import torch
from cli_helpers import dlvision

from napari_dlvision.core.boxes import BoxTable, pairwise_iou

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


@pytest.fixture(scope="module")
def data(tmp_path_factory, every_kind_files):
    return every_kind_files(tmp_path_factory.mktemp("cuda"), 128, n_strokes=12, n_per_class=40)


# kind command -> (train arguments, predict arguments, output file)
RECIPES = {
    "unet": (["--image", "{d}/img.tif", "--labels", "{d}/strokes.tif", "--steps", "60"],
             ["--image", "{d}/img.tif"], "seg.tif"),
    "classifier": (["--data", "{d}/classes", "--arch", "cnn-bn", "--epochs", "3"],
                   ["--data", "{d}/classes"], "pred.csv"),
    "detector": (["--image", "{d}/img.tif", "--boxes", "{d}/boxes.csv", "--steps", "60"],
                 ["--image", "{d}/img.tif"], "found.csv"),
    "denoiser": (["--image", "{d}/img.tif", "--steps", "60"], ["--image", "{d}/img.tif"], "denoised.tif"),
}


@pytest.mark.parametrize("command", sorted(RECIPES))
def test_trained_on_the_gpu_predicts_the_same_without_one(command, data, tmp_path):
    train, predict, out_name = RECIPES[command]
    fill = lambda args: [a.format(d=data) for a in args]  # noqa: E731
    model = tmp_path / "model.dlv"
    r = dlvision("train", command, *fill(train), "--device", "cuda", "--out", model)
    assert r.returncode == 0, r.stderr
    assert "CUDA GPU" in r.stdout + r.stderr  # the run said where it trained

    outs = {}
    for where, cpu_only in (("gpu", False), ("cpu", True)):
        out = tmp_path / where / out_name
        out.parent.mkdir()
        hidden = {"CUDA_VISIBLE_DEVICES": ""} if cpu_only else {}  # as on a machine without a GPU
        r = dlvision("predict", "--model", model, *fill(predict), "--out", out, **hidden)
        assert r.returncode == 0, f"{where}: {r.stderr}"
        outs[where] = out
    compare = {"unet": same_segmentation, "classifier": same_labels, "detector": same_boxes,
               "denoiser": same_denoised}[command]
    compare(outs["gpu"], outs["cpu"])


def same_segmentation(a, b):
    a, b = tifffile.imread(a), tifffile.imread(b)
    agree = float(np.mean(a == b))
    print(f"segmentation agreement GPU/CPU: {agree:.5f}")
    assert a.shape == b.shape and agree >= 0.995
    assert len(np.unique(a)) > 1  # it learned something, not an empty answer twice


def same_denoised(a, b):
    a, b = tifffile.imread(a).astype(np.float64), tifffile.imread(b).astype(np.float64)
    spread = np.ptp(b)
    worst, mean = np.abs(a - b).max() / spread, np.abs(a - b).mean() / spread
    print(f"denoised GPU/CPU difference, of the range: max {worst:.2e}, mean {mean:.2e}")
    assert a.shape == b.shape and mean <= 1e-3 and worst <= 2e-2


def same_labels(a, b):
    def rows(p):
        with open(p, newline="") as f:
            return {r["path"]: r["label"] for r in csv.DictReader(f)}
    a, b = rows(a), rows(b)
    agree = np.mean([a[k] == b[k] for k in b])
    print(f"label agreement GPU/CPU: {agree:.4f} of {len(b)}")
    assert a.keys() == b.keys() and agree >= 0.97


def same_boxes(a, b):
    a, b = BoxTable.read_csv(a).above(0.3), BoxTable.read_csv(b).above(0.3)
    print(f"boxes scoring >= 0.3: GPU {len(a)}, CPU {len(b)}")
    assert len(b) > 0 and abs(len(a) - len(b)) <= max(1, len(b) // 20)
    best = pairwise_iou(a.boxes, b.boxes).max(axis=1)
    assert np.mean(best >= 0.9) >= 0.95


def test_unet_training_in_float16_on_the_gpu_stays_finite(data):
    """Mixed precision (float16 + gradient scaling) is only used on CUDA: the loss stays finite."""
    from napari_dlvision.dl.pixel_train import TrainSettings, train_unet
    from napari_dlvision.dl.segmenter import UNetSegmenter

    image, strokes = tifffile.imread(data / "img.tif"), tifffile.imread(data / "strokes.tif")
    seg = UNetSegmenter(mode="sparse", class_names=["background", "nucleus"])
    events = list(train_unet(seg, image, strokes, TrainSettings(steps=40, seed=0, device="cuda")))
    losses = [e.loss for e in events if getattr(e, "loss", None) is not None]
    assert losses and np.all(np.isfinite(losses))
    on_gpu, on_cpu = seg.predict_proba(image, device="cuda"), seg.predict_proba(image, device="cpu")
    print(f"probabilities GPU/CPU: max difference {np.abs(on_gpu - on_cpu).max():.2e}")
    assert np.isfinite(on_gpu).all() and np.abs(on_gpu - on_cpu).max() <= 1e-2
