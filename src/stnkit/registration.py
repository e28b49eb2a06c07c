"""Registration tools for dense flows (the `flow` / `flow3d` families): compose two flows,
integrate a stationary velocity field into a diffeomorphic flow, and measure folding.

A flow f is a field (B, H', W', 2) as (x, y), or (B, D', H', W', 3) as (x, y, z), of normalised
displacements: `warp(x, f, "flow")` samples x at p + f(p) for every output pixel p, i.e. the map
p -> p + f(p) sends output coordinates to input coordinates (docs/api.md, "Coordinates").
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import check_finite, check_float_tensor
from .functional.coords import identity_grid
from .functional.jacobian import grid_jacobian

__all__ = ["compose_flows", "integrate_velocity", "jacobian_determinant"]

_LAYOUT = "a field (B, H', W', 2) or (B, D', H', W', 3)"


def _check_field(name: str, flow) -> None:
    """flow: a floating, finite, non-empty (B, *size, d) field with d = len(size) in (2, 3)."""
    check_float_tensor(name, flow, ndims=(4, 5))
    if flow.shape[-1] != flow.dim() - 2:
        raise ValueError(f"{name} must be {_LAYOUT} (last axis = spatial rank), got shape {tuple(flow.shape)}")
    if 0 in flow.shape[1:-1]:
        raise ValueError(f"{name} has an empty spatial size: expected every axis >= 1, got shape {tuple(flow.shape)}")
    check_finite(name, flow)


def _work_dtype(*fields: torch.Tensor) -> torch.dtype:
    """At least float32: float16 / bfloat16 fields are composed in float32."""
    dtype = torch.float32
    for f in fields:
        dtype = torch.promote_types(dtype, f.dtype)
    return dtype


def _compose(first: torch.Tensor, second: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """second(p) + first(p + second(p)), first read bilinearly with border extrapolation.
    first, second: (B, *size, d), one dtype -> (B, *size, d)."""
    size = second.shape[1:-1]
    at = identity_grid(size, align_corners, dtype=second.dtype, device=second.device) + second  # (B, *size, d)
    field = first.movedim(-1, 1)  # (B, d, *size): the displacement as d channels
    read = F.grid_sample(field, at, mode="bilinear", padding_mode="border", align_corners=align_corners)
    return second + read.movedim(1, -1)  # (B, *size, d)


def compose_flows(first: torch.Tensor, second: torch.Tensor, *, align_corners: bool = False) -> torch.Tensor:
    """The flow of applying `first` to an image, then `second` to the result.

    Args:
        first, second: flows of one shape, (B, H', W', 2) as (x, y) or (B, D', H', W', 3).
        align_corners: where the fields' samples sit, as in `F.grid_sample`.

    Returns:
        (B, *size, d): composed(p) = second(p) + first(p + second(p)), so that
        ``warp(warp(x, first, "flow"), second, "flow") ~= warp(x, composed, "flow")``. `first`
        is read bilinearly at the points `second` displaces to, and beyond its outermost sample
        centres it is extrapolated by its border value (the edge displacement continues). Where
        warping twice reads padding (p + second(p) falls outside the image), the composed warp
        still reads x at a definite point, so the two differ there. Differentiable in both.
    """
    _check_field("first", first)
    _check_field("second", second)
    if first.shape != second.shape:
        raise ValueError(f"first and second must have the same shape, got {tuple(first.shape)} and {tuple(second.shape)}")
    dtype = _work_dtype(first, second)
    out = _compose(first.to(dtype), second.to(dtype), bool(align_corners))
    return out.to(torch.promote_types(first.dtype, second.dtype))


def integrate_velocity(velocity: torch.Tensor, steps: int = 7, *, align_corners: bool = False) -> torch.Tensor:
    """A stationary velocity field -> the flow at time 1 of dphi/dt = v(phi), by scaling and
    squaring: f = v / 2**steps, then `steps` times f = compose_flows(f, f) (MONAI's `DVF2DDF`,
    VoxelMorph's `VecInt`). The result is diffeomorphic (no folds) when v is smooth enough
    relative to the number of steps.

    Args:
        velocity: (B, H', W', 2) or (B, D', H', W', 3), the layout and units of a flow.
        steps: an int >= 0; 0 returns `velocity` itself.
        align_corners: as in `F.grid_sample`.

    Returns:
        The flow, the shape and dtype of `velocity`. Differentiable. Each composition reads the
        field with border extrapolation (MONAI's default reads zeros outside).
    """
    _check_field("velocity", velocity)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if steps == 0:
        return velocity
    f = velocity.to(_work_dtype(velocity)) * math.ldexp(1.0, -steps)  # exact: a power of two
    for _ in range(steps):
        f = _compose(f, f, bool(align_corners))
    return f.to(velocity.dtype)


def _det(J: torch.Tensor) -> torch.Tensor:
    """(..., d, d) -> (...): the closed-form determinant for d = 2 or 3."""
    if J.shape[-1] == 2:
        return J[..., 0, 0] * J[..., 1, 1] - J[..., 0, 1] * J[..., 1, 0]
    a, b, c = J[..., 0, :], J[..., 1, :], J[..., 2, :]  # rows
    return (a * torch.linalg.cross(b, c)).sum(-1)


def jacobian_determinant(flow: torch.Tensor, *, align_corners: bool = False) -> torch.Tensor:
    """Per-pixel Jacobian determinant of the map p -> p + flow(p), in pixel units, the input
    taken to be the field's size (registration): 1 where the map preserves area, below 1 where
    it shrinks, 0 or below where it folds.

    Args:
        flow: (B, H', W', 2) or (B, D', H', W', 3).
        align_corners: as in `F.grid_sample`.

    Returns:
        (B, H', W') or (B, D', H', W'). J = I + d flow / d p in pixels, by finite differences
        over the field's pixels (`stnkit.functional.jacobian.grid_jacobian`): central
        differences inside, one-sided ones on the first and last pixel of each axis; an axis one
        pixel long contributes its identity column. Exact for linear flows. Differentiable.
    """
    _check_field("flow", flow)
    d = flow.shape[-1]
    size = tuple(flow.shape[1:-1])
    f = flow.to(_work_dtype(flow))
    # grid_jacobian(identity + flow) == I + grid_jacobian(flow) (the identity's pixel Jacobian
    # is I); differencing the flow alone keeps the identity exact and the small flow precise.
    J = torch.eye(d, dtype=f.dtype, device=f.device) + grid_jacobian(f, size, bool(align_corners))
    return _det(J).to(flow.dtype)
