"""One self-describing, pickle-free model file for every model kind.

A model file is a zip archive holding `model.json` (what the model is, how it
was trained, what it expects) and `arrays.npz` (numbers only). Deep models
add `weights.pt`, a torch state dict read with weights_only=True (see
`dl/weights.py`). Nothing in the file is ever executed, so it is safe to
e-mail; `unzip -p MODEL model.json` shows what it is.

A model file is hostile until checked. `load` refuses, with one readable
line (ModelFileError), anything this package would not have written:
unknown, duplicate or oddly named members, members larger than `Limits`
allows (declared in the zip directory and again while reading, so a lying
header cannot make us read gigabytes), compression bombs, arrays whose
.npy header asks for more memory than allowed or for Python objects, JSON
that is huge, deeply nested or holds NaN, and common metadata fields of the
wrong type or range. Model classes check their own fields with `field` and
`number_list`, which raise the same kind of error.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from .. import __version__
from .errors import ModelFileError, UserInputError
from .io import _one_line, atomic_output, check_file

FORMAT = "napari-dlvision-model"
FORMAT_VERSION = 1
SUFFIX = ".dlv"

# Members a model file may hold. A new model kind with another member passes
# its own tuple to load(members=...) and save(members=...).
MEMBERS = ("model.json", "arrays.npz", "weights.pt")

MAX_CHANNELS = 64
# Segmentations are written as uint16, so more classes could not be told apart.
MAX_CLASSES = 65535

MiB, GiB = 1 << 20, 1 << 30


@dataclass(frozen=True)
class Limits:
    """Resource bounds for reading a model file; pass your own to load() to change them."""

    json_bytes: int = 1 * MiB  # model.json: metadata only, a few KiB in practice
    json_depth: int = 32  # nesting of model.json; ours is 4 deep
    member_bytes: int = 2 * GiB  # arrays.npz, weights.pt or any other binary member, uncompressed
    total_bytes: int = 4 * GiB  # all members together; also all arrays inside arrays.npz together
    array_bytes: int = 2 * GiB  # one array inside arrays.npz
    max_members: int = 64  # entries in either zip's directory, checked before it is parsed
    # Uncompressed / compressed size, for members above ratio_floor. The
    # members of the model file itself are stored or already compressed
    # (ratio ~1), so 100 only catches bombs. Inside arrays.npz an all-zero
    # array legitimately reaches deflate's ceiling of about 1030:1, so that
    # bound sits just above it and catches size fields that lie.
    max_ratio: float = 100.0
    max_array_ratio: float = 1100.0
    ratio_floor: int = 1 * MiB


LIMITS = Limits()

_NPY_HEADER_MAX = 10_000  # numpy's own default for max_header_size
_NPY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}\.npy")
# Informational sections written by older versions for a diverged run may
# hold NaN; nowhere else may a number be non-finite.
_NAN_ALLOWED = ("training", "metrics")


class Metadata(dict):
    """model.json as a dict that remembers its file, so field() errors can name it."""

    def __init__(self, data: dict, path=None):
        super().__init__(data)
        self.path = path


# -- writing ---------------------------------------------------------------
NOT_MODEL_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".csv", ".zarr", ".npy", ".onnx")


def check_model_name(path) -> Path:
    """A name a model file may take: not that of an image, table or export,
    which a model (a zip) would replace by mistake."""
    path = Path(path)
    if path.suffix.lower() in NOT_MODEL_SUFFIXES:
        raise UserInputError(f"{path.name} names a {path.suffix} file; a model file is written (name it {SUFFIX})")
    return path


def save(path, metadata: dict, arrays: dict[str, np.ndarray], extra: dict[str, bytes] | None = None,
         members: tuple[str, ...] = MEMBERS) -> Path:
    """Write a model file atomically; `extra` holds further named binary members."""
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "written_by": __version__}
    meta.update(metadata)
    for name in extra or {}:
        if name not in members or name in ("model.json", "arrays.npz"):
            raise ValueError(f"model file member {name!r} would be refused on load")
    # Strict JSON (no NaN), which load() and other tools (jq) accept.
    text = json.dumps(_finite_or_none(meta), indent=2, sort_keys=True, allow_nan=False)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    # A crash or Ctrl-C while writing leaves the previous file intact.
    with atomic_output(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("model.json", text)
            zf.writestr("arrays.npz", buf.getvalue())
            for name, data in (extra or {}).items():
                zf.writestr(name, data)
    return Path(path)


def _finite_or_none(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


# -- reading ---------------------------------------------------------------
def read_metadata(path, kinds: tuple[str, ...] | None = None, members: tuple[str, ...] = MEMBERS,
                  limits: Limits = LIMITS) -> Metadata:
    """The JSON description alone, validated like `load` does."""
    return load(path, kinds, arrays=False, members=members, limits=limits)[0]


def load(path, kinds: tuple[str, ...] | None = None, arrays: bool = True,
         members: tuple[str, ...] = MEMBERS, limits: Limits = LIMITS):
    """Return (metadata, arrays, extra members) or raise ModelFileError.

    metadata has passed validate_common; arrays are read-only numpy arrays;
    extra maps the other members' names (e.g. "weights.pt") to their bytes.
    With arrays=False only model.json is read (the directory is still checked).
    """
    path = check_file(path, ModelFileError, "model file")
    try:
        size = path.stat().st_size
        if size > limits.total_bytes + limits.json_bytes:
            raise ModelFileError(f"{path} is too large for a model file ({size / GiB:.1f} GiB)")
        with open(path, "rb") as fp:
            _check_directory(fp, size, limits, path, "the model file")
            with zipfile.ZipFile(fp) as zf:
                infos = _check_members(zf, members, limits, path)
                if "model.json" not in infos:
                    raise ModelFileError(f"{path} is not a napari-dlvision model (no model.json inside)")
                raw = _read_member(zf, infos["model.json"], limits.json_bytes, path)
                meta = _parse_json(raw, path, limits)
                validate_common(meta, path, kinds)
                if not arrays:
                    return meta, {}, {}
                data = {}
                if "arrays.npz" in infos:
                    npz = _read_member(zf, infos["arrays.npz"], limits.member_bytes, path)
                    data = _read_npz(npz, path, limits)
                    del npz
                extra = {
                    name: _read_member(zf, info, limits.member_bytes, path)
                    for name, info in infos.items() if name not in ("model.json", "arrays.npz")
                }
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, ValueError, OSError, EOFError,
            RuntimeError, NotImplementedError, zlib.error, struct.error, OverflowError) as e:
        raise ModelFileError(f"{path} is not a readable napari-dlvision model ({_one_line(e)})") from None
    return meta, data, extra


@contextlib.contextmanager
def refused_if_damaged(path, what: str):
    """Reading a model's metadata inside this block: a missing or wrong field
    becomes one ModelFileError line, "<path> is a damaged <what> (<reason>)";
    refusals that are already ModelFileErrors pass unchanged."""
    try:
        yield
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, UserInputError) as e:
        raise ModelFileError(f"{path} is a damaged {what} ({e})") from None


def _refuse(path, what: str):
    raise ModelFileError(f"{path} is not a valid model file: {what}")


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_directory(fp, size: int, limits: Limits, path, where: str):
    """Refuse a zip whose directory lists too many entries, before zipfile parses it.

    zipfile builds an object per directory entry on open, so a small file
    claiming millions of entries would cost time and memory first. The
    end-of-central-directory record (last 22 bytes plus a comment of up to
    64 KiB) gives the count; if it cannot be found, zipfile reports that.
    """
    tail_len = min(size, 22 + 0xFFFF)
    fp.seek(size - tail_len)
    tail = fp.read(tail_len)
    fp.seek(0)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return
    _, _, _, _, n_entries, dir_size, _, _ = struct.unpack("<4s4H2LH", tail[at:at + 22])
    # Zip64 marks these fields 0xFFFF / 0xFFFFFFFF: more entries than we allow anyway.
    if n_entries > limits.max_members or dir_size > limits.max_members * 1024:
        _refuse(path, f"{where} lists {n_entries} entries ({dir_size} bytes of directory)")


def _check_zip_entry(info: zipfile.ZipInfo, path, cap: int, max_ratio: float, limits: Limits, label: str):
    if info.flag_bits & 0x1:
        _refuse(path, f"{label} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        # bzip2 and lzma reach ratios deflate cannot; we never write them.
        _refuse(path, f"{label} uses an unsupported compression method ({info.compress_type})")
    if info.file_size > cap:
        _refuse(path, f"{label} is {info.file_size:,} bytes, more than the {cap:,} allowed")
    if info.file_size > limits.ratio_floor and info.file_size > max_ratio * max(info.compress_size, 1):
        _refuse(path, f"{label} expands {info.file_size / max(info.compress_size, 1):.0f}-fold "
                      f"(a compression bomb?)")


def _check_members(zf: zipfile.ZipFile, members, limits: Limits, path) -> dict[str, zipfile.ZipInfo]:
    found: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in zf.infolist():
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if info.is_dir() or name.startswith(("/", "\\")) or ".." in parts or re.match(r"[A-Za-z]:", name):
            _refuse(path, f"unsafe member name {_short(name)}")
        if name not in members:
            _refuse(path, f"unexpected member {_short(name)} (a model file holds only {', '.join(members)})")
        if name in found:
            _refuse(path, f"member {name} appears twice")
        cap = limits.json_bytes if name == "model.json" else limits.member_bytes
        _check_zip_entry(info, path, cap, limits.max_ratio, limits, name)
        total += info.file_size
        if total > limits.total_bytes:
            _refuse(path, f"its members add up to more than {limits.total_bytes:,} bytes")
        found[name] = info
    return found


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, path) -> bytes:
    """The member's bytes, reading never more than min(cap, declared size) + 1."""
    limit = min(cap, info.file_size)
    with zf.open(info) as f:
        data = f.read(limit)
        # zipfile itself stops at the declared size; this guard does not rely on it.
        if f.read(1):
            _refuse(path, f"{info.filename} holds more data than its header says")
    if len(data) != info.file_size:
        _refuse(path, f"{info.filename} is shorter than its header says")
    return data


