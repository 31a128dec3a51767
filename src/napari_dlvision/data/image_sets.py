"""Sets of small images with one class each, from the layouts people keep them in.

    s = load_image_set("cifar10/train")                 # DIR/<class>/*.png|jpg|tif
    s = load_image_set("cifar-10-batches-bin", split="test")   # CIFAR-10/100 binary
    s = load_image_set("photos", labels_csv="labels.csv")      # images + CSV (path,label)
    s = load_image_set("unlabelled")                    # a flat folder: labels -1

An ImageSet holds every image in memory as one (N, H, W, C) array of one
size and channel count (classifiers need that). Mixed sizes are resized to
the most common size and grey images made RGB when colour ones are present,
each with a notice; unreadable and non-image files are skipped with a
notice. `iter_load` yields Progress events (for workers); `load_image_set`
just returns the set.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import UserInputError
from ..core.events import Progress
from ..core.io import IMAGE_SUFFIXES
from . import cifar

UNLABELLED = -1
PATH_COLUMNS = ("path", "file", "filename", "image", "name")
LABEL_COLUMNS = ("label", "class", "category", "target")


@dataclass
class ImageSet:
    images: np.ndarray  # (N, H, W, C), uint8 or float32
    labels: np.ndarray  # (N,) int64: 0..K-1, or -1 for unlabelled
    class_names: list[str]
    paths: list[str]  # where each image came from, as found under the folder
    notices: list[str] = field(default_factory=list)

    def __len__(self):
        return len(self.labels)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def n_channels(self) -> int:
        return int(self.images.shape[3])

    def counts(self) -> np.ndarray:
        """Images per class (K,), unlabelled ones left out."""
        lab = self.labels[self.labels >= 0]
        return np.bincount(lab, minlength=len(self.class_names))[: len(self.class_names)]

    def describe(self) -> str:
        h, w = self.size
        colour = {1: "grey", 3: "RGB"}.get(self.n_channels, f"{self.n_channels}-channel")
        n_lab = int((self.labels >= 0).sum())
        return f"{len(self)} {h}x{w} {colour} images, {n_lab} labelled in {len(self.class_names)} classes"


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _visible(folder: Path):
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _read_small(path: Path) -> np.ndarray:
    """(H, W, C) array of one image file; alpha dropped."""
    if path.suffix.lower() in (".tif", ".tiff"):
        from ..core.io import read_image

        img = read_image(path)
    else:
        import warnings

        from PIL import Image

        # Pillow warns above about 89 megapixels and raises above twice that (a
        # decompression bomb); no image to classify is that big: one line, no decoding.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                im = Image.open(path)
            except (Image.DecompressionBombWarning, Image.DecompressionBombError):
                raise UserInputError(f"{path.name} is too large to be an image to classify "
                                     f"(over {Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels)") from None
        with im:
            if im.mode in ("RGBA", "LA", "P", "PA", "CMYK", "YCbCr", "I;16", "I;16B", "1"):
                im = im.convert("RGB" if im.mode in ("RGBA", "P", "PA", "CMYK", "YCbCr") else "L")
            img = np.asarray(im)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3):
        raise UserInputError(f"{path.name} has shape {img.shape}: expected a grey or RGB 2D image")
    return img


def _resize(img: np.ndarray, size) -> np.ndarray:
    from skimage.transform import resize

    out = resize(img, tuple(size) + img.shape[2:], order=1, anti_aliasing=True, preserve_range=True)
    return out.astype(img.dtype) if img.dtype.kind != "f" else out.astype(np.float32)


def _harmonise(imgs: list[np.ndarray], notices: list[str], size=None):
    """One (N, H, W, C) array: most common (or the given) size, RGB if any image is colour."""
    shapes = Counter(im.shape[:2] for im in imgs)
    target = tuple(size) if size is not None else shapes.most_common(1)[0][0]
    n_off = sum(n for s, n in shapes.items() if s != target)
    if n_off:
        why = "the model's input size" if size is not None else "the most common size"
        notices.append(f"resized {n_off} of {len(imgs)} images to {target[0]}x{target[1]} ({why})")
        imgs = [im if im.shape[:2] == target else _resize(im, target) for im in imgs]
    chans = Counter(im.shape[2] for im in imgs)
    want = max(chans)
    if len(chans) > 1 or want not in chans:
        if want == 3 and set(chans) <= {1, 3}:
            grey = chans.get(1, 0)
            if grey:
                notices.append(f"made {grey} grey images RGB (the others are colour)")
            imgs = [np.repeat(im, 3, axis=2) if im.shape[2] == 1 else im for im in imgs]
        else:
            raise UserInputError(f"the images mix {' and '.join(f'{c}-channel' for c in sorted(chans))} files")
    kinds = {im.dtype for im in imgs}
    dtype = np.uint8 if kinds == {np.dtype(np.uint8)} else np.float32
    return np.stack([im.astype(dtype, copy=False) for im in imgs])


def _read_many(files, root: Path, notices, threads=None):
    """Read files in threads (decoders release the GIL); yields (done, total) and fills the result."""
    out: list = [None] * len(files)
    bad = []

    def one(i):
        try:
            out[i] = _read_small(files[i])
        except (UserInputError, OSError, ValueError, SyntaxError) as e:  # PIL raises all of these
            bad.append((files[i], e))

    threads = threads or min(8, os.cpu_count() or 1)
    step = 512
    with ThreadPoolExecutor(threads) as pool:
        for start in range(0, len(files), step):
            list(pool.map(one, range(start, min(len(files), start + step))))
            yield min(len(files), start + step), len(files)
    if bad:
        first = bad[0][0].relative_to(root)
        why = str(bad[0][1]) if isinstance(bad[0][1], UserInputError) else type(bad[0][1]).__name__
        notices.append(f"skipped {len(bad)} unreadable image file(s), e.g. {first} ({why})")
    return out


def _others(folder: Path) -> int:
    return sum(1 for p in _visible(folder) if p.is_file() and not _is_image(p))


def _folder_files(root: Path, notices: list[str]):
    """(files, label names per file or None) of a class-folder tree or a flat folder."""
    entries = _visible(root)
    subdirs = [p for p in entries if p.is_dir()]
    flat = [p for p in entries if _is_image(p)]
    if subdirs and not flat:
        per_class = {d.name: [p for p in _visible(d) if _is_image(p)] for d in subdirs}
        if not any(per_class.values()):
            nested = [d.name for d in subdirs if any(q.is_dir() for q in d.iterdir())]
            hint = f": give one of its sub-folders ({', '.join(nested[:3])}) as the data" if nested else ""
            raise UserInputError(f"no images in the class folders of {root}{hint}")
        files, names = [], []
        for name, fs in per_class.items():
            files += fs
            names += [name] * len(fs)
        empty = [name for name, fs in per_class.items() if not fs]
        if empty:
            notices.append(f"class folder(s) without images: {', '.join(empty[:5])}")
        other = sum(_others(d) for d in subdirs)
    else:
        if not flat:
            raise UserInputError(f"no TIFF, PNG or JPEG images in {root}")
        files, names, other = flat, None, _others(root)
    if other:
        notices.append(f"ignored {other} file(s) that are not TIFF, PNG or JPEG images")
    return files, names


def _csv_labels(csv_path: Path, root: Path, notices: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """({resolved path: label}, {resolved path: path as written}) from a CSV with a
    path column and a label column; a path given twice with two labels gets a notice."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserInputError(f"cannot read {csv_path}: {e}") from None
    if not rows:
        raise UserInputError(f"{csv_path} is empty")
    header = [h.strip().lower() for h in rows[0]]
    pc = next((header.index(c) for c in PATH_COLUMNS if c in header), None)
    lc = next((header.index(c) for c in LABEL_COLUMNS if c in header), None)
    if pc is None or lc is None:
        raise UserInputError(f"{csv_path} needs a header with a path column ({'/'.join(PATH_COLUMNS)}) and a "
                             f"label column ({'/'.join(LABEL_COLUMNS)}), got {rows[0]}")
    out, named, conflicts = {}, {}, []
    for row in rows[1:]:
        if len(row) > max(pc, lc) and row[pc].strip() and row[lc].strip():
            key, label = os.path.normcase(os.path.realpath(root / row[pc].strip())), row[lc].strip()
            if out.get(key, label) != label:
                conflicts.append(row[pc].strip())
            out[key], named[key] = label, row[pc].strip()
    if not out:
        raise UserInputError(f"{csv_path} holds no labelled rows")
    if conflicts:
        notices.append(f"{len(conflicts)} image(s) listed more than once with different labels in {csv_path.name}; "
                       f"the last row counts (e.g. {conflicts[0]})")
    return out, named


