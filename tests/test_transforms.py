"""`stnkit.grid`, `warp_points`, `invert` and the transform registry against the closed-form
reference maps of tests/reference.py (docs/api.md's parameter layouts)."""


import pytest
import torch

import stnkit
from reference import (
    FAMILIES_2D,
    FAMILIES_3D,
    NUM_PARAMS,
    identity_points,
    random_params,
    ref_grid,
    ref_points,
    tps_control_points,
)

FAMILIES_2D_ALL = FAMILIES_2D + ("flow",)
FAMILIES_3D_ALL = FAMILIES_3D + ("flow3d",)
INVERTIBLE = ("translation", "attention", "rigid", "similarity", "affine", "projective",
              "translation3d", "attention3d", "affine3d")
SIZES = {2: (4, 7), 3: (2, 3, 4)}

def _dim(family):
    return 3 if family in FAMILIES_3D_ALL else 2


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


def _points(B, N, d, seed=0, spread=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(B, N, d, generator=g, dtype=torch.float64) * 2 - 1) * spread).to(dtype)


# ----------------------------------------------------------------------------- registry


def test_registry_names_and_sizes():
    names = stnkit.transforms.names()
    for family in FAMILIES_2D_ALL + FAMILIES_3D_ALL:
        assert family in names
    for family, P in NUM_PARAMS.items():
        assert stnkit.transforms.num_params(family) == P, family
        assert stnkit.transforms.identity(family, 3).shape == (3, P)


@pytest.mark.parametrize("family", FAMILIES_2D + FAMILIES_3D)
@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_params_give_identity_grid(family, align_corners):
    size = SIZES[_dim(family)]
    p = stnkit.transforms.identity(family, 2, dtype=torch.float64)
    want = identity_points(size, align_corners).reshape(1, *size, len(size)).expand(2, *size, len(size))
    torch.testing.assert_close(ref_grid(p, family, size, align_corners), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stnkit.grid(p, family, size, align_corners), want, rtol=1e-10, atol=1e-10)


def test_identity_dtype():
    assert stnkit.transforms.identity("affine", 2, dtype=torch.float64).dtype == torch.float64
    assert stnkit.transforms.identity("tps", 1, dtype=torch.float32).dtype == torch.float32


# ----------------------------------------------------------------------------- grid


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("family", FAMILIES_2D_ALL + FAMILIES_3D_ALL)
def test_grid_matches_reference(family, align_corners, dtype):
    size = SIZES[_dim(family)]
    p = random_params(family, 2, seed=1, dtype=dtype, size=size)
    g = stnkit.grid(p, family, size, align_corners)
    assert g.shape == (2, *size, len(size)) and g.dtype == dtype
    torch.testing.assert_close(g.double(), ref_grid(p, family, size, align_corners), **_tol(dtype))


@pytest.mark.parametrize("size", [(1, 1), (1, 5), (6, 1), (9, 3)])
@pytest.mark.parametrize("family", ["affine", "projective", "tps"])
def test_grid_odd_sizes(family, size):
    p = random_params(family, 1, seed=2)
    for ac in (False, True):
        torch.testing.assert_close(stnkit.grid(p, family, size, ac), ref_grid(p, family, size, ac), rtol=1e-10, atol=1e-10)


def test_grid_int_size_means_every_axis():
    p = random_params("affine", 1)
    assert stnkit.grid(p, "affine", 5).shape == (1, 5, 5, 2)
    assert stnkit.grid(random_params("affine3d", 1), "affine3d", 3).shape == (1, 3, 3, 3, 3)


@pytest.mark.parametrize("family", FAMILIES_2D_ALL + FAMILIES_3D_ALL)
def test_grid_batched_equals_per_sample(family):
    size = SIZES[_dim(family)]
    p = random_params(family, 3, seed=3, size=size)
    g = stnkit.grid(p, family, size)
    singles = torch.cat([stnkit.grid(p[i : i + 1], family, size) for i in range(3)])
    torch.testing.assert_close(g, singles, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES_2D_ALL + FAMILIES_3D_ALL)
def test_grid_gradcheck(family):
    size = (2, 3) if _dim(family) == 2 else (2, 2, 3)
    p = random_params(family, 1, seed=4, size=size).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: stnkit.grid(p, family, size), (p,))


def test_homography_matrix_layout_divides_by_h33():
    h = random_params("projective", 2, seed=5)
    H = torch.cat([h, torch.ones(2, 1, dtype=h.dtype)], 1).reshape(2, 3, 3) * torch.tensor([2.0, -0.5]).reshape(2, 1, 1)
    torch.testing.assert_close(stnkit.grid(H, "projective", (4, 7)), ref_grid(h, "projective", (4, 7)))


def test_affine_matrix_layouts():
    t = random_params("affine", 2, seed=6)
    torch.testing.assert_close(stnkit.grid(t.reshape(2, 2, 3), "affine", (4, 7)), ref_grid(t, "affine", (4, 7)))
    t3 = random_params("affine3d", 2, seed=7)
    torch.testing.assert_close(stnkit.grid(t3.reshape(2, 3, 4), "affine3d", (2, 3, 4)), ref_grid(t3, "affine3d", (2, 3, 4)))


