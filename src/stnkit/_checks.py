"""Input validation shared by the public functions: every failure is a ValueError that says
what was expected and what came."""
from __future__ import annotations

import difflib
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager

import torch

MODES_2D = ("nearest", "bilinear", "bicubic")
MODES_3D = ("nearest", "bilinear", "bicubic")  # bicubic: tricubic, functional.cubic
PADDING_MODES = ("zeros", "border", "reflection")
BACKENDS = ("auto", "torch", "triton")  # warp(..., backend=): see stnkit.kernels


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


# -- where a failed check is reported ----------------------------------------------------------
#
# A value check reads a tensor on the host, which on a GPU waits for all queued work. So:
#   CPU tensors, or inside checks("sync"): checked at once, the error raised by the call (no cost
#       on a CPU; one host sync per check on a GPU);
#   inside checks("deferred"): recorded with no sync; Checks.error() reads them all at once (the
#       training engine folds that into its once-per-interval sync and names the step);
#   GPU tensors otherwise: a device-side assert (torch._assert_async), no sync; a failure stops
#       the program at its next sync with "device-side assert triggered".

_state = threading.local()  # .mode: "sync" | "deferred" | None; .pending: Checks; .handlers: list


class Checks:
    """The checks recorded inside `checks("deferred")`, read back with one host sync."""

    def __init__(self):
        self._entries: list[tuple[torch.Tensor, Callable[..., Exception], tuple]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def ok(self) -> torch.Tensor | None:
        """A 0-d bool tensor, True when every recorded check passed (no sync); None if none was recorded."""
        if not self._entries:
            return None
        oks = [ok.all() for ok, _, _ in self._entries]
        dev = next((o.device for o in oks if o.device.type != "cpu"), oks[0].device)  # a fill's may be on the CPU
        return torch.stack([o.to(dev, non_blocking=True) for o in oks]).all()

    def error(self) -> Exception | None:
        """The first failed check's error, or None (a host sync per check until the failed one)."""
        for ok, make, extras in self._entries:
            if not bool(ok.all()):
                return make(ok, *extras)
        return None

    def raise_if_bad(self) -> None:
        err = self.error()
        if err is not None:
            raise err


@contextmanager
def checks(mode: str):
    """Where the value checks of stnkit's functions inside the block report (see above).

    mode "sync": raise at the call, on every device (for debugging on a GPU: one host sync per
    check). mode "deferred": record them; the context yields a `Checks` whose `.error()` says
    the first failure. Nested blocks: the innermost decides.
    """
    check_choice("mode", mode, ("sync", "deferred"))
    before = getattr(_state, "mode", None), getattr(_state, "pending", None)
    _state.mode, _state.pending = mode, Checks() if mode == "deferred" else None
    try:
        yield _state.pending
    finally:
        _state.mode, _state.pending = before


@contextmanager
def on_bad(handler: Callable[[Exception], Exception]):
    """Errors of the checks made inside the block go through handler(error) -> the error raised
    (or recorded): a caller's way to say what bad values mean there (layers: a diverged net)."""
    stack = _state.__dict__.setdefault("handlers", [])
    stack.append(handler)
    try:
        yield
    finally:
        stack.pop()


def require(ok: torch.Tensor, make: Callable[..., Exception], extras: Callable[[], tuple] = tuple) -> None:
    """Check that the bool tensor `ok` is all True, reporting as the mode says (see above).

    make(ok, *extras()) -> the error, built only on failure (it may read tensors on the host);
    extras() -> tensors it needs, computed at once when the check is recorded for later.
    """
    handlers = getattr(_state, "handlers", None)
    handler = handlers[-1] if handlers else None
    if handler is not None:
        make = _handled(make, handler)
    mode = getattr(_state, "mode", None)
    if mode == "deferred":
        _state.pending._entries.append((ok, make, extras()))
    elif mode == "sync" or ok.device.type == "cpu":
        if not bool(ok.all()):
            raise make(ok, *extras())
    else:  # a GPU: no sync
        torch._assert_async(ok.all(), "stnkit: a value check failed (NaN, Inf or out-of-range values); "
                            "rerun under stnkit.checks('sync') to see which")


def _handled(make, handler):
    return lambda *a: handler(make(*a))


def check_finite(name: str, t: torch.Tensor, what: str = "batch item", hint: str = "", limit: float | None = None) -> None:
    """A ValueError naming the items (along the first axis) of `t` that hold NaN or Inf, or,
    given `limit`, a magnitude above it. One reduction and no sync on a GPU (see `require`)."""
    if tracing() or t.numel() == 0:
        return
    if limit is not None:  # a limit beyond t's dtype would read as inf there, letting inf pass
        limit = min(limit, torch.finfo(t.dtype).max)
    d = t.detach()
    ok = torch.isfinite(d) if limit is None else d.abs() <= limit  # NaN fails both
    scalar, dtype = d.dim() == 0, d.dtype  # make() holds no reference to t (nor to its graph)

    def make(ok, value, peak, finite):
        if scalar:
            return ValueError(f"{name} must be finite{_within(limit)}, got {value.item()}{hint}")
        bad = (~ok).reshape(ok.shape[0], -1).any(1).nonzero().flatten().tolist()
        which = f"{what}(s) {bad[:8]}{' ...' if len(bad) > 8 else ''}"
        if limit is not None and bool(finite):
            return BadValues(f"{name} must be at most {limit:.3g} in magnitude, but {which} reach "
                             f"{float(peak):.3g}{hint}", name, bad)
        return BadValues(f"{name} must be finite, but {which} hold NaN or Inf ({dtype}){hint}", name, bad)

    def extras():  # what the message reads, as it is now
        return d.clone() if d.dim() == 0 else None, d.abs().max(), torch.isfinite(d).all()

    require(ok, make, extras)


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


def check_size(output_size, dim: int, name: str = "output_size") -> tuple[int, ...]:
    """Return `output_size` as a tuple of `dim` positive ints (an int means the same size on
    every axis); errors name the argument `name`."""
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
        raise ValueError(f"{name} must be an int or a tuple {axes} of ints, got {output_size!r}")
    if any(s <= 0 for s in output_size):
        raise ValueError(f"{name} must be positive on every axis, got {tuple(output_size)}")
    return tuple(output_size)
