"""Nothing of the user's is lost: atomic outputs, outputs that would overwrite inputs, exact names."""

import os
import subprocess

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_dlvision.core.errors import UserInputError
from napari_dlvision.core.io import (
    atomic_output, check_outputs, final_name, list_images, mask_for, outputs_inside, partial_name, read_image,
    write_image, write_tif,
)


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, msg
    return msg


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- atomic outputs -------------------------------------------------------------
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_write_keeps_the_old_file(tmp_path, error):
    out = tmp_path / "seg.tif"
    out.write_bytes(b"the user's previous result")
    with pytest.raises(error):
        with atomic_output(out) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".tif" and tmp != out
            tmp.write_bytes(b"half a res")
            raise error("interrupted")
    assert out.read_bytes() == b"the user's previous result"
    assert names(tmp_path) == ["seg.tif"]


def test_failing_writer_keeps_the_old_image(tmp_path):
    out = write_image(tmp_path / "seg.tif", np.ones((4, 5), np.uint8))
    before = out.read_bytes()
    with pytest.raises(Exception):
        write_image(out, np.array([[object()]]))  # tifffile cannot write Python objects
    assert out.read_bytes() == before and names(tmp_path) == ["seg.tif"]


def test_successful_write_replaces_and_follows_symlinks(tmp_path):
    out = tmp_path / "a.tif"
    with atomic_output(out) as tmp:
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new" and names(tmp_path) == ["a.tif"]
    link = tmp_path / "link.tif"
    link.symlink_to(out)
    with atomic_output(link) as tmp:
        tmp.write_bytes(b"through the link")
    assert link.is_symlink() and out.read_bytes() == b"through the link"


def test_long_names_get_a_short_temporary_name(tmp_path):
    out = tmp_path / ("x" * 240 + ".tif")
    np.testing.assert_array_equal(tifffile.imread(write_image(out, np.ones((2, 3), np.uint8))), 1)
    assert names(tmp_path) == [out.name]


def test_atomic_output_refuses_missing_folder_and_folders(tmp_path):
    with pytest.raises(UserInputError, match="output folder does not exist") as e:
        with atomic_output(tmp_path / "nowhere" / "a.tif"):
            pass
    one_line(e)
    with pytest.raises(UserInputError, match="is a folder"):
        with atomic_output(tmp_path):
            pass


# -- writing by extension --------------------------------------------------------------
def test_write_image_writes_what_the_extension_says(tmp_path):
    labels = np.arange(20, dtype=np.int32).reshape(4, 5)
    for name in ("a.tif", "a.tiff", "b.TIF"):
        np.testing.assert_array_equal(tifffile.imread(write_image(tmp_path / name, labels)), labels)
    prob = np.random.default_rng(0).random((2, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(tifffile.imread(write_image(tmp_path / "p.tif", prob)), prob)
    rgb = np.random.default_rng(0).integers(0, 255, (4, 5, 3), dtype=np.uint8)
    cases = {"grey8.png": labels.astype(np.uint8), "grey16.png": labels.astype(np.uint16) * 1000,
             "rgb.png": rgb, "labels32.png": labels, "big32.png": labels * 3000, "mask.png": labels > 5}
    for name, array in cases.items():
        path = write_image(tmp_path / name, array)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        np.testing.assert_array_equal(iio.imread(path), array)
    # The old name writes by extension too: a .png is a PNG, not a TIFF named .png.
    assert write_tif(tmp_path / "old.png", labels).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name, array, match", [
    ("p.png", np.zeros((4, 5), np.float32), r"float32 .* write it as \.tif"),
    ("p.png", np.full((4, 5), -1, np.int16), r"write it as \.tif"),
    ("p.png", np.full((4, 5), 70_000, np.int32), r"write it as \.tif"),
    ("p.png", np.zeros((2, 4, 5), np.uint8), r"shape \(2, 4, 5\)"),
    ("p.png", np.zeros((4, 5, 3), np.uint16), "16-bit colour"),
    ("p.jpg", np.zeros((4, 5), np.uint8), r"cannot write \.jpg; use one of \.tif, \.tiff, \.png"),
    ("p.npy", np.zeros((4, 5), np.uint8), r"use one of \.tif"),
    ("p", np.zeros((4, 5), np.uint8), "without an extension"),
])
def test_write_image_refuses_what_the_format_cannot_hold(tmp_path, name, array, match):
    with pytest.raises(UserInputError, match=match) as e:
        write_image(tmp_path / name, array)
    one_line(e)
    assert names(tmp_path) == []


# -- outputs that would destroy inputs ----------------------------------------------------
def test_check_outputs(tmp_path, monkeypatch):
    img = tmp_path / "img.tif"
    img.write_bytes(b"input")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    (tmp_path / "link.tif").symlink_to(img)
    os.link(img, tmp_path / "hard.tif")
    check_outputs([img], [tmp_path / "seg.tif", None, "prob.tif"])  # fine
    bad = {
        "would overwrite the input": [img],
        "would overwrite the input ": ["../img.tif"],
        "would overwrite the input  ": [tmp_path / "sub" / ".." / "img.tif"],
        "would overwrite the input   ": [tmp_path / "link.tif"],
        "would overwrite the input    ": [tmp_path / "hard.tif"],
        "are the same file": [tmp_path / "a.tif", "../a.tif"],
        "are the same file ": ["x.tif", tmp_path / "sub" / "x.tif"],
        "output folder does not exist": [tmp_path / "missing" / "a.tif"],
        "is a folder": [tmp_path / "sub"],
    }
    for match, outputs in bad.items():
        with pytest.raises(UserInputError, match=match.strip()) as e:
            check_outputs([img], outputs)
        assert os.path.basename(str(outputs[-1])) in one_line(e)
    assert img.read_bytes() == b"input"


