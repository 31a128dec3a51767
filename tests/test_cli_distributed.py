"""Every network trains under torchrun with DistributedDataParallel (gloo, 2 CPU
processes) on the shared loop: the ranks end with identical weights, rank 0
alone writes the model, and the model works."""

import subprocess
import sys

import pytest
from test_cli_every_kind import RECIPES, data, dlvision  # noqa: F401 - `data` is a fixture

from napari_dlvision import kinds


def torchrun(*args):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--standalone", "-m", "napari_dlvision.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", ["pixel-unet", "image-classifier", "object-detector", "denoiser"])
def test_two_gloo_ranks_train_identical_weights_and_rank0_writes_once(name, data, tmp_path):  # noqa: F811
    kind = kinds.get(name)
    train, predict, out_name = RECIPES[name]
    fill = lambda args: [a.format(d=data) for a in args]  # noqa: E731
    model = tmp_path / "model.dlv"
    r = torchrun("train", kind.command, *fill(train), "--out", model, "--distributed")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "training on 2 processes (cpu)" in r.stdout
    if name == "object-detector":  # the default, auto, trains a network when ranks train together
        assert "auto chose centernet (training across ranks with torchrun)" in r.stdout
    assert r.stdout.count("weights identical on all 2 ranks") == 1 and r.stdout.count(f"wrote {model}") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.dlv"]
    out = tmp_path / out_name
    r = dlvision("predict", "--model", model, *fill(predict), "--out", out)
    assert r.returncode == 0, r.stderr
    assert out.is_file()


def test_the_forest_detector_under_torchrun_is_one_line(data, tmp_path):  # noqa: F811
    train = [a.format(d=data) for a in RECIPES["object-detector"][0]]
    r = torchrun("train", "detector", *train, "--arch", "forest", "--out", tmp_path / "m.dlv", "--distributed")
    assert r.returncode != 0 and not (tmp_path / "m.dlv").exists()
    assert "dlvision: error: the forest detector trains in one process: run it without torchrun" in r.stderr
    assert "/napari_dlvision/" not in r.stderr  # no traceback of ours (torchrun prints its own summary)


def test_distributed_outside_torchrun_is_one_line(data, tmp_path):  # noqa: F811
    r = dlvision("train", "unet", "--image", data / "img.tif", "--labels", data / "strokes.tif",
                 "--out", tmp_path / "m.dlv", "--distributed")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "torchrun" in lines[0]
    assert not (tmp_path / "m.dlv").exists()


@pytest.mark.parametrize("victim", [0, 1])
def test_a_rank_that_dies_stops_the_others_with_a_message_and_no_model(victim, data, tmp_path):  # noqa: F811
    import psutil

    model = tmp_path / "model.dlv"
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                          "-m", "napari_dlvision.cli", "train", "unet", "--image", data / "img.tif",
                          "--labels", data / "strokes.tif", "--steps", "100000", "--batch-size", "2",
                          "--patch-size", "32", "--device", "cpu", "--out", model, "--distributed"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stdout:  # rank 0 prints; wait until the ranks train together
            if line.startswith("training a"):
                break
        ranks = {w.environ().get("RANK"): w for w in psutil.Process(p.pid).children(recursive=True)
                 if "napari_dlvision.cli" in " ".join(w.cmdline())}
        assert set(ranks) == {"0", "1"}
        ranks[str(victim)].kill()
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    survivor = 1 - victim
    assert p.returncode != 0
    assert f"dlvision: rank {survivor} stopped: another rank failed" in err, err[-3000:]
    assert f"[rank{survivor}]:" not in err  # torch prefixes a rank's uncaught traceback so
    assert list(tmp_path.iterdir()) == []  # no model, no temporary file
