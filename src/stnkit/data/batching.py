"""Shared by the generated and the file datasets: seeds, and each process's slice of every
global batch of an epoch."""
from __future__ import annotations

import zlib
from collections.abc import Iterator

import torch


def _seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


def rank_slices(order: torch.Tensor, batch_size: int, drop_last: bool = False, rank: int = 0,
                world: int = 1) -> Iterator[torch.Tensor]:
    """The indices of `order` (N,) this process takes from each global batch of batch_size:
    all of it for one process; with world > 1, slice `rank` of world equal ones."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if world > 1 and batch_size % world:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the number of processes ({world})")
    local = batch_size // world
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for i in range(0, stop, batch_size):
        mine = order[i:i + batch_size][rank * local:(rank + 1) * local]
        if len(mine):
            yield mine
