"""Importing torch inside napari, without triton.

torch imports triton lazily (creating an optimiser is enough) to offer
torch.compile, which this plugin never uses; triton's bundled LLVM
segfaults against Mesa's software OpenGL (llvmpipe) once a viewer has drawn.
The narrowest fix: hide triton only while torch first looks for it; torch
caches the answer, and other plugins can still import triton afterwards.
Call from a worker thread: importing torch takes about a second.

Most of that second lets other threads run, except the loading of torch's
extension library (about 0.25 s of symbol relocation here), which Python's
import machinery does while holding the GIL: the viewer froze for that long.
`_preload_extension` loads the same file first through the C library's
dlopen called via ctypes, which releases the GIL; the import then finds it
already loaded.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import importlib.util
import os
import sys
import threading

from .gc_pauses import freeze_long_lived

_lock = threading.Lock()
_done = False


def _preload_extension() -> bool:
    """dlopen torch/_C*.so with the GIL released; False where not possible."""
    if os.name != "posix" or "torch" in sys.modules:
        return False
    try:
        spec = importlib.util.find_spec("torch")
        folder = os.path.dirname(spec.origin)
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
        path = os.path.join(folder, "_C" + suffix)
        if not os.path.isfile(path):
            return False
        libc = ctypes.CDLL(None)  # this process's own symbols, dlopen among them
        dlopen = libc.dlopen
        dlopen.restype = ctypes.c_void_p
        dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
        # A ctypes call releases the GIL; the same flags as Python's own
        # import, so the library is shared by the import and not duplicated.
        return bool(dlopen(os.fsencode(path), sys.getdlopenflags()))
    except (AttributeError, ImportError, OSError, TypeError, ValueError):
        return False  # only a speed-up: the import below works without it


def import_torch():
    global _done
    with _lock:
        if _done:
            return
        _preload_extension()
        hide = "triton" not in sys.modules
        if hide:
            sys.modules["triton"] = None  # makes `import triton` fail fast
        try:
            import torch.utils._triton as t

            t.has_triton_package()  # cached by torch: "absent"
        finally:
            if hide and "triton" in sys.modules and sys.modules["triton"] is None:
                del sys.modules["triton"]
        # The first optimiser imports torch._dynamo (to mark functions not to
        # compile): done here, it is frozen with the rest below.
        import torch

        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        freeze_long_lived()  # torch's ~200,000 objects live as long as the process
        _done = True

