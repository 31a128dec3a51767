"""Data-parallel training on several processes (torchrun), on the one loop.

    torchrun --nproc-per-node 2 -m napari_dlvision.cli train unet ... --distributed

torchrun starts one process per device (or per CPU slot) and sets RANK,
WORLD_SIZE, LOCAL_RANK and the rendezvous address; `start` joins them
(NCCL on CUDA, gloo on CPU). Then `dl.loop.fit` wraps the network in
DistributedDataParallel: every rank draws its own patches (`data_seed`),
gradients are averaged, and the ranks agree on every stop (time limit,
divergence), so they keep identical weights, which `check_identical`
confirms at the end; rank 0 alone writes the model file and prints.
"""

from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from ..core.errors import UserInputError

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def data_seed(seed: int) -> int:
    """Each rank samples its own data; the network starts the same everywhere
    (DistributedDataParallel also copies rank 0's weights at the start)."""
    return int(seed) + 1000 * rank()


def start(device: str = "auto") -> str:
    """Join torchrun's process group; the device name this rank trains on."""
    missing = [k for k in ENV if k not in os.environ]
    if missing:
        raise UserInputError("--distributed runs under torchrun, e.g. torchrun --nproc-per-node 2 -m "
                             "napari_dlvision.cli train unet ... --distributed")
    if not dist.is_available():
        raise UserInputError("this torch build has no torch.distributed")
    local = int(os.environ["LOCAL_RANK"])
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise UserInputError("--device cuda: no CUDA device here")
    if device == "mps":
        raise UserInputError("--distributed runs on CUDA (NCCL) or CPU (gloo), not MPS")
    if cuda:
        if local >= torch.cuda.device_count():
            raise UserInputError(f"rank {local} has no GPU: {torch.cuda.device_count()} here; "
                                 "give --nproc-per-node at most that")
        torch.cuda.set_device(local)
    # A rank that dies ends the others' waits with an error within this time
    # (torchrun also stops the other ranks when one exits with an error).
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=5))
    return "cuda" if cuda else "cpu"


def stop(together: bool = True) -> None:
    """Leave the group; `together` (after success) waits for every rank first:
    a rank tearing its connections down while another still talks (rank 0
    writing the model) can abort the process. After an error a rank leaves
    at once (torchrun then stops the others)."""
    if dist.is_available() and dist.is_initialized():
        try:
            if together:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def peer_lost(error: BaseException) -> bool:
    """Whether `error` is a collective broken by another rank going away:
    torch raises DistError (gloo sometimes a plain RuntimeError naming it)."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(k in text for k in ("gloo", "NCCL", "Connection reset",
                                                                         "Connection closed"))


def any_rank(flag: bool, device) -> bool:
    """True on every rank when it is True on any (a stop decided together)."""
    if not active():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def from_rank0(value: float, device) -> float:
    """Rank 0's value on every rank (e.g. a clock reading that must not differ)."""
    if not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


def sync_buffers(net: torch.nn.Module) -> None:
    """Rank 0's buffers (batch-norm statistics) everywhere. Each forward updates
    them from its own rank's batch; synced after every step, the weight
    average and the kept weights stay the same on all ranks."""
    if not active():
        return
    for b in net.buffers():
        dist.broadcast(b.data, src=0)


def wrap(net: torch.nn.Module, device) -> torch.nn.Module:
    """The module the loop steps through: DistributedDataParallel when active."""
    if not active():
        return net
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    # Batch norm buffers are broadcast from rank 0 at every forward (the default).
    return DistributedDataParallel(net, device_ids=ids)


def check_identical(net: torch.nn.Module) -> bool:
    """Whether every rank holds the same weights and buffers (exactly)."""
    if not active():
        return True
    device = next(net.parameters()).device
    fingerprint = []
    for v in net.state_dict().values():
        x = v.detach().to(torch.float64)
        fingerprint += [float(x.sum()), float((x * x).sum()), float(x.flatten()[: 97].sum())]
    lo = torch.tensor(fingerprint, dtype=torch.float64, device=device)
    hi = lo.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(np.array_equal(lo.cpu().numpy(), hi.cpu().numpy()))
