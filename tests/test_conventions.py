"""stnkit.conventions: pixel matrices and displacement fields <-> stnkit params, checked against
closed forms, plain NumPy point maps, and the peers' own calls (OpenCV, kornia, scipy.ndimage,
MONAI, VoxelMorph's formula). Each stnkit line of docs/api.md's "Coming from ..." table appears
verbatim in a test here (`test_docs_table_lines_are_tested` checks that)."""
import itertools
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import stnkit

MAPS = ("input_to_output", "output_to_input")
AXES = ("xy", "ij")
COMBOS = list(itertools.product(MAPS, AXES, (False, True)))
IN2, OUT2 = (11, 13), (9, 15)  # (H, W), different input and output sizes
IN3, OUT3 = (5, 6, 7), (6, 4, 5)  # (D, H, W)
MATRIX_2D = ("translation", "attention", "rigid", "similarity", "affine", "projective")
MATRIX_3D = ("translation3d", "attention3d", "affine3d")


def _smooth(*size, batch=1, seed=0) -> torch.Tensor:
    """A smooth float64 image (B, 1, *size): upsampled noise, so interpolation differences are small
    and coordinate errors (a half pixel, a swapped axis) are large."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 1, *[max(2, s // 3) for s in size], generator=g, dtype=torch.float64)
    mode = "bicubic" if len(size) == 2 else "trilinear"
    return F.interpolate(coarse, size=size, mode=mode, align_corners=False)


def _pixel_matrix(dim: int, projective: bool = False, seed: int = 0) -> np.ndarray:
    """A random homogeneous (d + 1, d + 1) pixel matrix near the identity: a few pixels of shift."""
    rng = np.random.default_rng(seed)
    A = np.eye(dim + 1)
    A[:dim, :dim] += 0.15 * rng.standard_normal((dim, dim))
    A[:dim, dim] = 2.0 * rng.standard_normal(dim)
    if projective:
        A[dim, :dim] = 0.01 * rng.standard_normal(dim)
    return A


def _params(family: str, B: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    eye = stnkit.transforms.identity(family, B, dtype=torch.float64)
    scale = 0.05 if family == "projective" else 0.2
    return eye + scale * torch.randn(eye.shape, generator=g, dtype=torch.float64)


def _normalised_matrix(params: torch.Tensor, family: str) -> torch.Tensor:
    """(B, d + 1, d + 1) src_norm_from_dst_norm of a matrix family, built from the registry."""
    fam = stnkit.transforms.get(family)
    if family == "projective":
        return torch.cat([params, torch.ones_like(params[:, :1])], 1).view(-1, 3, 3)
    m = fam.matrix(params)
    last = torch.zeros_like(m[:, :1])
    last[:, 0, -1] = 1
    return torch.cat([m, last], 1)


# ---- closed forms and plain point maps --------------------------------------------------------

@pytest.mark.parametrize("align_corners", [False, True])
def test_pixel_translation_is_a_closed_form(align_corners):
    H, W = IN2
    M = np.array([[1.0, 0, 3.0], [0, 1, -2.0]])  # input pixel (x, y) -> (x + 3, y - 2)
    p = stnkit.from_pixel_matrix(M, (H, W), align_corners=align_corners)
    n = np.array([W, H]) - (1 if align_corners else 0)
    tx, ty = -2 * np.array([3.0, -2.0]) / n  # output reads 3 px to the left and 2 px below
    np.testing.assert_allclose(p.numpy(), [[1, 0, tx, 0, 1, ty]], atol=1e-15)
    assert p.dtype == torch.float64 and p.shape == (1, 6)


def _numpy_src_pixels(M: np.ndarray, q_xy: np.ndarray, maps: str, axes: str) -> np.ndarray:
    """Where output pixels q (N, d) in (x, y[, z]) read, through a pixel matrix M, in plain NumPy."""
    d = q_xy.shape[1]
    q = q_xy[:, ::-1] if axes == "ij" else q_xy
    Mh = M if M.shape[0] == d + 1 else np.vstack([M, np.eye(d + 1)[-1]])
    qh = np.hstack([q, np.ones((len(q), 1))]).T  # (d + 1, N)
    src = Mh @ qh if maps == "output_to_input" else np.linalg.solve(Mh, qh)
    src = (src[:d] / src[d]).T
    return src[:, ::-1] if axes == "ij" else src


@pytest.mark.parametrize("maps,axes,align_corners", COMBOS)
@pytest.mark.parametrize("kind", ["affine", "projective", "affine3d"])
def test_params_map_points_like_the_pixel_matrix(kind, maps, axes, align_corners):
    dim = 3 if kind == "affine3d" else 2
    size_in, size_out = (IN3, OUT3) if dim == 3 else (IN2, OUT2)
    M = _pixel_matrix(dim, projective=kind == "projective", seed=1)
    p = stnkit.from_pixel_matrix(M, size_in, size_out, align_corners=align_corners, maps=maps, axes=axes)
    assert p.shape == (1, stnkit.transforms.num_params(kind))
    q = np.random.default_rng(2).uniform(0, min(size_out) - 1, (16, dim))  # output pixels, (x, y[, z])
    qn = stnkit.to_normalised(torch.from_numpy(q), size_out, align_corners)
    src = stnkit.to_pixels(stnkit.warp_points(qn, p, kind)[0], size_in, align_corners)
    np.testing.assert_allclose(src.numpy(), _numpy_src_pixels(M, q, maps, axes), rtol=0, atol=1e-11)


# ---- round trips -------------------------------------------------------------------------------

@pytest.mark.parametrize("maps,axes,align_corners", COMBOS)
def test_params_to_pixel_matrix_and_back(maps, axes, align_corners):
    kw = dict(align_corners=align_corners, maps=maps, axes=axes)
    for family in MATRIX_2D + MATRIX_3D:
        dim = stnkit.transforms.get(family).dim
        sizes = (IN3, OUT3) if dim == 3 else (IN2, OUT2)
        target = "projective" if family == "projective" else ("affine3d" if dim == 3 else "affine")
        p = _params(family)
        A = stnkit.to_pixel_matrix(p, family, *sizes, **kw)
        assert A.shape == (2, dim + 1, dim + 1) and A.dtype == p.dtype
        if target != "projective":
            np.testing.assert_array_equal(A[:, -1].numpy(), np.tile(np.eye(dim + 1)[-1], (2, 1)))
        back = stnkit.from_pixel_matrix(A, *sizes, transform=target, **kw)
        want = _normalised_matrix(p, family)
        want = p if target == "projective" else want[:, :dim].flatten(1)
        torch.testing.assert_close(back, want, rtol=0, atol=1e-12, msg=family)


@pytest.mark.parametrize("maps,axes,align_corners", COMBOS)
@pytest.mark.parametrize("kind", ["affine", "projective", "affine3d"])
def test_pixel_matrix_to_params_and_back(kind, maps, axes, align_corners):
    dim = 3 if kind == "affine3d" else 2
    sizes = (IN3, OUT3) if dim == 3 else (IN2, OUT2)
    kw = dict(align_corners=align_corners, maps=maps, axes=axes)
    M = torch.from_numpy(np.stack([_pixel_matrix(dim, kind == "projective", s) for s in range(3)]))
    p = stnkit.from_pixel_matrix(M, *sizes, **kw)  # the family from the shape and last row
    assert p.shape == (3, stnkit.transforms.num_params(kind))
    torch.testing.assert_close(stnkit.to_pixel_matrix(p, kind, *sizes, **kw), M, rtol=0, atol=1e-12)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("axes", AXES)
@pytest.mark.parametrize("size", [(6, 7), (3, 4, 5)])
def test_displacement_round_trips_and_units(size, axes, align_corners):
    d = len(size)
    ddf = torch.randn(2, d, *size, dtype=torch.float64)
    flow = stnkit.flow_from_displacement(ddf, align_corners=align_corners, axes=axes)
    assert flow.shape == (2, *size, d)
    back = stnkit.displacement_from_flow(flow, align_corners=align_corners, axes=axes)
    torch.testing.assert_close(back, ddf, rtol=0, atol=1e-14)
    # closed form: one pixel along array axis 0 (ij) or along x (xy)
    one = torch.zeros(1, d, *size, dtype=torch.float64)
    one[:, 0] = 1
    f = stnkit.flow_from_displacement(one, align_corners=align_corners, axes=axes)
    c = d - 1 if axes == "ij" else 0  # the (x, y[, z]) coordinate it moves
    n = size[0] if axes == "ij" else size[-1]
    want = torch.zeros(d, dtype=torch.float64)
    want[c] = 2 / (n - 1 if align_corners else n)
    torch.testing.assert_close(f.reshape(-1, d), want.expand(f[0].numel() // d, d), rtol=0, atol=1e-15)


def test_batched_equals_per_sample_and_single_matrix():
    M = torch.from_numpy(np.stack([_pixel_matrix(2, True, s) for s in range(3)]))
    batched = stnkit.from_pixel_matrix(M, IN2, OUT2, transform="projective")
    for i in range(3):
        single = stnkit.from_pixel_matrix(M[i], IN2, OUT2, transform="projective")
        assert single.shape == (1, 8)
        torch.testing.assert_close(single[0], batched[i], rtol=0, atol=0)


def test_dtype_and_numpy_input():
    M = _pixel_matrix(2)[:2]
    p64 = stnkit.from_pixel_matrix(M, IN2)
    p32 = stnkit.from_pixel_matrix(torch.from_numpy(M).float(), IN2)
    assert p64.dtype == torch.float64 and p32.dtype == torch.float32
    torch.testing.assert_close(p32, p64.float(), rtol=1e-6, atol=1e-6)
    assert stnkit.from_pixel_matrix(np.vstack([M, [0, 0, 1]]), IN2).shape == (1, 6)
    assert stnkit.from_pixel_matrix(M, IN2, transform="homography").shape == (1, 8)


def test_identity_grid_matches_affine_grid_and_validates():
    for ac in (False, True):
        for size in [(4, 5), (3, 4, 5)]:
            eye = torch.eye(len(size), len(size) + 1, dtype=torch.float64)[None]
            want = F.affine_grid(eye, (1, 1, *size), align_corners=ac)[0]
            got = stnkit.identity_grid(size, ac, dtype=torch.float64)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    H, W = IN2
    grid = stnkit.identity_grid((H, W))
    torch.testing.assert_close(grid, F.affine_grid(torch.eye(2, 3)[None], (1, 1, H, W), align_corners=False)[0])
    for bad in [(), (4,), (0, 3), (2, -1, 3), (2, 3, 4, 5), 5, (2.0, 3)]:
        with pytest.raises(ValueError, match="size must"):
            stnkit.identity_grid(bad)
    with pytest.raises(ValueError, match="dtype must be a floating-point"):
        stnkit.identity_grid((2, 3), dtype=torch.int64)


# ---- gradients ---------------------------------------------------------------------------------

def test_gradcheck():
    M = torch.from_numpy(_pixel_matrix(2, True)).requires_grad_(True)
    for transform in ("affine", "projective"):
        m = M[:2] if transform == "affine" else M
        assert torch.autograd.gradcheck(lambda m: stnkit.from_pixel_matrix(m, (4, 5), (3, 6), transform=transform), (m,))
    p = _params("similarity", 1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: stnkit.to_pixel_matrix(p, "similarity", (4, 5), axes="ij"), (p,))
    ddf = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u: stnkit.flow_from_displacement(u, align_corners=True), (ddf,))


# ---- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("call,match", [
    (lambda: stnkit.from_pixel_matrix(torch.eye(4, 3, dtype=torch.float64), IN2), "M must be"),
    (lambda: stnkit.from_pixel_matrix(torch.eye(3)[None, None], IN2), "M must be 2-D or 3-D"),
    (lambda: stnkit.from_pixel_matrix(torch.eye(2, 3, dtype=torch.int64), IN2), "floating-point"),
    (lambda: stnkit.from_pixel_matrix(torch.zeros(2, 3), IN2), "must be invertible"),
    (lambda: stnkit.from_pixel_matrix(torch.eye(2, 3), IN2, maps="forward"), "maps must be one of"),
    (lambda: stnkit.from_pixel_matrix(torch.eye(2, 3), IN2, axes="yx"), "axes must be one of"),
    (lambda: stnkit.from_pixel_matrix(torch.eye(2, 3) * math.nan, IN2), "M must be finite"),
    (lambda: stnkit.from_pixel_matrix(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0.1, 0, 0]]), IN2), "h33 != 0"),
    (lambda: stnkit.from_pixel_matrix(torch.eye(2, 3), (4, 5, 6)), r"input_size must be an int or a tuple"),
    (lambda: stnkit.from_pixel_matrix(torch.eye(2, 3), IN2, (0, 4)), "output_size must be positive"),
    (lambda: stnkit.from_pixel_matrix(torch.eye(2, 3), IN2, transform="affine3d"), "is 2D, but transform 'affine3d' is 3D"),
    (lambda: stnkit.from_pixel_matrix(torch.eye(2, 3), IN2, transform="rigid"), "transform must be one of"),
    (lambda: stnkit.from_pixel_matrix(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0.1, 0, 1]]), IN2, transform="affine"),
     r"must end in the row \(0, .., 0, 1\)"),
    (lambda: stnkit.from_pixel_matrix(torch.tensor([[1.0, 0, 0], [0, 1, 0], [-1 / 9, -1 / 9, 1]], dtype=torch.float64), (10, 10),
                                      maps="output_to_input"), "maps the centre of the output to infinity"),  # pixel (4.5, 4.5)
    (lambda: stnkit.to_pixel_matrix(torch.zeros(1, 32), "tps", IN2), "needs a matrix family"),
    (lambda: stnkit.to_pixel_matrix(torch.zeros(1, 4, 4, 2), "flow", IN2), "needs a matrix family"),
    (lambda: stnkit.to_pixel_matrix(torch.zeros(1, 6), "affine", IN2), "must be invertible"),
    (lambda: stnkit.to_pixel_matrix(torch.zeros(1, 5), "affine", IN2), r"params must have shape \(B, 6\)"),
    (lambda: stnkit.to_pixel_matrix(torch.full((1, 3), math.inf), "rigid", IN2), "params must be finite"),
    (lambda: stnkit.to_pixel_matrix(torch.eye(2, 3)[None], "affine", IN2, axes="rc"), "axes must be one of"),
    (lambda: stnkit.flow_from_displacement(torch.zeros(1, 3, 4, 5)), "2D ddf must have 2 channels"),
    (lambda: stnkit.flow_from_displacement(torch.zeros(1, 2, 4, 5), axes="zyx"), "axes must be one of"),
    (lambda: stnkit.displacement_from_flow(torch.zeros(1, 4, 5, 3)), "2D flow must have 2 coordinates"),
    (lambda: stnkit.displacement_from_flow(torch.zeros(1, 4, 5)), "flow must be 4-D or 5-D"),
])
def test_bad_input_raises_one_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_singular_matrix_needs_no_inverse_output_to_input():
    M = torch.tensor([[1.0, 2.0, 0.0], [0.5, 1.0, 0.0]], dtype=torch.float64)  # rank 1: reads one line
    p = stnkit.from_pixel_matrix(M, IN2, maps="output_to_input")
    assert torch.isfinite(p).all()


# ---- peers: OpenCV -------------------------------------------------------------------------------

def _cv2_tol(img: np.ndarray) -> float:
    """OpenCV quantises source coordinates to 1/32 px (INTER_BITS = 5): up to 1/64 px per axis."""
    gy, gx = np.gradient(img.astype(np.float64))
    return (np.abs(gx).max() + np.abs(gy).max()) / 32 + 1e-5


def _cv2_case(seed: int):
    """Sizes, a smooth image (1, 1, H, W) float64 and the same as OpenCV's float32 array."""
    x = _smooth(*IN2, seed=seed)
    return IN2, OUT2, x, x[0, 0].float().numpy()


