"""Tricubic sampling (`stnkit.functional.cubic`, `warp(..., mode="bicubic")` in 3D) against a
plain-loop reference written here, against torch's 2D bicubic on volumes sampled exactly at
voxel centres along one axis, through the public API, and its gradients."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

import stnkit
from reference import random_params, ref_grid
from stnkit.functional.cubic import grid_sample_3d_bicubic

PADDINGS = ("zeros", "border", "reflection")
A = -0.75


# ----------------------------------------------------------------------------- the reference


def _kernel(s: float) -> float:
    """Cubic convolution (Keys, A = -0.75) at distance s."""
    s = abs(s)
    if s <= 1:
        return (A + 2) * s**3 - (A + 3) * s**2 + 1
    if s < 2:
        return A * s**3 - 5 * A * s**2 + 8 * A * s - 4 * A
    return 0.0


def _tap(i: int, n: int, padding_mode: str, align_corners: bool):
    """The voxel an integer tap index i reads along an axis of n, or None for a 0 (zeros)."""
    if padding_mode == "zeros":
        return i if 0 <= i < n else None
    if padding_mode == "border":
        return min(max(i, 0), n - 1)
    if align_corners:  # mirror about the end voxels' centres: period 2 (n - 1), ends not repeated
        if n == 1:
            return 0
        m = i % (2 * (n - 1))
        return m if m < n else 2 * (n - 1) - m
    m = i % (2 * n)  # mirror about the outer edges: period 2 n, end voxels repeated
    return m if m < n else 2 * n - 1 - m


def _pixel(c: float, n: int, align_corners: bool) -> float:
    return (c + 1) / 2 * (n - 1) if align_corners else ((c + 1) * n - 1) / 2


def ref_tricubic(x, g, padding_mode, align_corners):
    """Plain loops: x (B, C, D, H, W), g (B, D', H', W', 3) -> float64 (B, C, D', H', W')."""
    B, C, D, H, W = x.shape
    xs, pts = x.double().tolist(), g.double().reshape(B, -1, 3).tolist()
    out = []
    for b in range(B):
        vals = []
        for gx, gy, gz in pts[b]:
            axes = []
            for c, n in ((gx, W), (gy, H), (gz, D)):
                u = _pixel(c, n, align_corners)
                i0 = math.floor(u)
                axes.append([(_tap(i, n, padding_mode, align_corners), _kernel(u - i)) for i in range(i0 - 1, i0 + 3)])
            v = [0.0] * C
            for k, wz in axes[2]:
                for j, wy in axes[1]:
                    for i, wx in axes[0]:
                        if None not in (i, j, k):
                            for ch in range(C):
                                v[ch] += wz * wy * wx * xs[b][ch][k][j][i]
            vals.append(v)
        out.append(torch.tensor(vals, dtype=torch.float64).T)  # (C, N)
    return torch.stack(out).reshape(B, C, *g.shape[1:4])


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


def _points(B, n, seed, dtype=torch.float64):
    """n points per item, (B, 1, 1, n, 3): inside, within 2 voxels of every border, beyond."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda: torch.rand(B, n, 3, generator=gen, dtype=torch.float64)  # noqa: E731
    inside = r() * 1.6 - 0.8
    edge = torch.sign(r() - 0.5) * (0.7 + 0.6 * r())  # |c| in 0.7 .. 1.3: either side of the ends
    beyond = r() * 12 - 6  # several reflections away
    g = torch.cat([inside, edge, beyond], 1)  # (B, 3n, 3)
    return g.reshape(B, 1, 1, 3 * n, 3).to(dtype)


# ----------------------------------------------------------------------------- vs reference


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("shape", [(2, 2, 3, 4, 5), (1, 1, 1, 2, 6)], ids=["3x4x5", "1x2x6"])
def test_matches_reference(shape, padding_mode, align_corners, dtype):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    g = _points(shape[0], 6, seed=2, dtype=dtype)
    out = grid_sample_3d_bicubic(x, g, padding_mode, align_corners)
    assert out.shape == (*shape[:2], 1, 1, 18) and out.dtype == dtype
    torch.testing.assert_close(out.double(), ref_tricubic(x, g, padding_mode, align_corners), **_tol(dtype))


