"""Model files are hostile until checked: every crafted file gives one ModelFileError line.

Files are built for real on disk; zips whose directory lies about sizes are
written byte by byte (zipfile itself would write the truth).
"""

import io
import json
import os
import struct
import time
import zipfile
import zlib

import numpy as np
import pytest

from napari_dlvision.core import modelfile
from napari_dlvision.core.errors import ModelFileError, UserInputError
from napari_dlvision.core.forest import TreeEnsemble, fit_forest

N_FEATURES, N_CLASSES = 4, 3


def one_line_error(fn, *args, match=None, error=ModelFileError, **kwargs) -> str:
    with pytest.raises(error, match=match) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert msg and "\n" not in msg, msg
    return msg


def common_meta(**update):
    meta = {"kind": "test-forest", "classes": [1, 2, 3], "class_names": ["a", "b", "c"],
            "n_channels": 1, "ndim": 2, "spacing": None, "training": {}, "metrics": {}}
    meta.update(update)
    return meta


@pytest.fixture(scope="module")
def forest():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, N_FEATURES))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    return fit_forest(X, y, N_CLASSES, n_trees=4)


@pytest.fixture
def good_file(forest, tmp_path):
    return modelfile.save(tmp_path / "good.dlv", common_meta(), forest.arrays)


def members_of(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def write_zip(path, members: dict[str, bytes], method=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def raw_zip(entries) -> bytes:
    """A zip written by hand: entries of (name, payload, method, declared size or None).

    The declared (uncompressed) size goes into both headers as given, so a
    2 GB member costs a few bytes; the CRC is the real payload's.
    """
    out, central = bytearray(), bytearray()
    for name, payload, method, declared in entries:
        nb = name.encode()
        if method == zipfile.ZIP_DEFLATED:
            c = zlib.compressobj(9, zlib.DEFLATED, -15)
            data = c.compress(payload) + c.flush()
        else:
            data = payload
        crc, size = zlib.crc32(payload), len(payload) if declared is None else declared
        offset = len(out)
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data), size, len(nb), 0)
        out += nb + data
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(data), size,
                               len(nb), 0, 0, 0, 0, 0, offset) + nb
    n = len(entries)
    return bytes(out + central + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(central), len(out), 0))


def npy_bytes(array) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=True)
    return buf.getvalue()


def npy_header(shape, dtype="<f8") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


# -- the good path -------------------------------------------------------------
def test_round_trip_and_forest_predictions(forest, good_file):
    meta, arrays, extra = modelfile.load(good_file, kinds=("test-forest",))
    assert meta["kind"] == "test-forest" and meta.path == good_file and extra == {}
    loaded = TreeEnsemble(arrays, N_FEATURES, N_CLASSES)
    X = np.random.default_rng(1).normal(size=(500, N_FEATURES))
    np.testing.assert_array_equal(loaded.predict_proba(X), forest.predict_proba(X))
    assert modelfile.read_metadata(good_file)["classes"] == [1, 2, 3]


def test_save_writes_strict_json_and_refuses_unknown_members(forest, tmp_path):
    path = modelfile.save(tmp_path / "m.dlv", common_meta(metrics={"loss": float("nan")}), forest.arrays)
    json.loads(members_of(path)["model.json"], parse_constant=lambda c: pytest.fail(f"{c} written"))
    assert modelfile.load(path)[0]["metrics"]["loss"] is None
    with pytest.raises(ValueError, match="refused"):
        modelfile.save(tmp_path / "x.dlv", common_meta(), {}, extra={"notes.txt": b"hi"})


def test_save_is_atomic(forest, tmp_path):
    path = modelfile.save(tmp_path / "m.dlv", common_meta(), forest.arrays)
    before = path.read_bytes()

    class Interrupted(bytes):
        def __len__(self):  # zipfile asks for the length while writing the member
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        modelfile.save(path, common_meta(), forest.arrays, extra={"weights.pt": Interrupted(b"x")})
    with pytest.raises(TypeError):
        modelfile.save(path, common_meta(), forest.arrays, extra={"weights.pt": object()})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.dlv"]


