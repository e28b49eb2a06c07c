"""Input validation shared by the public functions: every failure is a ValueError that says
what was expected and what came."""
from __future__ import annotations

from collections.abc import Sequence

import torch

MODES_2D = ("nearest", "bilinear", "bicubic")
MODES_3D = ("nearest", "bilinear")
PADDING_MODES = ("zeros", "border", "reflection")


def check_float_tensor(name: str, t, ndims: Sequence[int] | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor, got dtype {t.dtype}; "
            f"convert it with {name}.float()"
        )
    if ndims is not None and t.dim() not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{name} must be {want}, got shape {tuple(t.shape)}")


def check_choice(name: str, value, allowed: Sequence[str], context: str = "") -> None:
    if value not in allowed:
        where = f" {context}" if context else ""
        raise ValueError(f"{name} must be one of {list(allowed)}{where}, got {value!r}")


def check_size(output_size, dim: int) -> tuple[int, ...]:
    """Return `output_size` as a tuple of `dim` positive ints (an int means the same size on
    every axis)."""
    if isinstance(output_size, torch.Size):
        output_size = tuple(output_size)
    if isinstance(output_size, int) and not isinstance(output_size, bool):
        output_size = (output_size,) * dim
    if (
        not isinstance(output_size, (tuple, list))
        or len(output_size) != dim
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in output_size)
    ):
        axes = "(H', W')" if dim == 2 else "(D', H', W')"
        raise ValueError(f"output_size must be an int or a tuple {axes} of ints, got {output_size!r}")
    if any(s <= 0 for s in output_size):
        raise ValueError(f"output_size must be positive on every axis, got {tuple(output_size)}")
    return tuple(output_size)
