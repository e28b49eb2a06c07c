"""Independent slow references for the tests: plain Python loops over floats.

Nothing here calls ``torch.nn.functional.grid_sample`` / ``affine_grid`` or any stnkit code.
Tensors go in, are turned into nested lists of Python floats (float64 arithmetic), and the
results come back as float64 tensors.

- ``ref_sample_2d`` / ``ref_sample_3d`` replicate torch's CPU ``grid_sample`` kernel rule by rule
  (``aten/src/ATen/native/GridSampler.h``): unnormalise per ``align_corners``; for nearest and
  bilinear the padding (clip or reflect, then clip) is applied to the source coordinate, then
  corners outside the image read 0; nearest rounds half to even; bicubic is cubic convolution
  with A = -0.75 on the *unpadded* coordinate, padding each of the 4x4 tap coordinates
  separately before the bounds check.
- ``ref_points`` applies ``T_theta`` of every family of ``docs/api.md`` point by point, from the
  closed-form formulas (a TPS solves its linear system with numpy in float64 on every call).
- ``ref_grid`` maps the output pixel centres through ``ref_points``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# ----------------------------------------------------------------------------- coordinates


def pixel_centre(i: int, n: int, align_corners: bool) -> float:
    """Normalised coordinate of the centre of pixel ``i`` of ``n``."""
    if align_corners:
        return 0.0 if n == 1 else 2.0 * i / (n - 1) - 1.0
    return (2.0 * i + 1.0) / n - 1.0


def unnormalize(coord: float, size: int, align_corners: bool) -> float:
    """Normalised [-1, 1] coordinate -> pixel coordinate (0 .. size-1 at the pixel centres)."""
    if align_corners:
        return (coord + 1.0) / 2.0 * (size - 1)
    return ((coord + 1.0) * size - 1.0) / 2.0


def _clip(coord: float, size: int) -> float:
    return min(size - 1.0, max(coord, 0.0))


def _reflect(coord: float, twice_low: int, twice_high: int) -> float:
    """Reflect ``coord`` over the interval [twice_low / 2, twice_high / 2] until it lies inside."""
    if twice_low == twice_high:
        return 0.0
    low = twice_low / 2.0
    span = (twice_high - twice_low) / 2.0
    coord = abs(coord - low)
    extra = math.fmod(coord, span)
    flips = int(math.floor(coord / span))
    if flips % 2 == 0:
        return extra + low
    return span - extra + low


def pad_coordinate(coord: float, size: int, padding_mode: str, align_corners: bool) -> float:
    """torch's ``compute_coordinates``: apply border / reflection padding to a pixel coordinate."""
    if padding_mode == "border":
        return _clip(coord, size)
    if padding_mode == "reflection":
        if align_corners:
            coord = _reflect(coord, 0, 2 * (size - 1))
        else:
            coord = _reflect(coord, -1, 2 * size - 1)
        return _clip(coord, size)
    if padding_mode == "zeros":
        return coord
    raise ValueError(f"unknown padding_mode {padding_mode!r}")


def _source_coordinate(coord, size, padding_mode, align_corners):
    return pad_coordinate(unnormalize(coord, size, align_corners), size, padding_mode, align_corners)


def _round_half_even(v: float) -> int:
    return int(round(v))  # Python's round() is round-half-to-even, like nearbyint


def _cubic1(t: float, a: float) -> float:  # |t| <= 1
    return ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0


def _cubic2(t: float, a: float) -> float:  # 1 < |t| < 2
    return ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a


def cubic_weights(t: float, a: float = -0.75) -> list[float]:
    """Weights of the taps at offsets -1, 0, 1, 2 for a fractional position ``t`` in [0, 1)."""
    return [_cubic2(t + 1.0, a), _cubic1(t, a), _cubic1(1.0 - t, a), _cubic2(2.0 - t, a)]


# ----------------------------------------------------------------------------- samplers

_MODES_2D = ("nearest", "bilinear", "bicubic")
_MODES_3D = ("nearest", "bilinear")
_PADDINGS = ("zeros", "border", "reflection")


