"""The public warp functions: parameters -> grid -> sampled output, and points both ways.

Data flows one way: `warp(x, params, transform)` = sample(x, grid(params, transform, size)).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from . import transforms as _t
from ._checks import (
    BACKENDS, MODES_2D, MODES_3D, PADDING_MODES, check_choice, check_finite, check_float_tensor, check_size, require, tracing,
)
from .functional import antialias as _aa
from .functional import matrix as _m
from .functional import compose as _compose
from .functional.matrix import OUTSIDE
from .functional.sample import sample
from ._io import require as _require

__all__ = ["grid", "warp", "warp_points", "invert", "compose"]


_DIVERGED = "; if a network predicted them, it diverged (lower the learning rate or clip gradients)"
_OVERFLOW = "; the result overflows {}: use float64, or smaller values"


def _far(dtype: torch.dtype) -> float:
    """The largest source coordinate sent to the sampler: F.grid_sample scales coordinates by
    the image size, so anything much larger overflows there (to NaN pixels)."""
    return torch.finfo(dtype).max * 1e-7  # float32: 3.4e31, float64: 1.8e301


def _params(params, transform, batch: int | None = None, x_dtype: torch.dtype | None = None):
    """The family and canonical params (B, P): finite, and small enough that the coordinates
    they make stay below `_far` of the dtype the grid is built in."""
    family = _t.get(transform)
    p = family.canonical(params)
    dtype = torch.promote_types(p.dtype if x_dtype is None else torch.promote_types(x_dtype, p.dtype), torch.float32)
    check_finite("params", p, hint=_DIVERGED, limit=_far(dtype) / family.coordinate_gain(p))
    if batch is not None and p.shape[0] != batch:
        raise ValueError(f"batch mismatch: the input has {batch} items but params have {p.shape[0]}")
    return family, p


def _size(family, params: torch.Tensor, output_size) -> tuple[int, ...]:
    if output_size is None and isinstance(family, _t.Flow):
        return tuple(params.shape[1:-1])
    return check_size(output_size, family.dim)


def grid(
    params: torch.Tensor,
    transform: str | _t.Transform,
    output_size: int | Sequence[int],
    align_corners: bool = False,
) -> torch.Tensor:
    """Source coordinates T_theta(target) of every output pixel.

    params: (B, P) (or a family's matrix form); output_size: (H', W') or (D', H', W') (None for
    `flow`: the field's size) -> (B, H', W', 2) as (x, y), or (B, D', H', W', 3) as (x, y, z),
    normalised like `F.grid_sample` for the same `align_corners`.
    """
    family, p = _params(params, transform)
    g = family.grid(p, _size(family, p, output_size), bool(align_corners))
    check_finite("the grid", g, hint=_OVERFLOW.format(g.dtype))
    return g


def warp(
    x: torch.Tensor,
    params: torch.Tensor,
    transform: str | _t.Transform,
    output_size: int | Sequence[int] | None = None,
    *,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = False,
    fill: float | torch.Tensor | None = None,
    antialias: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Resample `x` through the transform: out[i] = x(T_theta(target_i)).

    x: (B, C, H, W) for 2D families, (B, C, D, H, W) for 3D ones; params: (B, P);
    output_size defaults to x's spatial size (`flow`: the field's) -> (B, C, *output_size).
    mode: nearest | bilinear (trilinear in 3D) | bicubic (tricubic in 3D); padding_mode: zeros | border |
    reflection, as in `F.grid_sample`. fill: the value (a number, or one per channel, (C,)) of
    output pixels with no source pixel: outside the input under padding "zeros", and behind the
    horizon of a projective warp under any padding. Default 0. antialias: average each output
    pixel's footprint where the map shrinks the input (see docs/api.md, "Antialiasing"); the
    plain sample, bit for bit, where it does not. Costs one host sync. backend: "torch" (the grid,
    then `F.grid_sample`), "triton" (fused kernels that never write the grid: matrix families,
    projective and tps, nearest and bilinear; `pip install "stnkit[triton]"`; a ValueError for a case
    they do not cover), or "auto": Triton on CUDA only where the GPU benchmark measured it faster
    (docs/performance.md), else torch.
    """
    if not isinstance(antialias, bool):
        raise ValueError(f"antialias must be True or False, got {antialias!r}")
    check_choice("backend", backend, BACKENDS)
    family = _t.get(transform)
    check_float_tensor("x", x, ndims=(family.dim + 2,))
    if 0 in x.shape[2:]:
        raise ValueError(f"x has no pixels to sample: its spatial size is empty, got shape {tuple(x.shape)}")
    family, p = _params(params, family, batch=x.shape[0], x_dtype=x.dtype)
    check_choice("mode", mode, MODES_2D if family.dim == 2 else MODES_3D, f"for {family.dim}D warps")
    check_choice("padding_mode", padding_mode, PADDING_MODES)
    if output_size is None and not isinstance(family, _t.Flow):
        output_size = tuple(int(s) for s in x.shape[2:])  # ints also while tracing
    size = _size(family, p, output_size)

    dtype = torch.promote_types(torch.promote_types(x.dtype, p.dtype), torch.float32)
    p = p.to(dtype)
    src = x.to(dtype)
    f = _fill(fill, x.shape[1], family.dim, dtype, x.device, x.dtype)
    if f is not None:
        src = src - f
    if _triton(backend, family, x, mode, antialias):
        from . import kernels

        out = kernels.warp(src, p, family, size, mode, padding_mode, bool(align_corners))  # 0 behind a horizon
        return (out if f is None else out + f).to(x.dtype)
    g = family.grid(p, size, bool(align_corners))
    if antialias:
        J = _jacobian(family, p, g, x.shape[2:], size, bool(align_corners))
        out = _aa.antialiased_sample(src, g, mode, padding_mode, bool(align_corners), J)
    else:
        out = sample(src, g, mode, padding_mode, bool(align_corners))
    if isinstance(family, _t.Projective) and padding_mode != "zeros":
        # Pixels behind the horizon sampled the far-outside point: under border/reflection that
        # reads image values, so set them to the fill value explicitly.
        nowhere = (g[..., 0] == OUTSIDE) & (g[..., 1] == OUTSIDE)
        out = out.masked_fill(nowhere[:, None], 0.0)
    if f is not None:
        out = out + f
    return out.to(x.dtype)