def _read_npz(data: bytes, path, limits: Limits) -> dict[str, np.ndarray]:
    """Arrays of arrays.npz, checked from their .npy headers before any is allocated.

    np.load would allocate whatever shape a header declares and unpickles
    object arrays when allowed; this reads the headers with numpy's own
    parser, checks dtype and size, and only then reads the data.
    """
    bio = io.BytesIO(data)
    _check_directory(bio, len(data), limits, path, "arrays.npz")
    out: dict[str, np.ndarray] = {}
    total = 0
    with zipfile.ZipFile(bio) as zf:
        for info in zf.infolist():
            name = info.filename
            if not _NPY_NAME.fullmatch(name):
                _refuse(path, f"arrays.npz holds an unexpected member {_short(name)}")
            key = name[:-4]
            if key in out:
                _refuse(path, f"arrays.npz holds {name} twice")
            label = f"array {key!r} in arrays.npz"
            _check_zip_entry(info, path, limits.array_bytes + _NPY_HEADER_MAX, limits.max_array_ratio,
                             limits, label)
            total += info.file_size  # data plus a header of at most _NPY_HEADER_MAX per array
            if total > limits.total_bytes + (len(out) + 1) * _NPY_HEADER_MAX:
                _refuse(path, f"the arrays add up to more than {limits.total_bytes:,} bytes")
            with zf.open(info) as f:
                out[key] = _read_npy(f, info, path, limits, label)
    return out


