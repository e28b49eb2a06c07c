"""Composition of two parameter sets of one matrix family, in parameter space.

Convention (the same as `compose_flows`): `compose(p, q)` is warping with p, then warping the
result with q: ``warp(warp(x, p, t), q, t) == warp(x, compose(p, q, t), t)`` (up to the
resampling of the intermediate image). Since a transform maps output to input coordinates, the
composed map is T_p(T_q(u)): T_q applied to the output coordinate first, and its matrix is the
product M_p @ M_q. Every matrix family is closed under this product, so the result is in the
same family's layout.
"""
from __future__ import annotations

import torch

from .. import transforms as _t
from . import matrix as M


def homogeneous(family, p: torch.Tensor) -> torch.Tensor:
    """Flat params (B, P) of a matrix family -> its (B, d + 1, d + 1) homogeneous
    src_from_dst matrix (last row (0, .., 0, 1) for the affine ones)."""
    if isinstance(family, _t.Projective):
        return M.homography_matrix(p)
    A = family.matrix(p)  # (B, d, d + 1)
    last = torch.zeros_like(A[:, :1])
    last[:, 0, -1] = 1
    return torch.cat([A, last], dim=1)


def _params(family, H: torch.Tensor) -> torch.Tensor:
    """The inverse of `_matrix` on the products of the family's own matrices: (B, n, n) -> (B, P)."""
    d = H.shape[-1] - 1
    t = H[:, :d, d]  # (B, d)
    if isinstance(family, _t.Projective):
        return (H / H[:, 2:, 2:]).reshape(-1, 9)[:, :8]
    if isinstance(family, _t.Affine):
        return H[:, :d].reshape(H.shape[0], -1)
    if isinstance(family, _t.Translation):
        return t
    if isinstance(family, _t.Attention):
        return torch.cat([H[:, 0, :1], t], dim=1)
    angle = torch.atan2(H[:, 1, 0], H[:, 0, 0])[:, None]
    if isinstance(family, _t.Rigid):
        return torch.cat([angle, t], dim=1)
    scale = torch.hypot(H[:, 0, 0], H[:, 1, 0])[:, None]
    return torch.cat([scale, angle, t], dim=1)  # similarity


def compose(p: torch.Tensor, q: torch.Tensor, family) -> torch.Tensor:
    """p, q: (B, P) canonical params of one matrix family -> (B, P): warping with p then q.
    For rigid and similarity the composed angle is returned in (-pi, pi]."""
    return _params(family, homogeneous(family, p) @ homogeneous(family, q))