def _triton(backend: str, family, x, mode: str, antialias: bool) -> bool:
    """Whether this call runs on the fused Triton kernels (see warp's `backend`)."""
    if backend == "torch" or tracing():
        return False
    from . import kernels  # no triton import: that waits for the first kernel call

    if backend == "auto":
        return kernels.auto_picks_triton(family, x, mode, antialias)
    why = kernels.unsupported(family, x, mode, antialias)
    if why is not None:
        raise ValueError(f"backend='triton' cannot run this call: {why}")
    _require("triton", "backend='triton'", '"stnkit[triton]"')
    return True


def _jacobian(family, p, g, input_size, size, align_corners) -> torch.Tensor | None:
    """The exact pixel Jacobian of the matrix families and the homography (None: the grid's
    finite differences)."""
    if isinstance(family, _t.MatrixTransform):
        return _aa.affine_jacobian(family.matrix(p), input_size, size, align_corners)
    if isinstance(family, _t.Projective):
        return _aa.projective_jacobian(_m.homography_matrix(p), g, input_size, align_corners)
    return None


def _fill(fill, channels: int, dim: int, dtype, device, x_dtype) -> torch.Tensor | None:
    if fill is None:
        return None
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        _check_fill(torch.tensor(_as_float(fill), dtype=torch.float64), x_dtype)
        return None if fill == 0 else torch.full((), float(fill), dtype=dtype, device=device)  # no copy to a GPU
    if isinstance(fill, torch.Tensor) and fill.dim() <= 1 and fill.numel() in (1, channels):
        _check_fill(fill.detach(), x_dtype)
        return fill.to(dtype=dtype, device=device).reshape(1, -1, *([1] * dim))
    got = tuple(fill.shape) if isinstance(fill, torch.Tensor) else repr(fill)
    raise ValueError(f"fill must be a number or a tensor of {channels} per-channel values, got {got}")


