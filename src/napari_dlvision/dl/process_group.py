"""Whether this process trains in a torchrun group of ranks, asked without importing torch.

A rank joins its group through dl.distributed, which imports torch; a process
that never imported torch.distributed is alone (the forest detector trains
and saves without torch).
"""

from __future__ import annotations

import sys


def ranks_train_together() -> bool:
    """Inside a process group of more than one rank."""
    if "torch.distributed" not in sys.modules:
        return False
    from . import distributed

    return distributed.active()