def test_opencv_warp_affine_both_directions():
    cv2 = pytest.importorskip("cv2")
    (H, W), (h, w), x, img = _cv2_case(0)
    M = cv2.getRotationMatrix2D(((W - 1) / 2, (H - 1) / 2), 25.0, 0.9)
    ref = cv2.warpAffine(img, M, (w, h))
    out = stnkit.warp(x, stnkit.from_pixel_matrix(M, (H, W), (h, w)), "affine", (h, w))
    np.testing.assert_allclose(out[0, 0].numpy(), ref, rtol=0, atol=_cv2_tol(img))
    ref = cv2.warpAffine(img, M, (w, h), flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP)
    out = stnkit.warp(x, stnkit.from_pixel_matrix(M, (H, W), (h, w), maps="output_to_input"), "affine", (h, w))
    np.testing.assert_allclose(out[0, 0].numpy(), ref, rtol=0, atol=_cv2_tol(img))


def test_opencv_warp_perspective():
    cv2 = pytest.importorskip("cv2")
    (H, W), (h, w), x, img = _cv2_case(3)
    P = _pixel_matrix(2, projective=True, seed=4)
    ref = cv2.warpPerspective(img, P, (w, h))
    out = stnkit.warp(x, stnkit.from_pixel_matrix(P, (H, W), (h, w), transform="projective"), "projective", (h, w))
    np.testing.assert_allclose(out[0, 0].numpy(), ref, rtol=0, atol=_cv2_tol(img))


