"""Guards the slow reference in tests/reference.py against torch itself.

These tests need nothing from stnkit: they check that the plain-loop reference reproduces
``torch.nn.functional.grid_sample`` (every mode x padding x align_corners, 2D and 3D, grid points
inside and far outside [-1, 1]) and ``affine_grid``, so that the stnkit tests can trust it.
"""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from reference import (
    cubic_weights,
    pixel_centre,
    ref_grid,
    ref_points,
    ref_sample_2d,
    ref_sample_3d,
    tps_control_points,
    unnormalize,
)

PADDINGS = ("zeros", "border", "reflection")


def _special_values(n: int, align_corners: bool) -> list[float]:
    """Normalised coordinates where the kernels branch: pixel centres, pixel edges, +-1, beyond."""
    vals = [-1.0, 1.0, 0.0, -3.0, 3.0, -1.5, 1.5]
    vals += [pixel_centre(i, n, align_corners) for i in range(n)]
    vals += [2.0 * i / n - 1.0 for i in range(n + 1)]  # pixel edges when align_corners=False
    return vals


def _grid_2d(B, Ho, Wo, dtype, seed, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(B, Ho, Wo, 2, generator=g, dtype=torch.float64) * 2 - 1) * spread).to(dtype)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
def test_ref_sample_2d_matches_grid_sample(mode, padding_mode, align_corners, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64).to(dtype)
    # half the points inside [-1, 1], half spread over [-3, 3] (reflected several times)
    grid = torch.cat([_grid_2d(2, 4, 7, dtype, 1, 1.0), _grid_2d(2, 4, 7, dtype, 2, 3.0)], dim=1)
    want = F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    got = ref_sample_2d(x, grid, mode, padding_mode, align_corners)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(got, want.double(), rtol=tol, atol=tol)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
def test_ref_sample_2d_special_points(mode, padding_mode, align_corners):
    """Exact pixel centres, pixel edges (nearest ties), +-1 and far outside, in float64."""
    H, W = 4, 5
    x = torch.randn(1, 2, H, W, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    xs = _special_values(W, align_corners)
    ys = _special_values(H, align_corners)
    pts = list(itertools.product(xs, ys))
    grid = torch.tensor(pts, dtype=torch.float64).reshape(1, 1, len(pts), 2)
    want = F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    got = ref_sample_2d(x, grid, mode, padding_mode, align_corners)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [(1, 1), (1, 4), (3, 1), (2, 2)])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