def ref_sample_2d(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False):
    """Reference ``grid_sample`` for x: (B, C, H, W), grid: (B, H', W', 2) -> (B, C, H', W') float64."""
    if mode not in _MODES_2D:
        raise ValueError(f"unknown mode {mode!r}")
    if padding_mode not in _PADDINGS:
        raise ValueError(f"unknown padding_mode {padding_mode!r}")
    B, C, H, W = x.shape
    Bg, Ho, Wo, two = grid.shape
    assert Bg == B and two == 2
    xs = x.detach().double().tolist()
    gs = grid.detach().double().tolist()
    out = [[[[0.0] * Wo for _ in range(Ho)] for _ in range(C)] for _ in range(B)]

    for b in range(B):
        img = xs[b]
        for i in range(Ho):
            for j in range(Wo):
                gx, gy = gs[b][i][j]
                if mode == "bicubic":
                    ix = unnormalize(gx, W, align_corners)
                    iy = unnormalize(gy, H, align_corners)
                    x0, y0 = math.floor(ix), math.floor(iy)
                    wx = cubic_weights(ix - x0)
                    wy = cubic_weights(iy - y0)
                    taps = []  # (weight, row, col) of in-bounds taps
                    for m in range(4):
                        for n in range(4):
                            tx = pad_coordinate(float(x0 - 1 + n), W, padding_mode, align_corners)
                            ty = pad_coordinate(float(y0 - 1 + m), H, padding_mode, align_corners)
                            cx, cy = int(tx), int(ty)  # truncation, as torch's (int64_t) cast
                            if 0 <= cx < W and 0 <= cy < H:
                                taps.append((wy[m] * wx[n], cy, cx))
                    for c in range(C):
                        out[b][c][i][j] = sum(w * img[c][r][q] for w, r, q in taps)
                    continue

                ix = _source_coordinate(gx, W, padding_mode, align_corners)
                iy = _source_coordinate(gy, H, padding_mode, align_corners)
                if mode == "nearest":
                    cx, cy = _round_half_even(ix), _round_half_even(iy)
                    if 0 <= cx < W and 0 <= cy < H:
                        for c in range(C):
                            out[b][c][i][j] = img[c][cy][cx]
                    continue

                # bilinear
                x0, y0 = math.floor(ix), math.floor(iy)
                fx, fy = ix - x0, iy - y0
                corners = [
                    ((1.0 - fx) * (1.0 - fy), y0, x0),
                    (fx * (1.0 - fy), y0, x0 + 1),
                    ((1.0 - fx) * fy, y0 + 1, x0),
                    (fx * fy, y0 + 1, x0 + 1),
                ]
                taps = [(w, r, q) for w, r, q in corners if 0 <= q < W and 0 <= r < H]
                for c in range(C):
                    out[b][c][i][j] = sum(w * img[c][r][q] for w, r, q in taps)
    return torch.tensor(out, dtype=torch.float64).reshape(B, C, Ho, Wo)


def ref_sample_3d(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False):
    """Reference ``grid_sample`` for x: (B, C, D, H, W), grid: (B, D', H', W', 3) with (x, y, z)."""
    if mode not in _MODES_3D:
        raise ValueError(f"unknown 3D mode {mode!r}")
    if padding_mode not in _PADDINGS:
        raise ValueError(f"unknown padding_mode {padding_mode!r}")
    B, C, D, H, W = x.shape
    Bg, Do, Ho, Wo, three = grid.shape
    assert Bg == B and three == 3
    xs = x.detach().double().tolist()
    gs = grid.detach().double().tolist()
    out = torch.zeros(B, C, Do, Ho, Wo, dtype=torch.float64)
    vals = out.tolist()

    for b in range(B):
        img = xs[b]
        for k in range(Do):
            for i in range(Ho):
                for j in range(Wo):
                    gx, gy, gz = gs[b][k][i][j]
                    ix = _source_coordinate(gx, W, padding_mode, align_corners)
                    iy = _source_coordinate(gy, H, padding_mode, align_corners)
                    iz = _source_coordinate(gz, D, padding_mode, align_corners)
                    if mode == "nearest":
                        cx, cy, cz = (_round_half_even(v) for v in (ix, iy, iz))
                        if 0 <= cx < W and 0 <= cy < H and 0 <= cz < D:
                            for c in range(C):
                                vals[b][c][k][i][j] = img[c][cz][cy][cx]
                        continue
                    x0, y0, z0 = math.floor(ix), math.floor(iy), math.floor(iz)
                    fx, fy, fz = ix - x0, iy - y0, iz - z0
                    taps = []
                    for dz, wz in ((0, 1.0 - fz), (1, fz)):
                        for dy, wy in ((0, 1.0 - fy), (1, fy)):
                            for dx, wx in ((0, 1.0 - fx), (1, fx)):
                                q, r, s = x0 + dx, y0 + dy, z0 + dz
                                if 0 <= q < W and 0 <= r < H and 0 <= s < D:
                                    taps.append((wx * wy * wz, s, r, q))
                    for c in range(C):
                        vals[b][c][k][i][j] = sum(w * img[c][s][r][q] for w, s, r, q in taps)
    return torch.tensor(vals, dtype=torch.float64)


