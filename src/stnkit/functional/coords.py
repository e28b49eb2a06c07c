"""Normalised coordinates: the axes of output pixel centres and conversions to pixels.

Convention (the one `torch.nn.functional.grid_sample` reads): the last axis of a grid or of a
point set is (x, y) in 2D and (x, y, z) in 3D; -1 and +1 are the image ends. With
``align_corners=False`` they are the outer edges of the first and last pixels (pixel i of n is
centred at (2i + 1)/n - 1); with ``align_corners=True`` they are the centres of those pixels
(pixel i of n is centred at 2i/(n - 1) - 1, and at 0 when n == 1).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def axis(n: int, align_corners: bool, *, dtype=None, device=None) -> torch.Tensor:
    """Normalised centres of `n` pixels along one axis: (n,)."""
    if n == 1:
        return torch.zeros(1, dtype=dtype, device=device)
    a = torch.linspace(-1.0, 1.0, n, dtype=dtype, device=device)
    return a if align_corners else a * ((n - 1) / n)


def identity_grid(size: Sequence[int], align_corners: bool, *, dtype=None, device=None) -> torch.Tensor:
    """The grid that samples every pixel at its own centre.

    size: (H, W) -> (H, W, 2), or (D, H, W) -> (D, H, W, 3); last axis (x, y[, z]).
    """
    axes = [axis(n, align_corners, dtype=dtype, device=device) for n in size]
    mesh = torch.meshgrid(*axes, indexing="ij")  # each (*size), in (z,) y, x order
    return torch.stack(mesh[::-1], dim=-1)


def _scale_offset(size: Sequence[int], align_corners: bool, like: torch.Tensor):
    n = torch.tensor(list(size)[::-1], dtype=like.dtype, device=like.device)  # (x, y[, z]) order
    if align_corners:
        return (n - 1).clamp(min=1) / 2, (n - 1) / 2
    return n / 2, (n - 1) / 2


def to_pixels(points: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Normalised coordinates -> pixel-centre coordinates (0 is the first pixel's centre).

    points: (..., 2) as (x, y) for size (H, W), or (..., 3) as (x, y, z) for (D, H, W).
    """
    if points.shape[-1] != len(size):
        raise ValueError(f"points' last axis must be {len(size)} for size {tuple(size)}, got {tuple(points.shape)}")
    scale, offset = _scale_offset(size, align_corners, points)
    return points * scale + offset


def to_normalised(points: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Pixel-centre coordinates -> normalised coordinates; the inverse of `to_pixels`."""
    if points.shape[-1] != len(size):
        raise ValueError(f"points' last axis must be {len(size)} for size {tuple(size)}, got {tuple(points.shape)}")
    scale, offset = _scale_offset(size, align_corners, points)
    return (points - offset) / scale


def box_to_pixels(box: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Boxes of normalised edges (align_corners=False) -> boxes in pixel edges, where 0 is the
    first pixel's outer edge and W the last one's: (..., 4) (x0, y0, x1, y1) for size (H, W)."""
    corners = box.unflatten(-1, (2, 2))  # (..., corner, (x, y))
    return (to_pixels(corners, size, align_corners=False) + 0.5).flatten(-2)  # an edge lies half a pixel before a centre


def box_to_normalised(box: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The inverse of `box_to_pixels`: (..., 4) pixel edges -> normalised edges."""
    corners = box.unflatten(-1, (2, 2))
    return to_normalised(corners - 0.5, size, align_corners=False).flatten(-2)
