"""CIFAR-10 and CIFAR-100 in their official binary format, read with numpy only.

CIFAR-10 binary: data_batch_1..5.bin (training) and test_batch.bin, each
record 1 label byte + 3072 bytes (R, G, B planes of 32 x 32), class names in
batches.meta.txt. CIFAR-100 binary: train.bin and test.bin, records of 2
label bytes (coarse, fine) + 3072, names in fine_label_names.txt.

The official *python* versions are pickles of numpy arrays; unpickling can
run code chosen by whoever made the file, so they are refused with a pointer
to the binary version (or class folders); nothing in them is ever loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import UserInputError

SIDE, PIXELS = 32, 3072
CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST = ("test_batch.bin",)
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PYTHON_FORMAT = ("data_batch_1", "test_batch", "batches.meta", "meta")
PICKLE_START = (b"\x80", b"(dp", b"}q")  # protocol 2+ opcode, protocol 0/1 dicts


def kind_of_folder(folder: Path) -> str | None:
    """'cifar10', 'cifar100', 'python' (the refused pickled format) or None."""
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    if names & set(CIFAR10_TRAIN + CIFAR10_TEST):
        return "cifar10"
    if names & {"train.bin", "test.bin"}:
        return "cifar100"
    for name in names & set(PYTHON_FORMAT + ("train", "test")):
        path = folder / name
        if path.is_file():
            with open(path, "rb") as f:
                if f.read(3).startswith(PICKLE_START):
                    return "python"
    return None


def refuse_python(folder: Path):
    raise UserInputError(
        f"{folder} holds CIFAR in its python (pickled) format, which is never unpickled here because a pickle "
        "can run code; use the binary version (cifar-10-binary: data_batch_N.bin) or class folders")


def _read_records(path: Path, label_bytes: int, label_index: int):
    record = label_bytes + PIXELS
    size = path.stat().st_size
    if size == 0 or size % record:
        raise UserInputError(f"{path} is not a CIFAR binary batch: {size} bytes is not a whole number of "
                             f"{record}-byte records")
    raw = np.fromfile(path, np.uint8).reshape(-1, record)
    images = raw[:, label_bytes:].reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), raw[:, label_index].astype(np.int64)


def _names(path: Path, n: int, fallback):
    if path.is_file():
        names = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
        if len(names) >= n:
            return names[:n]
    return list(fallback) if len(fallback) >= n else [f"class {k}" for k in range(n)]


def read_cifar(folder, split: str = "train"):
    """(images (N, 32, 32, 3) uint8, labels (N,) 0-based, class names, record names) of one split.

    split: "train" or "test". Missing batches are an error naming them.
    """
    folder = Path(folder)
    kind = kind_of_folder(folder)
    if kind == "python":
        refuse_python(folder)
    if kind is None:
        raise UserInputError(f"{folder} is not a CIFAR binary folder (no data_batch_N.bin, test_batch.bin, "
                             "train.bin or test.bin)")
    if kind == "cifar10":
        files = CIFAR10_TRAIN if split == "train" else CIFAR10_TEST
        label_bytes, label_index, n_classes = 1, 0, 10
        names_file, fallback = folder / "batches.meta.txt", CIFAR10_NAMES
    else:
        files = ("train.bin",) if split == "train" else ("test.bin",)
        label_bytes, label_index, n_classes = 2, 1, 100  # fine labels
        names_file, fallback = folder / "fine_label_names.txt", ()
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise UserInputError(f"{folder} is missing {', '.join(missing)} of the CIFAR {split} split")
    images, labels, records = [], [], []
    for f in files:
        img, lab = _read_records(folder / f, label_bytes, label_index)
        if lab.size and lab.max() >= n_classes:
            raise UserInputError(f"{folder / f} has label {int(lab.max())}; CIFAR labels are below {n_classes}")
        images.append(img)
        labels.append(lab)
        records += [f"{f}#{i}" for i in range(len(lab))]
    return np.concatenate(images), np.concatenate(labels), _names(names_file, n_classes, fallback), records
