"""Loaders of labelled image sets, on small files written here in each real format."""

import pickle

import numpy as np
import pytest
import tifffile

from napari_dlvision.core.errors import UserInputError
from napari_dlvision.data.image_sets import load_image_set
from napari_dlvision.data.toy_classes import toy_classes, write_cifar_batch, write_class_folders


@pytest.fixture
def toy():
    return toy_classes(n_per_class=4, size=16, n_classes=3, seed=0)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_class_folders(tmp_path, toy, suffix):
    images, labels, names = toy
    write_class_folders(tmp_path, images, labels, names, suffix)
    s = load_image_set(tmp_path)
    assert s.class_names == sorted(names) and len(s) == 12 and s.images.shape == (12, 16, 16, 3)
    # Each path's parent folder is its class.
    assert all(s.class_names[k] == p.split("/")[-2] for p, k in zip(s.paths, s.labels))
    if suffix != ".jpg":  # lossless formats come back exactly
        i = s.paths.index(str(tmp_path / names[1] / "0001" ) + suffix)
        np.testing.assert_array_equal(s.images[i], images[1])


def test_mixed_sizes_grey_rgb_and_junk(tmp_path, toy):
    images, labels, names = toy
    paths = write_class_folders(tmp_path, images, labels, names)
    import imageio.v3 as iio

    iio.imwrite(paths[0], np.zeros((20, 24, 3), np.uint8))  # another size
    iio.imwrite(paths[1], images[1][..., 0])  # grey among colour
    (tmp_path / names[0] / "notes.txt").write_text("not an image")
    (tmp_path / names[0] / "broken.png").write_bytes(b"\x89PNG garbage")
    s = load_image_set(tmp_path)
    assert s.images.shape == (12, 16, 16, 3)
    text = " ".join(s.notices)
    assert "resized 1 of 12 images to 16x16" in text and "made 1 grey images RGB" in text
    assert "skipped 1 unreadable" in text and "ignored 1 file(s) that are not" in text


def test_a_decompression_bomb_is_skipped_with_a_notice(tmp_path, toy, recwarn):
    import struct
    import zlib

    images, labels, names = toy
    write_class_folders(tmp_path, images, labels, names)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # A PNG header declaring 30000 x 30000 pixels: Pillow would decode 900 megapixels.
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    (tmp_path / names[0] / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                                   + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    s = load_image_set(tmp_path)
    text = " ".join(s.notices)
    assert len(s) == 12
    assert f"skipped 1 unreadable image file(s), e.g. {names[0]}/bomb.png (bomb.png is too large" in text
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]


def test_empty_and_single_image_classes(tmp_path, toy):
    with pytest.raises(UserInputError, match="no TIFF, PNG or JPEG"):
        load_image_set(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(UserInputError, match="no images in the class folders"):
        load_image_set(tmp_path)
    images, labels, names = toy
    write_class_folders(tmp_path, images[:4], [0, 0, 0, 1], ["a", "b"])
    s = load_image_set(tmp_path)
    assert list(s.counts()) == [3, 1] and "single image: b" in " ".join(s.notices)


def test_csv_labels_and_unlabelled_folder(tmp_path, toy):
    import imageio.v3 as iio

    images, labels, names = toy
    for i, img in enumerate(images):
        iio.imwrite(tmp_path / f"im{i}.png", img)
    s = load_image_set(tmp_path)
    assert (s.labels == -1).all() and s.class_names == []
    csv = tmp_path / "labels.csv"
    csv.write_text("filename,label\n" + "".join(f"im{i}.png,{names[labels[i]]}\n" for i in range(6)))
    s = load_image_set(tmp_path, labels_csv=csv)
    by_name = {p.split("/")[-1]: k for p, k in zip(s.paths, s.labels)}
    assert [s.class_names[by_name[f"im{i}.png"]] for i in range(6)] == [names[k] for k in labels[:6]]
    assert all(by_name[f"im{i}.png"] == -1 for i in range(6, 12))
    assert not [n for n in s.notices if "labels.csv" in n]
    # A row naming no file of the folder, and a file given two labels: told, not silent.
    csv.write_text("filename,label\nim0.png,cat\ngone.png,dog\nim1.png,cat\nim0.png,dog\n")
    s = load_image_set(tmp_path, labels_csv=csv)
    text = " ".join(s.notices)
    assert "1 row(s) of labels.csv name no image" in text and "gone.png" in text
    assert "1 image(s) listed more than once with different labels in labels.csv; the last row counts (e.g. im0.png)" \
        in text
    assert s.class_names[s.labels[s.paths.index(str(tmp_path / "im0.png"))]] == "dog"
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(UserInputError, match="needs a header"):
        load_image_set(tmp_path, labels_csv=bad)


def test_cifar10_and_100_binary(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 10, 32, 32, 3), dtype=np.uint8)
    labs = rng.integers(0, 10, (5, 10))
    for b in range(5):
        write_cifar_batch(tmp_path / f"data_batch_{b + 1}.bin", imgs[b], labs[b])
    write_cifar_batch(tmp_path / "test_batch.bin", imgs[0][:4], labs[0][:4])
    s = load_image_set(tmp_path, split="train")
    assert len(s) == 50 and s.class_names[0] == "airplane" and s.paths[11].endswith("data_batch_2.bin#1")
    np.testing.assert_array_equal(s.images[10:20], imgs[1])
    np.testing.assert_array_equal(s.labels[:10], labs[0])
    assert len(load_image_set(tmp_path, split="test")) == 4
    (tmp_path / "data_batch_3.bin").unlink()
    with pytest.raises(UserInputError, match="missing data_batch_3.bin"):
        load_image_set(tmp_path)
    (tmp_path / "data_batch_2.bin").write_bytes(b"\0" * 100)
    (tmp_path / "data_batch_3.bin").write_bytes(b"\0" * 3073)
    with pytest.raises(UserInputError, match="not a CIFAR binary batch"):
        load_image_set(tmp_path)
    c100 = tmp_path / "c100"
    c100.mkdir()
    write_cifar_batch(c100 / "train.bin", imgs[0], labs[0] + 50, coarse=labs[0])
    (c100 / "fine_label_names.txt").write_text("\n".join(f"fine{k}" for k in range(100)))
    s = load_image_set(c100)
    assert len(s.class_names) == 100 and s.class_names[int(s.labels[0])] == f"fine{labs[0][0] + 50}"


class Boom:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pickled_cifar_is_never_unpickled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({"data": Boom(), "labels": [1]}))
    with pytest.raises(UserInputError, match="never unpickled.*binary version"):
        load_image_set(tmp_path)
    assert not (tmp_path / "PWNED").exists()


def test_model_size_and_channels(tmp_path, toy):
    images, labels, names = toy
    write_class_folders(tmp_path, images[..., :1], labels, names)  # grey
    with pytest.raises(UserInputError, match="expects 32x32 RGB images; .* holds 16x16 grey"):
        load_image_set(tmp_path, size=(32, 32), channels=3)
    s = load_image_set(tmp_path, size=(32, 32), channels=1, class_names=["disc", "other"])
    assert s.images.shape == (12, 32, 32, 1) and "the model's input size" in s.notices[0]
    assert set(s.labels) == {-1, 0} and "not classes of the model" in " ".join(s.notices)


def test_tiff_stack_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    tifffile.imwrite(tmp_path / "a" / "x.tif", np.zeros((3, 8, 8, 8), np.uint8))
    with pytest.raises(UserInputError, match="none of the 1 image files"):
        load_image_set(tmp_path)