# ----------------------------------------------------------------------------- transforms

NUM_PARAMS = {
    "translation": 2,
    "attention": 3,
    "rigid": 3,
    "similarity": 4,
    "affine": 6,
    "projective": 8,
    "tps": 32,
    "translation3d": 3,
    "attention3d": 4,
    "affine3d": 12,
}
FAMILIES_2D = ("translation", "attention", "rigid", "similarity", "affine", "projective", "tps")
FAMILIES_3D = ("translation3d", "attention3d", "affine3d")


def tps_control_points(k: int) -> list[tuple[float, float]]:
    """Target control points of a K-point TPS: a sqrt(K) x sqrt(K) grid, y outer, x inner."""
    n = math.isqrt(k)
    if n * n != k or n < 2:
        raise ValueError(f"TPS needs a square number >= 4 of control points, got {k}")
    lin = [-1.0 + 2.0 * i / (n - 1) for i in range(n)]
    return [(lin[ix], lin[iy]) for iy in range(n) for ix in range(n)]


def _tps_u(d2: float) -> float:
    """TPS kernel U(r) = r^2 log r^2 from the squared distance r^2; U(0) = 0."""
    return 0.0 if d2 == 0.0 else d2 * math.log(d2)


def tps_coefficients(source: list[tuple[float, float]]):
    """Solve [[K, P], [P^T, 0]] [w; a] = [source; 0] for one sample; returns (w (K, 2), a (3, 2))."""
    ctrl = tps_control_points(len(source))
    k = len(ctrl)
    L = np.zeros((k + 3, k + 3))
    for i, (xi, yi) in enumerate(ctrl):
        for j, (xj, yj) in enumerate(ctrl):
            L[i, j] = _tps_u((xi - xj) ** 2 + (yi - yj) ** 2)
        L[i, k:] = (1.0, xi, yi)
        L[k:, i] = (1.0, xi, yi)
    rhs = np.zeros((k + 3, 2))
    rhs[:k] = np.asarray(source, dtype=np.float64)
    sol = np.linalg.solve(L, rhs)
    return ctrl, sol[:k], sol[k:]


def _map_point(p: list[float], family: str, q: list[float]) -> list[float]:
    """T_theta for one parameter vector ``p`` (flat floats) and one point ``q``."""
    if family == "translation":
        tx, ty = p
        return [q[0] + tx, q[1] + ty]
    if family == "attention":
        s, tx, ty = p
        return [s * q[0] + tx, s * q[1] + ty]
    if family in ("rigid", "similarity"):
        s, a, tx, ty = (1.0, *p) if family == "rigid" else p
        c, si = math.cos(a), math.sin(a)
        return [s * (c * q[0] - si * q[1]) + tx, s * (si * q[0] + c * q[1]) + ty]
    if family == "affine":
        t = p
        return [t[0] * q[0] + t[1] * q[1] + t[2], t[3] * q[0] + t[4] * q[1] + t[5]]
    if family == "projective":
        h11, h12, h13, h21, h22, h23, h31, h32 = p
        den = h31 * q[0] + h32 * q[1] + 1.0
        return [(h11 * q[0] + h12 * q[1] + h13) / den, (h21 * q[0] + h22 * q[1] + h23) / den]
    if family == "translation3d":
        return [q[0] + p[0], q[1] + p[1], q[2] + p[2]]
    if family == "attention3d":
        s, tx, ty, tz = p
        return [s * q[0] + tx, s * q[1] + ty, s * q[2] + tz]
    if family == "affine3d":
        t = p
        return [t[4 * r] * q[0] + t[4 * r + 1] * q[1] + t[4 * r + 2] * q[2] + t[4 * r + 3] for r in range(3)]
    raise ValueError(f"unknown family {family!r}")


