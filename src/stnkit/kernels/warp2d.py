"""Fused 2D warps: parameters in, pixels out. Each program takes a block of output pixels of one
batch item, computes their source coordinates and samples every channel there: the grid is
never written to memory. KIND 0: a (B, 6) affine matrix; 1: a (B, 9) homography (src_from_dst,
normalised coordinates, row-major); 2: a thin-plate spline's (B, K + 3, 2) coefficients (the
rows of `functional.tps.basis`: U(|p - c_k|) for each target c_k, then 1, x, y), its basis
computed on the fly from the (K, 2) targets.

Backward, in one pass over the output: the parameter gradient is reduced per block (tl.sum, a
fixed order) into (B, blocks, 6 | 9 | 2 (K + 3)) partial sums that torch sums over blocks:
deterministic, no atomics. The input gradient is scattered with atomics, or, with DET, written per tap (value and
flat index) for a deterministic `index_put_(accumulate=True)`.
"""
import triton
import triton.language as tl

from ._common import axis_taps, out_coord, round_half_even, source_index, tap

EPS = tl.constexpr(1e-6)  # functional.matrix.PROJECTIVE_EPS: denominators at or below it are behind the horizon


@triton.jit
def _tps_u(u, v, tgt_ptr, k):
    """U(|p - c_k|) = r^2 log r^2 (0 at r = 0) at the output points (u, v)."""
    dx = u - tl.load(tgt_ptr + 2 * k)
    dy = v - tl.load(tgt_ptr + 2 * k + 1)
    r2 = dx * dx + dy * dy
    return r2 * tl.log(tl.where(r2 > 0, r2, 1.0))


