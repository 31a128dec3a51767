"""Halo-tiled inference of fully convolutional networks, surviving out-of-memory.

An image is cut into tiles on the network's pooling grid; each tile is grown
by the halo (the network's reach), run through the network, and cropped
back, so the result equals whole-image inference (exactly with batch norm in
eval mode or no norm). Tile size follows the device's free memory; a tile
that still runs out of memory halves the tile edge and starts over.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core.errors import UserInputError
from ..core.tiling import grid, grow
from .devices import free_memory, is_out_of_memory, empty_cache, describe

CPU_BUDGET_BYTES = 1 << 30  # activation memory of one tile on the CPU


def plan_tiles(shape, device, halo: int, multiple: int, bytes_per_voxel: float,
               may_halve_halo: bool = False) -> tuple[tuple[int, ...], int]:
    """(tile shape, halo) for the device's memory.

    The whole image when it fits; else tiles with the exact halo, as long as
    a tile's core can stay at least as wide as its halo. Where even that does
    not fit (big 3D volumes on a CPU) and `may_halve_halo` is set the halo is
    halved: results then differ from whole-image inference near tile borders.
    """
    free = free_memory(device)
    budget = CPU_BUDGET_BYTES if free is None else free // 3
    voxels = max(int(budget // max(bytes_per_voxel, 1)), 1)
    if math.prod(shape) <= voxels:
        return tuple(int(n) for n in shape), halo
    edge_budget = int(voxels ** (1 / len(shape)))
    if may_halve_halo and edge_budget - 2 * halo < halo:
        halo = max(multiple, halo // 2 // multiple * multiple)
    edge = max((edge_budget - 2 * halo) // multiple * multiple, halo, multiple)
    return tuple(min(int(n), edge) for n in shape), halo


def on_grid(shape, tile_shape, halo: int, multiple: int):
    """Tile shape and halo rounded up to the pooling grid, and the tiles."""
    tile_shape = tuple(min(int(n), -(-int(t) // multiple) * multiple) for n, t in zip(shape, tile_shape))
    halo = -(-int(halo) // multiple) * multiple
    return tile_shape, halo, grid(shape, tile_shape)


def _shrink(tile_shape, multiple):
    i = max(range(len(tile_shape)), key=lambda k: tile_shape[k])
    if tile_shape[i] <= multiple:
        return None
    return tile_shape[:i] + (max(multiple, tile_shape[i] // 2 // multiple * multiple),) + tile_shape[i + 1:]


def iter_tiled(net, image_cf: np.ndarray, out: np.ndarray, *, halo: int, multiple: int, device,
               activation=None, tile_shape=None, bytes_per_voxel: float = 1000.0, report=None):
    """Fill `out` (K, *spatial) with net(image) tile by tile; yields (done, total, core slices).

    `activation` (e.g. softmax over channels) runs on each tile's output.
    On out-of-memory the tile edge halves and inference starts over;
    `report(message)` hears of it.
    """
    shape = image_cf.shape[1:]
    if tile_shape is None:
        tile_shape, halo = plan_tiles(shape, device, halo, multiple, bytes_per_voxel)
    tile_shape = tuple(int(t) for t in tile_shape)
    if len(tile_shape) != len(shape):
        raise UserInputError(f"tile shape {tile_shape} does not fit a {len(shape)}D image")
    was_training = net.training
    net.eval()
    try:
        while True:
            ts, h, tiles = on_grid(shape, tile_shape, halo, multiple)
            try:
                for n, core in enumerate(tiles, 1):
                    outer, inner = grow(core, (h,) * len(shape), shape)
                    block = np.ascontiguousarray(image_cf[(slice(None),) + outer])
                    with torch.inference_mode():
                        y = net(torch.from_numpy(block)[None].to(device)).float()
                        if activation is not None:
                            y = activation(y)
                        out[(slice(None),) + core] = y[0][(slice(None),) + inner].cpu().numpy()
                    del y
                    yield n, len(tiles), core
                return
            except Exception as e:  # noqa: BLE001 - only out-of-memory is handled
                if not is_out_of_memory(e):
                    raise
            # Outside the handler, so the failed tile's tensors are freed first.
            empty_cache(device)
            smaller = _shrink(ts, multiple)
            if smaller is None:
                raise UserInputError(
                    f"out of memory on {describe(device)} even with tiles of {'x'.join(map(str, ts))}; "
                    "close other programs using the GPU or choose device 'cpu'")
            if report is not None:
                report(f"out of memory: predicting again with tiles of {'x'.join(map(str, smaller))}")
            tile_shape = smaller
    finally:
        net.train(was_training)


def predict_tiled(net, image_cf, n_out: int, **kw) -> np.ndarray:
    out = np.empty((n_out,) + image_cf.shape[1:], np.float32)
    for _ in iter_tiled(net, image_cf, out, **kw):
        pass
    return out
