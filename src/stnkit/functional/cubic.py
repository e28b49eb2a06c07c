"""Tricubic sampling: `F.grid_sample`'s 2D bicubic, extended to volumes.

The same cubic convolution kernel (A = -0.75) and the same per-tap padding as PyTorch's 2D
bicubic kernel (`aten/src/ATen/native/GridSampler.h`): the coordinate is unnormalised without
any padding, its floor and fraction t pick 4 taps per axis (floor - 1 .. floor + 2) weighted by
the kernel at t + 1, t, 1 - t, 2 - t, and then each tap index goes through the padding alone:
"border" clips it to the volume, "reflection" reflects it (about the edge pixels' centres with
align_corners=True, about the volume's outer edges with False) and then clips it, "zeros"
reads 0 outside. The 64 taps of a point are the product of its 3 axes' 4.
"""
from __future__ import annotations

import torch

from .._checks import PADDING_MODES, check_choice, check_float_tensor

__all__ = ["grid_sample_3d_bicubic"]

A = -0.75  # the cubic convolution constant of PyTorch's bicubic (and OpenCV's)
_CHUNK = 2**18  # elements of a (B, C, points) temporary: output points are processed in chunks
_MIN_CHUNK = 4096  # points per chunk at least, whatever B * C


def _near(s):  # kernel for |s| <= 1, and its derivative
    return ((A + 2) * s - (A + 3)) * s * s + 1, (3 * (A + 2) * s - 2 * (A + 3)) * s


def _far(s):  # kernel for 1 < |s| < 2, and its derivative
    return ((A * s - 5 * A) * s + 8 * A) * s - 4 * A, (3 * A * s - 10 * A) * s + 8 * A


def cubic_weights(t: torch.Tensor):
    """t: fraction in [0, 1) -> (weights, d weights / dt), each 4 tensors like t, for the taps
    at floor - 1, floor, floor + 1, floor + 2."""
    (w0, d0), (w1, d1) = _far(t + 1), _near(t)
    (w2, d2), (w3, d3) = _near(1 - t), _far(2 - t)
    return (w0, w1, w2, w3), (d0, d1, -d2, -d3)


def _reflect(c: torch.Tensor, twice_low: int, twice_high: int) -> torch.Tensor:
    """PyTorch's reflect_coordinates: fold c into [low, high] by mirror images of the interval."""
    if twice_low == twice_high:
        return torch.zeros_like(c)
    low, span = twice_low / 2, (twice_high - twice_low) / 2
    c = (c - low).abs()
    extra, flips = torch.fmod(c, span), torch.floor(c / span)
    return torch.where(torch.fmod(flips, 2) == 0, extra + low, span - extra + low)


def _taps(coord: torch.Tensor, n: int, padding_mode: str, align_corners: bool):
    """One axis. coord: (B, N) normalised -> (idx, w, dw): 4 tap indices (long, in [0, n)) and
    their weights and d weight / d coord (zero for a "zeros" tap outside the volume)."""
    scale = (n - 1) / 2 if align_corners else n / 2
    u = (coord + 1) * scale - (0 if align_corners else 0.5)  # pixel coordinate, unpadded
    base = torch.floor(u)
    w, dw = cubic_weights(u - base)
    idx, ws, dws = [], [], []
    for k in range(4):
        c = base + (k - 1)  # float, so that far taps (1e30) need no integer conversion yet
        if padding_mode == "reflection":
            c = _reflect(c, 0, 2 * (n - 1)) if align_corners else _reflect(c, -1, 2 * n - 1)
        if padding_mode == "zeros":
            inside = ((c > -1) & (c < n)).to(u.dtype)
            ws.append(w[k] * inside)
            dws.append(dw[k] * (inside * scale))
        else:
            ws.append(w[k])
            dws.append(dw[k] * scale)
        idx.append(c.nan_to_num(0.0).clamp(0, n - 1).long())  # NaN/Inf coordinates: NaN weights, no bad index
    return idx, ws, dws


def _axes(gc: torch.Tensor, size, padding_mode: str, align_corners: bool):
    """gc (B, n, 3) coordinates, size (D, H, W) -> the taps of x, y, z (as `_taps`), the indices
    of y and z already multiplied by their strides in the flattened (D*H*W) volume."""
    D, H, W = size
    ax, ay, az = (_taps(gc[..., k], m, padding_mode, align_corners) for k, m in enumerate((W, H, D)))
    return ax, ([i * W for i in ay[0]], *ay[1:]), ([i * (H * W) for i in az[0]], *az[1:])


def _forward_chunk(src, gc, size, padding_mode, align_corners):
    """src (B, C, D*H*W), gc (B, n, 3) -> (B, C, n)."""
    B, C, _ = src.shape
    (ix, wx, _), (iy, wy, _), (iz, wz, _) = _axes(gc, size, padding_mode, align_corners)
    out = None
    for c in range(4):
        for b in range(4):
            row, base = None, iz[c] + iy[b]  # (B, n)
            for a in range(4):
                v = src.gather(2, (base + ix[a])[:, None].expand(B, C, -1))  # (B, C, n)
                row = v * wx[a][:, None] if row is None else row.addcmul_(v, wx[a][:, None])
            wzy = (wz[c] * wy[b])[:, None]  # (B, 1, n)
            out = row.mul_(wzy) if out is None else out.addcmul_(row, wzy)
    return out


