"""Input validation shared by the public functions: every failure is a ValueError that says
what was expected and what came."""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

import torch

MODES_2D = ("nearest", "bilinear", "bicubic")
MODES_3D = ("nearest", "bilinear", "bicubic")  # bicubic: tricubic, functional.cubic
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


class BadValues(ValueError):
    """NaN, Inf or too large values in `name`; `items`: their indices along the first axis."""

    def __init__(self, message: str, name: str, items: list[int]):
        super().__init__(message)
        self.name, self.items = name, items


def tracing() -> bool:
    """True while torch.jit.trace, ONNX export, torch.compile or torch.export records the call:
    data-dependent checks (a tensor read as a Python bool) are skipped then."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def check_finite(name: str, t: torch.Tensor, what: str = "batch item", hint: str = "", limit: float | None = None) -> None:
    """Raise a ValueError naming the items (along the first axis) of `t` that hold NaN or Inf,
    or, given `limit`, a magnitude above it. One reduction and one host sync when all is well."""
    if tracing() or t.numel() == 0:
        return
    if limit is not None:  # a limit beyond t's dtype would read as inf there, letting inf pass
        limit = min(limit, torch.finfo(t.dtype).max)
    ok = torch.isfinite(t) if limit is None else t.detach().abs() <= limit  # NaN fails both
    if bool(ok.all()):
        return
    if t.dim() == 0:
        raise ValueError(f"{name} must be finite{_within(limit)}, got {t.item()}{hint}")
    bad = (~ok).reshape(t.shape[0], -1).any(1).nonzero().flatten().tolist()
    which = f"{what}(s) {bad[:8]}{' ...' if len(bad) > 8 else ''}"
    if limit is not None and bool(torch.isfinite(t).all()):
        raise BadValues(
            f"{name} must be at most {limit:.3g} in magnitude, but {which} reach "
            f"{float(t.detach().abs().max()):.3g}{hint}", name, bad,
        )
    raise BadValues(f"{name} must be finite, but {which} hold NaN or Inf ({t.dtype}){hint}", name, bad)


def _within(limit: float | None) -> str:
    return "" if limit is None else f" and at most {limit:.3g} in magnitude"


def did_you_mean(name, known: Iterable) -> str:
    """"did you mean 'x'?" for the known name closest to a misspelt `name`, or "" when none is close
    (difflib's similarity ratio below 0.6): the caller appends it to its message."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f"did you mean {close[0]!r}?" if close else ""


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