def test_an_unwritable_output_folder_is_refused_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "none", str(ro)],
                             capture_output=True).returncode == 0
    if not mounted:
        ro.chmod(0o500)
        if os.access(ro, os.W_OK):
            pytest.skip("root writes to any folder not on a read-only file system, and cannot mount one here")
    try:
        with pytest.raises(UserInputError, match="its folder is not writable") as e:
            check_outputs([], [tmp_path / "ok.tif", ro / "m.dlv"])
        assert "m.dlv" in one_line(e) and "partial" not in one_line(e)
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)])
        ro.chmod(0o700)


def test_several_outputs_are_checked_before_any_is_written(tmp_path):
    """More instances than a PNG holds: the segmentation beside it is not written either."""
    from napari_dlvision.core.apply import write_outputs

    many = np.arange(70000, dtype=np.int32).reshape(280, 250)
    with pytest.raises(UserInputError, match="write it as .tif"):
        write_outputs({tmp_path / "seg.png": np.ones((4, 4), np.uint8), tmp_path / "inst.png": many})
    assert list(tmp_path.iterdir()) == []
    write_outputs({tmp_path / "seg.png": np.ones((4, 4), np.uint8), tmp_path / "inst.tif": many})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inst.tif", "seg.png"]


def test_outputs_are_renamed_into_place_all_or_none(tmp_path):
    """The second output fails while being written: the first, already written,
    is not renamed into place, and the file from an earlier run stays."""
    from napari_dlvision.core.apply import write_outputs

    tifffile.imwrite(tmp_path / "seg.tif", np.full((4, 4), 7, np.uint8))  # an earlier run's
    (tmp_path / "prob.tif").mkdir()  # a folder where the second output should go
    with pytest.raises(UserInputError, match="is a folder"):
        write_outputs({tmp_path / "seg.tif": np.ones((4, 4), np.uint8), tmp_path / "prob.tif": np.zeros((4, 4))})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prob.tif", "seg.tif"]  # no temporary left
    assert (tifffile.imread(tmp_path / "seg.tif") == 7).all()


def test_messages_name_the_output_not_its_temporary_name(tmp_path):
    tmp = partial_name(tmp_path / "model.dlv")
    assert tmp.name.startswith(".model.dlv.") and final_name(tmp) == str(tmp_path / "model.dlv")
    assert final_name(str(tmp_path / "plain.tif")) == str(tmp_path / "plain.tif")


def test_outputs_inside(tmp_path):
    inp = tmp_path / "images"
    (inp / "results").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "alias").symlink_to(inp)
    assert outputs_inside(inp, inp) and outputs_inside(inp, inp / "results")
    assert outputs_inside(inp, inp / "not-yet" / "deeper") and outputs_inside(inp, tmp_path / "alias")
    assert not outputs_inside(inp, tmp_path / "elsewhere") and not outputs_inside(inp, tmp_path)
    assert not outputs_inside(inp, tmp_path / "images-results")


def test_list_images_skips_hidden_excluded_and_folders(tmp_path):
    for name in ("a.tif", "b.png", ".seg.tif.1a2b.partial.tif", "._a.tif", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "dir.tif").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.tif", "b.png"]
    assert [p.name for p in list_images(tmp_path, exclude=[tmp_path / "a.tif"])] == ["b.png"]
    with pytest.raises(UserInputError, match="no TIFF"):
        list_images(tmp_path, exclude=[tmp_path / "a.tif", tmp_path / "b.png"])


# -- exact mask names --------------------------------------------------------------------
def test_mask_for_compares_names_not_patterns(tmp_path):
    for name in ("a[1].tif", "ab.tif", "a1.tif", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    assert mask_for("images/a[1].png", tmp_path).name == "a[1].tif"
    with pytest.raises(UserInputError, match=r"no mask for a\?\.png"):
        mask_for("a?.png", tmp_path)  # a glob would find ab.tif
    with pytest.raises(UserInputError, match="no mask"):
        mask_for("c.png", tmp_path)
    with pytest.raises(UserInputError, match="folder not found"):
        mask_for("a.png", tmp_path / "missing")


# -- alpha ---------------------------------------------------------------------------------
def test_alpha_is_dropped_where_the_file_says_so(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 255, (6, 7, 4), dtype=np.uint8)
    iio.imwrite(tmp_path / "rgba.png", rgba)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgba[..., :3])
    iio.imwrite(tmp_path / "la.png", rgba[..., :2], mode="LA")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png"), rgba[..., 0])

    tifffile.imwrite(tmp_path / "alpha.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(read_image(tmp_path / "alpha.tif"), rgba[..., :3])
    stack = np.stack([rgba, rgba[::-1]])
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="rgb", extrasamples=["assocalpha"])
    np.testing.assert_array_equal(read_image(tmp_path / "stack.tif"), stack[..., :3])
    planar = np.moveaxis(rgba, -1, 0)
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate",
                     extrasamples=["unassalpha"])
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), planar[:3])
    tifffile.imwrite(tmp_path / "greya.tif", rgba[..., :2], photometric="minisblack", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(read_image(tmp_path / "greya.tif"), rgba[..., 0])
    # A fourth sample the file does not call alpha is data: kept.
    tifffile.imwrite(tmp_path / "four.tif", rgba, photometric="rgb", extrasamples=["unspecified"])
    np.testing.assert_array_equal(read_image(tmp_path / "four.tif"), rgba)
    tifffile.imwrite(tmp_path / "channels.tif", rgba, photometric="minisblack", planarconfig="contig")
    np.testing.assert_array_equal(read_image(tmp_path / "channels.tif"), rgba)
