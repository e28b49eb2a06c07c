"""Grids and point maps of matrix transforms (affine and its special cases, 2D and 3D, and the
projective homography), and the parameter -> matrix conversions of each family.

Every matrix here is `src_from_dst`: it maps output (target) coordinates to input (source)
coordinates, the direction in which the sampler reads.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

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


def _inverse_denominator(w: torch.Tensor) -> torch.Tensor:
    """1 / w where w > PROJECTIVE_EPS, 0 behind the horizon (1 / inf); finite gradients everywhere."""
    return F.threshold(w, PROJECTIVE_EPS, torch.inf).reciprocal_()  # w if w > EPS else inf


def _safe_divide(num: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """num / w where w > PROJECTIVE_EPS, OUTSIDE elsewhere, with finite gradients everywhere."""
    inv = _inverse_denominator(w)
    return torch.where(inv > 0, num * inv, OUTSIDE)


class _ProjectiveGrid(torch.autograd.Function):
    """h: (B, 3, 3) homography -> (B, 2, H'W') source points of the output pixels, planar;
    OUTSIDE, with zero gradient, behind the horizon.

    Forward: `affine_grid_planar` (element-wise, so every batch item gets the same bits alone or
    in a batch), then in place num / w + (OUTSIDE behind the horizon, else 0): one full-size
    allocation. Backward: the closed form, with GEMMs against the (3, H'W') output points.
    Double backward differentiates that closed form: it uses only differentiable ops, on the
    input h and the output (the saved 1 / w is recomputed from h when a graph is being built).
    """

    @staticmethod
    def forward(ctx, h, size, align_corners):
        full = affine_grid_planar(h, size, align_corners).flatten(2)  # (B, 3, N) homogeneous
        inv = _inverse_denominator(full[:, 2])  # (B, N)
        outside = torch.where(inv > 0, 0.0, OUTSIDE)  # (B, N), exact in every float dtype
        out = full[:, :2].mul_(inv[:, None]).add_(outside[:, None])  # in place: a (B, 2, N) view
        eye = torch.eye(3, dtype=h.dtype, device=h.device)
        base = affine_grid_planar(eye[None], size, align_corners).reshape(3, -1)  # (3, N): x, y, 1
        ctx.save_for_backward(h, base, out, inv)
        return out

    @staticmethod
    def backward(ctx, g):  # g: (B, 2, N), a permuted view: work on its two (B, N) planes
        h, base, out, inv = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: inv as a differentiable function of h
            inv = _inverse_denominator(h[:, 2] @ base)
        gx, gy = g[:, 0] * inv, g[:, 1] * inv  # d/d(numerators)
        gw = (gx * out[:, 0]).addcmul_(gy, out[:, 1])  # -d/dw = sum_r g_r num_r / w^2
        return torch.stack([gx @ base.T, gy @ base.T, -(gw @ base.T)], 1), None, None  # (B, 3, 3)


def projective_grid(src_from_dst: torch.Tensor, size: Sequence[int], align_corners: bool) -> torch.Tensor:
    """Homography grid. src_from_dst: (B, 3, 3) with [2, 2] == 1 -> (B, H', W', 2), a permuted
    view of a planar (B, 2, H', W') tensor.

    Output pixels whose denominator h31 x + h32 y + 1 is at or below PROJECTIVE_EPS map to a
    point far outside the input (they read the padding value), with zero gradient.
    """
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        # TorchScript and ONNX cannot record a Python autograd Function: the same values from
        # plain ops (num * (1 / w), or OUTSIDE: the Function's forward bit for bit).
        full = affine_grid_planar(src_from_dst, size, align_corners).flatten(2)  # (B, 3, H'W')
        w = full[:, 2:]  # (B, 1, H'W')
        ahead = w > PROJECTIVE_EPS
        out = torch.where(ahead, full[:, :2] * torch.where(ahead, w, 1.0).reciprocal(), OUTSIDE)  # (B, 2, H'W')
    else:
        out = _ProjectiveGrid.apply(src_from_dst, tuple(size), align_corners)  # (B, 2, H'W')
    return out.unflatten(2, tuple(size)).movedim(1, -1)  # B may be 0


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
