"""Fused 3D warps (translation3d, attention3d, affine3d): as warp2d, for volumes (B, C, D, H, W)
and a (B, 12) src_from_dst matrix; nearest or trilinear (8 taps)."""
import triton
import triton.language as tl

from ._common import axis_taps, out_coord, round_half_even, source_index, tap


@triton.jit
def _coords(theta_ptr, b, offs, Do, Ho, Wo, D, H, W, ALIGN: tl.constexpr, PAD: tl.constexpr, dtype: tl.constexpr):
    """-> u, v, s (output coords), ix, iy, iz (pixels), gx, gy, gz (d pixel / d normalised)."""
    base = theta_ptr + b * 12
    u = out_coord((offs % Wo).to(dtype), Wo, ALIGN)
    v = out_coord(((offs // Wo) % Ho).to(dtype), Ho, ALIGN)
    s = out_coord((offs // (Wo * Ho)).to(dtype), Do, ALIGN)
    X = tl.load(base + 0) * u + tl.load(base + 1) * v + tl.load(base + 2) * s + tl.load(base + 3)
    Y = tl.load(base + 4) * u + tl.load(base + 5) * v + tl.load(base + 6) * s + tl.load(base + 7)
    Z = tl.load(base + 8) * u + tl.load(base + 9) * v + tl.load(base + 10) * s + tl.load(base + 11)
    ix, gx = source_index(X, W, ALIGN, PAD)
    iy, gy = source_index(Y, H, ALIGN, PAD)
    iz, gz = source_index(Z, D, ALIGN, PAD)
    return u, v, s, ix, iy, iz, gx, gy, gz


@triton.jit
def warp3d_fwd(x_ptr, theta_ptr, out_ptr, C, D, H, W, Do, Ho, Wo, BLOCK: tl.constexpr, MODE: tl.constexpr,
               PAD: tl.constexpr, ALIGN: tl.constexpr):
    pid, b = tl.program_id(0), tl.program_id(1)
    N = Do * Ho * Wo
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    live = offs < N
    dtype = x_ptr.dtype.element_ty
    u, v, s, ix, iy, iz, gx, gy, gz = _coords(theta_ptr, b, offs, Do, Ho, Wo, D, H, W, ALIGN, PAD, dtype)
    if MODE == 0:
        xn, kx = tap(round_half_even(ix), live, W)
        yn, ky = tap(round_half_even(iy), live, H)
        zn, kz = tap(round_half_even(iz), live, D)
        for c in range(C):
            plane = (b * C + c).to(tl.int64)
            val = tl.load(x_ptr + plane * D * H * W + (zn * H + yn) * W + xn, mask=kx & ky & kz, other=0.0)
            tl.store(out_ptr + plane * N + offs, val, mask=live)
    else:
        x0, x1, kx0, kx1, wx0, wx1 = axis_taps(ix, live, W)
        y0, y1, ky0, ky1, wy0, wy1 = axis_taps(iy, live, H)
        z0, z1, kz0, kz1, wz0, wz1 = axis_taps(iz, live, D)
        for c in range(C):
            plane = (b * C + c).to(tl.int64)
            src = x_ptr + plane * D * H * W
            v000 = tl.load(src + (z0 * H + y0) * W + x0, mask=kz0 & ky0 & kx0, other=0.0)
            v001 = tl.load(src + (z0 * H + y0) * W + x1, mask=kz0 & ky0 & kx1, other=0.0)
            v010 = tl.load(src + (z0 * H + y1) * W + x0, mask=kz0 & ky1 & kx0, other=0.0)
            v011 = tl.load(src + (z0 * H + y1) * W + x1, mask=kz0 & ky1 & kx1, other=0.0)
            v100 = tl.load(src + (z1 * H + y0) * W + x0, mask=kz1 & ky0 & kx0, other=0.0)
            v101 = tl.load(src + (z1 * H + y0) * W + x1, mask=kz1 & ky0 & kx1, other=0.0)
            v110 = tl.load(src + (z1 * H + y1) * W + x0, mask=kz1 & ky1 & kx0, other=0.0)
            v111 = tl.load(src + (z1 * H + y1) * W + x1, mask=kz1 & ky1 & kx1, other=0.0)
            lo = (v000 * wx0 + v001 * wx1) * wy0 + (v010 * wx0 + v011 * wx1) * wy1
            hi = (v100 * wx0 + v101 * wx1) * wy0 + (v110 * wx0 + v111 * wx1) * wy1
            tl.store(out_ptr + plane * N + offs, lo * wz0 + hi * wz1, mask=live)


@triton.jit
def _scatter(gx_ptr, det_val_ptr, det_idx_ptr, plane, DHW, N, offs, t, flat, k, g, DET: tl.constexpr):
    """Input-gradient contribution g of tap t (0..7) at voxel `flat`: atomically, or per tap (DET)."""
    if DET:
        slot = (plane * N + offs) * 8 + t
        tl.store(det_val_ptr + slot, tl.where(k, g, 0.0), mask=offs < N)
        tl.store(det_idx_ptr + slot, plane * (DHW + 1) + tl.where(k, flat, DHW), mask=offs < N)
    else:
        tl.atomic_add(gx_ptr + plane * DHW + flat, g, mask=k)


@triton.jit
def warp3d_bwd(x_ptr, theta_ptr, go_ptr, gx_ptr, det_val_ptr, det_idx_ptr, part_ptr, C, D, H, W, Do, Ho, Wo,
               BLOCK: tl.constexpr, MODE: tl.constexpr, PAD: tl.constexpr, ALIGN: tl.constexpr,
               NEED_X: tl.constexpr, NEED_THETA: tl.constexpr, DET: tl.constexpr):
    pid, b = tl.program_id(0), tl.program_id(1)
    N = Do * Ho * Wo
    DHW = D * H * W
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    live = offs < N
    dtype = x_ptr.dtype.element_ty
    u, v, s, ix, iy, iz, gx, gy, gz = _coords(theta_ptr, b, offs, Do, Ho, Wo, D, H, W, ALIGN, PAD, dtype)
    dix = 0.0 * u
    diy = 0.0 * u
    diz = 0.0 * u
    if MODE == 0:
        xn, kx = tap(round_half_even(ix), live, W)
        yn, ky = tap(round_half_even(iy), live, H)
        zn, kz = tap(round_half_even(iz), live, D)
        if NEED_X:
            for c in range(C):
                plane = (b * C + c).to(tl.int64)
                g = tl.load(go_ptr + plane * N + offs, mask=live, other=0.0)
                flat = (zn * H + yn) * W + xn
                _scatter(gx_ptr, det_val_ptr, det_idx_ptr, plane, DHW, N, offs, 0, flat, kx & ky & kz, g, DET)
                if DET:
                    for t in tl.static_range(1, 8):
                        _scatter(gx_ptr, det_val_ptr, det_idx_ptr, plane, DHW, N, offs, t, flat, kx & False, g, DET)
    else:
        x0, x1, kx0, kx1, wx0, wx1 = axis_taps(ix, live, W)
        y0, y1, ky0, ky1, wy0, wy1 = axis_taps(iy, live, H)
        z0, z1, kz0, kz1, wz0, wz1 = axis_taps(iz, live, D)
        for c in range(C):
            plane = (b * C + c).to(tl.int64)
            g = tl.load(go_ptr + plane * N + offs, mask=live, other=0.0)
            src = x_ptr + plane * DHW
            for t in tl.static_range(8):  # tap t (unrolled): z bit 4, y bit 2, x bit 1
                bz, by, bx = t // 4, (t // 2) % 2, t % 2
                xi = tl.where(bx == 1, x1, x0)
                yi = tl.where(by == 1, y1, y0)
                zi = tl.where(bz == 1, z1, z0)
                k = tl.where(bx == 1, kx1, kx0) & tl.where(by == 1, ky1, ky0) & tl.where(bz == 1, kz1, kz0)
                wx = tl.where(bx == 1, wx1, wx0)
                wy = tl.where(by == 1, wy1, wy0)
                wz = tl.where(bz == 1, wz1, wz0)
                flat = (zi * H + yi) * W + xi
                if NEED_THETA:
                    val = tl.load(src + flat, mask=k, other=0.0)
                    sx = tl.where(bx == 1, 1.0, -1.0)  # d wx / d ix
                    sy = tl.where(by == 1, 1.0, -1.0)
                    sz = tl.where(bz == 1, 1.0, -1.0)
                    dix += g * val * sx * wy * wz
                    diy += g * val * wx * sy * wz
                    diz += g * val * wx * wy * sz
                if NEED_X:
                    _scatter(gx_ptr, det_val_ptr, det_idx_ptr, plane, DHW, N, offs, t, flat, k, g * wx * wy * wz, DET)
    if NEED_THETA:
        dX = tl.where(live, dix * gx, 0.0)
        dY = tl.where(live, diy * gy, 0.0)
        dZ = tl.where(live, diz * gz, 0.0)
        out = part_ptr + (b * tl.num_programs(0) + pid) * 12
        tl.store(out + 0, tl.sum(dX * u, axis=0))
        tl.store(out + 1, tl.sum(dX * v, axis=0))
        tl.store(out + 2, tl.sum(dX * s, axis=0))
        tl.store(out + 3, tl.sum(dX, axis=0))
        tl.store(out + 4, tl.sum(dY * u, axis=0))
        tl.store(out + 5, tl.sum(dY * v, axis=0))
        tl.store(out + 6, tl.sum(dY * s, axis=0))
        tl.store(out + 7, tl.sum(dY, axis=0))
        tl.store(out + 8, tl.sum(dZ * u, axis=0))
        tl.store(out + 9, tl.sum(dZ * v, axis=0))
        tl.store(out + 10, tl.sum(dZ * s, axis=0))
        tl.store(out + 11, tl.sum(dZ, axis=0))
