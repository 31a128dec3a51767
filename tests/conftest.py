import functools
import os

# `make test` runs one pytest-xdist worker per core. Each worker gets its share
# of the cores, set before torch is imported (CLI subprocesses inherit it):
# torch's OpenMP threads spin while they wait, and two workers each running as
# many threads as there are cores made some trainings eight times slower. Only
# in workers: they inherit the controlling process's environment.
if "PYTEST_XDIST_WORKER" in os.environ:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    _share = max(1, _cores // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    _given = os.environ.get("OMP_NUM_THREADS", "").split(",")[0]  # OpenMP allows a list per nesting level
    os.environ["OMP_NUM_THREADS"] = str(min(_share, int(_given)) if _given.isdigit() and int(_given) > 0 else _share)

# A suite started in the background by a shell without job control (`make test &`,
# nohup, some CI runners) inherits Ctrl-C ignored, and so do the CLI subprocesses:
# the tests that send one saw the run finish with exit 0. Users press Ctrl-C in a
# foreground terminal, where it is not ignored; the tests run as that.
import signal  # noqa: E402

if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from napari_dlvision.data.synthetic import nuclei  # noqa: E402


@functools.lru_cache
def _nuclei(shape, seed):
    return nuclei(shape, seed=seed)


@pytest.fixture
def sample2d():
    """256 x 256 synthetic nuclei with ~20 scribbled strokes (cached, read-only)."""
    s = _nuclei((256, 256), 4)
    for a in (s.image, s.instances, s.scribbles):
        a.setflags(write=False)
    return s


@pytest.fixture
def sample3d():
    s = _nuclei((24, 64, 64), 5)
    for a in (s.image, s.instances, s.scribbles):
        a.setflags(write=False)
    return s


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def every_kind_files():
    """The function below: tests of every model kind call it on their own folder."""
    return _write_every_kind_files


def _write_every_kind_files(folder, side: int, n_strokes: int, n_per_class: int):
    """Files every model kind trains from, in `folder`: img.tif and strokes.tif
    (synthetic nuclei), boxes.csv (one box per nucleus) and classes/ (two toy
    image classes in folders). Returns `folder`."""
    import tifffile

    from napari_dlvision.core.boxes import boxes_from_labels
    from napari_dlvision.data.toy_classes import toy_classes, write_class_folders

    s = nuclei((side, side), radius=(5.0, 8.0), n_strokes=n_strokes, seed=3)
    tifffile.imwrite(folder / "img.tif", s.image)
    tifffile.imwrite(folder / "strokes.tif", s.scribbles)
    boxes_from_labels(s.instances, class_name="nucleus").write(folder / "boxes.csv")
    x, y, names = toy_classes(n_per_class=n_per_class, size=16, n_classes=2, seed=0)
    write_class_folders(folder / "classes", x, y, names)
    return folder
