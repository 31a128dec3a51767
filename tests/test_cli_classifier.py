"""`dlvision train classifier`, `predict --data` and `evaluate --data`, run as a user would."""

import csv
import pickle

import numpy as np
import pytest
from cli_helpers import dlvision, one_line_error

from napari_dlvision.data.toy_classes import toy_classes, write_cifar_batch, write_class_folders


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("toys")
    x, y, names = toy_classes(n_per_class=30, size=16, n_classes=3, seed=0)
    write_class_folders(root / "train", x, y, names)
    x, y, _ = toy_classes(n_per_class=10, size=16, n_classes=3, seed=1)
    write_class_folders(root / "test", x, y, names, ".jpg")
    return root


@pytest.fixture(scope="module")
def model(folders):
    r = dlvision("train", "classifier", "--data", folders / "train", "--out", folders / "toys.dlv",
                 "--arch", "cnn-bn", "--epochs", 12, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "validation: accuracy" in r.stdout
    return folders / "toys.dlv"


def test_predict_writes_path_label_score(folders, model):
    out = folders / "pred.csv"
    r = dlvision("predict", "--model", model, "--data", folders / "test", "--out", out)
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["path", "label", "score"] and len(rows) == 31
    right = [row[0].split("/")[-2] == row[1] for row in rows[1:]]  # the parent folder is the true class
    assert np.mean(right) > 0.7, rows  # chance: 1/3
    assert all(0 < float(row[2]) <= 1 for row in rows[1:])


def test_evaluate_prints_accuracy_per_class_and_confusion(folders, model):
    r = dlvision("evaluate", "--model", model, "--data", folders / "test")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("accuracy ") and "(rows: true class" in r.stdout
    assert "precision  recall" in r.stdout and "disc" in r.stdout
    acc = float(r.stdout.split()[1])
    assert acc > 0.7


def test_info_and_wrong_inputs(folders, model, tmp_path):
    r = dlvision("info", model)
    assert r.returncode == 0 and '"kind": "image-classifier"' in r.stdout and '"test_time_flip"' in r.stdout
    grey = tmp_path / "grey"
    x, y, names = toy_classes(n_per_class=2, size=28, n_classes=3, rgb=False)
    write_class_folders(grey, x, y, names)
    one_line_error(dlvision("evaluate", "--model", model, "--data", grey),
                   "the model expects 16x16 RGB images; " + str(grey) + " holds 28x28 grey images")
    one_line_error(dlvision("predict", "--model", model, "--data", folders / "test", "--out", tmp_path / "p.tif"),
                   "writes a CSV file")
    one_line_error(dlvision("predict", "--model", model, "--data", folders / "test", "--out", model),
                   "writes a CSV file")
    one_line_error(dlvision("predict", "--model", model, "--image", folders / "test", "--out", tmp_path / "p.csv"),
                   "give --data DIR")
    (tmp_path / "empty").mkdir()
    one_line_error(dlvision("train", "classifier", "--data", tmp_path / "empty", "--out", tmp_path / "m.dlv"),
                   "no TIFF, PNG or JPEG images")
    one_line_error(dlvision("train", "classifier", "--data", folders / "train", "--out", tmp_path / "m.dlv",
                            "--arch", "vgg"), "invalid choice")
    # Continuing keeps the architecture: another one asked for is refused, not silently ignored.
    one_line_error(dlvision("train", "classifier", "--data", folders / "train", "--init", model, "--arch", "fast",
                            "--out", tmp_path / "c.dlv"), "is a cnn-bn classifier, not fast")


def test_cifar_binary_train_and_refusals(tmp_path):
    x, y, _ = toy_classes(n_per_class=20, size=32, n_classes=3, seed=2)
    for b in range(5):
        write_cifar_batch(tmp_path / f"data_batch_{b + 1}.bin", x[b::5], y[b::5])
    write_cifar_batch(tmp_path / "test_batch.bin", x[:30], y[:30])
    out = tmp_path / "c.dlv"
    r = dlvision("train", "classifier", "--data", tmp_path, "--out", out, "--arch", "logreg", "--epochs", 2,
                 "--time-limit", 60)
    assert r.returncode == 0, r.stderr
    assert "60 32x32 RGB images, 60 labelled in 10 classes" in r.stdout
    r = dlvision("predict", "--model", out, "--data", tmp_path, "--out", tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader((tmp_path / "p.csv").open()))
    assert len(rows) == 31 and rows[1][0] == f"{tmp_path}/test_batch.bin#0" and rows[1][1] in (
        "airplane", "automobile", "bird")
    (tmp_path / "data_batch_4.bin").unlink()
    one_line_error(dlvision("train", "classifier", "--data", tmp_path, "--out", out), "missing data_batch_4.bin")
    py = tmp_path / "py"
    py.mkdir()
    (py / "data_batch_1").write_bytes(pickle.dumps({"labels": [1]}))
    one_line_error(dlvision("train", "classifier", "--data", py, "--out", out), "never unpickled")


def test_tiny_images_one_step_runs_and_bad_seeds(tmp_path):
    x, y, names = toy_classes(n_per_class=6, size=8, n_classes=2, seed=3)
    write_class_folders(tmp_path / "tiny", x, y, names)
    # The default architecture halves four times: 8 x 8 images are refused before training, not by torch.
    one_line_error(dlvision("train", "classifier", "--data", tmp_path / "tiny", "--out", tmp_path / "m.dlv"),
                   "the fast CNN needs images of at least 9 x 9 pixels, got 8x8")
    # One optimiser step in all (12 images, one epoch): the schedule had a division by zero.
    x, y, names = toy_classes(n_per_class=6, size=16, n_classes=2, seed=3)
    write_class_folders(tmp_path / "few", x, y, names)
    r = dlvision("train", "classifier", "--data", tmp_path / "few", "--out", tmp_path / "one.dlv", "--epochs", 1,
                 "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "one.dlv").is_file()
    for seed in ("-1", "99999999999999999999"):
        one_line_error(dlvision("train", "classifier", "--data", tmp_path / "few", "--out", tmp_path / "s.dlv",
                                "--seed", seed), "--seed")