def test_more_members_for_other_kinds(forest, tmp_path):
    path = write_zip(tmp_path / "x.dlv", {**members_of(
        modelfile.save(tmp_path / "g.dlv", common_meta(), forest.arrays)), "table.bin": b"123"})
    one_line_error(modelfile.load, path, match="unexpected member 'table.bin'")
    _, _, extra = modelfile.load(path, members=modelfile.MEMBERS + ("table.bin",))
    assert extra == {"table.bin": b"123"}


# -- the zip container ---------------------------------------------------------
def test_zip_structure_is_checked(good_file, tmp_path):
    good = members_of(good_file)
    cases = {
        "unexpected member": {**good, "evil.py": b"print(1)"},
        "unsafe member name": {**good, "../model.json": b"{}"},
        "unsafe member name ": {**good, "/etc/passwd": b"x"},
        "unsafe member name  ": {**good, "arrays/": b""},
        "no model.json": {"arrays.npz": good["arrays.npz"]},
    }
    for match, members in cases.items():
        one_line_error(modelfile.load, write_zip(tmp_path / "bad.dlv", members), match=match.strip())
    with pytest.warns(UserWarning, match="Duplicate"):
        write_zip(tmp_path / "dup.dlv", good)
        with zipfile.ZipFile(tmp_path / "dup.dlv", "a") as zf:
            zf.writestr("model.json", good["model.json"])
    one_line_error(modelfile.load, tmp_path / "dup.dlv", match="appears twice")
    one_line_error(modelfile.load, write_zip(tmp_path / "bz.dlv", good, zipfile.ZIP_BZIP2), match="compression")
    many = {f"m{i}": b"" for i in range(100)}
    one_line_error(modelfile.load, write_zip(tmp_path / "many.dlv", many), match="100 entries")


def test_encrypted_member_is_refused(good_file, tmp_path):
    data = bytearray(raw_zip([("model.json", members_of(good_file)["model.json"], 0, None)]))
    # Set the "encrypted" flag in both headers.
    data[6] |= 1
    data[data.index(b"PK\x01\x02") + 8] |= 1
    (tmp_path / "enc.dlv").write_bytes(data)
    one_line_error(modelfile.load, tmp_path / "enc.dlv", match="encrypted")


def test_sizes_declared_in_the_directory(good_file, tmp_path):
    good = members_of(good_file)
    meta, npz = good["model.json"], good["arrays.npz"]
    cases = {
        # An unknown member that says it is 2 GB: refused by name, nothing read.
        "unexpected member": [("model.json", meta, 0, None), ("huge.bin", b"\0" * 100, 0, 2_000_000_000)],
        # A known member declared larger than allowed.
        "more than the": [("model.json", meta, 0, None), ("weights.pt", b"\0" * 100, 0, 2_500_000_000)],
        # Declared 1.5 GB from 10 kB of deflate: a bomb.
        "compression bomb": [("model.json", meta, 0, None),
                             ("arrays.npz", b"\0" * 10_000_000, zipfile.ZIP_DEFLATED, 1_500_000_000)],
        # model.json may hold 1 MiB: this one expands to 5 MB.
        "model.json is 5,000,000 bytes": [("model.json", b" " * 5_000_000, zipfile.ZIP_DEFLATED, None)],
    }
    for match, entries in cases.items():
        path = tmp_path / "bad.dlv"
        path.write_bytes(raw_zip(entries))
        t0 = time.perf_counter()
        one_line_error(modelfile.load, path, match=match)
        assert time.perf_counter() - t0 < 1
    # A header that declares less than the stream holds: never read past it.
    path.write_bytes(raw_zip([("model.json", meta, 0, None),
                              ("arrays.npz", npz + b"\0" * 10_000_000, zipfile.ZIP_DEFLATED, len(npz))]))
    one_line_error(modelfile.load, path)


def test_limits_are_configurable(good_file):
    small = modelfile.Limits(member_bytes=100)
    one_line_error(modelfile.load, good_file, limits=small, match="arrays.npz is .* more than the 100 allowed")
    # read_metadata reads model.json alone but still checks the whole directory.
    one_line_error(modelfile.read_metadata, good_file, limits=small, match="more than the 100 allowed")
    one_line_error(modelfile.read_metadata, good_file, limits=modelfile.Limits(json_bytes=10),
                   match="model.json is")