def test_opencv_from_stnkit_params():
    cv2 = pytest.importorskip("cv2")
    (H, W), (h, w), x, img = _cv2_case(5)
    params = torch.tensor([[0.3, 0.1, -0.05]], dtype=torch.float64)  # rigid: angle, tx, ty
    M = stnkit.to_pixel_matrix(params, "rigid", (H, W), (h, w))[0, :2].numpy()
    ref = cv2.warpAffine(img, M, (w, h))
    out = stnkit.warp(x, params, "rigid", (h, w))
    np.testing.assert_allclose(out[0, 0].numpy(), ref, rtol=0, atol=_cv2_tol(img))


# ---- peers: kornia -------------------------------------------------------------------------------

@pytest.mark.parametrize("align_corners", [False, True])
def test_kornia_warp_affine_and_perspective(align_corners):
    KT = pytest.importorskip("kornia.geometry.transform")
    H, W = IN2
    h, w = OUT2
    x = _smooth(H, W, batch=2, seed=6)
    M = torch.from_numpy(np.stack([_pixel_matrix(2, seed=s)[:2] for s in (7, 8)]))
    P = torch.from_numpy(np.stack([_pixel_matrix(2, True, seed=s) for s in (9, 10)]))
    ref = KT.warp_affine(x, M, (h, w), align_corners=align_corners)
    out = stnkit.warp(x, stnkit.from_pixel_matrix(M, (H, W), (h, w)), "affine", (h, w))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    ref = KT.warp_perspective(x, P, (h, w), align_corners=align_corners)
    out = stnkit.warp(x, stnkit.from_pixel_matrix(P, (H, W), (h, w), transform="projective"), "projective", (h, w))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    # the same maps with stnkit's align_corners matching kornia's
    p = stnkit.from_pixel_matrix(M, (H, W), (h, w), align_corners=align_corners)
    out = stnkit.warp(x, p, "affine", (h, w), align_corners=align_corners)
    torch.testing.assert_close(out, KT.warp_affine(x, M, (h, w), align_corners=align_corners), rtol=0, atol=1e-12)


