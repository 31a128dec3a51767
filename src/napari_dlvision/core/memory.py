"""The host's available memory, and refusing work on the CPU that would not fit in it (no torch here)."""

from __future__ import annotations

import os

from .errors import UserInputError


def host_available_memory() -> int | None:
    """Memory the system can still give this process, in bytes (None where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_ram(needed: int, what: str, smaller: str) -> None:
    """Refuse in one line work on the CPU that would not fit in RAM: the
    kernel kills a process out of memory without a word, so ask first."""
    available = host_available_memory()
    if available is not None and needed > 0.8 * available:
        raise UserInputError(
            f"{what} needs about {needed / 2**30:.1f} GiB but this machine has "
            f"{available / 2**30:.1f} GiB available; {smaller}")
