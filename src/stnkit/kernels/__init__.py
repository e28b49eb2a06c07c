"""Optional fused warp kernels in Triton (`pip install "stnkit[triton]"`), behind
`warp(..., backend=...)`. Nothing here is imported by `import stnkit`: the kernel modules (and
triton) load on the first call that uses them.

    unsupported(family, x, mode, antialias)  why the kernels cannot take a call (None: they can)
    warp(x, p, family, size, ...)             the fused warp (autograd: kernels/_function.py)

The kernels run on CUDA tensors, and on CPU tensors under Triton's interpreter
(TRITON_INTERPRET=1, set before triton is imported), which is how the tests run them without a GPU.
"""
from __future__ import annotations

import importlib.util
import os

import torch

from .. import transforms as _t

# Cases where the GPU benchmark (benchmarks/bench_gpu.py, docs/performance.md) measured the
# kernels faster than the torch path: backend="auto" takes Triton for these on CUDA, and only
# for these. Empty until measured on a GPU.
FASTER_ON_GPU: frozenset[tuple[str, str]] = frozenset()  # {(family name, mode)}


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def unsupported(family: _t.Transform, x: torch.Tensor, mode: str, antialias: bool) -> str | None:
    """Why backend="triton" cannot run this call, or None."""
    if not isinstance(family, (_t.MatrixTransform, _t.Projective, _t.TPS)):
        return f"the Triton kernels cover the matrix families, 'projective' and 'tps', not {family.name!r}"
    if mode not in ("nearest", "bilinear"):
        return f"the Triton kernels sample nearest and bilinear (trilinear), not mode={mode!r}"
    if antialias:
        return "the Triton kernels do not antialias: use backend='torch' with antialias=True"
    if x.device.type != "cuda" and not (x.device.type == "cpu" and interpreting()):
        return (f"the Triton kernels run on CUDA tensors (or on the CPU under TRITON_INTERPRET=1, for testing); "
                f"x is on {x.device}")
    return None


def auto_picks_triton(family: _t.Transform, x: torch.Tensor, mode: str, antialias: bool) -> bool:
    """backend="auto": Triton only on CUDA, only where measured faster, only if installed."""
    return (x.device.type == "cuda" and (family.name, mode) in FASTER_ON_GPU
            and unsupported(family, x, mode, antialias) is None and importlib.util.find_spec("triton") is not None)


def warp(x: torch.Tensor, p: torch.Tensor, family: _t.Transform, size, mode: str, padding_mode: str,
         align_corners: bool) -> torch.Tensor:
    """x: (B, C, H, W) or (B, C, D, H, W), canonical params p (B, P) -> (B, C, *size): the
    torch path's `sample(x, family.grid(p, size))` (without `fill`, which the caller applies;
    0 behind a homography's horizon), without the grid. The params' gradient goes through
    torch from the kernels' (B, T) parameter gradient."""
    from ._function import FusedWarp

    targets, kind = None, 0
    if isinstance(family, _t.TPS):
        me = family._for(p)
        weights, targets = _tps_constants(me, p.dtype, p.device)
        theta, kind = (weights @ p.view(p.shape[0], me.K, 2)).flatten(1), 2  # (B, 2 (K + 3)) coefficients
    elif isinstance(family, _t.Projective):
        from ..functional.matrix import homography_matrix

        theta, kind = homography_matrix(p).flatten(1), 1  # (B, 9)
    else:
        theta = family.matrix(p).flatten(1)  # (B, 6) or (B, 12)
    return FusedWarp.apply(x, theta, targets, tuple(size), mode, padding_mode, bool(align_corners), kind)


_TPS_CACHE: dict = {}


def _tps_constants(me: _t.TPS, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The spline's (K + 3, K) weights and (K, 2) targets in this dtype on this device, cached
    (a copy to a GPU on every call would wait for it)."""
    key = (id(me), dtype, str(device))
    if key not in _TPS_CACHE:
        if len(_TPS_CACHE) >= 16:
            _TPS_CACHE.pop(next(iter(_TPS_CACHE)))
        _TPS_CACHE[key] = (me, me.weights.to(dtype=dtype, device=device), me.targets.to(dtype=dtype, device=device))
    return _TPS_CACHE[key][1:]
