"""Antialiased sampling: the area average of each output pixel's footprint where a map shrinks.

A grid (B, *size, d) and its Jacobian in pixels, J[..., a, u] = d(input pixel along a) /
d(output pixel along u), give every output pixel a footprint in the input: the parallelogram
J [-1/2, 1/2]^d. Column u has length s_u, the shrink along output axis u. Where s_u > 1 the
footprint is supersampled along u: n_u offsets t_j = ((j + 0.5) / n_u - 0.5) r(s_u) output
pixels, with the ramp r(s) = clamp(s - 1, 0, 1) (0, the plain sample, up to s = 1; the whole
footprint from s = 2), and averaged. n_u = ceil(max of s_u r(s_u) over the call), read on the
host: one host sync per call. Pixels that shrink along no axis keep the plain sample bit for
bit. When a k x k box (k >= 2) fits inside every footprint of the call (padding "zeros" or
"border"), the input is first box-filtered k x k at stride 1 and n_u = ceil(max s_u / k)
subsamples, each a k-box, spread over the rest (`_box_spread`): an axis-aligned shrink by k
then costs one sample per output pixel, as plain sampling does.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .coords import _scale_offset, axis
from .jacobian import grid_jacobian
from .matrix import OUTSIDE, PROJECTIVE_EPS
from .sample import sample

__all__ = ["antialiased_sample", "affine_jacobian", "projective_jacobian", "ramp"]

TOL = 1e-3  # shrinks within this of 1 are float noise in J (no filtering); counts are rounded with it
MAX_SUBSAMPLES = {2: 8, 3: 4}  # per output axis: 64 samples per output pixel at most


def ramp(s: torch.Tensor) -> torch.Tensor:
    """r(s) = clamp(s - 1, 0, 1), taken as 0 up to s = 1 + TOL: the share of the footprint that
    is supersampled at a shrink s. Same shape as s."""
    return (s - 1).clamp(0, 1).masked_fill(s <= 1 + TOL, 0.0)


def _box_spread(s: torch.Tensor, k: int, n: torch.Tensor) -> torch.Tensor:
    """The share of the footprint that n subsamples (each a k-box) spread over after the box
    prefilter: (s - k) n / ((n - 1) s), so that n boxes tile the footprint at s = n k and
    shrink to one at s = k. s: (..., d), n: (d,) -> (..., d)."""
    return ((s - k) * n / ((n - 1).clamp_min(1) * s.clamp_min(k))).clamp(0, 1)


def _width(s: float) -> float:
    """Footprint width s r(s) that needs supersampling, for one host float (monotone in s)."""
    return 0.0 if s <= 1 + TOL else s * min(s - 1, 1.0)


def _count(s_max: float, d: int) -> int:
    """Subsamples along an output axis whose largest shrink in the call is s_max."""
    return max(1, min(MAX_SUBSAMPLES[d], math.ceil(_width(s_max) - TOL)))


def affine_jacobian(src_from_dst: torch.Tensor, input_size: Sequence[int], output_size: Sequence[int],
                    align_corners: bool) -> torch.Tensor:
    """The exact Jacobian in pixels of an affine map, the same at every output pixel.

    src_from_dst: (B, d, d + 1) normalised -> (B, 1, .., 1, d, d) (d ones), as `grid_jacobian`
    (also for an output axis one pixel long)."""
    B, d = src_from_dst.shape[:2]
    s_in, _ = _scale_offset(input_size, align_corners, src_from_dst)  # (d,) normalised -> pixels
    s_out, _ = _scale_offset(output_size, align_corners, src_from_dst)
    J = src_from_dst[:, :, :d] * s_in[:, None] / s_out  # (B, d, d)
    return J.view(B, *([1] * d), d, d)


def projective_jacobian(h: torch.Tensor, g: torch.Tensor, input_size: Sequence[int],
                        align_corners: bool) -> torch.Tensor:
    """The exact Jacobian in pixels of a homography at every output pixel; 0 behind its horizon.

    h: (B, 3, 3) src_from_dst; g: (B, H', W', 2) its grid -> (B, H', W', 2, 2).
    d(num_a / w) / du = (h[a, u] - g_a h[2, u]) / w, w = h31 x + h32 y + h33."""
    B, H, W, _ = g.shape
    kw = dict(dtype=g.dtype, device=g.device)
    x, y = axis(W, align_corners, **kw), axis(H, align_corners, **kw).view(H, 1)
    w = h[:, 2, 0, None, None] * x + h[:, 2, 1, None, None] * y + h[:, 2, 2, None, None]  # (B, H', W')
    ahead = w > PROJECTIVE_EPS
    inv_w = torch.where(ahead, 1 / torch.where(ahead, w, 1.0), 0.0)[..., None, None]  # (B, H', W', 1, 1)
    num = h[:, None, None, :2, :2] - g[..., :, None] * h[:, None, None, 2:, :2]  # (B, H', W', 2, 2)
    s_in, _ = _scale_offset(input_size, align_corners, g)
    s_out, _ = _scale_offset((H, W), align_corners, g)
    return num * inv_w * s_in[:, None] / s_out


def _inscribed_box(J: torch.Tensor) -> torch.Tensor:
    """The side of the largest cube [-k/2, k/2]^d inside the footprint J [-1/2, 1/2]^d:
    1 / max_i |row i of J^-1|_1 = |det J| / max_i |cofactor row i|_1. (..., d, d) -> (...)."""
    c = J.unbind(-1)  # columns, each (..., d)
    if len(c) == 2:
        det = c[0][..., 0] * c[1][..., 1] - c[0][..., 1] * c[1][..., 0]
        rows = [c[1], c[0]]  # rows of the adjugate are these columns turned by 90 degrees
    else:
        rows = [torch.linalg.cross(c[1], c[2]), torch.linalg.cross(c[2], c[0]), torch.linalg.cross(c[0], c[1])]
        det = (c[0] * rows[0]).sum(-1)
    l1 = torch.stack([r.abs().sum(-1) for r in rows], -1).amax(-1)
    return det.abs() / l1.clamp_min(torch.finfo(J.dtype).tiny)


def _spread(t: torch.Tensor) -> torch.Tensor:
    """(B, *s, d) -> (B, d, s0, 1, s1, 1, ..): planar, a unit axis after every spatial one."""
    t = t.movedim(-1, 1)
    return t.reshape(t.shape[0], t.shape[1], *[n for S in t.shape[2:] for n in (S, 1)])


def _supersample(x, g, D, r, n, mode, padding_mode, align_corners):
    """x: (B, C, *in); g: (B, *s, d); D: (B, *s or 1s, d, d) normalised source shift per output
    pixel (column u: along output axis u); r: (B, *s or 1s, d) ramp; n: d counts in (x, y[, z])
    order -> (B, C, *s): the mean of the n_x n_y (n_z) subsamples of every output pixel."""
    B, d, size = g.shape[0], g.shape[-1], g.shape[1:-1]
    shift = 0.0
    for u in range(d):
        if n[u] == 1:
            continue  # offset 0 along u
        i = d - 1 - u  # the spatial dim of output axis u (x is the last)
        t = (torch.arange(n[u], dtype=g.dtype, device=g.device) + 0.5) / n[u] - 0.5
        t = t.view(*[1] * (3 + 2 * i), n[u], *[1] * (2 * (d - 1 - i)))  # on the unit axis after dim i
        shift = shift + _spread(D[..., u] * r[..., u, None]) * t
    per_dim = n[::-1]  # counts in spatial-dim order
    G = (_spread(g) + shift).reshape(B, d, *[S * k for S, k in zip(size, per_dim)])  # (B, d, s0 n0, ..)
    y = sample(x, G.movedim(1, -1), mode, padding_mode, align_corners)  # (B, C, s0 n0, ..)
    return (F.avg_pool2d if d == 2 else F.avg_pool3d)(y, per_dim)


def _box_sum(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Sums of k neighbours along `dim` at stride 1: length L -> L - k + 1 (k - 1 adds of
    slices; avg_pool at stride 1 is several times slower on CPU)."""
    L = x.shape[dim] - k + 1
    total = x.narrow(dim, 0, L)
    for j in range(1, k):
        total = total + x.narrow(dim, j, L)
    return total


