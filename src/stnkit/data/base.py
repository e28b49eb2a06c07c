"""What every dataset shares: the batch type, the task protocol, the split names and the
"no digit" label. Generated datasets (datasets.py) and the user's files (files.py) both build
on this module and on neither of each other."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

SPLITS = ("train", "test")  # SVHN also has "extra" (svhn.py)
NO_DIGIT = 10  # the label of an empty position in a digit sequence (SVHN and its stand-in)


@dataclass
class Batch:
    x: torch.Tensor  # (B, C, *size) float in [0, 1]
    y: torch.Tensor  # (B,) class, or (B, 5) digit sequence
    box: torch.Tensor | None = None  # (B, 4) pixel box (x0, y0, x1, y1), edges, x1/y1 exclusive


class Task(Protocol):
    """How a generated example is made from real digits: all randomness first, drawn from a
    seeded generator (`make_params`), then a deterministic rendering (`apply`)."""

    @property
    def out_size(self) -> tuple[int, ...]: ...

    def make_params(self, g: torch.Generator, n: int, pool_size: int) -> dict[str, torch.Tensor]: ...

    def apply(self, images: torch.Tensor, labels: torch.Tensor, params: dict, pool: torch.Tensor,
              pool_labels: torch.Tensor) -> tuple: ...


def check_split(split: str, allowed=SPLITS) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {list(allowed)}, got {split!r}")
