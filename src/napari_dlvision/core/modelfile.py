"""One self-describing, pickle-free model file for every model kind.

A model file is a zip archive holding `model.json` (what the model is, how it
was trained, what it expects) and `arrays.npz` (numbers only, read with
allow_pickle=False). Deep models add `weights.pt`, a torch state dict read
with weights_only=True. Nothing in the file is ever executed, so it is safe
to e-mail; `unzip -p MODEL model.json` shows what it is.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from .. import __version__
from .errors import ModelFileError

FORMAT = "napari-dlvision-model"
FORMAT_VERSION = 1
SUFFIX = ".dlv"


def save(path, metadata: dict, arrays: dict[str, np.ndarray], extra: dict[str, bytes] | None = None):
    """Write a model file; `extra` holds further named binary members."""
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "written_by": __version__}
    meta.update(metadata)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    # Write beside the target then rename, so a crash never leaves half a model.
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("model.json", json.dumps(meta, indent=2, sort_keys=True))
        zf.writestr("arrays.npz", buf.getvalue())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    tmp.replace(path)
    return path


def read_metadata(path) -> dict:
    """The JSON description alone, validated like `load` does."""
    return load(path, arrays=False)[0]


def load(path, kinds: tuple[str, ...] | None = None, arrays: bool = True):
    """Return (metadata, arrays, extra members) or raise ModelFileError."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "model.json" not in names:
                raise ModelFileError(f"{path} is not a napari-dlvision model (no model.json inside)")
            meta = json.loads(zf.read("model.json").decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ModelFileError(f"{path} is not a napari-dlvision model file")
            if int(meta.get("format_version", 0)) > FORMAT_VERSION:
                raise ModelFileError(
                    f"{path} was written by a newer napari-dlvision "
                    f"({meta.get('written_by')}); please upgrade"
                )
            if kinds is not None and meta.get("kind") not in kinds:
                raise ModelFileError(
                    f"{path} holds a {meta.get('kind')!r} model, expected {' or '.join(kinds)}"
                )
            if not arrays:
                return meta, {}, {}
            with np.load(io.BytesIO(zf.read("arrays.npz")), allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
            extra = {n: zf.read(n) for n in names - {"model.json", "arrays.npz"}}
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as e:
        raise ModelFileError(f"{path} is not a readable napari-dlvision model ({e})") from None
    return meta, data, extra