@triton.jit
def _coords(theta_ptr, tgt_ptr, K, b, offs, Ho, Wo, H, W, ALIGN: tl.constexpr, PAD: tl.constexpr,
            KIND: tl.constexpr, dtype: tl.constexpr):
    """-> u, v (output coords), X, Y (normalised source), r (1 / w, or 1), ahead, ix, iy (pixels),
    gx, gy (d pixel / d normalised)."""
    u = out_coord((offs % Wo).to(dtype), Wo, ALIGN)
    v = out_coord((offs // Wo).to(dtype), Ho, ALIGN)
    ahead = u == u
    r = 1.0 + 0.0 * u
    if KIND == 2:
        base = theta_ptr + b * (2 * K + 6)
        X = tl.load(base + 2 * K) + tl.load(base + 2 * K + 2) * u + tl.load(base + 2 * K + 4) * v
        Y = tl.load(base + 2 * K + 1) + tl.load(base + 2 * K + 3) * u + tl.load(base + 2 * K + 5) * v
        for k in range(K):
            U = _tps_u(u, v, tgt_ptr, k)
            X += U * tl.load(base + 2 * k)
            Y += U * tl.load(base + 2 * k + 1)
    else:
        NT: tl.constexpr = 9 if KIND == 1 else 6
        base = theta_ptr + b * NT
        X = tl.load(base + 0) * u + tl.load(base + 1) * v + tl.load(base + 2)
        Y = tl.load(base + 3) * u + tl.load(base + 4) * v + tl.load(base + 5)
        if KIND == 1:
            w = tl.load(base + 6) * u + tl.load(base + 7) * v + tl.load(base + 8)
            ahead = w > EPS
            r = 1.0 / tl.where(ahead, w, 1.0)
            X = tl.where(ahead, X * r, -8.0)
            Y = tl.where(ahead, Y * r, -8.0)
    ix, gx = source_index(X, W, ALIGN, PAD)
    iy, gy = source_index(Y, H, ALIGN, PAD)
    return u, v, X, Y, r, ahead, ix, iy, gx, gy


@triton.jit
def _bilinear(ix, iy, live, W, H):
    """The 4 taps around pixel coordinates (ix, iy): columns x0, x1, rows y0, y1 (clamped), their
    weights, and whether each tap (y, x) = 00, 01, 10, 11 lies inside the image."""
    x0, x1, kx0, kx1, wx0, wx1 = axis_taps(ix, live, W)
    y0, y1, ky0, ky1, wy0, wy1 = axis_taps(iy, live, H)
    return x0, x1, y0, y1, wx0, wx1, wy0, wy1, ky0 & kx0, ky0 & kx1, ky1 & kx0, ky1 & kx1


@triton.jit
def _gather4(src, W, x0, x1, y0, y1, k00, k01, k10, k11):
    """The values at the 4 taps of one plane (0 outside)."""
    return (tl.load(src + y0 * W + x0, mask=k00, other=0.0), tl.load(src + y0 * W + x1, mask=k01, other=0.0),
            tl.load(src + y1 * W + x0, mask=k10, other=0.0), tl.load(src + y1 * W + x1, mask=k11, other=0.0))


@triton.jit
def warp2d_fwd(x_ptr, theta_ptr, tgt_ptr, out_ptr, K, C, H, W, Ho, Wo, BLOCK: tl.constexpr, MODE: tl.constexpr,
               PAD: tl.constexpr, ALIGN: tl.constexpr, KIND: tl.constexpr):
    pid, b = tl.program_id(0), tl.program_id(1)
    N = Ho * Wo
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    live = offs < N
    dtype = x_ptr.dtype.element_ty
    u, v, X, Y, r, ahead, ix, iy, gx, gy = _coords(theta_ptr, tgt_ptr, K, b, offs, Ho, Wo, H, W, ALIGN, PAD, KIND, dtype)
    live_ahead = live & ahead
    if MODE == 0:
        xn, kx = tap(round_half_even(ix), live_ahead, W)
        yn, ky = tap(round_half_even(iy), live_ahead, H)
        k = kx & ky
        for c in range(C):
            plane = (b * C + c).to(tl.int64)
            val = tl.load(x_ptr + plane * H * W + yn * W + xn, mask=k, other=0.0)
            tl.store(out_ptr + plane * N + offs, val, mask=live)
    else:
        x0, x1, y0, y1, wx0, wx1, wy0, wy1, k00, k01, k10, k11 = _bilinear(ix, iy, live_ahead, W, H)
        for c in range(C):
            plane = (b * C + c).to(tl.int64)
            src = x_ptr + plane * H * W
            v00, v01, v10, v11 = _gather4(src, W, x0, x1, y0, y1, k00, k01, k10, k11)
            val = (v00 * wx0 + v01 * wx1) * wy0 + (v10 * wx0 + v11 * wx1) * wy1
            tl.store(out_ptr + plane * N + offs, val, mask=live)


@triton.jit
def _scatter(gx_ptr, det_val_ptr, det_idx_ptr, plane, HW, N, offs, t, yi, xi, W, k, g, DET: tl.constexpr):
    """Input-gradient contribution g of tap t (0..3) at (yi, xi): atomically, or per tap (DET)."""
    if DET:
        slot = (plane * N + offs) * 4 + t
        tl.store(det_val_ptr + slot, tl.where(k, g, 0.0), mask=offs < N)
        tl.store(det_idx_ptr + slot, tl.where(k, plane * (HW + 1) + yi * W + xi, plane * (HW + 1) + HW), mask=offs < N)
    else:
        tl.atomic_add(gx_ptr + plane * HW + yi * W + xi, g, mask=k)


@triton.jit
def warp2d_bwd(x_ptr, theta_ptr, tgt_ptr, go_ptr, gx_ptr, det_val_ptr, det_idx_ptr, part_ptr, K, C, H, W, Ho, Wo,
               BLOCK: tl.constexpr, MODE: tl.constexpr, PAD: tl.constexpr, ALIGN: tl.constexpr,
               KIND: tl.constexpr, NEED_X: tl.constexpr, NEED_THETA: tl.constexpr, DET: tl.constexpr):
    pid, b = tl.program_id(0), tl.program_id(1)
    N = Ho * Wo
    HW = H * W
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    live = offs < N
    dtype = x_ptr.dtype.element_ty
    u, v, X, Y, r, ahead, ix, iy, gx, gy = _coords(theta_ptr, tgt_ptr, K, b, offs, Ho, Wo, H, W, ALIGN, PAD, KIND, dtype)
    live_ahead = live & ahead
    dix = 0.0 * u  # d loss / d pixel coordinate, summed over channels
    diy = 0.0 * u
    if MODE == 0:
        xn, kx = tap(round_half_even(ix), live_ahead, W)
        yn, ky = tap(round_half_even(iy), live_ahead, H)
        k = kx & ky
        if NEED_X:
            for c in range(C):
                plane = (b * C + c).to(tl.int64)
                g = tl.load(go_ptr + plane * N + offs, mask=live, other=0.0)
                _scatter(gx_ptr, det_val_ptr, det_idx_ptr, plane, HW, N, offs, 0, yn, xn, W, k, g, DET)
                if DET:
                    for t in tl.static_range(1, 4):
                        _scatter(gx_ptr, det_val_ptr, det_idx_ptr, plane, HW, N, offs, t, yn, xn, W, k & False,
                                 g, DET)
    else:
        x0, x1, y0, y1, wx0, wx1, wy0, wy1, k00, k01, k10, k11 = _bilinear(ix, iy, live_ahead, W, H)
        for c in range(C):
            plane = (b * C + c).to(tl.int64)
            g = tl.load(go_ptr + plane * N + offs, mask=live, other=0.0)
            if NEED_THETA:
                src = x_ptr + plane * HW
                v00, v01, v10, v11 = _gather4(src, W, x0, x1, y0, y1, k00, k01, k10, k11)
                dix += g * ((v01 - v00) * wy0 + (v11 - v10) * wy1)
                diy += g * ((v10 - v00) * wx0 + (v11 - v01) * wx1)
            if NEED_X:
                _scatter(gx_ptr, det_val_ptr, det_idx_ptr, plane, HW, N, offs, 0, y0, x0, W, k00, g * wy0 * wx0, DET)
                _scatter(gx_ptr, det_val_ptr, det_idx_ptr, plane, HW, N, offs, 1, y0, x1, W, k01, g * wy0 * wx1, DET)
                _scatter(gx_ptr, det_val_ptr, det_idx_ptr, plane, HW, N, offs, 2, y1, x0, W, k10, g * wy1 * wx0, DET)
                _scatter(gx_ptr, det_val_ptr, det_idx_ptr, plane, HW, N, offs, 3, y1, x1, W, k11, g * wy1 * wx1, DET)
    if NEED_THETA:
        dX = tl.where(live_ahead, dix * gx, 0.0)  # d loss / d normalised source coordinate
        dY = tl.where(live_ahead, diy * gy, 0.0)
        if KIND == 2:  # d / d coefficients: the basis values, (K + 3, 2) row-major
            out = part_ptr + (b * tl.num_programs(0) + pid) * (2 * K + 6)
            for k in range(K):
                U = _tps_u(u, v, tgt_ptr, k)
                tl.store(out + 2 * k, tl.sum(dX * U, axis=0))
                tl.store(out + 2 * k + 1, tl.sum(dY * U, axis=0))
            tl.store(out + 2 * K, tl.sum(dX, axis=0))
            tl.store(out + 2 * K + 1, tl.sum(dY, axis=0))
            tl.store(out + 2 * K + 2, tl.sum(dX * u, axis=0))
            tl.store(out + 2 * K + 3, tl.sum(dY * u, axis=0))
            tl.store(out + 2 * K + 4, tl.sum(dX * v, axis=0))
            tl.store(out + 2 * K + 5, tl.sum(dY * v, axis=0))
        else:
            NT: tl.constexpr = 9 if KIND == 1 else 6
            dXn, dYn = dX * r, dY * r  # d / d numerators (r = 1 for affine maps)
            out = part_ptr + (b * tl.num_programs(0) + pid) * NT
            tl.store(out + 0, tl.sum(dXn * u, axis=0))
            tl.store(out + 1, tl.sum(dXn * v, axis=0))
            tl.store(out + 2, tl.sum(dXn, axis=0))
            tl.store(out + 3, tl.sum(dYn * u, axis=0))
            tl.store(out + 4, tl.sum(dYn * v, axis=0))
            tl.store(out + 5, tl.sum(dYn, axis=0))
            if KIND == 1:
                dw = -(dX * X + dY * Y) * r  # d / d denominator
                tl.store(out + 6, tl.sum(dw * u, axis=0))
                tl.store(out + 7, tl.sum(dw * v, axis=0))
                tl.store(out + 8, tl.sum(dw, axis=0))
