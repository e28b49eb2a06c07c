"""Thin-plate splines through K control points whose target positions are fixed.

T(p) = a0 + a1 x + a2 y + sum_k w_k U(|p - c_k|), U(r) = r^2 log r^2, interpolating the
(predicted) source positions of the K control points at their fixed target positions c_k.
Because the targets are fixed, T is linear in the source positions: every grid is a fixed
(N, K) matrix times the (B, K, 2) sources, and that matrix is built once per output size
(as `interleaved`, so that the whole batch's grid is one GEMM).
"""
from __future__ import annotations

import math

import torch


def square_grid_points(k: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """The default targets: a sqrt(k) x sqrt(k) grid over [-1, 1]^2, row-major (y outer, x
    inner). -> (k, 2) as (x, y)."""
    n = math.isqrt(k)
    if n * n != k or n < 2:
        raise ValueError(f"the default TPS control grid needs a square number of points >= 4, got {k}")
    a = torch.linspace(-1.0, 1.0, n, dtype=dtype, device=device)
    y, x = torch.meshgrid(a, a, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)


def kernel(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """U(|p - c|) = r^2 log r^2 (0 at r = 0). points: (..., N, 2), centres: (K, 2) -> (..., N, K)."""
    r2 = (points[..., :, None, :] - centres).pow(2).sum(-1)
    return r2 * torch.log(torch.where(r2 > 0, r2, torch.ones_like(r2)))


def _affine_part(points: torch.Tensor) -> torch.Tensor:
    """(..., N, 2) -> (..., N, 3) = [1, x, y]."""
    return torch.cat([torch.ones_like(points[..., :1]), points], dim=-1)


def solve_weights(targets: torch.Tensor, reg: float = 0.0) -> torch.Tensor:
    """The linear map from source positions to spline coefficients.

    targets: (K, 2) float64 -> (K + 3, K): [w; a] = result @ sources for sources (K, 2).
    Raises ValueError when the system is singular (repeated or collinear targets).
    """
    K = targets.shape[0]
    if K < 3:
        raise ValueError(f"a thin-plate spline needs at least 3 control points, got {K}")
    dup = torch.cdist(targets, targets) + torch.eye(K, dtype=targets.dtype, device=targets.device) * 1e9
    if bool((dup < 1e-9).any()):
        i, j = [int(v) for v in (dup < 1e-9).nonzero()[0]]
        raise ValueError(
            f"TPS target control points {i} and {j} coincide at {targets[i].tolist()}: "
            "the spline system is singular; give distinct points"
        )
    L = torch.zeros(K + 3, K + 3, dtype=targets.dtype, device=targets.device)
    L[:K, :K] = kernel(targets, targets) + reg * torch.eye(K, dtype=targets.dtype, device=targets.device)
    P = _affine_part(targets)
    L[:K, K:], L[K:, :K] = P, P.T
    rhs = torch.zeros(K + 3, K, dtype=targets.dtype, device=targets.device)
    rhs[:K] = torch.eye(K, dtype=targets.dtype, device=targets.device)
    cond = torch.linalg.cond(L)
    if not bool(torch.isfinite(cond)) or float(cond) > 1e12:
        raise ValueError(
            f"the TPS system of these {K} target control points is singular (condition number "
            f"{float(cond):.3g}; are they all on one line, or nearly coincident?); give points that span the plane"
        )
    return torch.linalg.solve(L, rhs)


def basis(points: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[U(|p - c_k|)_k, 1, x, y] for every point. points (..., N, 2) -> (..., N, K + 3)."""
    return torch.cat([kernel(points, targets), _affine_part(points)], dim=-1)


def tps_points(sources: torch.Tensor, points: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Map target-frame points to the source frame.

    sources: (B, K, 2); points: (B, N, 2); targets: (K, 2); weights: (K + 3, K) from
    `solve_weights` -> (B, N, 2).
    """
    coef = torch.matmul(weights.to(sources.dtype), sources)  # (B, K + 3, 2)
    return torch.matmul(basis(points, targets.to(points.dtype)), coef)


def interleaved(m: torch.Tensor) -> torch.Tensor:
    """m: (N, K) grid matrix -> A: (2K, 2N) with A[2k + c, 2n + c] = m[n, k], so that the flat
    sources (B, 2K) as (x1, y1, ..., xK, yK) @ A = the flat grid (B, 2N) as (x, y) per point:
    one GEMM instead of a batched matmul with only 2 output columns."""
    eye = torch.eye(2, dtype=m.dtype, device=m.device)
    return (m.T[:, None, :, None] * eye[:, None, :]).reshape(2 * m.shape[1], 2 * m.shape[0])  # [k, c, n, c']