def _backward_chunk(src, gc, go, size, padding_mode, align_corners, gx):
    """src (B, C, D*H*W), gc (B, n, 3), go (B, C, n) = d loss / d out: adds d loss / d src into
    gx (like src) unless gx is None, and returns d loss / d gc (B, n, 3)."""
    B, C, _ = src.shape
    (ix, wx, dx), (iy, wy, dy), (iz, wz, dz) = _axes(gc, size, padding_mode, align_corners)
    dv = [None, None, None]  # sum over taps of value * d weight / d (x, y, z): (B, C, n) each
    for c in range(4):
        for b in range(4):
            base, wzy = iz[c] + iy[b], (wz[c] * wy[b])[:, None]  # (B, n), (B, 1, n)
            go_zy = go * wzy if gx is not None else None
            row = drow = None  # sum over the 4 x taps of w_a * v_a and of dw_a * v_a
            for a in range(4):
                idx = (base + ix[a])[:, None].expand(B, C, -1)  # (B, C, n)
                if gx is not None:
                    gx.scatter_add_(2, idx, go_zy * wx[a][:, None])
                v = src.gather(2, idx)
                row = v * wx[a][:, None] if row is None else row.addcmul_(v, wx[a][:, None])
                drow = v * dx[a][:, None] if drow is None else drow.addcmul_(v, dx[a][:, None])
            terms = (drow * wzy, row * (dy[b] * wz[c])[:, None], row * (wy[b] * dz[c])[:, None])
            dv = [t if d is None else d.add_(t) for d, t in zip(dv, terms)]
    return torch.stack([(go * d).sum(1) for d in dv], -1)


def _chunks(B: int, C: int, N: int):
    """Slices of the N output points, so that a chunk's temporaries stay near _CHUNK elements."""
    n = max(_MIN_CHUNK, _CHUNK // max(1, B * C))
    return [slice(i, min(i + n, N)) for i in range(0, N, n)] or [slice(0, 0)]


def _x_grad_only(src, gc, go, size, padding_mode, align_corners, gx):
    """`_backward_chunk` without the grid's part (no gathers): adds d loss / d src into gx."""
    B, C, _ = src.shape
    (ix, wx, _), (iy, wy, _), (iz, wz, _) = _axes(gc, size, padding_mode, align_corners)
    for c in range(4):
        for b in range(4):
            base, go_zy = iz[c] + iy[b], go * (wz[c] * wy[b])[:, None]
            for a in range(4):
                gx.scatter_add_(2, (base + ix[a])[:, None].expand(B, C, -1), go_zy * wx[a][:, None])


class _Tricubic(torch.autograd.Function):
    """Saves only x and g: the weights are recomputed in backward, the 64 gathers are not kept.
    Output points are processed in chunks (`_chunks`), so temporaries do not grow with the
    volume; the backward is made of differentiable ops (in place only on tensors autograd does
    not save), which autograd records for a second derivative when it builds a graph."""

    @staticmethod
    def forward(ctx, x, g, padding_mode, align_corners):
        ctx.save_for_backward(x, g)
        ctx.options = padding_mode, align_corners
        B, C, D, H, W = x.shape
        N = g.shape[1] * g.shape[2] * g.shape[3]
        src, gf = x.reshape(B, C, D * H * W), g.reshape(B, N, 3)
        out = x.new_empty(B, C, N)
        for sl in _chunks(B, C, N):
            out[:, :, sl] = _forward_chunk(src, gf[:, sl], (D, H, W), padding_mode, align_corners)
        return out.reshape(B, C, *g.shape[1:4])

    @staticmethod
    def backward(ctx, gout):
        x, g = ctx.saved_tensors
        need_x, need_g = ctx.needs_input_grad[:2]
        B, C, D, H, W = x.shape
        N = g.shape[1] * g.shape[2] * g.shape[3]
        src, gf, go = x.reshape(B, C, D * H * W), g.reshape(B, N, 3), gout.reshape(B, C, N)
        gx = torch.zeros_like(src) if need_x else None
        gg = torch.zeros_like(gf) if need_g else None
        for sl in _chunks(B, C, N):
            args = (src, gf[:, sl], go[:, :, sl], (D, H, W), *ctx.options, gx)
            if need_g:
                gg[:, sl] = _backward_chunk(*args)
            elif need_x:
                _x_grad_only(*args)
        return (gx.reshape(x.shape) if need_x else None), (gg.reshape(g.shape) if need_g else None), None, None


def grid_sample_3d_bicubic(
    x: torch.Tensor, g: torch.Tensor, padding_mode: str = "zeros", align_corners: bool = False
) -> torch.Tensor:
    """Tricubic `F.grid_sample`: what `mode="bicubic"` does in 2D, on volumes.

    Args:
        x: (B, C, D, H, W) volume.
        g: (B, D', H', W', 3) source coordinates (x, y, z), normalised as `F.grid_sample`'s,
            same dtype and device as x.
        padding_mode: zeros | border | reflection, applied per tap as in 2D bicubic.
        align_corners: as in `F.grid_sample`.

    Returns:
        (B, C, D', H', W'). Differentiable w.r.t. x and g, twice too (the backward is made of
        differentiable ops; a second derivative is left to autograd and costs memory). Memory:
        saves only x and g; the weights and the 64 gathered taps are recomputed in backward,
        in chunks of output points, never stored.
    """
    check_float_tensor("x", x, ndims=(5,))
    check_float_tensor("grid", g, ndims=(5,))
    if g.shape[-1] != 3 or g.shape[0] != x.shape[0] or g.dtype != x.dtype or g.device != x.device:
        raise ValueError(
            f"grid must be (B, D', H', W', 3) with x's batch {x.shape[0]}, dtype {x.dtype} and device "
            f"{x.device}, got shape {tuple(g.shape)}, {g.dtype}, {g.device}"
        )
    check_choice("padding_mode", padding_mode, PADDING_MODES)
    return _Tricubic.apply(x, g, padding_mode, bool(align_corners))
