"""Deformable convolution's maths: bilinear deformable im2col, its GEMM, and the backward.

Semantics are torchvision's `deform_conv2d`. Tap k = i * kw + j of output pixel (ho, wo) in
offset group g reads the input at
    y = ho * stride_h - pad_h + i * dilation_h + dy,   x = wo * stride_w - pad_w + j * dilation_w + dx
with (dy, dx) = offset[b, g * 2K + 2k : g * 2K + 2k + 2, ho, wo], bilinearly, zero outside the
image: a point at or beyond one pixel outside reads 0 (and passes no gradient to its offset),
one between the border pixel and that limit blends with zeros.

How: every tap of every output pixel is sampled by ONE `F.grid_sample` call (zeros padding is
exactly that rule), and the columns `(B, C_in * K, H_out * W_out)` meet the weight in one GEMM
per chunk of the batch. The image is zero-padded on its right and bottom to power-of-two sizes
first, so that pixel -> normalised -> pixel is exact in binary floating point: a tap at an
integer position (every tap, at zero offsets) stays exactly on its pixel, and the offset
gradient there is the forward difference, as in torchvision, not a rounding-dependent side.
The backward recomputes the columns chunk by chunk (only the inputs are saved), and gets the
input and offset gradients from `grid_sample`'s own backward kernel.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

# Columns of one chunk of the batch stay below this many bytes (at least one item per chunk),
# so that peak memory is bounded by a chunk, not by the whole batch's columns.
CHUNK_BYTES = 64 * 2**20


class Geometry(NamedTuple):
    kh: int
    kw: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int  # weight groups: C_in / weight.shape[1]
    offset_groups: int


def output_size(H: int, W: int, geo: Geometry) -> tuple[int, int]:
    """The (H_out, W_out) of a convolution of an (H, W) input."""
    (sh, sw), (ph, pw), (dh, dw) = geo.stride, geo.padding, geo.dilation
    return (H + 2 * ph - dh * (geo.kh - 1) - 1) // sh + 1, (W + 2 * pw - dw * (geo.kw - 1) - 1) // sw + 1


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _canvas(x: torch.Tensor, G: int) -> torch.Tensor:
    """x (b, C, H, W) -> (b G, C / G, Hc, Wc): zero-padded right and bottom to powers of two."""
    b, C, H, W = x.shape
    Hc, Wc = _pow2(H), _pow2(W)
    if (Hc, Wc) != (H, W):
        x = F.pad(x, (0, Wc - W, 0, Hc - H))
    return x.reshape(b * G, C // G, Hc, Wc)


class _Taps(NamedTuple):
    grid: torch.Tensor  # (b G, K Ho, Wo, 2): normalised (x, y) in the canvas, align_corners=False
    inside: torch.Tensor  # (b, G, K, Ho, Wo) bool: strictly within one pixel of the image


def _taps(offset: torch.Tensor, H: int, W: int, geo: Geometry) -> _Taps:
    """offset (b, 2 G K, Ho, Wo) -> where every tap samples."""
    b, _, Ho, Wo = offset.shape
    G, K = geo.offset_groups, geo.kh * geo.kw
    kw_ = dict(dtype=offset.dtype, device=offset.device)
    off = offset.view(b, G, K, 2, Ho, Wo)
    (sh, sw), (ph, pw), (dh, dw) = geo.stride, geo.padding, geo.dilation
    ki = torch.arange(geo.kh, **kw_).repeat_interleave(geo.kw) * dh  # (K,): row of tap k
    kj = torch.arange(geo.kw, **kw_).repeat(geo.kh) * dw  # (K,): column of tap k
    y = off[:, :, :, 0] + ((torch.arange(Ho, **kw_) * sh - ph)[None, :, None] + ki[:, None, None])  # (b, G, K, Ho, Wo)
    x = off[:, :, :, 1] + ((torch.arange(Wo, **kw_) * sw - pw)[None, None, :] + kj[:, None, None])
    # Clamped: nothing changes within a pixel of the image, and +-inf reads 0 as every other
    # point outside does (grid_sample would make it NaN); NaN stays NaN, as in torchvision.
    y, x = y.clamp(-2, H + 1), x.clamp(-2, W + 1)
    inside = (y > -1) & (y < H) & (x > -1) & (x < W)
    Hc, Wc = _pow2(H), _pow2(W)
    grid = torch.stack([(2 * x + 1) / Wc - 1, (2 * y + 1) / Hc - 1], dim=-1)  # exact for integer x, y
    return _Taps(grid.view(b * G, K * Ho, Wo, 2), inside)


def _sample(canvas: torch.Tensor, taps: _Taps, b: int, C: int, L: int) -> torch.Tensor:
    """The unmasked columns (b, C, K, L) (channel-major, like the weight's (C_in, kh, kw))."""
    v = F.grid_sample(canvas, taps.grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return v.view(b, C, -1, L)  # (b G, C / G, K Ho, Wo) -> (b, C, K, L)


def _mask(mask: torch.Tensor | None, geo: Geometry, C: int) -> torch.Tensor | None:
    """mask (b, G K, Ho, Wo) -> (b, G, 1, K, L), to broadcast over the columns' (b, G, C / G, K, L)."""
    if mask is None:
        return None
    b = mask.shape[0]
    return mask.reshape(b, geo.offset_groups, 1, geo.kh * geo.kw, -1)


def _masked(val: torch.Tensor, m: torch.Tensor | None, G: int) -> torch.Tensor:
    if m is None:
        return val
    b, C, K, L = val.shape
    return (val.view(b, G, C // G, K, L) * m).view(b, C, K, L)


def _chunks(B: int, per_item: int, itemsize: int):
    n = max(1, CHUNK_BYTES // max(1, per_item * itemsize))
    return [(i, min(B, i + n)) for i in range(0, B, n)]


def forward(x, offset, weight, bias, mask, geo: Geometry) -> torch.Tensor:
    """x (B, C_in, H, W), offset (B, 2 G K, Ho, Wo), weight (C_out, C_in / groups, kh, kw),
    bias (C_out,) or None, mask (B, G K, Ho, Wo) or None -> (B, C_out, Ho, Wo)."""
    B, C, H, W = x.shape
    _, _, Ho, Wo = offset.shape
    Co, G, K, L, groups = weight.shape[0], geo.offset_groups, geo.kh * geo.kw, Ho * Wo, geo.groups
    wmat = weight.reshape(groups, Co // groups, -1)  # (groups, C_out / groups, C_in / groups * K)
    out = x.new_empty(B, Co, Ho, Wo)  # returned itself, not a view of another tensor (autograd needs that)
    by_group = out.view(B, groups, Co // groups, L)
    for lo, hi in _chunks(B, C * K * L, x.element_size()):
        val = _sample(_canvas(x[lo:hi], G), _taps(offset[lo:hi], H, W, geo), hi - lo, C, L)
        cols = _masked(val, _mask(None if mask is None else mask[lo:hi], geo, C), G)
        torch.matmul(wmat, cols.view(hi - lo, groups, -1, L), out=by_group[lo:hi])
    return out if bias is None else out.add_(bias[:, None, None])


def backward(grad, x, offset, weight, mask, geo: Geometry, need_bias: bool):
    """Gradients of `forward` w.r.t. (x, offset, weight, bias, mask); None for bias and mask
    when absent. grad: (B, C_out, Ho, Wo)."""
    B, C, H, W = x.shape
    _, _, Ho, Wo = offset.shape
    Co, G, K, L, groups = weight.shape[0], geo.offset_groups, geo.kh * geo.kw, Ho * Wo, geo.groups
    wmat = weight.reshape(groups, Co // groups, -1)
    g_x, g_off = torch.empty_like(x), torch.empty_like(offset)
    g_mask = None if mask is None else torch.empty_like(mask)
    g_w = torch.zeros_like(wmat)
    Hc, Wc = _pow2(H), _pow2(W)
    for lo, hi in _chunks(B, C * K * L, x.element_size()):
        b = hi - lo
        canvas, taps = _canvas(x[lo:hi], G), _taps(offset[lo:hi], H, W, geo)
        val = _sample(canvas, taps, b, C, L)
        m = _mask(None if mask is None else mask[lo:hi], geo, C)
        go = grad[lo:hi].reshape(b, groups, Co // groups, L)
        g_w += torch.matmul(go, _masked(val, m, G).view(b, groups, -1, L).transpose(-1, -2)).sum(0)
        g_cols = torch.matmul(wmat.transpose(-1, -2), go).view(b, G, C // G, K, L)  # d/d(masked columns)
        if m is not None:
            g_mask[lo:hi] = (g_cols * val.view(b, G, C // G, K, L)).sum(2).view(b, G * K, Ho, Wo)
            g_cols = g_cols.mul_(m)
        del val
        gi, gg = torch.ops.aten.grid_sampler_2d_backward(
            g_cols.view(b * G, C // G, K * Ho, Wo), canvas, taps.grid, 0, 0, False, [True, True]
        )  # bilinear, zeros padding
        g_x[lo:hi] = gi.view(b, C, Hc, Wc)[:, :, :H, :W]
        gg = gg.view(b, G, K, Ho, Wo, 2) * taps.inside[..., None]  # d/d(normalised (x, y))
        scale = torch.tensor([2 / Hc, 2 / Wc], dtype=gg.dtype, device=gg.device)
        g_off[lo:hi] = (gg.flip(-1) * scale).permute(0, 1, 2, 5, 3, 4).reshape(b, 2 * G * K, Ho, Wo)  # (dy, dx)
    g_bias = grad.sum((0, 2, 3)) if need_bias else None
    return g_x, g_off, g_w.view_as(weight), g_bias, g_mask
