"""The local Jacobian of a sampling grid, by finite differences over output pixels.

A grid (B, *size, d) holds the normalised source coordinate of every output pixel. Its Jacobian
here is in pixels: J[..., a, u] = d(input pixel coordinate along axis a) / d(output pixel index
along axis u), axes in (x, y[, z]) order, so a map that shrinks its input k times along an
output axis has a column of length k. Central differences inside, one-sided ones on the first
and last pixel of each axis (exact for every matrix family, whose grids are linear); an axis
one pixel long has no neighbour to difference with, so its column is 0.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .coords import _scale_offset


def _diff(g: torch.Tensor, axis: int) -> torch.Tensor:
    """d g / d index along `axis` of g (one step = one pixel), the shape of g."""
    n = g.shape[axis]
    if n == 1:
        return torch.zeros_like(g)
    fwd = g.narrow(axis, 1, n - 1) - g.narrow(axis, 0, n - 1)  # (.., n - 1, ..)
    if n == 2:
        return torch.cat([fwd, fwd], dim=axis)
    central = (fwd.narrow(axis, 1, n - 2) + fwd.narrow(axis, 0, n - 2)) / 2
    return torch.cat([fwd.narrow(axis, 0, 1), central, fwd.narrow(axis, n - 2, 1)], dim=axis)


def grid_jacobian(g: torch.Tensor, input_size: Sequence[int], align_corners: bool) -> torch.Tensor:
    """g: (B, H', W', 2) or (B, D', H', W', 3) normalised source coordinates; input_size: the
    sampled image's (H, W) or (D, H, W) -> (B, *size, d, d), J[..., a, u] in input pixels per
    output pixel (a: source axis, u: output axis, both in (x, y[, z]) order). Differentiable."""
    d = g.shape[-1]
    scale, _ = _scale_offset(input_size, align_corners, g)  # (d,) normalised -> pixels, (x, y[, z])
    # Output axis u = x is the last spatial dim of g (index d), y the one before, ...
    cols = [_diff(g, d - u) for u in range(d)]  # each (B, *size, d): d(source) / d(output index u)
    return torch.stack(cols, dim=-1) * scale[:, None]
