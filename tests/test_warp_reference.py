"""`stnkit.warp` against the independent plain-loop reference (tests/reference.py), and its
gradients, fill, output sizes, projective horizon, batching and input validation."""

import re

import pytest
import torch

import stnkit
from reference import (
    FAMILIES_2D,
    FAMILIES_3D,
    random_params,
    ref_grid,
    ref_sample_2d,
    ref_sample_3d,
)

FAMILIES_2D_ALL = FAMILIES_2D + ("flow",)
FAMILIES_3D_ALL = FAMILIES_3D + ("flow3d",)
PADDINGS = ("zeros", "border", "reflection")

IN_2D, OUT_2D = (2, 2, 5, 6), (4, 7)  # x (B, C, H, W), output (H', W')
IN_3D, OUT_3D = (2, 2, 3, 4, 5), (2, 3, 4)

# (family, mode) pairs checked against tests/reference.py; 3D bicubic (tricubic) has its own
# reference in tests/test_tricubic.py
FAMILY_MODES = [(f, m) for f in FAMILIES_2D_ALL for m in ("nearest", "bilinear", "bicubic")] + [
    (f, m) for f in FAMILIES_3D_ALL for m in ("nearest", "bilinear")
]

def _tol(dtype):
    return dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)


def _image(shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _expected(x, params, family, size, mode, padding_mode, align_corners):
    """x sampled, with the reference sampler, at the reference grid of the family."""
    g = ref_grid(params, family, size, align_corners)
    sample = ref_sample_2d if len(size) == 2 else ref_sample_3d
    return sample(x, g, mode, padding_mode, align_corners)


# ----------------------------------------------------------------------------- vs reference


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("family", FAMILIES_2D_ALL)
def test_warp_2d_matches_reference(family, mode, padding_mode, align_corners, dtype):
    x = _image(IN_2D, dtype)
    p = random_params(family, IN_2D[0], seed=1, dtype=dtype, size=OUT_2D)
    out = stnkit.warp(x, p, family, OUT_2D, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    assert out.shape == (*IN_2D[:2], *OUT_2D) and out.dtype == dtype
    want = _expected(x, p, family, OUT_2D, mode, padding_mode, align_corners)
    torch.testing.assert_close(out.double(), want, **_tol(dtype))


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("family", FAMILIES_3D_ALL)
def test_warp_3d_matches_reference(family, mode, padding_mode, align_corners, dtype):
    x = _image(IN_3D, dtype)
    p = random_params(family, IN_3D[0], seed=2, dtype=dtype, size=OUT_3D)
    out = stnkit.warp(x, p, family, OUT_3D, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    assert out.shape == (*IN_3D[:2], *OUT_3D) and out.dtype == dtype
    want = _expected(x, p, family, OUT_3D, mode, padding_mode, align_corners)
    torch.testing.assert_close(out.double(), want, **_tol(dtype))


@pytest.mark.parametrize("k", [4, 9, 25])
def test_warp_tps_other_control_grids(k):
    x = _image(IN_2D)
    p = random_params("tps", 2, seed=3, k=k)
    out = stnkit.warp(x, p, "tps", OUT_2D)
    torch.testing.assert_close(out, _expected(x, p, "tps", OUT_2D, "bilinear", "zeros", False), **_tol(torch.float64))
    # the (B, K, 2) layout is the same map
    torch.testing.assert_close(stnkit.warp(x, p.reshape(2, k, 2), "tps", OUT_2D), out, rtol=0, atol=0)


@pytest.mark.parametrize("size", [(3, 4), (2, 3), (9, 11), (13, 5), (1, 1)])
@pytest.mark.parametrize("family", ["affine", "projective", "tps"])
def test_warp_output_size_smaller_and_larger(family, size):
    x = _image(IN_2D)
    p = random_params(family, 2, seed=4)
    for ac in (False, True):
        out = stnkit.warp(x, p, family, size, align_corners=ac)
        assert out.shape == (2, 2, *size)
        torch.testing.assert_close(out, _expected(x, p, family, size, "bilinear", "zeros", ac), **_tol(torch.float64))


@pytest.mark.parametrize("size", [(2, 2, 3), (4, 5, 6)])
def test_warp_3d_output_size(size):
    x = _image(IN_3D)
    p = random_params("affine3d", 2, seed=5)
    out = stnkit.warp(x, p, "affine3d", size)
    assert out.shape == (2, 2, *size)
    torch.testing.assert_close(out, _expected(x, p, "affine3d", size, "bilinear", "zeros", False), **_tol(torch.float64))


def test_warp_default_output_size_is_input_size():
    x = _image(IN_2D)
    assert stnkit.warp(x, random_params("affine", 2), "affine").shape == IN_2D
    x3 = _image(IN_3D)
    assert stnkit.warp(x3, random_params("affine3d", 2), "affine3d").shape == IN_3D
    field = random_params("flow", 2, size=OUT_2D)
    assert stnkit.warp(x, field, "flow").shape == (*IN_2D[:2], *OUT_2D)


def test_warp_matrix_layouts():
    x = _image(IN_2D)
    theta = random_params("affine", 2, seed=6)
    torch.testing.assert_close(stnkit.warp(x, theta.reshape(2, 2, 3), "affine"), stnkit.warp(x, theta, "affine"))
    h = random_params("projective", 2, seed=7)
    H = torch.cat([h, torch.ones(2, 1, dtype=h.dtype)], 1).reshape(2, 3, 3) * 2.5  # scaled: h33 = 2.5
    torch.testing.assert_close(stnkit.warp(x, H, "projective"), stnkit.warp(x, h, "projective"))
    x3 = _image(IN_3D)
    t3 = random_params("affine3d", 2, seed=8)
    torch.testing.assert_close(stnkit.warp(x3, t3.reshape(2, 3, 4), "affine3d"), stnkit.warp(x3, t3, "affine3d"))


# ----------------------------------------------------------------------------- identity, batching


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("family", FAMILIES_2D)
def test_identity_params_return_input_2d(family, mode, padding_mode, align_corners, dtype):
    x = _image(IN_2D, dtype)
    p = stnkit.transforms.identity(family, IN_2D[0], dtype=dtype)
    out = stnkit.warp(x, p, family, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("family", FAMILIES_3D)
def test_identity_params_return_input_3d(family, mode, align_corners):
    x = _image(IN_3D, torch.float32)
    p = stnkit.transforms.identity(family, IN_3D[0], dtype=torch.float32)
    out = stnkit.warp(x, p, family, mode=mode, align_corners=align_corners)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["flow", "flow3d"])
def test_zero_flow_returns_input(family):
    shape = IN_2D if family == "flow" else IN_3D
    x = _image(shape, torch.float32)
    field = torch.zeros(shape[0], *shape[2:], len(shape) - 2)
    torch.testing.assert_close(stnkit.warp(x, field, family), x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family,mode", FAMILY_MODES)
def test_batched_equals_per_sample(family, mode):
    three_d = family in FAMILIES_3D_ALL
    shape, size = ((3, 2, 3, 4, 5), OUT_3D) if three_d else ((3, 2, 5, 6), OUT_2D)
    x = _image(shape, torch.float32)
    p = random_params(family, 3, seed=9, dtype=torch.float32, size=size)
    kw = dict(mode=mode, padding_mode="border")
    out = stnkit.warp(x, p, family, size, **kw)
    singles = torch.cat([stnkit.warp(x[i : i + 1], p[i : i + 1], family, size, **kw) for i in range(3)])
    # TPS solves and multiplies its basis batched: another summation order than one at a time, so
    # float32 rounding (a few 1e-6 on some CPUs) and no more; a mixed-up batch item is off by O(1)
    tol = 1e-5 if family == "tps" else 1e-6
    torch.testing.assert_close(out, singles, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- fill


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("fill", [2.5, -1.0, "per-channel"])
def test_fill_value_outside_the_image(fill, mode):
    """Under zeros padding, x is sampled as if the plane outside it held `fill`:
    out = sample(x) + fill * (1 - sample(ones)); pixels wholly outside read exactly `fill`."""
    x = _image(IN_2D)
    fill_t = torch.tensor([3.0, -2.0], dtype=torch.float64) if fill == "per-channel" else torch.tensor(fill, dtype=torch.float64)
    fill_arg = fill_t if fill == "per-channel" else fill
    p = torch.tensor([[1.1, 0.45], [-0.8, -1.3]], dtype=torch.float64)  # shifts half the image out
    out = stnkit.warp(x, p, "translation", OUT_2D, mode=mode, fill=fill_arg)
    g = ref_grid(p, "translation", OUT_2D, False)
    cover = ref_sample_2d(torch.ones_like(x), g, mode, "zeros", False)
    want = ref_sample_2d(x, g, mode, "zeros", False) + fill_t.reshape(1, -1, 1, 1) * (1 - cover)
    torch.testing.assert_close(out, want, **_tol(torch.float64))
    outside = cover.abs() < 1e-12
    assert outside.any() and (~outside).any()
    full = fill_t.reshape(1, -1, 1, 1).expand_as(out)
    torch.testing.assert_close(out[outside], full[outside], rtol=0, atol=1e-12)


def test_fill_zero_and_none_are_zeros_padding():
    x = _image(IN_2D)
    p = random_params("affine", 2, seed=10) * 1.5
    base = stnkit.warp(x, p, "affine")
    torch.testing.assert_close(stnkit.warp(x, p, "affine", fill=0.0), base, rtol=0, atol=0)
    torch.testing.assert_close(stnkit.warp(x, p, "affine", fill=torch.zeros(2, dtype=torch.float64)), base)


def test_fill_3d():
    x = _image(IN_3D)
    p = torch.tensor([[1.5, 0.0, 0.0], [0.0, 0.0, -3.0]], dtype=torch.float64)  # right half / all out
    out = stnkit.warp(x, p, "translation3d", fill=7.0)
    assert torch.all(out[1] == 7.0)
    g = ref_grid(p, "translation3d", IN_3D[2:], False)
    cover = ref_sample_3d(torch.ones_like(x), g, "bilinear", "zeros", False)
    want = ref_sample_3d(x, g, "bilinear", "zeros", False) + 7.0 * (1 - cover)
    torch.testing.assert_close(out, want, **_tol(torch.float64))


# ----------------------------------------------------------------------------- projective horizon


def _horizon_params(dtype):
    # denominator 1.5 x + 1 is negative for x < -2/3: the left output columns are behind the horizon
    h = torch.tensor([[1.0, 0.1, 0.05, -0.1, 0.9, 0.02, 1.5, 0.0],
                      [0.9, 0.0, 0.0, 0.0, 1.0, 0.0, 0.2, -1.7]], dtype=dtype)
    return h


@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
def test_projective_horizon_finite_and_filled(mode, padding_mode, dtype):
    x = _image(IN_2D, dtype).requires_grad_()
    h = _horizon_params(dtype).requires_grad_()
    fill = 0.75
    out = stnkit.warp(x, h, "projective", OUT_2D, mode=mode, padding_mode=padding_mode, fill=fill)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(h.grad).all()

    # reference: pixels with a positive denominator sample; the others are `fill`
    hd = h.detach().double()
    cx = torch.tensor([(2 * j + 1) / OUT_2D[1] - 1 for j in range(OUT_2D[1])], dtype=torch.float64)
    cy = torch.tensor([(2 * i + 1) / OUT_2D[0] - 1 for i in range(OUT_2D[0])], dtype=torch.float64)
    den = hd[:, 6, None, None] * cx[None, None, :] + hd[:, 7, None, None] * cy[None, :, None] + 1
    behind = den <= 0  # (B, H', W')
    assert behind.any() and (~behind).any() and den.abs().min() > 1e-3
    g = ref_grid(hd, "projective", OUT_2D, False)
    g = torch.where(behind[..., None], torch.zeros_like(g), g)  # placeholder, masked below
    xd = x.detach().double()
    want = ref_sample_2d(xd - fill, g, mode, padding_mode, False) + fill if padding_mode == "zeros" else ref_sample_2d(
        xd, g, mode, padding_mode, False
    )
    want = torch.where(behind[:, None], torch.full_like(want, fill), want)
    torch.testing.assert_close(out.detach().double(), want, **_tol(dtype))


def test_projective_horizon_zero_fill_gradcheck():
    x = _image((1, 1, 4, 5)).requires_grad_()
    h = _horizon_params(torch.float64)[:1].requires_grad_()
    out = stnkit.warp(x, h, "projective", (3, 4))
    assert torch.isfinite(out).all()
    assert torch.autograd.gradcheck(lambda x, h: stnkit.warp(x, h, "projective", (3, 4)), (x, h))


# ----------------------------------------------------------------------------- gradients


def _grad_inputs(family, three_d=False, seed=11):
    shape, size = ((1, 1, 2, 3, 4), (2, 2, 3)) if three_d else ((1, 1, 4, 5), (3, 4))
    x = _image(shape, seed=seed).requires_grad_()
    p = random_params(family, 1, seed=seed, size=size).requires_grad_()
    return x, p, size


@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("family", FAMILIES_2D_ALL + FAMILIES_3D_ALL)
def test_gradcheck_bilinear(family, padding_mode):
    x, p, size = _grad_inputs(family, family in FAMILIES_3D_ALL)

    def f(x, p):
        return stnkit.warp(x, p, family, size, padding_mode=padding_mode)

    assert torch.autograd.gradcheck(f, (x, p))


@pytest.mark.parametrize("family", FAMILIES_2D_ALL)
def test_gradcheck_bicubic(family):
    x, p, size = _grad_inputs(family)
    assert torch.autograd.gradcheck(lambda x, p: stnkit.warp(x, p, family, size, mode="bicubic"), (x, p))


@pytest.mark.parametrize("family", FAMILIES_2D_ALL + FAMILIES_3D_ALL)
def test_gradcheck_nearest_wrt_input(family):
    x, p, size = _grad_inputs(family, family in FAMILIES_3D_ALL)
    p = p.detach()
    assert torch.autograd.gradcheck(lambda x: stnkit.warp(x, p, family, size, mode="nearest"), (x,))


@pytest.mark.parametrize("family", FAMILIES_2D_ALL + FAMILIES_3D_ALL)
def test_gradgradcheck_bilinear(family):
    x, p, size = _grad_inputs(family, family in FAMILIES_3D_ALL, seed=12)
    assert torch.autograd.gradgradcheck(lambda x, p: stnkit.warp(x, p, family, size), (x, p))


@pytest.mark.parametrize("family", FAMILIES_2D_ALL + FAMILIES_3D_ALL)
def test_every_param_gets_a_gradient(family):
    three_d = family in FAMILIES_3D_ALL
    x = _image(IN_3D if three_d else IN_2D, torch.float32)
    size = OUT_3D if three_d else OUT_2D
    p = random_params(family, 2, seed=13, dtype=torch.float32, size=size).requires_grad_()
    stnkit.warp(x, p, family, size).square().sum().backward()
    assert torch.isfinite(p.grad).all()
    assert (p.grad.reshape(2, -1).abs().sum(0) > 0).all()


# ----------------------------------------------------------------------------- bad input


def _raises(fn, *fragments):
    """fn() raises ValueError whose message contains every fragment (what was expected, what came)."""
    with pytest.raises(ValueError) as info:
        fn()
    msg = str(info.value)
    for frag in fragments:
        assert re.search(frag, msg), f"{frag!r} not in {msg!r}"


def test_warp_bad_input():
    x = _image(IN_2D)
    p = random_params("affine", 2)
    x3 = _image(IN_3D)
    p3 = random_params("affine3d", 2)
    # wrong ndim
    _raises(lambda: stnkit.warp(x[0], p, "affine"), r"4", re.escape("(2, 5, 6)"))
    _raises(lambda: stnkit.warp(x3, p, "affine"), r"4", re.escape("(2, 2, 3, 4, 5)"))
    _raises(lambda: stnkit.warp(x, p3, "affine3d"), r"5", re.escape("(2, 2, 5, 6)"))
    # wrong parameter count
    _raises(lambda: stnkit.warp(x, p[:, :5], "affine"), r"6", re.escape("(2, 5)"))
    _raises(lambda: stnkit.warp(x, p[0], "affine"), r"6", re.escape("(6,)"))
    _raises(lambda: stnkit.warp(x, torch.zeros(2, 3), "translation"), r"2", re.escape("(2, 3)"))
    _raises(lambda: stnkit.warp(x, torch.zeros(2, 9), "projective"), r"8", re.escape("(2, 9)"))
    _raises(lambda: stnkit.warp(x, torch.zeros(2, 30), "tps"), r"2K|square", re.escape("(2, 30)"))
    _raises(lambda: stnkit.warp(x, torch.zeros(2, 4, 7, 3), "flow"), r"2\)", re.escape("(2, 4, 7, 3)"))
    # unknown family / mode / padding
    _raises(lambda: stnkit.warp(x, p, "bogus"), "bogus", "affine")
    _raises(lambda: stnkit.warp(x, p, "affine", mode="bogus"), "bogus", "bilinear")
    _raises(lambda: stnkit.warp(x, p, "affine", padding_mode="bogus"), "bogus", "reflection")
    # integer tensors
    _raises(lambda: stnkit.warp(x.long(), p, "affine"), "float", "int64")
    _raises(lambda: stnkit.warp(x, p.int(), "affine"), "float", "int32")
    _raises(lambda: stnkit.warp(x.to(torch.uint8), p, "affine"), "float", "uint8")
    # batch mismatch
    _raises(lambda: stnkit.warp(x, random_params("affine", 3), "affine"), "2", "3")
    # a mode name torch does not have (3D bicubic exists: tricubic, tests/test_tricubic.py)
    _raises(lambda: stnkit.warp(x3, p3, "affine3d", mode="tricubic"), "tricubic", "bicubic")
    # output_size of 0, wrong length
    _raises(lambda: stnkit.warp(x, p, "affine", (0, 4)), re.escape("(0, 4)"), "positive")
    _raises(lambda: stnkit.warp(x, p, "affine", 0), "0", "positive")
    _raises(lambda: stnkit.warp(x, p, "affine", (3, 4, 5)), re.escape("(3, 4, 5)"), "H'")
    # flow field of another size than output_size
    _raises(lambda: stnkit.warp(x, torch.zeros(2, 4, 7, 2), "flow", (5, 5)), re.escape("(4, 7)"), re.escape("(5, 5)"))
    # fill with the wrong number of channels
    _raises(lambda: stnkit.warp(x, p, "affine", fill=torch.zeros(3)), "2", re.escape("(3,)"))


def test_grid_points_invert_bad_input():
    p = random_params("affine", 2)
    _raises(lambda: stnkit.grid(p[:, :4], "affine", (3, 4)), "6", re.escape("(2, 4)"))
    _raises(lambda: stnkit.grid(p, "bogus", (3, 4)), "bogus", "affine")
    _raises(lambda: stnkit.grid(p.long(), "affine", (3, 4)), "float", "int64")
    _raises(lambda: stnkit.grid(p, "affine", (0, 4)), re.escape("(0, 4)"), "positive")
    _raises(lambda: stnkit.warp_points(torch.zeros(2, 5, 3), p, "affine"), "2", re.escape("(2, 5, 3)"))
    _raises(lambda: stnkit.warp_points(torch.zeros(3, 5, 2), p, "affine"), "3", "2")
    _raises(lambda: stnkit.warp_points(torch.zeros(2, 5, 2, dtype=torch.long), p, "affine"), "float", "int64")
    _raises(lambda: stnkit.invert(p[:, :5], "affine"), "6", re.escape("(2, 5)"))
    _raises(lambda: stnkit.transforms.get("bogus"), "bogus", "affine")


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("family,mode", FAMILY_MODES)
def test_cuda_warp_matches_reference(family, mode, padding_mode, dtype):
    three_d = family in FAMILIES_3D_ALL
    shape, size = (IN_3D, OUT_3D) if three_d else (IN_2D, OUT_2D)
    x = _image(shape, dtype)
    p = random_params(family, shape[0], seed=14, dtype=dtype, size=size)
    for ac in (False, True):
        out = stnkit.warp(x.cuda(), p.cuda(), family, size, mode=mode, padding_mode=padding_mode, align_corners=ac)
        assert out.device.type == "cuda" and out.dtype == dtype
        want = _expected(x, p, family, size, mode, padding_mode, ac)
        torch.testing.assert_close(out.cpu().double(), want, **_tol(dtype))


@pytest.mark.cuda
@pytest.mark.parametrize("family", FAMILIES_2D_ALL + FAMILIES_3D_ALL)
def test_cuda_gradients_match_cpu(family):
    three_d = family in FAMILIES_3D_ALL
    x, p, size = _grad_inputs(family, three_d)
    out = stnkit.warp(x, p, family, size)
    gx, gp = torch.autograd.grad(out.square().sum(), (x, p))
    xc, pc = x.detach().cuda().requires_grad_(), p.detach().cuda().requires_grad_()
    outc = stnkit.warp(xc, pc, family, size)
    gxc, gpc = torch.autograd.grad(outc.square().sum(), (xc, pc))
    torch.testing.assert_close(outc.cpu(), out.detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gxc.cpu(), gx, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(gpc.cpu(), gp, rtol=1e-7, atol=1e-7)


@pytest.mark.cuda
def test_cuda_projective_horizon_finite():
    x = _image(IN_2D, torch.float32).cuda().requires_grad_()
    h = _horizon_params(torch.float32).cuda().requires_grad_()
    out = stnkit.warp(x, h, "projective", OUT_2D, padding_mode="border", fill=0.5)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all() and torch.isfinite(h.grad).all()
