"""`dlvision train detector`, `predict` and `evaluate` on real files, in a subprocess."""

import subprocess
import sys
from functools import partial

import cli_helpers
import numpy as np
import pytest
import tifffile

from napari_dlvision.core.boxes import BoxTable, boxes_from_labels
from napari_dlvision.data.synthetic import nuclei

dlvision = partial(cli_helpers.dlvision, timeout=900)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("det")
    for name, seed in (("a", 1), ("b", 2)):
        s = nuclei((80, 96), radius=(6.0, 9.0), seed=seed)
        tifffile.imwrite(d / f"{name}.tif", s.image)
        boxes_from_labels(s.instances, class_name="nucleus").write(d / f"{name}.csv")
    r = dlvision("train", "detector", "--image", d / "a.tif", "--boxes", d / "a.csv", "--image", d / "b.tif",
                 "--boxes", d / "b.csv", "--out", d / "m.dlv", "--steps", 4, "--seed", 1, "--arch", "centernet")
    assert r.returncode == 0, r.stderr
    assert "training a centernet detector (1 class: nucleus)" in r.stdout and "wrote" in r.stdout
    return d


def test_predict_writes_the_exact_csv_and_folders_too(files):
    r = dlvision("predict", "--model", files / "m.dlv", "--image", files / "b.tif", "--out", files / "p.csv",
                 "--score-threshold", 0.05)
    assert r.returncode == 0, r.stderr
    header = (files / "p.csv").read_text().splitlines()[0]
    assert header == "y0,x0,y1,x1,class,score"
    table = BoxTable.read_csv(files / "p.csv")
    assert table.scores is None or np.all(table.scores >= 0.05)
    (files / "in").mkdir()
    tifffile.imwrite(files / "in" / "x.tif", tifffile.imread(files / "a.tif"))
    tifffile.imwrite(files / "in" / "stack.tif", np.stack([tifffile.imread(files / "a.tif")] * 2))
    r = dlvision("predict", "--model", files / "m.dlv", "--image", files / "in", "--out", files / "out")
    assert r.returncode == 0, r.stderr
    assert (files / "out" / "x_boxes.csv").read_text().startswith("y0,x0,y1,x1,class,score")
    assert (files / "out" / "stack_boxes.csv").read_text().startswith("index,y0,x0,y1,x1,class,score")


def test_evaluate_prints_the_four_scores(files):
    r = dlvision("evaluate", "--model", files / "m.dlv", "--image", files / "a.tif", "--boxes", files / "a.csv")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split()[0] for ln in lines[:4]] == ["mAP@0.5", "mAP@0.5:0.95", "precision", "recall"]
    assert "true boxes" in lines[4]
    n_true = int(lines[4].split()[0])
    # A truth box wholly outside the image is dropped with a note, as training drops it, not counted as missed.
    table = BoxTable.read_csv(files / "a.csv")
    BoxTable(np.concatenate([table.boxes, [[500, 500, 510, 510]]]), np.r_[table.classes, 1],
             table.class_names).write(files / "a_outside.csv")
    r = dlvision("evaluate", "--model", files / "m.dlv", "--image", files / "a.tif", "--boxes", files / "a_outside.csv")
    assert r.returncode == 0, r.stderr
    assert "note: a_outside.csv: 1 box outside the image dropped" in r.stdout
    assert f"{n_true} true boxes" in r.stdout and r.stdout.splitlines()[1:5] == lines[:4]


def test_continue_and_validation(files):
    r = dlvision("train", "detector", "--image", files / "a.tif", "--boxes", files / "a.csv", "--init", files / "m.dlv",
                 "--val-image", files / "b.tif", "--val-boxes", files / "b.csv", "--out", files / "m2.dlv",
                 "--steps", 2)
    assert r.returncode == 0, r.stderr
    assert "validation weights" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["--boxes", "{d}/a.csv", "--out", "{d}/x.dlv"], "at least one --image"),
    (["--image", "{d}/a.tif", "--out", "{d}/x.dlv"], "one --boxes CSV per --image"),
    (["--image", "{d}/a.tif", "--boxes", "{d}/empty.csv", "--out", "{d}/x.dlv"], "no boxes to learn from"),
    (["--image", "{d}/a.tif", "--boxes", "{d}/a.csv", "--init", "{d}/m.dlv", "--out", "{d}/m.dlv"],
     "would overwrite the input"),
    (["--image", "{d}/a.tif", "--boxes", "{d}/a.csv", "--out", "{d}/a.csv"], "a model file is written"),
    (["--image", "{d}/a.tif", "--boxes", "{d}/a.csv", "--out", "{d}/x.dlv", "--patch-size", "3"],
     "at least 16"),
    (["--image", "{d}/a.tif", "--boxes", "{d}", "--out", "{d}/x.dlv"], "is a folder, not a boxes CSV file"),
    (["--image", "{d}/a.tif", "--boxes", "{d}/stack.csv", "--out", "{d}/x.dlv"], "is for a stack"),
])
def test_train_errors_are_one_line(files, args, message):
    (files / "empty.csv").write_text("y0,x0,y1,x1,class\n")
    BoxTable([[1, 1, 5, 5]], [1], index=[0]).write(files / "stack.csv")
    before = (files / "a.csv").read_bytes()
    r = dlvision("train", "detector", *[a.format(d=files) for a in args], "--steps", 1)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    cli_helpers.one_line_error(r)
    assert (files / "a.csv").read_bytes() == before