def test_reference_kernel_is_the_2d_bicubic():
    """The reference itself: cut down to 2D it reproduces F.grid_sample's bicubic (and its
    padding rules) at points inside, near and beyond the borders."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 1, 4, 5, generator=gen, dtype=torch.float64)
    g = _points(1, 4, seed=4)
    g3 = g.clone()
    g3[..., 2] = 0.0  # the centre of the one voxel along z: weights (0, 1, 0, 0) there
    for pad in PADDINGS:
        for ac in (False, True):
            want = F.grid_sample(x[:, :, 0], g[:, 0, :, :, :2], mode="bicubic", padding_mode=pad, align_corners=ac)
            torch.testing.assert_close(ref_tricubic(x, g3, pad, ac)[:, :, 0], want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- vs torch's 2D bicubic


def _centres(n, align_corners):
    c = [(2 * k / (n - 1) - 1) if align_corners else ((2 * k + 1) / n - 1) for k in range(n)]
    return torch.tensor(c, dtype=torch.float64)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("exact", [0, 1, 2], ids=["x", "y", "z"])
def test_matches_2d_bicubic_on_voxel_centres(exact, padding_mode, align_corners, dtype):
    """Along axis `exact` every point sits on a voxel centre (an exact binary fraction), so the
    cubic weights there are (0, 1, 0, 0) and each slice must equal torch's 2D bicubic of that
    slice, values and gradients (w.r.t. the volume and the two in-plane coordinates)."""
    n = 5 if align_corners else 4  # centres k/2 - 1 or (2k + 1)/4 - 1: exact in binary
    sizes = [6, 5, 7]  # (W, H, D) of the other axes
    sizes[exact] = n
    W, H, D = sizes
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 2, D, H, W, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    plane = (torch.rand(2, 3, 4, 2, generator=gen, dtype=torch.float64) * 3.6 - 1.8).to(dtype)  # (B, 3, 4, 2)
    coords = [plane[..., 0], plane[..., 1]]
    coords.insert(exact, torch.zeros_like(plane[..., 0]))
    g = torch.stack(coords, -1)[:, None].repeat(1, n, 1, 1, 1)  # (B, n, 3, 4, 3)
    g[..., exact] = _centres(n, align_corners).to(dtype).view(1, n, 1, 1)
    g.requires_grad_()
    out = grid_sample_3d_bicubic(x, g, padding_mode, align_corners)  # (B, C, n, 3, 4)
    gout = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype)
    gx, gg = torch.autograd.grad(out, (x, g), gout)
    inplane = [a for a in range(3) if a != exact]
    total = torch.zeros_like(x)  # each output slice k reads volume slice k only
    for k in range(n):
        sl = x.detach().select(4 - exact, k).clone().requires_grad_()  # (B, C, *the other two axes)
        g2 = g.detach()[:, k][..., inplane].clone().requires_grad_()  # (B, 3, 4, 2)
        want = F.grid_sample(sl, g2, mode="bicubic", padding_mode=padding_mode, align_corners=align_corners)
        torch.testing.assert_close(out[:, :, k], want, **_tol(dtype))
        wx, wg = torch.autograd.grad(want, (sl, g2), gout[:, :, k])
        torch.testing.assert_close(gg[:, k][..., inplane], wg, **_tol(dtype))
        total.select(4 - exact, k).add_(wx)
    torch.testing.assert_close(gx, total, **_tol(dtype))


# ----------------------------------------------------------------------------- the public API


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", PADDINGS)
def test_warp_affine3d_bicubic_matches_reference(padding_mode, align_corners):
    x = torch.randn(2, 2, 3, 4, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    p = random_params("affine3d", 2, seed=7)
    p = p + torch.tensor([0.0, 0, 0, 0.4, 0, 0, 0, -0.5, 0, 0, 0, 0.6], dtype=torch.float64)  # reach the borders
    kw = dict(mode="bicubic", padding_mode=padding_mode, align_corners=align_corners)
    out = stnkit.warp(x, p, "affine3d", (2, 3, 4), **kw)
    g = ref_grid(p, "affine3d", (2, 3, 4), align_corners)
    torch.testing.assert_close(out, ref_tricubic(x, g, padding_mode, align_corners), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("padding_mode", PADDINGS)
def test_identity_warp_returns_the_volume(padding_mode, dtype):
    """Exactly where the identity grid is exact in binary (align_corners=True, sizes 2^k + 1:
    every point on a voxel centre, weights exactly (0, 1, 0, 0)); to rounding elsewhere, as
    torch's 2D bicubic (a coordinate one ulp below a centre puts t just under 1)."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 3, 5, 9, generator=gen, dtype=torch.float64).to(dtype)
    eye = stnkit.transforms.identity("affine3d", 2, dtype=dtype)
    out = stnkit.warp(x, eye, "affine3d", mode="bicubic", padding_mode=padding_mode, align_corners=True)
    assert torch.equal(out, x)
    x = torch.randn(1, 2, 4, 6, 7, generator=gen, dtype=torch.float64).to(dtype)
    out = stnkit.warp(x, eye[:1], "affine3d", mode="bicubic", padding_mode=padding_mode)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-13)


