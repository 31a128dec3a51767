"""Importing torch inside napari, without triton.

torch imports triton lazily (creating an optimiser is enough) to offer
torch.compile, which this plugin never uses; triton's bundled LLVM
segfaults against Mesa's software OpenGL (llvmpipe) once a viewer has drawn.
The narrowest fix: hide triton only while torch first looks for it; torch
caches the answer, and other plugins can still import triton afterwards.
Call from a worker thread: importing torch takes about a second.
"""

from __future__ import annotations

import sys
import threading

from .gc_pauses import freeze_long_lived

_lock = threading.Lock()
_done = False


def import_torch():
    global _done
    with _lock:
        if _done:
            return
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

