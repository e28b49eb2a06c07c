"""Registration tools: compose_flows against warping twice and the product of affine maps,
integrate_velocity against MONAI's DVF2DDF, Euler integration and exact translations,
jacobian_determinant against closed forms and numpy's np.gradient; errors and gradients."""
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import stnkit
from stnkit.functional.coords import identity_grid

F64 = torch.float64
SIZES = [(6, 9), (4, 5, 7)]  # non-square 2D and 3D
AC = [False, True]


def _scale(size, align_corners):
    """(d,) in (x, y[, z]) order: pixels per normalised unit for a field of `size`."""
    n = torch.tensor(size[::-1], dtype=F64)
    return (n - 1).clamp(min=1) / 2 if align_corners else n / 2


def _ident(size, align_corners):
    return identity_grid(size, align_corners, dtype=F64)[None]  # (1, *size, d)


def _smooth(size, amp, freq, align_corners=False, seed=0):
    """A smooth (B=1, *size, d) field: sums of low-frequency sines, amplitude `amp` (normalised)."""
    gen = torch.Generator().manual_seed(seed)
    g = _ident(size, align_corners)
    d = len(size)
    phase = torch.rand(d, d, generator=gen, dtype=F64) * 2 * math.pi
    k = (torch.rand(d, d, generator=gen, dtype=F64) - 0.5) * 2 * freq * math.pi
    comps = [amp * torch.sin((g * k[c]).sum(-1) + phase[c, 0]) for c in range(d)]
    return torch.stack(comps, -1)


# ---- MONAI's layout: (B, dims, *size) in voxels, channel i along array axis i ----------------

def _to_monai(flow, align_corners):
    return (flow * _scale(tuple(flow.shape[1:-1]), align_corners)).flip(-1).movedim(-1, 1)


def _from_monai(ddf, align_corners):
    f = ddf.movedim(1, -1).flip(-1)  # (B, *size, d) in (x, y[, z]) voxels
    return f / _scale(tuple(f.shape[1:-1]), align_corners)


def _dvf2ddf(velocity, align_corners, **kw):
    from monai.networks.blocks import DVF2DDF

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Using PyTorch native grid_sample"
        return _from_monai(DVF2DDF(num_steps=7, **kw)(_to_monai(velocity, align_corners)), align_corners)


# ---- compose_flows ------------------------------------------------------------------------

@pytest.mark.parametrize("align_corners", AC)
@pytest.mark.parametrize("size", SIZES, ids=["2d", "3d"])
def test_compose_equals_warping_twice_nearest_integer_shifts(size, align_corners):
    """Integer-pixel fields: `second` sends every pixel onto some pixel centre, `first` moves by
    -2..2 pixels (also outside the image); nearest warps agree exactly."""
    gen = torch.Generator().manual_seed(1)
    d, B = len(size), 2
    n = torch.tensor(size[::-1], dtype=F64)  # (x, y[, z])
    pix = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=F64) for s in size], indexing="ij")[::-1], -1)
    target = (torch.rand(B, *size, d, generator=gen, dtype=F64) * n).floor()  # a random pixel per pixel
    first_px = torch.randint(-2, 3, (B, *size, d), generator=gen).to(F64)
    s = _scale(size, align_corners)
    first, second = first_px / s, (target - pix) / s
    x = torch.randn(B, 3, *size, generator=gen, dtype=F64)
    kw = dict(mode="nearest", align_corners=align_corners)
    fam = "flow" if d == 2 else "flow3d"
    twice = stnkit.warp(stnkit.warp(x, first, fam, **kw), second, fam, **kw)
    once = stnkit.warp(x, stnkit.compose_flows(first, second, align_corners=align_corners), fam, **kw)
    assert torch.equal(once, twice)
    swapped = stnkit.warp(x, stnkit.compose_flows(second, first, align_corners=align_corners), fam, **kw)
    assert not torch.equal(swapped, twice)  # the order matters


