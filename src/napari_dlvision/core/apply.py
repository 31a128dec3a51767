"""Apply a saved model to image files and folders: shared by the CLI and the GUI.

Works for any model that declares its `OUTPUTS` (names it can produce) and
implements `predict_outputs(image, channel_axis, spacing, wanted, **options)`
-> {output name: array or table}; pixel models get that from
core.pixel_model. Every output is written to a temporary file and renamed
into place, so an interrupted run never leaves half a file under a real name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import UserInputError
from .events import Progress
from .io import WRITE_SUFFIXES, atomic_outputs, channel_axis_for, png_array, read_image, write_image


def output_suffix(model, output: str) -> str:
    return getattr(model, "OUTPUT_SUFFIXES", {}).get(output, ".tif")


PNG_OUTPUTS = ("segmentation", "instances")  # integer labels; the other images are float32


def check_output_names(model, paths: dict) -> None:
    """Refuse, before any work, output names the results cannot be written to ({output: path})."""
    for name, path in paths.items():
        path = Path(path)
        suffix = path.suffix.lower()
        if output_suffix(model, name) == ".csv":
            if suffix != ".csv":
                raise UserInputError(f"{path}: {name} are written as CSV; give a file name ending in .csv")
        elif suffix not in WRITE_SUFFIXES:
            raise UserInputError(f"{path}: cannot write {suffix or 'files without an extension'}; "
                                 f"use one of {', '.join(WRITE_SUFFIXES)}")
        elif suffix == ".png" and name not in PNG_OUTPUTS:
            raise UserInputError(f"{path}: the {name} image is float32, which PNG cannot hold; write it as .tif")


def check_wanted(model, wanted) -> tuple[str, ...]:
    wanted = tuple(dict.fromkeys(wanted or (model.MAIN_OUTPUT,)))
    unknown = [w for w in wanted if w not in model.OUTPUTS]
    if unknown:
        raise UserInputError(f"this model cannot output {', '.join(unknown)}; it gives {', '.join(model.OUTPUTS)}")
    return wanted


def write_output(path, value) -> Path:
    """An array as an image file (format from the suffix); a table through its own `write`."""
    if isinstance(value, np.ndarray):
        return write_image(path, value)
    return value.write(path)


def write_outputs(outputs: dict) -> list[Path]:
    """Write {path: result}, all or none: each is checked first (one that its
    format cannot hold, e.g. more instances than a PNG holds, fails before any
    is written), and all are renamed into place only once every one is
    written (a full disk on the second leaves no first)."""
    for path, value in outputs.items():
        if isinstance(value, np.ndarray) and Path(path).suffix.lower() == ".png":
            png_array(path, value)
    with atomic_outputs():
        return [write_output(path, value) for path, value in outputs.items()]


def predict_file(model, path, channel_axis=None, spacing=None, wanted=None, **options) -> dict:
    image = read_image(path)
    if channel_axis is None:
        # A model whose inputs are not simply "ndim spatial axes plus channels" (a
        # detector also takes stacks of 2D planes) says how to read the shape.
        guess = getattr(model, "guess_channel_axis", None)
        channel_axis = guess(image.shape) if guess else channel_axis_for(image.shape, model.ndim, model.n_channels)
    return model.predict_outputs(image, channel_axis, spacing, check_wanted(model, wanted), **options)


def folder_outputs(model, files, out_dir, wanted) -> dict[Path, dict[str, Path]]:
    """{input file: {output name: output file}}, refusing collisions before any work."""
    out_dir = Path(out_dir)
    seen: dict[str, Path] = {}
    for p in map(Path, files):
        if p.stem in seen:
            raise UserInputError(f"{seen[p.stem].name} and {p.name} share a name: their outputs would collide; "
                                 "rename one or move it to another folder")
        seen[p.stem] = p
    in_dirs = {Path(p).resolve().parent for p in files}
    if out_dir.resolve() in in_dirs:
        raise UserInputError(
            f"the output folder {out_dir} is the input folder: results would mix with (and be read as) "
            "inputs; choose another folder")
    return {Path(p): {w: out_dir / f"{Path(p).stem}_{w}{output_suffix(model, w)}" for w in wanted} for p in files}


def iter_predict_folder(model, files, out_dir, wanted=None, channel_axis=None, spacing=None, **options):
    """Predict each file into `out_dir/<stem>_<output>.<suffix>`; Progress events.

    A file that cannot be read or predicted is reported and skipped; the
    last event's payload lists what was written and what failed.
    """
    wanted = check_wanted(model, wanted)
    plan = folder_outputs(model, files, out_dir, wanted)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    written, failed = [], []
    total = len(plan)
    for i, (path, outputs) in enumerate(plan.items(), 1):
        try:
            results = predict_file(model, path, channel_axis, spacing, wanted, **options)
            written += write_outputs({target: results[name] for name, target in outputs.items()})
            message = f"Predicted {path.name} ({i}/{total})"
        except (UserInputError, MemoryError, OSError) as e:
            failed.append((path, _one_line(e)))
            message = f"Skipped {path.name} ({i}/{total}): {_one_line(e)}"
        yield Progress("file", i, total, message, payload=path)
    summary = f"Predicted {total - len(failed)} of {total} files into {out_dir}"
    if failed:
        summary += f"; {len(failed)} failed: " + "; ".join(f"{p.name}: {m}" for p, m in failed)
    yield Progress("done", total, total, summary, payload={"written": written, "failed": failed})


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "out of memory"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