# ----------------------------------------------------------------------------- warp_points


@pytest.mark.parametrize("family", FAMILIES_2D + FAMILIES_3D)
def test_warp_points_matches_reference(family, dtype):
    d = _dim(family)
    p = random_params(family, 2, seed=8, dtype=dtype)
    pts = _points(2, 13, d, seed=9, spread=1.3, dtype=dtype)
    out = stnkit.warp_points(pts, p, family)
    assert out.shape == (2, 13, d) and out.dtype == dtype
    torch.testing.assert_close(out.double(), ref_points(p, family, pts), **_tol(dtype))


@pytest.mark.parametrize("family", FAMILIES_2D + FAMILIES_3D)
def test_warp_points_shared_points(family):
    d = _dim(family)
    p = random_params(family, 3, seed=10)
    pts = _points(1, 6, d, seed=11)
    torch.testing.assert_close(stnkit.warp_points(pts[0], p, family), stnkit.warp_points(pts.expand(3, -1, -1), p, family))


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("family", FAMILIES_2D_ALL + FAMILIES_3D_ALL)
def test_warp_points_agrees_with_grid_at_pixel_centres(family, align_corners):
    size = SIZES[_dim(family)]
    d = len(size)
    p = random_params(family, 2, seed=12, size=size)
    centres = identity_points(size, align_corners).unsqueeze(0).expand(2, -1, -1)  # (B, N, d)
    pts = stnkit.warp_points(centres, p, family, align_corners=align_corners)
    g = stnkit.grid(p, family, size, align_corners)
    torch.testing.assert_close(pts, g.reshape(2, -1, d), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES_2D + FAMILIES_3D)
def test_warp_points_gradcheck(family):
    d = _dim(family)
    p = random_params(family, 1, seed=13).requires_grad_()
    pts = _points(1, 4, d, seed=14).requires_grad_()
    assert torch.autograd.gradcheck(lambda pts, p: stnkit.warp_points(pts, p, family), (pts, p))


# ----------------------------------------------------------------------------- invert


@pytest.mark.parametrize("family", INVERTIBLE)
def test_invert_round_trip(family, dtype):
    d = _dim(family)
    p = random_params(family, 3, seed=15, dtype=dtype)
    q = stnkit.invert(p, family)
    assert q.shape == p.shape and q.dtype == dtype
    pts = _points(3, 10, d, seed=16, dtype=dtype)
    tol = _tol(dtype) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    # with the implementation's maps, both orders
    there = stnkit.warp_points(pts, p, family)
    torch.testing.assert_close(stnkit.warp_points(there, q, family), pts, **tol)
    torch.testing.assert_close(stnkit.warp_points(stnkit.warp_points(pts, q, family), p, family), pts, **tol)
    # and with the reference maps: the inverse's parameters are in the documented layout
    back = ref_points(q, family, ref_points(p, family, pts))
    torch.testing.assert_close(back, pts.double(), **tol)
    # the inverse of the inverse is the original map
    torch.testing.assert_close(ref_points(stnkit.invert(q, family), family, pts), ref_points(p, family, pts), **tol)


def test_invert_known_values():
    torch.testing.assert_close(stnkit.invert(torch.tensor([[0.3, -0.2]]), "translation"), torch.tensor([[-0.3, 0.2]]))
    torch.testing.assert_close(stnkit.invert(torch.tensor([[2.0, 0.4, -0.2]]), "attention"),
                               torch.tensor([[0.5, -0.2, 0.1]]))
    a = 0.3
    torch.testing.assert_close(stnkit.invert(torch.tensor([[a, 0.0, 0.0]]), "rigid"), torch.tensor([[-a, 0.0, 0.0]]))


def test_invert_matrix_layouts():
    t = random_params("affine", 2, seed=17)
    torch.testing.assert_close(stnkit.invert(t.reshape(2, 2, 3), "affine"), stnkit.invert(t, "affine"))


@pytest.mark.parametrize("family", ["tps", "flow", "flow3d"])
def test_invert_without_inverse_raises(family):
    p = random_params(family, 2, size=SIZES[2 if family != "flow3d" else 3])
    with pytest.raises(ValueError, match=family):
        stnkit.invert(p, family)


def test_invert_singular_raises():
    with pytest.raises(ValueError, match="invert"):
        stnkit.invert(torch.zeros(1, 6), "affine")
    with pytest.raises(ValueError, match="invert"):
        stnkit.invert(torch.tensor([[0.0, 0.1, 0.2]]), "attention")


@pytest.mark.parametrize("family", INVERTIBLE)
def test_invert_gradcheck(family):
    p = random_params(family, 1, seed=18).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: stnkit.invert(p, family), (p,))


# ----------------------------------------------------------------------------- TPS