def _prefilter(x: torch.Tensor, g: torch.Tensor, k: int, padding_mode: str, align_corners: bool):
    """x (B, C, *in) -> k^d times x averaged over a k x k (x k) box around every pixel (stride
    1; x extended by k - 1 pixels on each side: zeros, or the edge for "border"), and g
    (B, *s, d) in that image's normalised coordinates for align_corners=False. OUTSIDE still
    lands 3 pixels or more outside it (every kernel reads only padding there) as k <= the
    input size. The caller divides by k^d, on the (smaller) sampled output."""
    d, size = g.shape[-1], x.shape[2:]
    x = F.pad(x, [k - 1] * (2 * d), mode="constant" if padding_mode == "zeros" else "replicate")
    for i in range(d):  # separable: k values per pixel and axis, not k^d
        x = _box_sum(x, k, 2 + i)
    scale, offset = _scale_offset(size, align_corners, g)  # input normalised -> pixel centres
    n = torch.tensor([S + k - 1 for S in size][::-1], dtype=g.dtype, device=g.device)
    # box i covers input pixels i - k + 1 .. i: pixel p is at p + (k - 1) / 2 there, its edge at p + k / 2
    a, b = (v.view(d, *[1] * d) for v in (2 * scale / n, 2 * (offset + k / 2) / n - 1))
    return x, (g.movedim(-1, 1) * a + b).movedim(1, -1)  # planar: fast on a permuted grid