def test_compose_close_to_warping_twice_smooth_bilinear():
    size = (48, 64)
    first, second = _smooth(size, 0.06, 1.0, seed=2), _smooth(size, 0.05, 0.8, seed=3)
    g = _ident(size, False)
    xs, ys = g[..., 0], g[..., 1]
    img = (torch.sin(3 * xs) * torch.cos(2 * ys) + 0.5 * torch.sin(4 * xs * ys))[:, None]  # (1, 1, H, W)
    composed = stnkit.compose_flows(first, second)
    twice = stnkit.warp(stnkit.warp(img, first, "flow"), second, "flow")
    once = stnkit.warp(img, composed, "flow")
    naive = stnkit.warp(img, first + second, "flow")
    # compare where both reads stay a pixel inside the image (no padding read)
    s = _scale(size, False)
    lim = 1 - 1.5 / s  # one pixel inside the outermost centres
    inside = ((g + second).abs() <= lim).all(-1) & ((g + composed).abs() <= lim).all(-1)  # (1, H, W)
    assert inside.float().mean() > 0.7
    err = (once - twice)[:, 0][inside].abs().max()
    assert err < 0.01 < (naive - twice)[:, 0][inside].abs().max()


def _affine_flow(A, size, align_corners):
    family = "affine" if len(size) == 2 else "affine3d"
    return stnkit.grid(A, family, size, align_corners) - _ident(size, align_corners)


def _random_affine(d, B, gen, strength=0.15):
    lin = torch.eye(d, dtype=F64) + strength * torch.randn(B, d, d, generator=gen, dtype=F64)
    return torch.cat([lin, 0.1 * torch.randn(B, d, 1, generator=gen, dtype=F64)], -1)  # (B, d, d + 1)


def _product(A1, A2):
    """The matrix of p -> A1 (A2 p~)~: first's map after second's."""
    d = A1.shape[1]
    pad = torch.zeros(A1.shape[0], 1, d + 1, dtype=F64)
    pad[:, 0, d] = 1
    sq = lambda A: torch.cat([A, pad], 1)  # noqa: E731
    return (sq(A1) @ sq(A2))[:, :d]


@pytest.mark.parametrize("align_corners", AC)
@pytest.mark.parametrize("size", SIZES, ids=["2d", "3d"])
def test_compose_affine_flows_is_the_matrix_product(size, align_corners):
    """(Bi/Tri)linear reading of an affine field is exact inside its sample centres."""
    gen = torch.Generator().manual_seed(4)
    A1, A2 = _random_affine(len(size), 3, gen), _random_affine(len(size), 3, gen)
    first, second = _affine_flow(A1, size, align_corners), _affine_flow(A2, size, align_corners)
    composed = stnkit.compose_flows(first, second, align_corners=align_corners)
    want = _affine_flow(_product(A1, A2), size, align_corners)
    centres = torch.ones(len(size), dtype=F64) if align_corners else 1 - 0.5 / _scale(size, False)
    inside = ((_ident(size, align_corners) + second).abs() <= centres).all(-1)
    assert inside.float().mean() > 0.3
    torch.testing.assert_close(composed[inside], want[inside], atol=1e-12, rtol=0)
    # outside them, first continues with its border value
    assert (composed[~inside] - want[~inside]).abs().max() > 1e-3


def test_compose_constant_translations_add():
    a, b = torch.full((2, 5, 6, 2), 0.25), torch.full((2, 5, 6, 2), -0.125)
    assert torch.equal(stnkit.compose_flows(a, b), a + b)


# ---- integrate_velocity -------------------------------------------------------------------

@pytest.mark.parametrize("align_corners", AC)
@pytest.mark.parametrize("size", SIZES, ids=["2d", "3d"])
def test_integrate_constant_velocity_is_the_translation(size, align_corners):
    d = len(size)
    v = torch.tensor([0.25, -0.5, 0.125][:d], dtype=torch.float32).expand(2, *size, d)
    assert torch.equal(stnkit.integrate_velocity(v, align_corners=align_corners), v)
    w = torch.tensor([0.3, -0.7, 0.11][:d], dtype=F64).expand(2, *size, d)
    torch.testing.assert_close(stnkit.integrate_velocity(w, 7, align_corners=align_corners), w, atol=1e-14, rtol=0)


def test_integrate_agrees_with_euler():
    """dphi/dt = v(phi) from the identity, 2000 forward Euler steps, v read bilinearly (border)."""
    size = (40, 48)
    v = _smooth(size, 0.08, 1.0, seed=0)
    pts = _ident(size, False).clone()
    steps = 2000
    for _ in range(steps):
        read = torch.nn.functional.grid_sample(v.movedim(-1, 1), pts, padding_mode="border", align_corners=False)
        pts = pts + read.movedim(1, -1) / steps
    euler = (pts - _ident(size, False)) * _scale(size, False)  # pixels
    ours = stnkit.integrate_velocity(v, 10) * _scale(size, False)
    err, naive = (ours - euler).abs().max(), (v * _scale(size, False) - euler).abs().max()
    assert err < 0.03 and naive > 0.1  # pixels (measured: 0.014 and 0.15)