def test_batched_equals_per_item_and_empty():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(3, 2, 4, 5, 6, generator=gen)
    g = torch.rand(3, 2, 3, 4, 3, generator=gen) * 2.4 - 1.2
    out = grid_sample_3d_bicubic(x, g, "reflection")
    for b in range(3):
        torch.testing.assert_close(out[b : b + 1], grid_sample_3d_bicubic(x[b : b + 1], g[b : b + 1], "reflection"))
    assert grid_sample_3d_bicubic(x[:, :0], g).shape == (3, 0, 2, 3, 4)
    e = grid_sample_3d_bicubic(x[:0].requires_grad_(), g[:0].requires_grad_())
    assert e.shape == (0, 2, 2, 3, 4)
    p = stnkit.transforms.identity("affine3d", 3)
    assert stnkit.warp(x[:, :0], p, "affine3d", mode="bicubic").shape == (3, 0, 4, 5, 6)


def test_chunks_and_single_gradients_agree(monkeypatch):
    """Output points are processed in chunks: many small chunks, forward and both gradients;
    and the backward computing only one of the two gradients gives it unchanged."""
    import stnkit.functional.cubic as cubic

    gen = torch.Generator().manual_seed(10)
    x = torch.randn(2, 2, 4, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    g = (torch.rand(2, 3, 4, 5, 3, generator=gen, dtype=torch.float64) * 2.4 - 1.2).requires_grad_()
    gout = torch.randn(2, 2, 3, 4, 5, generator=gen, dtype=torch.float64)
    whole = grid_sample_3d_bicubic(x, g, "border")
    grads = torch.autograd.grad(whole, (x, g), gout)
    monkeypatch.setattr(cubic, "_CHUNK", 1)
    monkeypatch.setattr(cubic, "_MIN_CHUNK", 7)  # 60 points: 9 chunks, the last one short
    assert len(cubic._chunks(2, 2, 60)) == 9
    parts = grid_sample_3d_bicubic(x, g, "border")
    torch.testing.assert_close(parts, whole, rtol=0, atol=0)
    for a, b in zip(torch.autograd.grad(parts, (x, g), gout), grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # the backward's branches for one gradient only: the same values
    (only_x,) = torch.autograd.grad(grid_sample_3d_bicubic(x, g.detach(), "border"), x, gout)
    (only_g,) = torch.autograd.grad(grid_sample_3d_bicubic(x.detach(), g, "border"), g, gout)
    torch.testing.assert_close(only_x, grads[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(only_g, grads[1], rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", PADDINGS)
def test_gradcheck(padding_mode, align_corners):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1, 1, 3, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    g = (torch.rand(1, 2, 2, 2, 3, generator=gen, dtype=torch.float64) * 3 - 1.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, g: grid_sample_3d_bicubic(x, g, padding_mode, align_corners), (x, g))


@pytest.mark.parametrize("padding_mode", ["zeros", "reflection"])
def test_gradgradcheck(padding_mode):
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(1, 1, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    g = (torch.rand(1, 1, 2, 2, 3, generator=gen, dtype=torch.float64) * 3 - 1.5).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x, g: grid_sample_3d_bicubic(x, g, padding_mode, True), (x, g))


def test_gradcheck_through_warp():
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(1, 2, 3, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    p = random_params("affine3d", 1, seed=14).requires_grad_()
    f = lambda x, p: stnkit.warp(x, p, "affine3d", (2, 2, 3), mode="bicubic", padding_mode="reflection")  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, p))


# ----------------------------------------------------------------------------- bad input


def _raises(fn, *fragments):
    with pytest.raises(ValueError) as info:
        fn()
    for frag in fragments:
        assert re.search(frag, str(info.value)), f"{frag!r} not in {str(info.value)!r}"


def test_bad_input():
    x, p = torch.randn(2, 1, 3, 4, 5), stnkit.transforms.identity("affine3d", 2)
    _raises(lambda: stnkit.warp(x, p, "affine3d", mode="bogus"), "bogus", "bicubic", "3D")
    _raises(lambda: stnkit.warp(x, p, "affine3d", mode="bicubic", padding_mode="bogus"), "bogus", "reflection")
    _raises(lambda: stnkit.warp(x[0], p, "affine3d", mode="bicubic"), "5-D", re.escape("(1, 3, 4, 5)"))
    _raises(lambda: stnkit.warp(x.long(), p, "affine3d", mode="bicubic"), "float", "int64")
    _raises(lambda: stnkit.warp(x, p[:1], "affine3d", mode="bicubic"), "batch", "2", "1")
    _raises(lambda: stnkit.warp(x, p * math.inf, "affine3d", mode="bicubic"), "params", "NaN or Inf")
    g = torch.zeros(2, 2, 2, 2, 3)
    _raises(lambda: grid_sample_3d_bicubic(x, g[..., :2]), "grid", re.escape("(2, 2, 2, 2, 2)"))
    _raises(lambda: grid_sample_3d_bicubic(x, g[:1]), "grid", "batch 2", re.escape("(1, 2, 2, 2, 3)"))
    _raises(lambda: grid_sample_3d_bicubic(x, g.double()), "grid", "float64")
    _raises(lambda: grid_sample_3d_bicubic(x, g, "wrap"), "padding_mode", "wrap")
    _raises(lambda: grid_sample_3d_bicubic(x[0], g), "x", "5-D")