def _read_npy(f, info: zipfile.ZipInfo, path, limits: Limits, label: str) -> np.ndarray:
    version = npy_format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(f, max_header_size=_NPY_HEADER_MAX)
    elif version == (2, 0):
        shape, fortran, dtype = npy_format.read_array_header_2_0(f, max_header_size=_NPY_HEADER_MAX)
    else:
        _refuse(path, f"{label} has an unsupported .npy version {version}")
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
        _refuse(path, f"{label} has dtype {dtype}, not plain numbers")
    if len(shape) > 32 or not all(isinstance(n, int) and n >= 0 for n in shape):
        _refuse(path, f"{label} has an invalid shape {_short(shape)}")
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes > limits.array_bytes:
        _refuse(path, f"{label} would take {nbytes:,} bytes, more than the {limits.array_bytes:,} allowed")
    if nbytes != info.file_size - f.tell():
        _refuse(path, f"{label}: its size does not match its header")
    raw = f.read(nbytes)
    if len(raw) != nbytes:
        _refuse(path, f"{label} is shorter than its header says")
    # Read-only view on the bytes read: no second copy of a large array.
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")


def _json_depth_exceeds(text: str, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than limit (json.loads recurses per level).

    One linear pass over the tokens that matter (escapes, quotes, brackets);
    no backtracking, so hostile text cannot make it slow. Outside strings a
    backslash is invalid JSON, and json.loads stops there before going deeper.
    """
    depth, in_string = 0, False
    for tok in re.findall(r'\\.|["\[\]{}]', text, re.S):
        if tok == '"':
            in_string = not in_string
        elif in_string or tok[0] == "\\":
            continue
        elif tok in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _parse_json(raw: bytes, path, limits: Limits) -> Metadata:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        _refuse(path, "model.json is not UTF-8 text")
    if _json_depth_exceeds(text, limits.json_depth):
        _refuse(path, f"model.json nests deeper than {limits.json_depth} levels")
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as e:
        _refuse(path, f"model.json is not valid JSON ({_one_line(e, 120)})")
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path} is not a napari-dlvision model file")
    where = _non_finite(meta)
    if where:
        _refuse(path, f"model.json holds a non-finite number (NaN or Infinity) at {where}")
    return Metadata(meta, path)


def _non_finite(obj, where: str = "") -> str | None:
    """Dotted location of the first NaN/Infinity outside the informational sections."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (where or "top level")
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        if not where and k in _NAN_ALLOWED:
            continue
        sub = f"{where}[{k}]" if isinstance(k, int) else (f"{where}.{k}" if where else str(k))
        found = _non_finite(v, sub)
        if found:
            return found
    return None


# -- metadata fields ---------------------------------------------------------
_MISSING = object()
_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               dict: "an object", list: "a list"}


