"""napari start-up stays light: no torch until a model needs it."""

import subprocess
import sys


def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_package_import_does_not_import_torch():
    r = _run("import sys, napari_dlvision; print(napari_dlvision.__version__); "
             "assert 'torch' not in sys.modules and 'sklearn' not in sys.modules")
    assert r.returncode == 0, r.stderr


def test_napari_with_plugin_docked_does_not_import_torch():
    r = _run(
        "import sys, napari\n"
        "v = napari.Viewer(show=False)\n"
        "v.open_sample('napari-dlvision', 'nuclei-2d')\n"
        "v.window.add_plugin_dock_widget('napari-dlvision', 'Pixel classifier (random forest)')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(len(v.layers))\n"
        "v.close()\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("3")


def test_training_inputs_are_refused_before_torch_is_imported(tmp_path):
    """A missing CSV or a 1D image is told in a fraction of a second, not after 4-7 s of importing torch."""
    import numpy as np
    import tifffile

    tifffile.imwrite(tmp_path / "img.tif", np.zeros((32, 32), np.uint16))
    tifffile.imwrite(tmp_path / "line.tif", np.arange(64, dtype=np.uint16))
    for argv, words in (
            (["train", "detector", "--image", tmp_path / "img.tif", "--boxes", tmp_path / "none.csv"], "not found"),
            (["train", "denoiser", "--image", tmp_path / "line.tif"], "2D or 3D")):
        argv = [str(a) for a in argv] + ["--out", str(tmp_path / "m.dlv")]
        r = _run("import sys\n"
                 "from napari_dlvision.cli import main\n"
                 f"code = main({argv!r})\n"
                 "assert 'torch' not in sys.modules, 'torch was imported'\n"
                 "sys.exit(code)\n")
        assert r.returncode == 1 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_image_classifier_docks_without_torch():
    r = _run(
        "import sys, numpy as np, napari\n"
        "v = napari.Viewer(show=False)\n"
        "v.add_image(np.zeros((5, 8, 8, 3), np.uint8), rgb=True)\n"
        "_, w = v.window.add_plugin_dock_widget('napari-dlvision', 'Image classifier')\n"
        "w.prepare_view()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(len(v.layers))\n"
        "v.close()\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("3")  # images, mosaic, annotations


def test_manifest_is_valid():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-dlvision")
    assert {w.display_name for w in manifest.contributions.widgets} == {
        "Pixel classifier (random forest)", "Deep pixel classifier (U-Net)", "Image classifier",
        "Object detector (boxes)", "Denoiser (Noise2Void, Noise2Noise, supervised)"}
    assert {s.key for s in manifest.contributions.sample_data} >= {"nuclei-2d", "nuclei-3d", "coins", "cell", "noisy-cells"}


def test_denoiser_widget_docked_does_not_import_torch():
    r = _run(
        "import sys, napari\n"
        "v = napari.Viewer(show=False)\n"
        "v.open_sample('napari-dlvision', 'noisy-cells')\n"
        "v.window.add_plugin_dock_widget('napari-dlvision', 'Denoiser (Noise2Void, Noise2Noise, supervised)')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(len(v.layers))\n"
        "v.close()\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("3")


def test_torch_import_in_a_worker_loads_its_library_without_holding_the_gil():
    # The ~0.25 s of loading torch's extension library runs with the GIL
    # released (a ctypes call), so a thread ticking meanwhile keeps ticking.
    r = _run(
        "import os, sys, time, threading\n"
        "from napari_dlvision.widgets import torch_import as ti\n"
        "gaps, done = [], threading.Event()\n"
        "def beat():\n"
        "    last = time.perf_counter()\n"
        "    while not done.is_set():\n"
        "        time.sleep(0.002); now = time.perf_counter(); gaps.append(now - last); last = now\n"
        "t = threading.Thread(target=beat); t.start()\n"
        "loaded = ti._preload_extension()\n"
        "done.set(); t.join()\n"
        "assert loaded == (os.name == 'posix'), loaded\n"
        "assert 'torch' not in sys.modules\n"
        "ti.import_torch()\n"
        "import torch\n"
        "assert float(torch.ones(2).sum()) == 2.0\n"
        "assert ti._preload_extension() is False  # torch there: nothing to do\n"
        "print(round(max(gaps), 3))\n"
    )
    assert r.returncode == 0, r.stderr
    # Loading took ~0.25 s; with the GIL held the beat would stop that long.
    assert float(r.stdout.split()[-1]) < 0.2, r.stdout
