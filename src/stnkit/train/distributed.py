"""Multi-process training on torch.distributed, as torchrun starts it.

`torchrun --nproc_per_node=N -m stnkit train ...` sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous variables; `setup()` reads them and joins the process group (NCCL on CUDA, gloo on
CPU). Without them everything here is a no-op for one process, so the engine has one code path.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Only the main process writes logs, metrics, checkpoints and figures."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer (torchrun sets it)") from None


def from_env() -> World:
    """The process's place in the job, from torchrun's environment (one process without it)."""
    world = World(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if world.size < 1 or not 0 <= world.rank < world.size:
        raise ValueError(f"RANK={world.rank} must lie in [0, WORLD_SIZE={world.size})")
    return world


def setup(device_type: str) -> World:
    """Join the process group when started by torchrun with WORLD_SIZE > 1."""
    world = from_env()
    if world.size > 1 and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend)
        if device_type == "cuda":
            torch.cuda.set_device(world.local_rank)
    return world


def teardown(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        # Free what still holds gloo work (the DDP reducer in a reference cycle) while the
        # interpreter is whole: left to shutdown, it can abort the process ("terminate called
        # without an active exception", seen once in 2-process CPU tests under load).
        gc.collect()
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device) -> list[float]:
    """Sums of the values over all processes (the values themselves for one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every process."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