def _damaged(path, what: str) -> ModelFileError:
    where = f"{path} is a damaged model" if path is not None else "damaged model file"
    return ModelFileError(f"{where}: {what}")


def _lookup(meta, name: str, path):
    node = meta
    parts = name.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict):
            raise _damaged(path, f"{'.'.join(parts[:i])} must be an object, got {_short(node)}")
        if part not in node:
            return _MISSING
        node = node[part]
    return node


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_value(v, name, kind, lo, hi, gt, choices, path):
    """v converted to kind, or a ModelFileError naming the field."""
    desc = _KIND_NAMES.get(kind, kind.__name__)
    if choices is not None:
        desc = "one of " + ", ".join(repr(c) for c in choices)
    elif lo is not None and hi is not None:
        desc += f" from {lo} to {hi}"
    elif lo is not None:
        desc += f" >= {lo}"
    elif hi is not None:
        desc += f" <= {hi}"
    if gt is not None:
        desc += f" > {gt}"
    bad = _damaged(path, f"{name} must be {desc}, got {_short(v)}")
    if kind is int:
        if not _is_int(v):
            raise bad
        v = int(v)
    elif kind is float:
        if not (_is_int(v) or isinstance(v, (float, np.floating))):
            raise bad
        try:
            v = float(v)
        except OverflowError:  # an integer of hundreds of digits
            raise bad from None
        if not math.isfinite(v):
            raise bad
    elif kind is bool:
        if not isinstance(v, (bool, np.bool_)):
            raise bad
        v = bool(v)
    elif not isinstance(v, kind):
        raise bad
    if choices is not None and v not in choices:
        raise bad
    if (lo is not None and v < lo) or (hi is not None and v > hi) or (gt is not None and v <= gt):
        raise bad
    return v