def test_predict_refuses_pixel_flags_and_non_csv(files):
    r = dlvision("predict", "--model", files / "m.dlv", "--image", files / "a.tif", "--out", files / "p.csv",
                 "--probabilities", files / "prob.tif")
    assert r.returncode == 1 and "pixel classifiers" in r.stderr
    for name in ("p.tif", "p.foo"):
        r = dlvision("predict", "--model", files / "m.dlv", "--image", files / "a.tif", "--out", files / name)
        assert "ending in .csv" in cli_helpers.one_line_error(r)
    r = dlvision("predict", "--model", files / "m.dlv", "--image", files / "a.tif", "--out", files / "q.csv",
                 "--score-threshold", 2)
    assert r.returncode == 1 and "between 0 and 1" in r.stderr


def test_a_colour_image_is_refused_by_a_grey_model_not_taken_as_a_stack(files, tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba)
    out = tmp_path / "boxes.csv"
    cli_helpers.one_line_error(dlvision("predict", "--model", files / "m.dlv", "--image", tmp_path / "rgba.tif",
                                        "--out", out),
                               "trained on grey images")
    assert not out.exists()


def test_a_zarr_image_is_detected_tile_by_tile_with_the_in_memory_boxes(files, tmp_path):
    zarr = pytest.importorskip("zarr")
    big = np.tile(tifffile.imread(files / "a.tif"), (4, 5))  # 320 x 480, read in chunks of 64
    tifffile.imwrite(tmp_path / "big.tif", big)
    zarr.create_array(str(tmp_path / "big.zarr"), shape=big.shape, chunks=(64, 64), dtype=big.dtype)[:] = big
    args = ["--model", files / "m.dlv", "--score-threshold", 0.05]
    r = dlvision("predict", *args, "--image", tmp_path / "big.tif", "--out", tmp_path / "mem.csv")
    assert r.returncode == 0, r.stderr
    r = dlvision("predict", *args, "--image", tmp_path / "big.zarr", "--out", tmp_path / "lazy.csv")
    assert r.returncode == 0, r.stderr
    assert "tile by tile from the store" in r.stdout and "100% | tile" in r.stderr
    mem, lazy = (tmp_path / "mem.csv").read_text(), (tmp_path / "lazy.csv").read_text()
    assert mem == lazy and len(mem.splitlines()) > 1
    r = dlvision("predict", *args, "--image", tmp_path / "big.zarr", "--out", tmp_path / "x.csv",
                 "--scheduler", "processes")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "--scheduler" in r.stderr
    r = dlvision("predict", *args, "--image", tmp_path / "big.zarr", "--out", tmp_path / "x.zarr")
    assert r.returncode == 1 and ".csv" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif", "big.zarr", "lazy.csv", "mem.csv"]


def test_a_forest_detector_trains_predicts_evaluates_and_is_not_exported(files, tmp_path):
    # The default, auto, chooses the forest for nuclei apart; --arch auto with --init keeps the model's.
    r = dlvision("train", "detector", "--image", files / "a.tif", "--boxes", files / "a.csv", "--out", tmp_path / "f.dlv")
    assert r.returncode == 0, r.stderr
    assert "auto chose forest (objects apart" in r.stdout and "forest detector trained in" in r.stdout
    assert "training a forest detector (1 class: nucleus)" in r.stdout
    r = dlvision("train", "detector", "--arch", "auto", "--init", tmp_path / "f.dlv", "--image", files / "b.tif",
                 "--boxes", files / "b.csv", "--out", tmp_path / "f2.dlv")
    assert r.returncode == 0 and "training a forest detector" in r.stdout and "auto chose" not in r.stdout, r.stderr
    r = dlvision("predict", "--model", tmp_path / "f.dlv", "--image", files / "b.tif", "--out", tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr
    found = BoxTable.read_csv(tmp_path / "p.csv")
    assert len(found) > 3 and found.class_names == ["nucleus"] and np.all(found.scores >= 0.3)
    # Loaded and predicted without torch, which costs a CPU 4-7 s of imports with torchvision.
    code = ("import sys, tifffile; from napari_dlvision import kinds; "
            f"m = kinds.load_model({str(tmp_path / 'f.dlv')!r}); "
            f"assert len(m.predict_boxes(tifffile.imread({str(files / 'b.tif')!r}))) == {len(found)}; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = dlvision("evaluate", "--model", tmp_path / "f.dlv", "--image", files / "b.tif", "--boxes", files / "b.csv")
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.split()[1]) > 0.5  # mAP@0.5
    r = dlvision("export", "--model", tmp_path / "f.dlv", "--format", "onnx", "--out", tmp_path / "f.onnx")
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"dlvision: error: {tmp_path / 'f.dlv'}: a forest detector is a random forest, not a network: "
        "export is for torch models"]
    assert not (tmp_path / "f.onnx").exists()
