"""The sampler: read an image at the source coordinates of a grid.

One seam between the warp functions and the kernels that read pixels, so that a mode
`F.grid_sample` lacks (or a faster kernel) plugs in here and nowhere else.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .cubic import grid_sample_3d_bicubic


def sample(x: torch.Tensor, g: torch.Tensor, mode: str, padding_mode: str, align_corners: bool) -> torch.Tensor:
    """x: (B, C, H, W) with g (B, H', W', 2), or (B, C, D, H, W) with g (B, D', H', W', 3)
    -> (B, C, *g.shape[1:-1]); coordinates, modes and padding exactly as `F.grid_sample`, and
    mode "bicubic" on volumes (which `F.grid_sample` lacks) as its 2D bicubic, made tricubic."""
    if mode == "bicubic" and x.dim() == 5:
        return grid_sample_3d_bicubic(x, g, padding_mode, align_corners)
    return F.grid_sample(x, g, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