def ref_points(params, family: str, points):
    """T_theta applied to points. params: (B, P) flat; points: (B, N, d) -> (B, N, d) float64."""
    ps = params.detach().double().reshape(params.shape[0], -1).tolist()
    pts = points.detach().double().tolist()
    out = []
    for b, p in enumerate(ps):
        if family == "tps":
            src = [(p[2 * i], p[2 * i + 1]) for i in range(len(p) // 2)]
            ctrl, w, a = tps_coefficients(src)
            row = []
            for qx, qy in pts[b]:
                u = np.array([_tps_u((qx - cx) ** 2 + (qy - cy) ** 2) for cx, cy in ctrl])
                val = u @ w + a[0] + qx * a[1] + qy * a[2]
                row.append([float(val[0]), float(val[1])])
            out.append(row)
        else:
            out.append([_map_point(p, family, q) for q in pts[b]])
    d = points.shape[-1]
    return torch.tensor(out, dtype=torch.float64).reshape(len(ps), -1, d)


def identity_points(size, align_corners: bool):
    """Normalised pixel centres of an output of ``size`` ((H, W) or (D, H, W)) -> (N, d), x first."""
    if len(size) == 2:
        H, W = size
        pts = [[pixel_centre(j, W, align_corners), pixel_centre(i, H, align_corners)]
               for i in range(H) for j in range(W)]
    else:
        D, H, W = size
        pts = [[pixel_centre(j, W, align_corners), pixel_centre(i, H, align_corners),
                pixel_centre(k, D, align_corners)]
               for k in range(D) for i in range(H) for j in range(W)]
    return torch.tensor(pts, dtype=torch.float64)


def ref_grid(params, family: str, size, align_corners: bool = False):
    """Sampling grid of ``family``: (B, *size, d) float64, the output pixel centres mapped by T.

    ``flow`` / ``flow3d`` take the dense displacement (B, *size, d) and add it to the centres.
    """
    size = tuple(int(s) for s in size)
    d = len(size)
    ident = identity_points(size, align_corners)  # (N, d)
    B = params.shape[0]
    if family in ("flow", "flow3d"):
        return ident.reshape(1, *size, d) + params.detach().double().reshape(B, *size, d)
    pts = ident.unsqueeze(0).expand(B, -1, -1)
    return ref_points(params, family, pts).reshape(B, *size, d)


# ----------------------------------------------------------------------------- test inputs


def random_params(family: str, batch: int, *, seed: int = 0, dtype=torch.float64, size=None, k: int = 16):
    """Random, non-trivial parameters near the identity: (B, P) (``flow``: (B, *size, d)).

    Drawn in float64 from a seeded generator, then cast, so every dtype sees the same values.
    """
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(batch, 1, generator=g, dtype=torch.float64)

    if family in ("translation", "translation3d"):
        p = r(batch, 2 if family == "translation" else 3, scale=0.2)
    elif family in ("attention", "attention3d"):
        p = torch.cat([u(0.8, 1.2), r(batch, 2 if family == "attention" else 3, scale=0.2)], 1)
    elif family == "rigid":
        p = torch.cat([r(batch, 1, scale=0.3), r(batch, 2, scale=0.2)], 1)
    elif family == "similarity":
        p = torch.cat([u(0.8, 1.2), r(batch, 1, scale=0.3), r(batch, 2, scale=0.2)], 1)
    elif family == "affine":
        p = torch.tensor([1.0, 0, 0, 0, 1, 0], dtype=torch.float64) + r(batch, 6, scale=0.15)
    elif family == "affine3d":
        p = torch.eye(3, 4, dtype=torch.float64).reshape(1, 12) + r(batch, 12, scale=0.15)
    elif family == "projective":
        p = torch.tensor([1.0, 0, 0, 0, 1, 0, 0, 0], dtype=torch.float64) + torch.cat(
            [r(batch, 6, scale=0.1), r(batch, 2, scale=0.1).clamp(-0.2, 0.2)], 1
        )
    elif family == "tps":
        ctrl = torch.tensor(tps_control_points(k), dtype=torch.float64).reshape(1, -1)
        p = ctrl + r(batch, 2 * k, scale=0.1)
    elif family in ("flow", "flow3d"):
        d = 2 if family == "flow" else 3
        p = r(batch, *size, d, scale=0.15)
    else:
        raise ValueError(f"unknown family {family!r}")
    return p.to(dtype)