def test_integrated_flow_does_not_fold_where_the_velocity_does():
    size = (40, 40)
    v = _smooth(size, 0.15, 3.0, seed=0)
    assert stnkit.jacobian_determinant(v).min() < 0
    assert stnkit.jacobian_determinant(stnkit.integrate_velocity(v)).min() > 0


@pytest.mark.parametrize("align_corners", AC)
@pytest.mark.parametrize("size", [(9, 12), (5, 6, 7)], ids=["2d", "3d"])
def test_integrate_matches_monai_dvf2ddf(size, align_corners):
    gen = torch.Generator().manual_seed(7)
    v = 0.3 * torch.randn(2, *size, len(size), generator=gen, dtype=F64)
    ours = stnkit.integrate_velocity(v, 7, align_corners=align_corners)
    want = _dvf2ddf(v, align_corners, padding_mode="border")
    torch.testing.assert_close(ours, want, atol=1e-12, rtol=0)
    # MONAI's default reads zeros outside: the same for a velocity that vanishes near the edges
    inner = torch.zeros_like(v)
    core = (slice(None),) + tuple(slice(3, s - 3) for s in size)
    inner[core] = 0.05 * torch.randn(inner[core].shape, generator=gen, dtype=F64)
    want0 = _dvf2ddf(inner, align_corners)
    torch.testing.assert_close(stnkit.integrate_velocity(inner, align_corners=align_corners), want0, atol=1e-12, rtol=0)


def test_integrate_steps():
    v = torch.randn(1, 4, 5, 2)
    assert stnkit.integrate_velocity(v, 0) is v
    assert stnkit.integrate_velocity(v.half(), 3).dtype == torch.float16
    for bad in (-1, 1.5, True, "7", None):
        with pytest.raises(ValueError, match=r"^steps must be an int >= 0, got"):
            stnkit.integrate_velocity(v, bad)


# ---- jacobian_determinant -----------------------------------------------------------------

@pytest.mark.parametrize("align_corners", AC)
@pytest.mark.parametrize("size", [(6, 9), (1, 7), (4, 5, 7), (1, 3, 4)])
def test_jacobian_of_identity_is_one(size, align_corners):
    det = stnkit.jacobian_determinant(torch.zeros(2, *size, len(size)), align_corners=align_corners)
    assert det.shape == (2, *size) and torch.equal(det, torch.ones(2, *size))


@pytest.mark.parametrize("align_corners", AC)
@pytest.mark.parametrize("size", SIZES, ids=["2d", "3d"])
def test_jacobian_of_an_affine_flow_is_its_determinant(size, align_corners):
    gen = torch.Generator().manual_seed(8)
    d = len(size)
    A = _random_affine(d, 3, gen, strength=0.5)
    det = stnkit.jacobian_determinant(_affine_flow(A, size, align_corners), align_corners=align_corners)
    want = torch.linalg.det(A[:, :, :d]).reshape(3, *([1] * d)).expand(3, *size)
    torch.testing.assert_close(det, want, atol=1e-12, rtol=0)
    # an anisotropic scale in pixel units: x by 2, y by 3 (normalised = pixels on a shared size)
    S = torch.zeros(1, d, d + 1, dtype=F64)
    S[0, range(d), range(d)] = torch.tensor([2.0, 3.0, 0.5][:d], dtype=F64)
    det = stnkit.jacobian_determinant(_affine_flow(S, size, align_corners), align_corners=align_corners)
    torch.testing.assert_close(det, torch.full((1, *size), 6.0 if d == 2 else 3.0, dtype=F64), atol=1e-12, rtol=0)


def _numpy_det(flow, align_corners):
    """The input-pixel coordinates of every output pixel, differentiated by np.gradient."""
    f = flow.numpy()
    size = f.shape[1:-1]
    d = len(size)
    n = np.array(size[::-1], dtype=np.float64)
    g = identity_grid(size, align_corners, dtype=F64).numpy() + f  # (B, *size, d)
    px = (g + 1) * (n - 1) / 2 if align_corners else ((g + 1) * n - 1) / 2
    out = np.empty(f.shape[:-1])
    for b in range(f.shape[0]):
        J = np.empty((*size, d, d))
        for u in range(d):  # output axis u in (x, y[, z]) order is array axis d - 1 - u
            J[..., :, u] = np.gradient(px[b], axis=d - 1 - u)
        out[b] = np.linalg.det(J)
    return torch.from_numpy(out)


