"""Grids and point maps of matrix transforms (affine and its special cases, 2D and 3D, and the
projective homography), and the parameter -> matrix conversions of each family.

Every matrix here is `src_from_dst`: it maps output (target) coordinates to input (source)
coordinates, the direction in which the sampler reads.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .coords import axis

# Homogeneous denominators at or below this are "behind the horizon": no source point.
PROJECTIVE_EPS = 1e-6
# Where such output pixels sample: far outside the image on every axis, so that every sampling
# kernel (nearest, bilinear, bicubic) reads only padding there.
OUTSIDE = -8.0


def affine_grid_planar(src_from_dst: torch.Tensor, size: Sequence[int], align_corners: bool) -> torch.Tensor:
    """Source coordinates of every output pixel for an affine map, coordinate axis first.

    src_from_dst: (B, rows, d + 1) with size (H', W') (d = 2) or (D', H', W') (d = 3)
    -> (B, rows, *size). Built as broadcast sums over the matrix's columns, outermost axis
    first, so that only the last sum writes a full-size tensor. Planar (rows before the pixels)
    because element-wise ops and their backward reductions over a last axis of 2 or 3 are
    several times slower on CPU than over a contiguous pixel axis.
    """
    cols_n = src_from_dst.shape[2]  # input coordinates + 1
    kw = dict(dtype=src_from_dst.dtype, device=src_from_dst.device)
    c = src_from_dst[..., None, None]  # (B, rows, cols_n, 1, 1): column j = coefficient of coordinate j
    if cols_n == 3:
        H, W = size
        x, y = axis(W, align_corners, **kw), axis(H, align_corners, **kw).view(H, 1)
        return (y * c[:, :, 1] + c[:, :, 2]) + x * c[:, :, 0]  # (B, rows, H', 1) + (B, rows, 1, W')
    D, H, W = size
    c = c[..., None]
    x, y = axis(W, align_corners, **kw), axis(H, align_corners, **kw).view(H, 1)
    z = axis(D, align_corners, **kw).view(D, 1, 1)
    slab = z * c[:, :, 2] + c[:, :, 3]  # (B, rows, D', 1, 1)
    slab = slab + y * c[:, :, 1]  # (B, rows, D', H', 1)
    return slab + x * c[:, :, 0]  # (B, rows, D', H', W')


def affine_grid(src_from_dst: torch.Tensor, size: Sequence[int], align_corners: bool) -> torch.Tensor:
    """`affine_grid_planar` with the coordinates last, as `F.grid_sample` reads them.

    src_from_dst: (B, 2, 3) with size (H', W') -> (B, H', W', 2), or (B, 3, 4) with size
    (D', H', W') -> (B, D', H', W', 3). Equal to `F.affine_grid` (to float rounding). A
    permuted view of the planar grid (not contiguous): `F.grid_sample` reads it at full speed.
    """
    return affine_grid_planar(src_from_dst, size, align_corners).movedim(1, -1)


def affine_points(src_from_dst: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """points: (B, N, d) target -> (B, N, rows) source, for src_from_dst (B, rows, d + 1)."""
    d = src_from_dst.shape[2] - 1
    return torch.baddbmm(src_from_dst[:, None, :, d], points, src_from_dst[:, :, :d].transpose(1, 2))


def _safe_divide(num: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """num / w where w > PROJECTIVE_EPS, OUTSIDE elsewhere, with finite gradients everywhere."""
    valid = w > PROJECTIVE_EPS
    w_safe = torch.where(valid, w, torch.ones_like(w))
    return torch.where(valid, num / w_safe, torch.full_like(num, OUTSIDE))


def _inverse_denominator(w: torch.Tensor) -> torch.Tensor:
    """1 / w where w > PROJECTIVE_EPS, 0 behind the horizon; finite gradients everywhere."""
    valid = w > PROJECTIVE_EPS
    return torch.where(valid, torch.where(valid, w, torch.ones_like(w)).reciprocal(), torch.zeros_like(w))


class _ProjectiveGrid(torch.autograd.Function):
    """h: (B, 9) homography rows; base: (3, N) output points as rows (x, y, 1) -> (B, 2, N) source
    points, planar, OUTSIDE (with zero gradient) behind the horizon.

    Forward: one GEMM, a reciprocal and a multiply. Backward: the closed form (one more GEMM),
    written with differentiable ops on the saved input and output, so double backward works.
    """

    @staticmethod
    def forward(ctx, h, base):
        full = (h.view(-1, 3) @ base).view(h.shape[0], 3, -1)  # (B, 3, N) homogeneous
        inv = _inverse_denominator(full[:, 2:])  # (B, 1, N)
        out = (full[:, :2] * inv).masked_fill_(inv == 0, OUTSIDE)
        ctx.save_for_backward(h, base, out)
        return out

    @staticmethod
    def backward(ctx, g):  # g: (B, 2, N)
        h, base, out = ctx.saved_tensors
        inv = _inverse_denominator((h[:, 6:] @ base)[:, None])  # (B, 1, N), recomputed: differentiable
        g_num = g * inv  # d/d(numerators)
        g_den = -(g_num * out).sum(1, keepdim=True)  # d/d(denominator): -sum_r g_r num_r / w^2
        gh = torch.cat([g_num, g_den], 1) @ base.T  # (B, 3, 3)
        return gh.view(h.shape[0], 9), None


def projective_grid(src_from_dst: torch.Tensor, size: Sequence[int], align_corners: bool) -> torch.Tensor:
    """Homography grid. src_from_dst: (B, 3, 3) with [2, 2] == 1 -> (B, H', W', 2), a permuted
    view of a planar (B, 2, H', W') tensor.

    Output pixels whose denominator h31 x + h32 y + 1 is at or below PROJECTIVE_EPS map to a
    point far outside the input (they read the padding value), with zero gradient.
    """
    eye = torch.eye(3, dtype=src_from_dst.dtype, device=src_from_dst.device)
    base = affine_grid_planar(eye[None], size, align_corners).reshape(3, -1)  # (3, H'W'): x, y, 1
    out = _ProjectiveGrid.apply(src_from_dst.reshape(-1, 9), base)  # (B, 2, H'W')
    return out.view(-1, 2, *size).movedim(1, -1)


def projective_points(src_from_dst: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """points: (B, N, 2) target -> (B, N, 2) source through a (B, 3, 3) homography."""
    full = affine_points(src_from_dst, points)  # (B, N, 3)
    return _safe_divide(full[..., :2], full[..., 2:])


# ---- parameters -> matrices ---------------------------------------------------------------

def translation_matrix(p: torch.Tensor) -> torch.Tensor:
    """p: (B, d) = t -> (B, d, d + 1) = [I | t]."""
    B, d = p.shape
    eye = torch.eye(d, dtype=p.dtype, device=p.device).expand(B, d, d)
    return torch.cat([eye, p[:, :, None]], dim=2)


def attention_matrix(p: torch.Tensor) -> torch.Tensor:
    """p: (B, 1 + d) = (s, t) -> (B, d, d + 1) = [s I | t]."""
    B, P = p.shape
    d = P - 1
    eye = torch.eye(d, dtype=p.dtype, device=p.device)
    return torch.cat([p[:, :1, None] * eye, p[:, 1:, None]], dim=2)


def similarity_matrix(scale: torch.Tensor, angle: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """scale, angle: (B,), t: (B, 2) -> (B, 2, 3) = [s R(angle) | t]."""
    c, s = torch.cos(angle) * scale, torch.sin(angle) * scale
    row0 = torch.stack([c, -s, t[:, 0]], dim=1)
    row1 = torch.stack([s, c, t[:, 1]], dim=1)
    return torch.stack([row0, row1], dim=1)


def rigid_matrix(p: torch.Tensor) -> torch.Tensor:
    """p: (B, 3) = (angle, tx, ty) -> (B, 2, 3)."""
    return similarity_matrix(torch.ones_like(p[:, 0]), p[:, 0], p[:, 1:])


def similarity_params_matrix(p: torch.Tensor) -> torch.Tensor:
    """p: (B, 4) = (s, angle, tx, ty) -> (B, 2, 3)."""
    return similarity_matrix(p[:, 0], p[:, 1], p[:, 2:])


def homography_matrix(p: torch.Tensor) -> torch.Tensor:
    """p: (B, 8) = h11..h32 -> (B, 3, 3) with h33 = 1."""
    return torch.cat([p, torch.ones_like(p[:, :1])], dim=1).view(-1, 3, 3)