def _kornia3d_frame(size) -> torch.Tensor:
    """kornia's warp_affine3d normalises M with the corner convention (pixel i of n at
    2i/(n - 1) - 1) whatever align_corners is; with align_corners=False its sampler then reads
    that coordinate half-pixel style, i.e. kornia's pixel v is the true pixel v n/(n - 1) - 1/2."""
    n = torch.tensor(size[::-1], dtype=torch.float64)
    m = torch.diag(torch.cat([n / (n - 1), torch.ones(1, dtype=torch.float64)]))
    m[:3, 3] = -0.5
    return m


@pytest.mark.parametrize("align_corners", [True, False])
def test_kornia_warp_affine3d(align_corners):
    KT = pytest.importorskip("kornia.geometry.transform")
    D, H, W = IN3
    d, h, w = OUT3
    x = _smooth(D, H, W, seed=11)
    M4 = torch.from_numpy(_pixel_matrix(3, seed=12))
    M = M4[None, :3]
    ref = KT.warp_affine3d(x, M, (d, h, w), align_corners=align_corners)
    if align_corners:  # kornia's default: M is the pixel map
        out = stnkit.warp(x, stnkit.from_pixel_matrix(M, (D, H, W), (d, h, w)), "affine3d", (d, h, w))
    else:  # the pixel map kornia applies is M conjugated by its frames
        true = _kornia3d_frame((d, h, w)) @ M4 @ torch.linalg.inv(_kornia3d_frame((D, H, W)))
        out = stnkit.warp(x, stnkit.from_pixel_matrix(true, (D, H, W), (d, h, w)), "affine3d", (d, h, w))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