def _labels_from_csv(csv_path: Path, root: Path, files: list[Path], notices: list[str]) -> list[str | None]:
    """The label of each file from the CSV, with a notice for rows naming no file of the folder."""
    table, named = _csv_labels(csv_path, root, notices)
    keys = [os.path.normcase(os.path.realpath(f)) for f in files]
    labels = [table.get(k) for k in keys]
    if not any(labels):
        raise UserInputError(f"no image in {root} is named in {csv_path}")
    missing = sorted(set(table) - set(keys))
    if missing:
        notices.append(f"{len(missing)} row(s) of {csv_path.name} name no image in {root.name} and are ignored "
                       f"(e.g. {named[missing[0]]})")
    return labels


def iter_load(path, *, split: str = "train", labels_csv=None, class_names=None, size=None, channels=None,
              threads=None):
    """Progress events; the last one's payload is the ImageSet.

    class_names: the classes to number labels by (a model's); folder or CSV
    labels outside them become unlabelled, with a notice. size / channels:
    what a model expects; other images are resized (notice) or refused.
    """
    root = Path(path)
    if not root.exists():
        raise UserInputError(f"not found: {root}")
    notices: list[str] = []
    kind = cifar.kind_of_folder(root) if root.is_dir() else None
    if kind == "python":
        cifar.refuse_python(root)
    if kind is not None:
        yield Progress("loading", 0, 0, f"reading CIFAR binary batches in {root}")
        images, labels, names, records = cifar.read_cifar(root, split)
        if size is not None and tuple(size) != (32, 32):
            images = _harmonise(list(images), notices, size)
        paths = [str(root / r) for r in records]
        label_names = [names[k] for k in labels]
    else:
        if not root.is_dir():
            raise UserInputError(f"{root} is not a folder of images")
        files, label_names = _folder_files(root, notices)
        if labels_csv is not None:
            label_names = _labels_from_csv(Path(labels_csv), root, files, notices)
        gen = _read_many(files, root, notices, threads)
        while True:
            try:
                done, total = next(gen)
            except StopIteration as stop:
                raw = stop.value
                break
            yield Progress("loading", done, total, f"reading images {done}/{total}")
        keep = [i for i, im in enumerate(raw) if im is not None]
        if not keep:
            raise UserInputError(f"none of the {len(files)} image files in {root} could be read")
        if channels is not None:  # before resizing, so the message tells the files' own size
            _check_fits([raw[i] for i in keep], size, channels, root)
        images = _harmonise([raw[i] for i in keep], notices, size)
        paths = [str(files[i]) for i in keep]
        label_names = None if label_names is None else [label_names[i] for i in keep]
        names = sorted({n for n in label_names if n}) if label_names else []
    if class_names is not None:
        names = list(class_names)
    index = {n: k for k, n in enumerate(names)}
    if label_names is None:
        labels = np.full(len(paths), UNLABELLED, np.int64)
    else:
        labels = np.array([index.get(n, UNLABELLED) if n else UNLABELLED for n in label_names], np.int64)
        foreign = sorted({n for n in label_names if n and n not in index})
        if foreign:
            notices.append(f"{len(foreign)} label(s) are not classes of the model and count as unlabelled: "
                           f"{', '.join(foreign[:5])}")
    if channels is not None:
        _check_fits(list(images[:1]), size, channels, root)
    result = ImageSet(images, labels, list(names), paths, notices)
    if label_names is not None and kind is None:
        few = [names[k] for k, c in enumerate(result.counts()) if c == 1]
        if few:
            notices.append(f"class(es) with a single image: {', '.join(few[:5])} (too few to validate on)")
    yield Progress("done", len(paths), len(paths), result.describe(), payload=result)


def _check_fits(imgs, size, channels, root):
    """Refuse images of another channel count than the model's, naming both."""
    chans = max(im.shape[2] for im in imgs)
    if chans != channels:
        common = Counter(im.shape[:2] for im in imgs).most_common(1)[0][0]
        raise UserInputError(f"the model expects {size_text(size, channels)} images; {root} holds "
                             f"{size_text(common, chans)} images")


def size_text(size, channels) -> str:
    colour = {1: "grey", 3: "RGB"}.get(int(channels), f"{int(channels)}-channel")
    return f"{int(size[0])}x{int(size[1])} {colour}" if size is not None else colour


def load_image_set(path, **kw) -> ImageSet:
    last = None
    for last in iter_load(path, **kw):
        pass
    return last.payload