def _as_float(v: int | float) -> float:
    try:
        return float(v)
    except OverflowError:  # an int beyond float64
        return math.inf if v > 0 else -math.inf


def _check_fill(f: torch.Tensor, x_dtype) -> None:
    """fill (a 0-D or 1-D tensor) must be finite in x's dtype: the output holds it."""

    def make(ok, f):
        return ValueError(f"fill must be finite and within the range of x's dtype {x_dtype} "
                          f"(|fill| <= {torch.finfo(x_dtype).max:.4g}), got {f.tolist()}")

    if not tracing():
        require(torch.isfinite(f.to(x_dtype)), make, lambda: (f.clone(),))


def warp_points(
    points: torch.Tensor,
    params: torch.Tensor,
    transform: str | _t.Transform,
    *,
    align_corners: bool = False,
) -> torch.Tensor:
    """Apply T_theta to points given in normalised output coordinates.

    points: (B, N, 2|3) or (N, 2|3) (shared by the batch) -> (B, N, 2|3) source coordinates:
    the same map as `grid`, so a point at an output pixel centre lands where that pixel
    samples. `align_corners` only matters for `flow` (where the field's samples sit).
    """
    family, p = _params(params, transform)
    check_float_tensor("points", points, ndims=(2, 3))
    if points.shape[-1] != family.dim:
        raise ValueError(f"{family.name!r} points must have {family.dim} coordinates on the last axis, got {tuple(points.shape)}")
    check_finite("points", points, "batch item" if points.dim() == 3 else "point")
    B = p.shape[0]
    if points.dim() == 2:
        points = points.expand(B, -1, -1)
    elif points.shape[0] != B:
        raise ValueError(f"batch mismatch: points have {points.shape[0]} items but params have {B}")
    dtype = torch.promote_types(points.dtype, p.dtype)
    out = family.points(p.to(dtype), points.to(dtype), bool(align_corners))
    check_finite("the mapped points", out, hint=_OVERFLOW.format(dtype))
    return out


def invert(params: torch.Tensor, transform: str | _t.Transform) -> torch.Tensor:
    """Parameters of the inverse map (source -> target), same layout as the flat params (B, P).

    Closed forms for translation, attention, rigid, similarity, affine, projective and their
    3D versions; `tps` and `flow` raise ValueError.
    """
    family, p = _params(params, transform)
    inv = family.inverse(p)
    check_finite("the inverse params", inv, hint=_OVERFLOW.format(inv.dtype) + " (the map is nearly singular)")
    return inv


def compose(p: torch.Tensor, q: torch.Tensor, transform: str | _t.Transform) -> torch.Tensor:
    """Parameters of warping with p, then warping the result with q: (B, P), (B, P) -> (B, P).

    ``warp(warp(x, p, t), q, t) == warp(x, compose(p, q, t), t)`` up to the resampling of the
    intermediate image: the composed map is T_p(T_q(u)) and its matrix M_p @ M_q (the same order
    as `compose_flows`). Every matrix family (translation, attention, rigid, similarity, affine,
    projective and their 3D versions) is closed under it; `tps` and `flow` raise ValueError
    (for flows, see `stnkit.compose_flows`). Rigid and similarity angles come back in (-pi, pi].
    """
    family, a = _params(p, transform)
    _, b = _params(q, family, batch=a.shape[0])
    if not isinstance(family, (_t.MatrixTransform, _t.Projective)):
        raise ValueError(f"compose needs a matrix family, got {family.name!r} (for dense flows use stnkit.compose_flows)")
    dtype = torch.promote_types(a.dtype, b.dtype)
    out = _compose.compose(a.to(dtype), b.to(dtype), family)
    check_finite("the composed params", out, hint=_OVERFLOW.format(dtype))
    return out
