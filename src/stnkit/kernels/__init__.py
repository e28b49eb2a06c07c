"""Optional fused warp kernels in Triton (`pip install "stnkit[triton]"`), behind
`warp(..., backend=...)`. Nothing here is imported by `import stnkit`: the kernel modules (and
triton) load on the first call that uses them.

    unsupported(family, x, mode, antialias)  why the kernels cannot take a call (None: they can)
    warp_matrix(x, theta, size, ...)          the fused warp, an autograd Function

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
    if not isinstance(family, (_t.MatrixTransform, _t.Projective)):
        return f"the Triton kernels cover the matrix families and 'projective', not {family.name!r}"
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


def matrix_of(family: _t.Transform, p: torch.Tensor) -> torch.Tensor:
    """(B, P) params -> the flat src_from_dst matrix the kernels read: (B, 6) affine, (B, 9)
    homography, (B, 12) 3D affine (differentiable: the params' gradient goes through torch)."""
    if isinstance(family, _t.Projective):
        from ..functional.matrix import homography_matrix

        return homography_matrix(p).flatten(1)
    return family.matrix(p).flatten(1)


def warp_matrix(x: torch.Tensor, theta: torch.Tensor, size, mode: str, padding_mode: str, align_corners: bool,
                projective: bool = False) -> torch.Tensor:
    """x: (B, C, H, W) with theta (B, 6), or (B, 9) if projective; or (B, C, D, H, W) with theta
    (B, 12) -> (B, C, *size): `F.grid_sample` of the matrix's grid, without the grid."""
    from ._function import FusedWarp

    return FusedWarp.apply(x, theta, tuple(size), mode, padding_mode, bool(align_corners), bool(projective))
