"""Run files: `dlvision run` executes a written command unchanged, and refuses
anything else in one line."""

import json

import pytest
import tifffile
from cli_helpers import dlvision

from napari_dlvision.core.runfile import write_run
from napari_dlvision.data.synthetic import nuclei


def test_a_run_file_trains_relative_to_its_folder_with_extra_arguments(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    s = nuclei((64, 64), radius=(5.0, 8.0), n_strokes=8, seed=3)
    tifffile.imwrite(run_dir / "image.tif", s.image)
    tifffile.imwrite(run_dir / "labels.tif", s.scribbles)
    write_run(run_dir / "run.json", ["train", "rf", "--image", "image.tif", "--labels", "labels.tif",
                                     "--out", "rf.dlv"])
    r = dlvision("run", run_dir / "run.json", "--trees", "4", cwd=tmp_path)  # run from elsewhere
    assert r.returncode == 0, r.stderr
    assert (run_dir / "rf.dlv").is_file() and not (tmp_path / "rf.dlv").exists()
    info = dlvision("info", run_dir / "rf.dlv")
    assert '"n_trees": 4' in info.stdout


@pytest.mark.parametrize("content, words", [
    ("not json", "not a JSON run file"),
    (json.dumps({"format": "other"}), "not a napari-dlvision run file"),
    (json.dumps({"format": "napari-dlvision-run", "format_version": 9, "command": ["train"]}), "version"),
    (json.dumps({"format": "napari-dlvision-run", "format_version": 1, "command": "train rf"}), "list of strings"),
    (json.dumps({"format": "napari-dlvision-run", "format_version": 1, "command": ["run", "x.json"]}),
     "starts one of: train"),
    ("[" * 100_000 + "]" * 100_000, "not a JSON run file"),
    (" " * (2 << 20), "at most"),
])
def test_hostile_run_files_are_refused_in_one_line(tmp_path, content, words):
    path = tmp_path / "run.json"
    path.write_text(content)
    r = dlvision("run", path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and words in lines[0], r.stderr