# ---- peers: scipy.ndimage ------------------------------------------------------------------------

def test_scipy_affine_transform_2d():
    ndi = pytest.importorskip("scipy.ndimage")
    H, W = IN2
    h, w = OUT2
    x = _smooth(H, W, seed=13)
    a = x[0, 0].numpy()
    T = _pixel_matrix(2, seed=14)[:2]  # output (i, j) -> input (i, j)
    ref = ndi.affine_transform(a, T, output_shape=(h, w), order=1, mode="grid-constant")
    out = stnkit.warp(x, stnkit.from_pixel_matrix(T, (H, W), (h, w), maps="output_to_input", axes="ij"), "affine", (h, w))
    np.testing.assert_allclose(out[0, 0].numpy(), ref, rtol=0, atol=1e-12)
    p = stnkit.from_pixel_matrix(T, (H, W), (h, w), maps="output_to_input", axes="ij")
    ref = ndi.affine_transform(a, T, output_shape=(h, w), order=1, mode="nearest")
    np.testing.assert_allclose(stnkit.warp(x, p, "affine", (h, w), padding_mode="border")[0, 0].numpy(), ref, atol=1e-12)
    # mode="constant" does not blend zeros across the edge: equal where the source lies inside
    ref = ndi.affine_transform(a, T, output_shape=(h, w), order=1, mode="constant")
    src = np.einsum("rc,cij->rij", T, np.concatenate([np.indices((h, w)), np.ones((1, h, w))]))
    inside = (src[0] >= 0) & (src[0] <= H - 1) & (src[1] >= 0) & (src[1] <= W - 1)
    assert inside.sum() > 0.5 * h * w
    np.testing.assert_allclose(out[0, 0].numpy()[inside], ref[inside], rtol=0, atol=1e-12)


