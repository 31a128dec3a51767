"""Reading images and labels from disk, writing results; readable errors.

Every output goes through `atomic_output`, so an interrupted run (an error,
Ctrl-C, a full disk) never leaves a half-written file where the user's
previous result was; `check_outputs` refuses, before any computation, an
output that would overwrite one of the inputs.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import secrets
from pathlib import Path

import numpy as np

from .errors import UserInputError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
# JPEG is lossy: written labels or probabilities would come back different.
WRITE_SUFFIXES = (".tif", ".tiff", ".png")

# TIFF ExtraSamples values that mean "this sample is transparency".
_TIFF_ALPHA = (1, 2)  # associated (pre-multiplied) alpha, unassociated alpha


def check_file(path, error=UserInputError, what: str = "file") -> Path:
    """`path` as a Path if it is a readable regular file; else `error` saying what it is instead."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        raise error(f"{path} is a folder, not a {what}")
    if path.exists():
        raise error(f"{path} is not a regular file (a device or pipe?); give a {what}")
    raise error(f"{what} not found: {path}")


def read_image(path) -> np.ndarray:
    path = check_file(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise UserInputError(f"{path}: unsupported file type; use TIFF, PNG or JPEG")
    try:
        if suffix in (".tif", ".tiff"):
            return _read_tiff(path)
        import imageio.v3 as iio

        img = iio.imread(path)
        # Alpha is no image content: drop it from RGBA and grey+alpha alike,
        # so a PNG saved with transparency trains and predicts like without.
        if img.ndim == 3 and img.shape[-1] in (2, 4):
            img = img[..., :-1]
            if img.shape[-1] == 1:
                img = img[..., 0]
        return img
    except Exception as e:  # any decoder failure means the same to the user
        raise UserInputError(f"cannot read {path}: {_one_line(e)}") from None


def _read_tiff(path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        img = series.asarray()
        extras = tuple(int(e) for e in (series.keyframe.extrasamples or ()))
        axes = series.axes
    # Only samples the file itself marks as alpha are dropped: a 4-channel
    # TIFF whose extra sample is "unspecified" is 4 channels of data.
    if "S" not in axes or not any(e in _TIFF_ALPHA for e in extras) or len(axes) != img.ndim:
        return img
    axis = axes.index("S")
    n = img.shape[axis]
    # ExtraSamples describes the last len(extras) samples of each pixel.
    alpha = [n - len(extras) + i for i, e in enumerate(extras) if e in _TIFF_ALPHA]
    img = np.delete(img, alpha, axis=axis)
    if img.shape[axis] == 1:
        img = np.squeeze(img, axis=axis)
    return img


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path beside `path`; move it into place only on success.

    The temporary name keeps the suffix, so writers that choose the format
    from the name (tifffile, imageio) write the right one. On any exception,
    KeyboardInterrupt included, the temporary file is removed and the file
    that was at `path` before is left as it was. A symlink is written
    through (its target is replaced), as a plain open() would.
    """
    path = Path(path)
    target = Path(os.path.realpath(path))
    if target.is_dir():
        raise UserInputError(f"output {path} is a folder; give a file name")
    folder = target.parent
    if not folder.is_dir():
        raise UserInputError(f"cannot write {path}: output folder does not exist")
    # Hidden (dot) name, so a leftover from a killed process is skipped by
    # list_images; not created here, so the writer creates it with the
    # user's usual permissions (mkstemp would make it private).
    # The name is shortened so the temporary one stays within the usual 255-byte limit.
    tmp = partial_name(target)
    try:
        yield tmp
        if not tmp.is_file():
            raise RuntimeError(f"the writer did not create {tmp}")
        # Flush to disk before the rename: otherwise a power cut right after
        # it can leave an empty file under the final name on some systems.
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        group = _GROUP.get()
        if group is None:
            os.replace(tmp, target)
        else:
            group.append((tmp, target))  # renamed with the group's others (atomic_outputs)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


_GROUP: contextvars.ContextVar[list | None] = contextvars.ContextVar("atomic_group", default=None)


@contextlib.contextmanager
def atomic_outputs():
    """Outputs written inside this block (through atomic_output) are renamed
    into place together at its end, or none is: a run that fails on its
    second output (a full disk, say) does not leave its first one, which
    would then sit beside a second from an earlier run."""
    group = []
    token = _GROUP.set(group)
    try:
        yield
    except BaseException:
        for tmp, _ in group:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    finally:
        _GROUP.reset(token)
    for tmp, target in group:
        os.replace(tmp, target)


def partial_name(target: Path) -> Path:
    """The temporary name an output is written under before it is renamed into place."""
    return target.parent / f".{target.name[:100]}.{secrets.token_hex(6)}.partial{target.suffix[:20]}"


_PARTIAL = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}\.partial(\.[^./]*)?$")


def final_name(filename) -> str:
    """The output a temporary name stands for (messages name what the user asked for)."""
    p = Path(os.fsdecode(filename))
    m = _PARTIAL.match(p.name)
    return str(p.parent / m["name"]) if m else str(filename)


def write_image(path, array) -> Path:
    """Write `array` in the format the file name says (.tif/.tiff or .png), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise UserInputError(
            f"{path}: cannot write {suffix or 'files without an extension'}; "
            f"use one of {', '.join(WRITE_SUFFIXES)}"
        )
    array = np.asarray(array)
    if suffix == ".png":
        array = png_array(path, array)
    with atomic_output(path) as tmp:
        if suffix == ".png":
            import imageio.v3 as iio

            iio.imwrite(tmp, array, extension=".png")
        else:
            import tifffile

            tifffile.imwrite(tmp, array, compression="zlib")
    return path


def png_array(path, array: np.ndarray) -> np.ndarray:
    """The array as PNG can hold it exactly, or a UserInputError saying to use TIFF."""
    shape_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif array.dtype.kind in "iu" and array.dtype not in (np.uint8, np.uint16) and array.size:
        # Labels and instances are often int32 with small values: store them
        # exactly in the smallest PNG type that holds every value.
        lo, hi = int(array.min()), int(array.max())
        if lo >= 0 and hi <= 65535:
            array = array.astype(np.uint8 if hi <= 255 else np.uint16)
    if not shape_ok or array.dtype not in (np.uint8, np.uint16):
        raise UserInputError(
            f"{path}: PNG holds only 8/16-bit grey or 8-bit RGB(A) images; this is "
            f"{array.dtype} of shape {array.shape}, so write it as .tif"
        )
    if array.ndim == 3 and array.dtype == np.uint16:  # Pillow writes no 16-bit colour
        raise UserInputError(f"{path}: PNG cannot hold 16-bit colour here; write it as .tif")
    return array


def write_tif(path, array: np.ndarray) -> Path:
    """Kept for callers of the old name: writes what the extension says."""
    return write_image(path, array)


def check_outputs(inputs, outputs, folders_ok=False) -> None:
    """Refuse outputs that would overwrite an input or each other; call before any work.

    `folders_ok`: outputs may be folders (Zarr stores), replaced whole.

    `inputs` and `outputs` are iterables of paths; None entries (outputs not
    asked for) are skipped. Paths are compared after resolving symlinks,
    `..` and relative parts, and with os.path.samefile for files that exist
    (hard links). Two names that differ only in case on a case-insensitive
    file system are not detected unless the file exists.
    """
    ins = [Path(p) for p in inputs if p is not None]
    outs = [Path(p) for p in outputs if p is not None]
    in_real = [os.path.realpath(p) for p in ins]
    seen: list[tuple[Path, str]] = []
    for out in outs:
        real = os.path.realpath(out)
        if os.path.isdir(real) and not folders_ok:
            raise UserInputError(f"output {out} is a folder; give a file name")
        if not os.path.isdir(os.path.dirname(real)):
            raise UserInputError(f"cannot write {out}: output folder does not exist")
        if not os.access(os.path.dirname(real), os.W_OK | os.X_OK):  # read-only too, even for root
            raise UserInputError(f"cannot write {out}: its folder is not writable")
        for inp, inp_real in zip(ins, in_real):
            if real == inp_real or _same_existing(real, inp_real):
                raise UserInputError(f"output {out} would overwrite the input {inp}; choose another name")
            if outputs_inside(real, inp_real):  # an output store replaced whole takes its contents along
                raise UserInputError(f"the input {inp} lies inside the output {out}, which would replace it; "
                                     "choose another name")
        for other, other_real in seen:
            if real == other_real or _same_existing(real, other_real):
                raise UserInputError(f"outputs {other} and {out} are the same file; give each its own name")
        seen.append((out, real))


def _same_existing(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): realpath comparison decides
        return False


def outputs_inside(input_dir, output_dir) -> bool:
    """True when output_dir is input_dir or lies inside it (after resolving links).

    Folder prediction into such a folder would mix results with inputs, and
    a second run would take the results for inputs.
    """
    inp = Path(os.path.realpath(input_dir))
    out = Path(os.path.realpath(output_dir))
    if out == inp or inp in out.parents:
        return True
    return os.path.isdir(out) and os.path.isdir(inp) and _same_existing(str(out), str(inp))


def channel_axis_for(shape, spatial_ndim: int, n_channels: int | None = None):
    """Channel axis of an image with this shape, or None for a plain image.

    Used only at the CLI boundary where no viewer tells us; the core always
    takes an explicit axis. An extra axis is taken as channels: the last one
    if it has n_channels entries (or at most 4 when unknown), else the first.
    """
    if len(shape) == spatial_ndim:
        # A volume model given a colour picture: (H, W, 3) is not 3 slices of H x W
        # 3 pixels wide. Refuse rather than produce nonsense.
        if spatial_ndim == 3 and shape[-1] in (3, 4) and min(shape[:-1]) > 4 * shape[-1]:
            raise UserInputError(
                f"image of shape {tuple(shape)} looks like a 2D colour image, but the model expects "
                "3D volumes; pass --channel-axis if it really is a volume")
        return None
    if len(shape) != spatial_ndim + 1:
        raise UserInputError(
            f"image of shape {tuple(shape)} is neither {spatial_ndim}D nor {spatial_ndim}D with channels"
        )
    fits = (lambda n: n == n_channels) if n_channels else (lambda n: n <= 4)
    if fits(shape[-1]):
        return len(shape) - 1
    if fits(shape[0]):
        return 0
    if n_channels == 1 and spatial_ndim == 2 and min(shape) > 4:  # a volume given to a 2D model
        raise UserInputError(f"the model expects 2D images; this image has shape {tuple(shape)} "
                             "(3D, or channels the model was not trained with)")
    if n_channels:
        raise UserInputError(
            f"the model expects {n_channels}-channel images; this image has shape {tuple(shape)}"
        )
    raise UserInputError(
        f"cannot tell the channel axis of an image of shape {tuple(shape)}; pass --channel-axis"
    )


def mask_for(image_path, masks_dir, what: str = "mask") -> Path:
    """The image file in masks_dir with the same stem as image_path (`what`: how messages name it).

    Stems are compared as strings, not globbed: `a[1].png` must find
    `a[1].tif`, which a glob pattern would read as a character class.
    """
    masks_dir = Path(masks_dir)
    if not masks_dir.is_dir():
        raise UserInputError(f"folder not found: {masks_dir}")
    stem = Path(image_path).stem
    found = sorted(
        p for p in masks_dir.iterdir()
        if p.stem == stem and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not found:
        raise UserInputError(f"no {what} for {Path(image_path).name} in {masks_dir}")
    return found[0]


def list_images(folder, exclude=()) -> list[Path]:
    """Image files in folder, sorted; hidden files and paths in `exclude` left out.

    Hidden names are skipped because they are not the user's images:
    atomic_output's temporary files and macOS's `._name` companions.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"folder not found: {folder}")
    skip = {os.path.realpath(p) for p in exclude}
    files = sorted(
        p for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        and p.is_file() and os.path.realpath(p) not in skip
    )
    if not files:
        raise UserInputError(f"no TIFF, PNG or JPEG images in {folder}")
    return files


def _one_line(e: BaseException, limit: int = 200) -> str:
    """An exception as one short line: decoders' messages can span many."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