# -- arrays.npz --------------------------------------------------------------------
def with_npz(good_file, tmp_path, npz: bytes):
    members = {**members_of(good_file), "arrays.npz": npz}
    return write_zip(tmp_path / "npz.dlv", members)


class Payload:
    """Unpickling this creates a folder: proof that it ran."""

    marker = None

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_npz_members_are_checked_before_allocation(good_file, tmp_path):
    marker = tmp_path / "payload-ran"
    Payload.marker = marker
    zeros = np.zeros(4_000_000)  # 32 MB of zeros compress to about 30 kB
    cases = {
        # A header asking for 80 GB, with 8 bytes of data.
        "would take 80,000,000,000 bytes": raw_zip([("x.npy", npy_header((10**10,)) + b"\0" * 8, 0, None)]),
        "invalid shape": raw_zip([("x.npy", npy_header((-1,)), 0, None)]),
        "not plain numbers": raw_zip([("x.npy", npy_bytes(np.array([Payload()], dtype=object)), 0, None)]),
        "not plain numbers ": raw_zip([("x.npy", npy_bytes(np.array(["text"])), 0, None)]),
        "does not match its header": raw_zip([("x.npy", npy_header((3,)) + b"\0" * 16, 0, None)]),
        "unexpected member": raw_zip([("../x.npy", npy_bytes(np.zeros(3)), 0, None)]),
        "unexpected member ": raw_zip([("x.pkl", b"\x80\x04N.", 0, None)]),
        "twice": raw_zip([("x.npy", npy_bytes(np.zeros(3)), 0, None)] * 2),
        # Declared 1.9 GB from a few kB: more than deflate can expand.
        "compression bomb": raw_zip([("x.npy", npy_bytes(np.zeros(1000)), zipfile.ZIP_DEFLATED, 1_900_000_000)]),
        "more than the": raw_zip([("x.npy", b"\0" * 100, 0, 3_000_000_000)]),
        "not a readable": b"PK\x03\x04 not really a zip",
    }
    for match, npz in cases.items():
        one_line_error(modelfile.load, with_npz(good_file, tmp_path, npz), match=match.strip())
    assert not marker.exists()
    # Real deflated zeros: fine by default, refused by a small per-array limit.
    buf = io.BytesIO()
    np.savez_compressed(buf, zeros=zeros)
    path = with_npz(good_file, tmp_path, buf.getvalue())
    assert modelfile.load(path)[1]["zeros"].shape == zeros.shape
    one_line_error(modelfile.load, path, limits=modelfile.Limits(array_bytes=1 << 20), match="'zeros'")


# -- model.json ------------------------------------------------------------------
def with_json(good_file, tmp_path, text) -> os.PathLike:
    members = {**members_of(good_file), "model.json": text.encode() if isinstance(text, str) else text}
    return write_zip(tmp_path / "json.dlv", members)


def good_json(good_file) -> dict:
    return json.loads(members_of(good_file)["model.json"])


def test_hostile_json(good_file, tmp_path):
    meta = good_json(good_file)
    deep = json.dumps({**meta, "x": "PLACE"}).replace('"PLACE"', "[" * 100_000 + "]" * 100_000)
    nested = json.dumps({**meta, "x": "PLACE"}).replace('"PLACE"', '{"a": ' * 40 + "1" + "}" * 40)
    # Escaped quotes that never close: a backtracking scanner would take minutes.
    escapes = '{"x": "' + '\\"' * 400_000
    cases = {
        "nests deeper": deep,
        "nests deeper ": nested,
        "not valid JSON": escapes,
        "not valid JSON ": '{"format": ',
        "not UTF-8": b'{"format": "\xff\xfe"}',
        "not a napari-dlvision model file": "[1, 2, 3]",
        "spacing": json.dumps({**meta, "spacing": [float("nan"), 1.0]}),
        "non-finite number .* at x.y": json.dumps({**meta, "x": {"y": float("inf")}}),
        "more than the 1,048,576 allowed": json.dumps({**meta, "pad": " " * (1 << 20)}),
    }
    for match, text in cases.items():
        t0 = time.perf_counter()
        one_line_error(modelfile.load, with_json(good_file, tmp_path, text), match=match.strip())
        assert time.perf_counter() - t0 < 2, match
    # Brackets inside strings are text; NaN in the informational sections is tolerated.
    fine = {**meta, "class_names": ["[" * 200, "]{" * 100, '\\"['], "metrics": {"loss": float("nan")}}
    assert modelfile.load(with_json(good_file, tmp_path, json.dumps(fine)))[0]["class_names"][0] == "[" * 200


