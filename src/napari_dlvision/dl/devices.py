"""Which device to compute on, what it is, and surviving out-of-memory.

Preference order for "auto": CUDA, then Apple MPS, then CPU. A device the
user asked for by name but that is not there is a UserInputError, never a
silent fall back: the person expects their GPU to be used.
"""

from __future__ import annotations

import gc
import os

import torch

from ..core import memory
from ..core.errors import UserInputError

CHOICES = ("auto", "cpu", "cuda", "mps")


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available() -> list[str]:
    """Device names usable here, best first, e.g. ['cuda:0', 'cpu']."""
    names = []
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if mps_available():
        names.append("mps")
    return names + ["cpu"]


def pick_device(pref: str | torch.device | None = "auto") -> torch.device:
    """torch.device for a preference: "auto", "cpu", "cuda", "cuda:N" or "mps"."""
    if isinstance(pref, torch.device):
        pref = str(pref)
    pref = (pref or "auto").strip().lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if pref == "cpu":
        return torch.device("cpu")
    if pref == "gpu":
        pref = "cuda"
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            built = torch.version.cuda
            why = (f"this PyTorch {torch.__version__} was built with CUDA {built} but finds no usable "
                   "NVIDIA GPU or driver" if built else f"this PyTorch {torch.__version__} was built without CUDA")
            raise UserInputError(f"device 'cuda' was requested, but {why}; choose 'auto' or 'cpu'")
        try:
            dev = torch.device(pref)
        except RuntimeError:
            raise UserInputError(f"unknown device {pref!r}; use one of {', '.join(available())}") from None
        index = 0 if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise UserInputError(
                f"device {pref!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return torch.device("cuda", index)
    if pref == "mps":
        if not mps_available():
            raise UserInputError("device 'mps' (Apple GPU) was requested but is not available; choose 'auto' or 'cpu'")
        return torch.device("mps")
    raise UserInputError(f"unknown device {pref!r}; choose one of {', '.join(CHOICES)}")


def describe(device: torch.device | str) -> str:
    """One line for the person: which device and how big."""
    device = torch.device(device)
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        props = torch.cuda.get_device_properties(index)
        return f"CUDA GPU {index}: {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    return f"CPU ({torch.get_num_threads()} threads of {os.cpu_count()} cores)"


def free_memory(device: torch.device | str) -> int | None:
    """Free accelerator memory in bytes, or None where unknown (CPU, MPS)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def check_fits_in_ram(device, needed: int, what: str, smaller: str) -> None:
    """Refuse work on the CPU that would not fit in RAM (core.memory). On a GPU
    running out of memory raises an exception we recover from."""
    if torch.device(device).type == "cpu":
        memory.check_fits_in_ram(needed, what, smaller)


def is_out_of_memory(exc: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text


def empty_cache(device: torch.device | str | None = None) -> None:
    gc.collect()
    kind = None if device is None else torch.device(device).type
    if kind in (None, "cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
    if kind in (None, "mps") and mps_available() and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def halve(size):
    """Half of an int (None below 1), or of the largest entry of a tuple."""
    if isinstance(size, int):
        return size // 2 if size > 1 else None
    size = tuple(size)
    i = max(range(len(size)), key=lambda k: size[k])
    if size[i] <= 1:
        return None
    return size[:i] + (size[i] // 2,) + size[i + 1:]


def retry_on_oom(fn, size, shrink=halve, report=None, device=None, what="batch size"):
    """Call fn(size); on out-of-memory free the cache, shrink size and retry.

    Returns (result, size that worked). `shrink(size)` gives the next smaller
    size or None when there is none; `report(message)` hears about each retry.
    Errors that are not out-of-memory pass through untouched.
    """
    while True:
        try:
            return fn(size), size
        except Exception as e:  # noqa: BLE001 - filtered just below
            if not is_out_of_memory(e):
                raise
            smaller = shrink(size)
        # Outside the except block, so the exception's frames (holding
        # tensors) are gone before the cache is emptied.
        empty_cache(device)
        where = "" if device is None else f" on {describe(device)}"
        if smaller is None or smaller == size:
            raise UserInputError(
                f"out of memory{where} even with {what} {size}; close other programs using the GPU "
                "or choose a smaller model or device 'cpu'"
            )
        if report is not None:
            report(f"out of memory{where}: retrying with {what} {smaller} (was {size})")
        size = smaller