def field(meta, name: str, kind, *, lo=None, hi=None, gt=None, choices=None,
          optional: bool = False, default=None, path=None):
    """meta[name] checked to be of `kind` (int, float, str, bool, dict or list) and in range.

    Dotted names reach into sub-objects ("architecture.depth"). int refuses
    bools and floats; float takes ints too, returns a float and refuses NaN
    and infinities. lo/hi are inclusive bounds, gt an exclusive lower bound.
    optional: a missing or null field gives `default`. Errors are one-line
    ModelFileErrors naming the file (from `path`, or the Metadata's own).
    """
    path = path if path is not None else getattr(meta, "path", None)
    v = _lookup(meta, name, path)
    if v is _MISSING or v is None:
        if optional:
            return default
        raise _damaged(path, f"{name} is missing" if v is _MISSING else f"{name} must not be null")
    return _check_value(v, name, kind, lo, hi, gt, choices, path)


def number_list(meta, name: str, kind=float, *, length: int | None = None, lo=None, hi=None, gt=None,
                optional: bool = False, default=None, path=None) -> list | None:
    """A list of numbers (each checked like field(kind=...)), of `length` entries when given."""
    path = path if path is not None else getattr(meta, "path", None)
    values = field(meta, name, list, optional=optional, default=_MISSING, path=path)
    if values is _MISSING:
        return default
    if length is not None and len(values) != length:
        raise _damaged(path, f"{name} must have {length} entries, got {len(values)}")
    return [_check_value(v, f"{name}[{i}]", kind, lo, hi, gt, None, path) for i, v in enumerate(values)]


def validate_common(meta, path=None, kinds: tuple[str, ...] | None = None) -> None:
    """Check the fields every model kind shares; raise a one-line ModelFileError.

    format, format_version (int >= 1, not newer than this version), kind
    (one of `kinds` when given), written_by, classes (1..K), class_names (K
    strings), n_channels (1..MAX_CHANNELS), ndim (2 or 3), spacing (null or
    ndim positive numbers), training and metrics (objects, optional).
    """
    path = path if path is not None else getattr(meta, "path", None)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a napari-dlvision model file")
    version = field(meta, "format_version", int, lo=1, path=path)
    # A newer writer may have changed any other field: say so before judging them.
    if version > FORMAT_VERSION:
        written_by = meta.get("written_by")
        raise ModelFileError(
            f"{path} has model file format {version}, newer than this napari-dlvision reads "
            f"({FORMAT_VERSION}; written by {written_by if isinstance(written_by, str) else 'an unknown version'})"
            "; please upgrade"
        )
    kind = field(meta, "kind", str, path=path)
    if kinds is not None and kind not in kinds:
        raise ModelFileError(f"{path} holds a {_short(kind)} model, expected {' or '.join(kinds)}")
    field(meta, "written_by", str, optional=True, path=path)
    classes = field(meta, "classes", list, path=path)
    if not 1 <= len(classes) <= MAX_CLASSES or not all(_is_int(c) for c in classes) \
            or list(classes) != list(range(1, len(classes) + 1)):
        raise _damaged(path, f"classes must be the ids 1..K (K up to {MAX_CLASSES}), got {_short(classes)}")
    names = field(meta, "class_names", list, path=path)
    if len(names) != len(classes) or not all(isinstance(n, str) for n in names):
        raise _damaged(path, f"class_names must be {len(classes)} strings, one per class, got {_short(names)}")
    field(meta, "n_channels", int, lo=1, hi=MAX_CHANNELS, path=path)
    ndim = field(meta, "ndim", int, choices=(2, 3), path=path)
    number_list(meta, "spacing", float, length=ndim, gt=0, optional=True, path=path)
    field(meta, "training", dict, optional=True, path=path)
    field(meta, "metrics", dict, optional=True, path=path)