@pytest.mark.parametrize("update, match", [
    ({"format": "other"}, "not a napari-dlvision model file"),
    ({"format_version": "1"}, "format_version must be an integer >= 1, got '1'"),
    ({"format_version": True}, "format_version must be an integer"),
    ({"format_version": 0}, "format_version"),
    ({"format_version": 99, "spacing": "garbage"}, "newer than this napari-dlvision reads"),
    ({"kind": 5}, "kind must be a string"),
    ({"kind": "pixel-unet"}, "holds a 'pixel-unet' model, expected test-forest"),
    ({"written_by": ["1.0"]}, "written_by must be a string"),
    ({"classes": [1, 3, 4]}, "classes must be the ids 1..K"),
    ({"classes": [True, 2, 3]}, "classes must be the ids 1..K"),
    ({"classes": []}, "classes must be the ids"),
    ({"classes": "123"}, "classes must be a list"),
    ({"class_names": ["a", "b"]}, "class_names must be 3 strings"),
    ({"class_names": ["a", "b", 3]}, "class_names must be 3 strings"),
    ({"n_channels": 1200}, "n_channels must be an integer from 1 to 64, got 1200"),
    ({"n_channels": 2.0}, "n_channels must be an integer"),
    ({"ndim": 4}, "ndim must be one of 2, 3"),
    ({"spacing": [0, 0]}, r"spacing\[0\] must be a number > 0, got 0"),
    ({"spacing": [1.0]}, "spacing must have 2 entries"),
    ({"spacing": [10**400, 1]}, r"spacing\[0\] must be a number > 0"),
    ({"spacing": ["1", "1"]}, r"spacing\[0\] must be a number"),
    ({"spacing": 1.0}, "spacing must be a list"),
    ({"training": "fast"}, "training must be an object"),
    ({"metrics": [1]}, "metrics must be an object"),
])
def test_common_fields_are_type_checked(good_file, tmp_path, update, match):
    text = json.dumps({**good_json(good_file), **update})
    msg = one_line_error(modelfile.load, with_json(good_file, tmp_path, text), kinds=("test-forest",), match=match)
    assert str(tmp_path / "json.dlv") in msg


def test_field_accessors_for_model_kinds(good_file, tmp_path):
    meta = good_json(good_file)
    meta.update(normalisation="x", architecture={"depth": 3.5, "norm": "batch"}, low=1, spacing=[1, 2])
    path = with_json(good_file, tmp_path, json.dumps(meta))
    meta = modelfile.read_metadata(path)
    field, number_list = modelfile.field, modelfile.number_list
    msg = one_line_error(field, meta, "normalisation", dict, match="normalisation must be an object, got 'x'")
    assert msg.startswith(f"{path} is a damaged model: ")
    one_line_error(field, meta, "normalisation.low", float, match="normalisation must be an object")
    one_line_error(field, meta, "architecture.depth", int, lo=1, hi=6, match="architecture.depth must be an integer")
    one_line_error(field, meta, "architecture.name", str, match="architecture.name is missing")
    one_line_error(field, meta, "architecture.norm", str, choices=("group",), match="one of 'group'")
    assert field(meta, "architecture.norm", str, choices=("batch", "group")) == "batch"
    assert field(meta, "architecture.name", str, optional=True, default="unet") == "unet"
    assert field(meta, "low", float) == 1.0 and isinstance(field(meta, "low", float), float)
    assert number_list(meta, "spacing", length=2, gt=0) == [1.0, 2.0]
    one_line_error(number_list, meta, "spacing", int, length=2, hi=1, match=r"spacing\[1\] must be an integer <= 1")
    one_line_error(field, {"x": float("nan")}, "x", float, path="m.dlv", match="m.dlv is a damaged model: x must")
    modelfile.validate_common(meta)  # a loaded file's metadata passes
    one_line_error(modelfile.validate_common, {**meta, "ndim": 3}, path, match=r"spacing must have 3 entries")


