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
    assert r.stdout.count("weights identical on all 2 ranks") == 1 and r.stdout.count(f"wrote {model}") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.dlv"]
    out = tmp_path / out_name
    r = dlvision("predict", "--model", model, *fill(predict), "--out", out)
    assert r.returncode == 0, r.stderr
    assert out.is_file()


def test_distributed_outside_torchrun_is_one_line(data, tmp_path):  # noqa: F811
    r = dlvision("train", "unet", "--image", data / "img.tif", "--labels", data / "strokes.tif",
                 "--out", tmp_path / "m.dlv", "--distributed")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "torchrun" in lines[0]
    assert not (tmp_path / "m.dlv").exists()