def antialiased_sample(x: torch.Tensor, g: torch.Tensor, mode: str, padding_mode: str, align_corners: bool,
                       jacobian: torch.Tensor | None = None) -> torch.Tensor:
    """`sample(x, g, ...)`, area-averaged over each output pixel's footprint where the map shrinks.

    x: (B, C, H, W) with g (B, H', W', 2), or (B, C, D, H, W) with g (B, D', H', W', 3);
    jacobian: J in pixels, (B, *g.shape[1:-1], d, d) or (B, 1, .., 1, d, d) (default:
    `grid_jacobian(g)`) -> (B, C, *g.shape[1:-1]). Differentiable in x and g (and J).
    One host sync (the subsample counts)."""
    d, size = g.shape[-1], x.shape[2:]
    if g.shape[0] == 0 or g.numel() == 0:
        return sample(x, g, mode, padding_mode, align_corners)
    J = grid_jacobian(g, size, align_corners) if jacobian is None else jacobian
    s = torch.linalg.vector_norm(J, dim=-2)  # (B, *s, d): the shrink along each output axis
    r = ramp(s)
    lead = J.shape[:-2]
    stats = [s.reshape(-1, d).amax(0), r.amax(-1).amin().view(1)]
    use_box = padding_mode in ("zeros", "border")  # the paddings the box prefilter can extend
    if use_box:
        box = _inscribed_box(J)
        if math.prod(lead[1:]) > 1:  # per-pixel J: pixels behind a horizon (J = 0) do not count
            box = box.masked_fill((g == OUTSIDE).all(-1), math.inf)
        stats.append(box.amin().view(1))
    host = torch.cat(stats).tolist()  # the one host sync
    s_max, shrinks_all = host[:d], host[d] > 0
    n = [_count(v, d) for v in s_max]
    if n == [1] * d:
        return sample(x, g, mode, padding_mode, align_corners)
    k = math.floor(min(host[d + 1], *size) + TOL) if use_box else 1
    if k >= 2:  # a k-box inside every footprint: box-filter first, supersample the rest
        xk, gk = _prefilter(x, g, k, padding_mode, align_corners)
        nk = [max(1, min(MAX_SUBSAMPLES[d], math.ceil(v / k - TOL))) for v in s_max]
        if nk == [1] * d:
            return sample(xk, gk, mode, padding_mode, False) / k**d
        s_k, _ = _scale_offset(xk.shape[2:], False, g)
        r_k = _box_spread(s, k, torch.tensor(nk, dtype=s.dtype, device=s.device))
        return _supersample(xk, gk, J / s_k[:, None], r_k, nk, mode, padding_mode, False) / k**d
    s_in, _ = _scale_offset(size, align_corners, g)
    out = _supersample(x, g, J / s_in[:, None], r, n, mode, padding_mode, align_corners)
    if shrinks_all:
        return out
    filtered = (r > 0).any(-1)[:, None]  # (B, 1, *s or 1s): pixels that shrink along some axis
    return torch.where(filtered, out, sample(x, g, mode, padding_mode, align_corners))