# -- the forest's arrays -------------------------------------------------------------
def first_split(arrays, tree=0):
    lo, hi = arrays["tree_offsets"][tree], arrays["tree_offsets"][tree + 1]
    return int(np.flatnonzero(arrays["left_child"][lo:hi] >= 0)[0])


def mutate(arrays, key, fn):
    a = {k: np.array(v) for k, v in arrays.items()}
    a[key] = fn(a[key], a)
    return a


def setitem(index_fn, value):
    def fn(arr, a):
        arr[index_fn(a)] = value(a) if callable(value) else value
        return arr
    return fn


def size0(a):
    return int(a["tree_offsets"][1])


def later_split(a):
    """A split node of tree 0 after its root, and the root (an earlier node)."""
    lo, hi = 0, size0(a)
    return int(np.flatnonzero(a["left_child"][lo:hi] >= 0)[1])


FOREST_CASES = {
    "child out of range": ("left_child", setitem(first_split, 10**9)),
    "child negative": ("left_child", setitem(first_split, -5)),
    "child is itself": ("left_child", setitem(first_split, first_split)),
    "child in the next tree": ("right_child", setitem(first_split, size0)),
    "child before its parent (a cycle)": ("left_child", setitem(later_split, 0)),
    "one child a leaf": ("left_child", setitem(first_split, -1)),
    "same child twice": ("right_child", setitem(first_split, lambda a: a["left_child"][first_split(a)])),
    "feature out of range": ("feature", setitem(first_split, N_FEATURES)),
    "feature negative": ("feature", setitem(first_split, -2)),
    "empty tree": ("tree_offsets", lambda o, a: np.insert(o, 1, 0)),
    "offsets not from 0": ("tree_offsets", lambda o, a: o + 1),
    "offsets short of the nodes": ("tree_offsets", lambda o, a: o[:-1]),
    "offsets beyond the nodes": ("tree_offsets", lambda o, a: np.append(o, o[-1] + 5)),
    "no trees": ("tree_offsets", lambda o, a: o[:1]),
    "NaN threshold": ("threshold", setitem(first_split, np.nan)),
    "infinite threshold": ("threshold", setitem(first_split, np.inf)),
    "NaN value": ("values", setitem(lambda a: (0, 1), np.nan)),
    "negative value": ("values", setitem(lambda a: (3, 0), -0.5)),
    "huge value": ("values", lambda v, a: v.astype(np.float64) * 1e300),
    "values of another class count": ("values", lambda v, a: v[:, :2]),
    "values 1-D": ("values", lambda v, a: v.ravel()),
    "float children": ("left_child", lambda c, a: c.astype(np.float64)),
    "unsigned children": ("left_child", lambda c, a: c.astype(np.uint64)),
    "2-D feature": ("feature", lambda f, a: f[:, None]),
    "short threshold": ("threshold", lambda t, a: t[:-1]),
    "float offsets": ("tree_offsets", lambda o, a: o.astype(np.float64)),
    "negative max_depth": ("max_depth", setitem(lambda a: 0, -1)),
    "max_depth beyond the nodes": ("max_depth", setitem(lambda a: 0, 10**6)),
    "missing_go_to_left 7": ("missing_go_to_left", setitem(lambda a: 0, 7)),
    "missing array": ("values", None),
}


