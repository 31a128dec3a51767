"""Training runs written down: a folder with the data and a JSON run file
that `dlvision run` executes unchanged, here or on a cluster.

    {"format": "napari-dlvision-run", "format_version": 1,
     "command": ["train", "unet", "--image", "image.tif", "--labels", "labels.tif", "--out", "model.dlv", ...]}

Relative paths in the command are relative to the run file's folder. The
file is checked like a model file (size, shape, types) before anything runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserInputError
from .io import atomic_output

FORMAT = "napari-dlvision-run"
MAX_BYTES = 1 << 20
MAX_ARGS = 1000
COMMANDS = ("train",)  # what a run file may start


def write_run(path, command: list[str]) -> Path:
    doc = {"format": FORMAT, "format_version": 1, "command": [str(a) for a in command]}
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=1) + "\n")
    return Path(path)


def read_run(path) -> list[str]:
    """The command of a run file, checked."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: no such run file")
    if path.stat().st_size > MAX_BYTES:
        raise UserInputError(f"{path}: a run file is at most {MAX_BYTES // 1024} KB")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise UserInputError(f"{path}: not a JSON run file") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UserInputError(f"{path}: not a napari-dlvision run file")
    if doc.get("format_version") != 1:
        raise UserInputError(f"{path}: run file version {doc.get('format_version')!r}; this version reads 1")
    command = doc.get("command")
    if not (isinstance(command, list) and 0 < len(command) <= MAX_ARGS and all(isinstance(a, str) for a in command)):
        raise UserInputError(f"{path}: 'command' must be a list of strings")
    if command[0] not in COMMANDS:
        raise UserInputError(f"{path}: a run file starts one of: {', '.join(COMMANDS)}")
    return command