def test_scipy_affine_transform_3d():
    ndi = pytest.importorskip("scipy.ndimage")
    D, H, W = IN3
    d, h, w = OUT3
    x = _smooth(D, H, W, seed=15)
    a = x[0, 0].numpy()
    T = _pixel_matrix(3, seed=16)[:3]
    ref = ndi.affine_transform(a, T, output_shape=(d, h, w), order=1, mode="grid-constant")
    out = stnkit.warp(x, stnkit.from_pixel_matrix(T, (D, H, W), (d, h, w), maps="output_to_input", axes="ij"), "affine3d", (d, h, w))
    np.testing.assert_allclose(out[0, 0].numpy(), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [(9, 11), (5, 6, 7)])
def test_scipy_map_coordinates_with_a_displacement_field(size):
    ndi = pytest.importorskip("scipy.ndimage")
    x = _smooth(*size, seed=17)
    a = x[0, 0].numpy()
    u = 1.5 * np.random.default_rng(18).standard_normal((len(size), *size))  # voxels, array axes
    ref = ndi.map_coordinates(a, np.indices(a.shape) + u, order=1, mode="grid-constant")
    ddf = torch.from_numpy(u)[None]
    if len(size) == 2:
        out = stnkit.warp(x, stnkit.flow_from_displacement(ddf), "flow")
    else:
        out = stnkit.warp(x, stnkit.flow_from_displacement(ddf), "flow3d")
    np.testing.assert_allclose(out[0, 0].numpy(), ref, rtol=0, atol=1e-12)
    for ac in (False, True):  # the same pixel map under either align_corners; "xy" channels too
        xy = stnkit.flow_from_displacement(ddf.flip(1), align_corners=ac, axes="xy")
        out = stnkit.warp(x, xy, "flow" if len(size) == 2 else "flow3d", align_corners=ac)
        np.testing.assert_allclose(out[0, 0].numpy(), ref, rtol=0, atol=1e-12)


