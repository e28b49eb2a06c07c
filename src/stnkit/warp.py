"""The public warp functions: parameters -> grid -> sampled output, and points both ways.

Data flows one way: `warp(x, params, transform)` = sample(x, grid(params, transform, size)).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import transforms as _t
from ._checks import MODES_2D, MODES_3D, PADDING_MODES, check_choice, check_float_tensor, check_size
from .functional.matrix import OUTSIDE

__all__ = ["grid", "warp", "warp_points", "invert"]


def _params(params, transform, batch: int | None = None):
    family = _t.get(transform)
    p = family.canonical(params)
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
    return family.grid(p, _size(family, p, output_size), bool(align_corners))


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
) -> torch.Tensor:
    """Resample `x` through the transform: out[i] = x(T_theta(target_i)).

    x: (B, C, H, W) for 2D families, (B, C, D, H, W) for 3D ones; params: (B, P);
    output_size defaults to x's spatial size (`flow`: the field's) -> (B, C, *output_size).
    mode: nearest | bilinear (trilinear in 3D) | bicubic (2D); padding_mode: zeros | border |
    reflection, as in `F.grid_sample`. fill: the value (a number, or one per channel, (C,)) of
    output pixels with no source pixel: outside the input under padding "zeros", and behind the
    horizon of a projective warp under any padding. Default 0.
    """
    family = _t.get(transform)
    check_float_tensor("x", x, ndims=(family.dim + 2,))
    family, p = _params(params, family, batch=x.shape[0])
    check_choice("mode", mode, MODES_2D if family.dim == 2 else MODES_3D, f"for {family.dim}D warps")
    check_choice("padding_mode", padding_mode, PADDING_MODES)
    if output_size is None and not isinstance(family, _t.Flow):
        output_size = tuple(int(s) for s in x.shape[2:])  # ints also while tracing
    size = _size(family, p, output_size)

    dtype = torch.promote_types(torch.promote_types(x.dtype, p.dtype), torch.float32)
    g = family.grid(p.to(dtype), size, bool(align_corners))
    src = x.to(dtype)
    f = _fill(fill, x.shape[1], family.dim, dtype, x.device)
    if f is not None:
        src = src - f
    out = F.grid_sample(src, g, mode=mode, padding_mode=padding_mode, align_corners=bool(align_corners))
    if isinstance(family, _t.Projective) and padding_mode != "zeros":
        # Pixels behind the horizon sampled the far-outside point: under border/reflection that
        # reads image values, so set them to the fill value explicitly.
        nowhere = (g[..., 0] == OUTSIDE) & (g[..., 1] == OUTSIDE)
        out = out.masked_fill(nowhere[:, None], 0.0)
    if f is not None:
        out = out + f
    return out.to(x.dtype)


def _fill(fill, channels: int, dim: int, dtype, device) -> torch.Tensor | None:
    if fill is None:
        return None
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        return None if fill == 0 else torch.tensor(float(fill), dtype=dtype, device=device)
    if isinstance(fill, torch.Tensor) and fill.dim() <= 1 and fill.numel() in (1, channels):
        return fill.to(dtype=dtype, device=device).reshape(1, -1, *([1] * dim))
    got = tuple(fill.shape) if isinstance(fill, torch.Tensor) else repr(fill)
    raise ValueError(f"fill must be a number or a tensor of {channels} per-channel values, got {got}")


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
    B = p.shape[0]
    if points.dim() == 2:
        points = points.expand(B, -1, -1)
    elif points.shape[0] != B:
        raise ValueError(f"batch mismatch: points have {points.shape[0]} items but params have {B}")
    dtype = torch.promote_types(points.dtype, p.dtype)
    return family.points(p.to(dtype), points.to(dtype), bool(align_corners))


def invert(params: torch.Tensor, transform: str | _t.Transform) -> torch.Tensor:
    """Parameters of the inverse map (source -> target), same layout as the flat params (B, P).

    Closed forms for translation, attention, rigid, similarity, affine, projective and their
    3D versions; `tps` and `flow` raise ValueError.
    """
    family, p = _params(params, transform)
    return family.inverse(p)