@pytest.mark.parametrize("align_corners", AC)
@pytest.mark.parametrize("size", SIZES, ids=["2d", "3d"])
def test_jacobian_matches_numpy_gradient(size, align_corners):
    flow = 0.2 * torch.randn(2, *size, len(size), generator=torch.Generator().manual_seed(9), dtype=F64)
    det = stnkit.jacobian_determinant(flow, align_corners=align_corners)
    torch.testing.assert_close(det, _numpy_det(flow, align_corners), atol=1e-10, rtol=1e-10)


def test_jacobian_is_negative_where_the_map_folds():
    H, W = 8, 64
    x = torch.arange(W, dtype=F64).expand(H, W)
    a, k = 4.0, 2 * math.pi * 4 / W  # a k = 1.57 > 1: x -> x + a sin(k x) folds where cos(k x) < -1/(a k)
    flow = torch.zeros(1, H, W, 2, dtype=F64)
    flow[0, ..., 0] = a * torch.sin(k * x) / (W / 2)  # pixels -> normalised
    det = stnkit.jacobian_determinant(flow)[0]
    analytic = 1 + a * k * torch.cos(k * x)
    fold, fine = analytic < -0.3, analytic > 0.3
    assert fold.any() and (det[fold] < 0).all() and (det[fine] > 0).all()


# ---- errors and gradients -----------------------------------------------------------------

FIELD = torch.zeros(1, 4, 5, 2)
BAD = [
    ([[0.0]], r"^NAME must be a torch.Tensor, got list$"),
    (torch.zeros(1, 4, 5, 2, dtype=torch.int64), r"^NAME must be a floating-point tensor, got dtype torch.int64"),
    (torch.zeros(4, 5, 2), r"^NAME must be 4-D or 5-D, got shape \(4, 5, 2\)$"),
    (torch.zeros(1, 4, 5, 3), r"^NAME must be a field \(B, H', W', 2\) or .*got shape \(1, 4, 5, 3\)$"),
    (torch.zeros(1, 0, 5, 2), r"^NAME has an empty spatial size: expected every axis >= 1, got shape \(1, 0, 5, 2\)$"),
    (torch.full((2, 4, 5, 2), math.nan), r"^NAME must be finite, but batch item\(s\) \[0, 1\] hold NaN or Inf"),
]
CALLS = {
    "first": lambda f: stnkit.compose_flows(f, FIELD),
    "second": lambda f: stnkit.compose_flows(FIELD, f),
    "velocity": lambda f: stnkit.integrate_velocity(f),
    "flow": lambda f: stnkit.jacobian_determinant(f),
}


@pytest.mark.parametrize("bad", BAD, ids=lambda b: b[1][6:30])
@pytest.mark.parametrize("name", list(CALLS))
def test_bad_fields_raise(name, bad):
    value, pattern = bad
    with pytest.raises(ValueError, match=pattern.replace("NAME", name)) as e:
        CALLS[name](value)
    assert "\n" not in str(e.value)


def test_compose_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"^first and second must have the same shape, got \(1, 4, 5, 2\) and \(1, 4, 6, 2\)$"):
        stnkit.compose_flows(FIELD, torch.zeros(1, 4, 6, 2))


@pytest.mark.parametrize("size", [(3, 4), (2, 2, 3)], ids=["2d", "3d"])
def test_gradients(size):
    gen = torch.Generator().manual_seed(10)
    d = len(size)
    field = lambda: (0.3 * torch.randn(2, *size, d, generator=gen, dtype=F64)).requires_grad_()  # noqa: E731
    a, b, v, f = field(), field(), field(), field()
    assert torch.autograd.gradcheck(lambda p, q: stnkit.compose_flows(p, q), (a, b))
    assert torch.autograd.gradcheck(lambda p, q: stnkit.compose_flows(p, q, align_corners=True), (a, b))
    assert torch.autograd.gradcheck(lambda w: stnkit.integrate_velocity(w, 3), (v,))
    assert torch.autograd.gradcheck(lambda w: stnkit.jacobian_determinant(w, align_corners=True), (f,))


def test_docs_example_runs():
    """The worked example of docs/api.md's registration section, run as written."""
    text = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    section = text.split("## Registration tools: composing, integrating and checking flows", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "docs/api.md", "exec"), scope)
    assert torch.isfinite(scope["loss"]) and scope["net"].weight.grad.abs().sum() > 0