# ---- peers: MONAI and VoxelMorph ---------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:monai.networks.blocks.Warp")
def test_monai_warp_2d_and_3d():
    monai_blocks = pytest.importorskip("monai.networks.blocks")
    g = torch.Generator().manual_seed(19)
    H, W = IN2
    x = _smooth(H, W, batch=2, seed=20)
    ddf = 2.0 * torch.randn(2, 2, H, W, generator=g, dtype=torch.float64)
    ref = monai_blocks.Warp()(x, ddf)
    out = stnkit.warp(x, stnkit.flow_from_displacement(ddf), "flow", padding_mode="border")
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    ref = monai_blocks.Warp(padding_mode="zeros")(x, ddf)
    flow = stnkit.flow_from_displacement(ddf, align_corners=True)
    torch.testing.assert_close(stnkit.warp(x, flow, "flow", align_corners=True), ref, rtol=0, atol=1e-12)
    D, H, W = IN3
    x = _smooth(D, H, W, seed=21)
    ddf = 1.5 * torch.randn(1, 3, D, H, W, generator=g, dtype=torch.float64)
    ref = monai_blocks.Warp()(x, ddf)
    out = stnkit.warp(x, stnkit.flow_from_displacement(ddf), "flow3d", padding_mode="border")
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("align_corners", [True, False])
def test_monai_affine_transform_voxel_matrix(align_corners):
    layers = pytest.importorskip("monai.networks.layers")
    H, W = IN2
    h, w = OUT2
    x = _smooth(H, W, seed=22)
    # normalized=False: theta is a voxel output -> input matrix in array order (scipy's)
    T = torch.from_numpy(_pixel_matrix(2, seed=23)[:2])
    ref = layers.AffineTransform((h, w), normalized=False, align_corners=align_corners)(x, T)
    if align_corners:
        out = stnkit.warp(x, stnkit.from_pixel_matrix(T, (H, W), (h, w), maps="output_to_input", axes="ij"), "affine", (h, w))
    else:
        p = stnkit.from_pixel_matrix(T, (H, W), (h, w), maps="output_to_input", axes="ij", align_corners=False)
        out = stnkit.warp(x, p, "affine", (h, w))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    ref = layers.AffineTransform((h, w), normalized=False)(x, T)  # the table's line, MONAI's defaults
    out = stnkit.warp(x, stnkit.from_pixel_matrix(T, (H, W), (h, w), maps="output_to_input", axes="ij"), "affine", (h, w))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    D, H, W = IN3
    d, h, w = OUT3
    x = _smooth(D, H, W, seed=24)
    T = torch.from_numpy(_pixel_matrix(3, seed=25))  # (4, 4) homogeneous
    ref = layers.AffineTransform((d, h, w), normalized=False, align_corners=align_corners)(x, T)
    p = stnkit.from_pixel_matrix(T, (D, H, W), (d, h, w), maps="output_to_input", axes="ij", align_corners=align_corners)
    torch.testing.assert_close(stnkit.warp(x, p, "affine3d", (d, h, w), align_corners=align_corners), ref, rtol=0, atol=1e-12)


