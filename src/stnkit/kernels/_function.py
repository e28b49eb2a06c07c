"""The autograd Function over the fused kernels: launches, buffers, and the two input-gradient
paths (atomics, or deterministic per-tap values reduced by `index_put_(accumulate=True)` when
`torch.use_deterministic_algorithms(True)` is on). Imports triton."""
from __future__ import annotations

import torch
import triton
from torch.autograd.function import once_differentiable

from ._common import MODES, PADDINGS
from .warp2d import warp2d_bwd, warp2d_fwd
from .warp3d import warp3d_bwd, warp3d_fwd

BLOCK = 256


def _launch(fn, B, n, *args, **meta):
    fn[(triton.cdiv(n, BLOCK), B)](*args, BLOCK=BLOCK, **meta)


class FusedWarp(torch.autograd.Function):
    """x (B, C, *in), theta (B, T) (kind 0: T = 6, 1: 9, 2: a TPS's 2 (K + 3) coefficients, with
    targets (K, 2); 3D: 12) -> (B, C, *size). Once differentiable (in x and theta)."""

    @staticmethod
    def forward(ctx, x, theta, targets, size, mode, padding_mode, align_corners, kind):
        x, theta = x.contiguous(), theta.contiguous().to(x.dtype)
        targets = x.new_zeros(2) if targets is None else targets.contiguous().to(x.dtype)
        B, C = x.shape[:2]
        out = x.new_empty(B, C, *size)
        ctx.save_for_backward(x, theta, targets)
        ctx.size, ctx.kind, ctx.K = size, kind, targets.numel() // 2 if kind == 2 else 0
        ctx.meta = meta = dict(MODE=MODES[mode], PAD=PADDINGS[padding_mode], ALIGN=align_corners)
        if out.numel() == 0:
            return out
        if x.dim() == 4:
            _launch(warp2d_fwd, B, size[0] * size[1], x, theta, targets, out, ctx.K, C, *x.shape[2:], *size,
                    KIND=kind, **meta)
        else:
            _launch(warp3d_fwd, B, size[0] * size[1] * size[2], x, theta, out, C, *x.shape[2:], *size, **meta)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, go):
        x, theta, targets = ctx.saved_tensors
        need_x, need_theta = ctx.needs_input_grad[:2]
        go = go.contiguous().to(x.dtype)
        B, C = x.shape[:2]
        n, HW = go.shape[2:].numel(), x.shape[2:].numel()
        if go.numel() == 0:
            return (torch.zeros_like(x) if need_x else None, torch.zeros_like(theta) if need_theta else None,
                    None, None, None, None, None, None)
        det = need_x and torch.are_deterministic_algorithms_enabled()
        taps = 4 if x.dim() == 4 else 8
        gx = torch.zeros_like(x) if need_x and not det else x
        vals = x.new_empty(B * C * n * taps) if det else x
        idx = torch.empty(B * C * n * taps, dtype=torch.int64, device=x.device) if det else x
        blocks = triton.cdiv(n, BLOCK)
        part = x.new_empty(B, blocks, theta.shape[1]) if need_theta else x
        flags = dict(NEED_X=bool(need_x), NEED_THETA=bool(need_theta), DET=bool(det), **ctx.meta)
        if x.dim() == 4:
            _launch(warp2d_bwd, B, n, x, theta, targets, go, gx, vals, idx, part, ctx.K, C, *x.shape[2:], *ctx.size,
                    KIND=ctx.kind, **flags)
        else:
            _launch(warp3d_bwd, B, n, x, theta, go, gx, vals, idx, part, C, *x.shape[2:], *ctx.size, **flags)
        if det:  # a sort-based, deterministic reduction; each plane has one dummy slot for taps outside
            flat = x.new_zeros(B * C * (HW + 1))
            flat.index_put_((idx,), vals, accumulate=True)
            gx = flat.view(B * C, HW + 1)[:, :HW].reshape(x.shape)
        return (gx if need_x else None, part.sum(1) if need_theta else None, None, None, None, None, None, None)