def test_ref_sample_2d_degenerate_sizes(mode, padding_mode, align_corners, size):
    x = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    grid = _grid_2d(1, 3, 3, torch.float64, 5, 2.5)
    want = F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    got = ref_sample_2d(x, grid, mode, padding_mode, align_corners)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_ref_sample_3d_matches_grid_sample(mode, padding_mode, align_corners, dtype):
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, 2, 3, 4, 5, generator=g, dtype=torch.float64).to(dtype)
    inside = torch.rand(2, 2, 3, 4, 3, generator=g, dtype=torch.float64) * 2 - 1
    outside = (torch.rand(2, 2, 3, 4, 3, generator=g, dtype=torch.float64) * 2 - 1) * 3
    grid = torch.cat([inside, outside], dim=1).to(dtype)
    want = F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    got = ref_sample_3d(x, grid, mode, padding_mode, align_corners)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(got, want.double(), rtol=tol, atol=tol)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_ref_sample_3d_special_points(mode, padding_mode, align_corners):
    D, H, W = 2, 3, 4
    x = torch.randn(1, 1, D, H, W, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    vals = [-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.25, 3.0]
    vals += [pixel_centre(i, W, align_corners) for i in range(W)]
    pts = list(itertools.product(vals, [-1.0, 0.0, 1.0, 2.0], [-1.0, 0.0, 0.5, 1.0, -2.0]))
    grid = torch.tensor(pts, dtype=torch.float64).reshape(1, 1, 1, len(pts), 3)
    want = F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    got = ref_sample_3d(x, grid, mode, padding_mode, align_corners)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- helpers


@pytest.mark.parametrize("align_corners", [False, True])
def test_pixel_centres_unnormalise_to_integers(align_corners):
    for n in (1, 2, 5):
        for i in range(n):
            assert unnormalize(pixel_centre(i, n, align_corners), n, align_corners) == pytest.approx(
                0.0 if (align_corners and n == 1) else i, abs=1e-12
            )


def test_cubic_weights_partition_of_unity():
    for t in (0.0, 0.1, 0.5, 0.9):
        w = cubic_weights(t)
        assert sum(w) == pytest.approx(1.0, abs=1e-12)
    assert cubic_weights(0.0) == pytest.approx([0.0, 1.0, 0.0, 0.0], abs=1e-12)


# ----------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("align_corners", [False, True])
def test_ref_grid_affine_matches_affine_grid_2d(align_corners):
    theta = torch.tensor([[1.1, 0.2, -0.1, -0.15, 0.9, 0.3], [0.7, -0.4, 0.0, 0.3, 1.2, -0.2]],
                         dtype=torch.float64)
    want = F.affine_grid(theta.reshape(2, 2, 3), (2, 1, 4, 7), align_corners=align_corners)
    got = ref_grid(theta, "affine", (4, 7), align_corners)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("align_corners", [False, True])
def test_ref_grid_affine_matches_affine_grid_3d(align_corners):
    g = torch.Generator().manual_seed(1)
    theta = torch.eye(3, 4, dtype=torch.float64).reshape(1, 12) + 0.2 * torch.randn(
        2, 12, generator=g, dtype=torch.float64
    )
    want = F.affine_grid(theta.reshape(2, 3, 4), (2, 1, 3, 4, 5), align_corners=align_corners)
    got = ref_grid(theta, "affine3d", (3, 4, 5), align_corners)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_ref_points_families_agree_with_affine():
    """Each closed-form family equals the affine map it describes."""
    pts = torch.randn(1, 9, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    s, a, tx, ty = 1.3, 0.4, 0.1, -0.2
    c, si = math.cos(a), math.sin(a)
    cases = [
        ("translation", [tx, ty], [1, 0, tx, 0, 1, ty]),
        ("attention", [s, tx, ty], [s, 0, tx, 0, s, ty]),
        ("rigid", [a, tx, ty], [c, -si, tx, si, c, ty]),
        ("similarity", [s, a, tx, ty], [s * c, -s * si, tx, s * si, s * c, ty]),
        ("projective", [s * c, -s * si, tx, s * si, s * c, ty, 0.0, 0.0],
         [s * c, -s * si, tx, s * si, s * c, ty]),
    ]
    for family, p, theta in cases:
        got = ref_points(torch.tensor([p], dtype=torch.float64), family, pts)
        want = ref_points(torch.tensor([theta], dtype=torch.float64), "affine", pts)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=family)


def test_ref_points_projective_divides():
    h = torch.tensor([[1.0, 0.2, 0.1, -0.1, 0.9, 0.05, 0.3, -0.2]], dtype=torch.float64)
    q = torch.tensor([[[0.5, -0.25]]], dtype=torch.float64)
    den = 0.3 * 0.5 - 0.2 * -0.25 + 1.0
    want = [(0.5 + 0.2 * -0.25 + 0.1) / den, (-0.1 * 0.5 + 0.9 * -0.25 + 0.05) / den]
    torch.testing.assert_close(ref_points(h, "projective", q)[0, 0], torch.tensor(want, dtype=torch.float64))


@pytest.mark.parametrize("k", [4, 9, 16])
def test_ref_tps_interpolates_and_reproduces_affine(k):
    ctrl = torch.tensor(tps_control_points(k), dtype=torch.float64)  # (K, 2)
    assert ctrl[0].tolist() == [-1.0, -1.0] and ctrl[1, 1] == -1.0 and ctrl[-1].tolist() == [1.0, 1.0]
    g = torch.Generator().manual_seed(k)
    src = ctrl + 0.1 * torch.randn(k, 2, generator=g, dtype=torch.float64)
    got = ref_points(src.reshape(1, -1), "tps", ctrl.unsqueeze(0))
    torch.testing.assert_close(got[0], src, rtol=1e-10, atol=1e-10)

    A = torch.tensor([[0.9, 0.2], [-0.1, 1.1]], dtype=torch.float64)
    t = torch.tensor([0.05, -0.1], dtype=torch.float64)
    src = ctrl @ A.T + t
    pts = torch.rand(1, 11, 2, generator=g, dtype=torch.float64) * 2 - 1
    got = ref_points(src.reshape(1, -1), "tps", pts)
    torch.testing.assert_close(got[0], pts[0] @ A.T + t, rtol=1e-10, atol=1e-10)