@pytest.mark.parametrize("k", [4, 9, 16, 25])
def test_tps_passes_through_control_points(k, dtype):
    ctrl = torch.tensor(tps_control_points(k), dtype=dtype)  # (K, 2), y outer, x inner
    p = random_params("tps", 2, seed=19, k=k, dtype=dtype)
    out = stnkit.warp_points(ctrl, p, "tps")
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, p.reshape(2, k, 2), **tol)


def test_tps_control_grid_order_in_grid():
    """With align_corners=True and an n x n output, output pixel (i, j) sits on control point
    i * n + j (y outer, x inner), so the grid there is that control point's source."""
    n = 4
    p = random_params("tps", 2, seed=20)
    g = stnkit.grid(p, "tps", (n, n), align_corners=True)
    torch.testing.assert_close(g.reshape(2, n * n, 2), p.reshape(2, n * n, 2), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("k", [9, 16])
def test_tps_reduces_to_affine(k):
    ctrl = torch.tensor(tps_control_points(k), dtype=torch.float64)
    theta = random_params("affine", 2, seed=21)  # (B, 6)
    A = theta.reshape(2, 2, 3)
    src = ctrl @ A[:, :, :2].transpose(1, 2) + A[:, None, :, 2]  # (B, K, 2): affine image of the grid
    size = (5, 6)
    torch.testing.assert_close(stnkit.grid(src.reshape(2, -1), "tps", size), ref_grid(theta, "affine", size),
                               rtol=1e-9, atol=1e-9)
    pts = _points(2, 12, 2, seed=22, spread=1.5)
    torch.testing.assert_close(stnkit.warp_points(pts, src, "tps"), ref_points(theta, "affine", pts),
                               rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- projective


def test_projective_agrees_with_reference_across_the_grid():
    h = torch.tensor([[1.1, 0.1, 0.05, -0.1, 0.9, 0.02, 0.4, -0.3]], dtype=torch.float64)
    for ac in (False, True):
        torch.testing.assert_close(stnkit.grid(h, "projective", (6, 5), ac), ref_grid(h, "projective", (6, 5), ac))


def test_projective_horizon_grid_is_finite_with_finite_gradient():
    h = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.5, 0.0]], dtype=torch.float64, requires_grad=True)
    g = stnkit.grid(h, "projective", (4, 7))
    assert torch.isfinite(g).all()
    g.sum().backward()
    assert torch.isfinite(h.grad).all()
    # the pixels in front of the horizon are the reference map
    front = (1.5 * torch.tensor([(2 * j + 1) / 7 - 1 for j in range(7)], dtype=torch.float64) + 1) > 0
    torch.testing.assert_close(g[0][:, front], ref_grid(h, "projective", (4, 7))[0][:, front])


# ----------------------------------------------------------------------------- coordinates


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(4, 7), (1, 3), (2, 3, 4)])
def test_to_pixels_and_back(size, align_corners):
    centres = identity_points(size, align_corners)  # (N, d) normalised, x first
    pix = stnkit.to_pixels(centres, size, align_corners)
    idx = [torch.arange(n, dtype=torch.float64) for n in size]
    mesh = torch.meshgrid(*idx, indexing="ij")
    want = torch.stack([m.reshape(-1) for m in mesh[::-1]], dim=1)
    if align_corners:  # a 1-pixel axis has its only centre at 0 either way
        want = torch.where(torch.tensor(size[::-1]) == 1, torch.zeros_like(want), want)
    torch.testing.assert_close(pix, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stnkit.to_normalised(pix, size, align_corners), centres, rtol=1e-12, atol=1e-12)


def test_to_pixels_edges():
    # align_corners=False: -1 and +1 are the outer pixel edges, -0.5 and n - 0.5 in pixels
    pts = torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(stnkit.to_pixels(pts, (4, 7)), torch.tensor([[-0.5, -0.5], [6.5, 3.5]], dtype=torch.float64))
    torch.testing.assert_close(stnkit.to_pixels(pts, (4, 7), True), torch.tensor([[0.0, 0.0], [6.0, 3.0]], dtype=torch.float64))


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("family", FAMILIES_2D_ALL + FAMILIES_3D_ALL)
def test_cuda_grid_and_points_match_reference(family):
    size = SIZES[_dim(family)]
    p = random_params(family, 2, seed=23, size=size, dtype=torch.float32)
    for ac in (False, True):
        g = stnkit.grid(p.cuda(), family, size, ac)
        assert g.device.type == "cuda"
        torch.testing.assert_close(g.cpu().double(), ref_grid(p, family, size, ac), **_tol(torch.float32))
    if family not in ("flow", "flow3d"):
        pts = _points(2, 9, _dim(family), seed=24, dtype=torch.float32)
        out = stnkit.warp_points(pts.cuda(), p.cuda(), family)
        torch.testing.assert_close(out.cpu().double(), ref_points(p, family, pts), **_tol(torch.float32))
    if family in INVERTIBLE:
        torch.testing.assert_close(stnkit.invert(p.cuda(), family).cpu(), stnkit.invert(p, family), rtol=1e-5, atol=1e-5)