FOREST_REASONS = {
    'child out of range': 'neither leaves',
    'child negative': 'neither leaves',
    'child is itself': 'neither leaves',
    'child in the next tree': 'neither leaves',
    'child before its parent (a cycle)': 'neither leaves',
    'one child a leaf': 'neither leaves',
    'same child twice': '2 parents',
    'feature out of range': 'feature 4 is not in 0..3',
    'feature negative': 'feature -2 is not',
    'empty tree': 'is empty',
    'offsets not from 0': 'start at 0',
    'offsets short of the nodes': 'tree_offsets says',
    'offsets beyond the nodes': 'tree_offsets says',
    'no trees': '0 trees',
    'NaN threshold': 'threshold is not finite',
    'infinite threshold': 'threshold is not finite',
    'NaN value': 'class values',
    'negative value': 'class values',
    'huge value': 'class values',
    'values of another class count': 'shape',
    'values 1-D': 'expected 2-D',
    'float children': 'dtype float64',
    'unsigned children': 'dtype uint64',
    '2-D feature': 'expected 1-D',
    'short threshold': '63 entries',
    'float offsets': 'dtype float64',
    'negative max_depth': 'max_depth -1',
    'max_depth beyond the nodes': 'max_depth 1000000',
    'missing_go_to_left 7': '0 or 1',
    'missing array': "'values' is missing",
}


@pytest.mark.parametrize("case", list(FOREST_CASES))
def test_hostile_forest_arrays(forest, tmp_path, case):
    key, fn = FOREST_CASES[case]
    if fn is None:
        arrays = {k: v for k, v in forest.arrays.items() if k != key}
    else:
        arrays = mutate(forest.arrays, key, fn)
    # Through a real file: what a loader sees.
    path = modelfile.save(tmp_path / "f.dlv", common_meta(), arrays)
    _, loaded, _ = modelfile.load(path)
    msg = one_line_error(TreeEnsemble, loaded, N_FEATURES, N_CLASSES, match="^damaged forest: ")
    assert FOREST_REASONS[case] in msg, msg


def test_forest_sizes_are_checked(forest):
    for n_features, n_classes in [(0, 3), (N_FEATURES, 0), (True, 3), (N_FEATURES, 2), (2.0, 3)]:
        one_line_error(TreeEnsemble, forest.arrays, n_features, n_classes, match="damaged forest")
    one_line_error(TreeEnsemble, [], N_FEATURES, N_CLASSES, match="damaged forest")


def test_real_forests_of_many_shapes_pass(forest):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 2))
    y = (X[:, 0] > 0).astype(int)
    for n_trees, depth in [(1, 1), (3, 2), (5, None)]:
        ens = fit_forest(X, y, 2, n_trees=n_trees, max_depth=depth)
        assert TreeEnsemble(ens.arrays, 2, 2).predict_proba(X).shape == (300, 2)
    # Arrays in other integer/float widths are accepted and made canonical.
    narrow = {k: (v.astype(np.int32) if v.dtype == np.int64 else v) for k, v in forest.arrays.items()}
    narrow["threshold"] = forest.arrays["threshold"].astype(np.float32).astype(np.float64)
    assert TreeEnsemble(narrow, N_FEATURES, N_CLASSES).arrays["left_child"].dtype == np.int64


# -- training settings ------------------------------------------------------------
def test_fit_forest_refuses_bad_settings_and_data():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 3))
    y = (X[:, 0] > 0).astype(int)
    for n_trees in (0, -1, True, 2.5, "10", 10**6):
        one_line_error(fit_forest, X, y, 2, n_trees=n_trees, error=UserInputError, match="number of trees")
    one_line_error(fit_forest, X, y, 2, max_depth=-1, error=UserInputError, match="depth")
    one_line_error(fit_forest, X[:0], y[:0], 2, error=UserInputError, match="no labelled pixels")
    one_line_error(fit_forest, X[:, :0], y, 2, error=UserInputError, match="no features")
    nan = X.copy()
    nan[5, 1] = np.nan
    one_line_error(fit_forest, nan, y, 2, error=UserInputError, match="NaN")
    assert fit_forest(X, y, 2, n_trees=np.int64(3), max_depth=0).predict_proba(X).shape == (200, 2)


def test_huge_finite_features_train_and_predict():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(400, 2))
    y = (X[:, 0] > 0).astype(int)
    X[:, 1] = np.where(y == 1, 1e39, -1e300)  # beyond float32: scikit-learn alone says "infinity"
    X[0, 0] = np.inf
    ens = fit_forest(X, y, 2, n_trees=5)
    prob = ens.predict_proba(X)
    assert np.isfinite(prob).all() and (prob.argmax(axis=1) == y).mean() > 0.95