def voxelmorph_spatial_transformer(src: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """VoxelMorph's SpatialTransformer.forward (voxelmorph/torch/layers.py), copied as the
    reference because VoxelMorph is not installable here; only the grid is float64, not float32."""
    shape = flow.shape[2:]
    vectors = [torch.arange(0, s, dtype=torch.float64) for s in shape]
    grid = torch.stack(torch.meshgrid(vectors, indexing="ij"))[None]
    new_locs = grid + flow
    for i in range(len(shape)):
        new_locs[:, i, ...] = 2 * (new_locs[:, i, ...] / (shape[i] - 1) - 0.5)
    if len(shape) == 2:
        new_locs = new_locs.permute(0, 2, 3, 1)[..., [1, 0]]
    else:
        new_locs = new_locs.permute(0, 2, 3, 4, 1)[..., [2, 1, 0]]
    return F.grid_sample(src, new_locs, align_corners=True, mode="bilinear")


def test_voxelmorph_spatial_transformer_2d_and_3d():
    g = torch.Generator().manual_seed(26)
    H, W = IN2
    x = _smooth(H, W, seed=27)
    ddf = 2.0 * torch.randn(1, 2, H, W, generator=g, dtype=torch.float64)
    out = stnkit.warp(x, stnkit.flow_from_displacement(ddf), "flow")
    torch.testing.assert_close(out, voxelmorph_spatial_transformer(x, ddf), rtol=0, atol=1e-12)
    D, H, W = IN3
    x = _smooth(D, H, W, seed=28)
    ddf = 1.5 * torch.randn(1, 3, D, H, W, generator=g, dtype=torch.float64)
    out = stnkit.warp(x, stnkit.flow_from_displacement(ddf), "flow3d")
    torch.testing.assert_close(out, voxelmorph_spatial_transformer(x, ddf), rtol=0, atol=1e-12)
    # and back: a stnkit flow as the ddf VoxelMorph reads
    flow = stnkit.flow_from_displacement(ddf)
    ddf = stnkit.displacement_from_flow(flow)
    torch.testing.assert_close(voxelmorph_spatial_transformer(x, ddf), stnkit.warp(x, flow, "flow3d"), rtol=0, atol=1e-12)


# ---- docs and tests cannot drift apart ----------------------------------------------------------

def test_docs_table_lines_are_tested():
    root = Path(__file__).resolve().parents[1]
    api = (root / "docs" / "api.md").read_text()
    section = api.split("## Coming from OpenCV, kornia, scipy, MONAI or VoxelMorph", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in section.splitlines() if r.startswith("| ") and not r.startswith("| peer") and "---" not in r]
    here = Path(__file__).read_text()
    lines = [code for r in rows for code in re.findall(r"`([^`]+)`", r.rsplit(" | ", 1)[1])]
    assert len(rows) >= 15 and len(lines) == len(rows)
    missing = [code for code in lines if code not in here]
    assert not missing, f"stnkit lines of docs/api.md's table that no test runs: {missing}"
