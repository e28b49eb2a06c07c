"""`stnkit.warp(..., antialias=True)`: area averages where the map shrinks (against avg_pool,
F.interpolate and a supersampled reference), bit-for-bit the plain warp where it does not,
every family, 2D and 3D, gradients, and bad input."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

import stnkit
from stnkit.functional import antialias as aa

F64 = torch.float64


def _checker(shape, square=1, shift=0):
    """(1, 1, *shape) 0/1 checkerboard of `square`-pixel squares, shifted by `shift` pixels."""
    idx = [(torch.arange(n) + shift) // square for n in shape]
    total = sum(i.view(*[-1 if a == b else 1 for b in range(len(shape))]) for a, i in enumerate(idx))
    return (total % 2).to(F64)[None, None]


def _smooth(H, W):
    yy, xx = torch.meshgrid(torch.arange(H, dtype=F64), torch.arange(W, dtype=F64), indexing="ij")
    return (torch.sin(xx / 7) * torch.cos(yy / 5) + 0.3 * torch.sin((xx + yy) / 11))[None, None]


def _warp(x, p, family, size, **kw):
    return stnkit.warp(x, p, family, size, **kw), stnkit.warp(x, p, family, size, antialias=True, **kw)


@pytest.fixture
def paths(monkeypatch):
    """Records which route each antialiased call took: 'box' (the prefilter) or 'super'."""
    seen = []
    box, sup = aa._prefilter, aa._supersample
    monkeypatch.setattr(aa, "_prefilter", lambda *a: seen.append("box") or box(*a))
    monkeypatch.setattr(aa, "_supersample", lambda *a: seen.append("super") or sup(*a))
    return seen


# ----------------------------------------------------------------------------- exact area averages

# A 2-pixel checkerboard shifted by one pixel: every 4x4 block averages to 1/2, while plain
# bilinear, which reads the middle of each block, sees a single square (0 or 1).
IMAGES = {"smooth": _smooth(64, 48), "checker": _checker((64, 48), square=2, shift=1)}


@pytest.mark.parametrize("padding_mode", ["zeros", "reflection"])  # prefiltered, supersampled
@pytest.mark.parametrize("image", list(IMAGES))
def test_attention_4x_shrink_is_avg_pool(image, padding_mode, paths):
    x = IMAGES[image]
    p = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)
    plain, out = _warp(x, p, "attention", (16, 12), padding_mode=padding_mode)
    want = F.avg_pool2d(x, 4)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    assert paths == (["box"] if padding_mode == "zeros" else ["super"])
    if image == "checker":
        assert (plain - want).abs().min() == 0.5  # plain bilinear aliases every pixel
    # F.interpolate's antialias is a triangle filter twice as wide: close on the smooth image
    # (amplitude 1.3), equal on the checkerboard but for its border row (both average to 1/2)
    tri = F.interpolate(x, scale_factor=0.25, mode="bilinear", antialias=True)
    tol = 0.07 if image == "smooth" else 3e-3
    assert (out - tri).abs().max() < tol
    if image == "checker":
        torch.testing.assert_close(out[..., 1:-1, 1:-1], tri[..., 1:-1, 1:-1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_attention_2x_shrink_3d_is_avg_pool3d(padding_mode, paths):
    x = torch.rand(2, 3, 8, 6, 10, generator=torch.Generator().manual_seed(0), dtype=F64)
    p = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 2, dtype=F64)
    out = stnkit.warp(x, p, "attention3d", (4, 3, 5), antialias=True, padding_mode=padding_mode)
    torch.testing.assert_close(out, F.avg_pool3d(x, 2), rtol=0, atol=1e-12)
    assert paths == (["super"] if padding_mode == "reflection" else ["box"])


@pytest.mark.parametrize("padding_mode", ["zeros", "reflection"])
def test_anisotropic_shrink_filters_x_only(padding_mode):
    x = torch.rand(2, 2, 12, 32, generator=torch.Generator().manual_seed(1), dtype=F64)
    p = torch.tensor([[1.0, 0, 0, 0, 1, 0]] * 2, dtype=F64)  # output (12, 8): 4x in x, 1x in y
    out = stnkit.warp(x, p, "affine", (12, 8), antialias=True, padding_mode=padding_mode)
    torch.testing.assert_close(out, F.avg_pool2d(x, (1, 4)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_box_prefilter_odd_k_is_exact(align_corners, padding_mode, paths):
    """A 3x shrink whose output pixels sample input pixel centres: 3 x 3 block means; with
    align_corners=True the blocks are centred on pixels 0, 3, 6, .. and the first reaches one
    pixel past the edge, into the padding."""
    x = torch.rand(2, 2, 22, 25, generator=torch.Generator().manual_seed(2), dtype=F64)
    if not align_corners:
        x = x[..., :21, :24]  # 3 (H', W')
    p = torch.tensor([[1.0, 0.0, 0.0]] * 2, dtype=F64)
    size = (8, 9) if align_corners else (7, 8)
    out = stnkit.warp(x, p, "attention", size, padding_mode=padding_mode, align_corners=align_corners, antialias=True)
    if align_corners:
        mode = "constant" if padding_mode == "zeros" else "replicate"
        want = F.avg_pool2d(F.pad(x, [1, 1, 1, 1], mode=mode), 3)[..., :8, :9]
    else:
        want = F.avg_pool2d(x, 3)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    assert paths == ["box"]


# ----------------------------------------------------------------------------- against a reference


def _supersampled_reference(x, p, family, size, m=4, **kw):
    """Plain bilinear at m times the output size, then m x m block means."""
    big = stnkit.warp(x, p, family, tuple(m * s for s in size), **kw)
    return F.avg_pool2d(big, m)


@pytest.mark.parametrize("scale, padding_mode, rel", [
    (0.6, "reflection", 1e-9),  # a shrink of 3.2: 4 x 4 subsamples, where the reference samples
    (0.8, "reflection", 0.1),  # 4.3: 5 x 5
    (0.8, "zeros", 0.3),  # the box prefilter (k = 3) and 2 x 2 boxes: an approximation
])
def test_rotated_shrink_matches_supersampled_reference(scale, padding_mode, rel):
    x = torch.rand(1, 2, 64, 64, generator=torch.Generator().manual_seed(3), dtype=F64)
    p = torch.tensor([[scale, 0.5, 0.03, -0.02]], dtype=F64)  # similarity, rotated 0.5 rad
    plain, out = _warp(x, p, "similarity", (12, 12), padding_mode=padding_mode)
    want = _supersampled_reference(x, p, "similarity", (12, 12), padding_mode=padding_mode)
    assert (plain - want).abs().max() > 0.4
    assert (out - want).abs().max() <= rel * (plain - want).abs().max()


# ----------------------------------------------------------------------------- no shrink: unchanged


@pytest.mark.parametrize("family, params, size", [
    ("affine", [[1.0, 0, 0, 0, 1, 0]], (20, 24)),  # identity
    ("attention", [[0.5, 0.1, -0.2]], (20, 24)),  # zoom in
    ("rigid", [[0.4, 0.1, 0.0]], (20, 24)),  # rotation, no shrink
    ("attention", [[0.5, 0.1, -0.2]], (40, 48)),  # zoom in 4x
    ("flow", None, None),  # identity flow (finite-difference Jacobian)
])
@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
def test_no_shrink_is_bit_for_bit_plain(family, params, size, mode):
    x = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(4))
    p = torch.zeros(2, 20, 24, 2) if params is None else torch.tensor(params * 2)
    plain, out = _warp(x, p, family, size, mode=mode)
    assert torch.equal(out, plain)


def _shrink(p, size, in_size, eps=1e-4):
    """The largest column length of the exact Jacobian (pixels per pixel) at every output pixel,
    by central differences of warp_points in float64: (B, H', W')."""
    H, W = size
    ys, xs = [(2 * torch.arange(n, dtype=F64) + 1) / n - 1 for n in (H, W)]
    pts = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    cols = []
    for u, (n_out, n_in) in enumerate(zip((W, H), (in_size[1], in_size[0]))):
        e = torch.zeros(2, dtype=F64)
        e[u] = eps
        d = stnkit.warp_points(pts + e, p, "projective") - stnkit.warp_points(pts - e, p, "projective")
        scale = torch.tensor([in_size[1], in_size[0]], dtype=F64) / n_out  # normalised -> pixels
        cols.append((d / (2 * eps) * scale).norm(dim=-1))
    return torch.stack(cols, -1).amax(-1).view(-1, H, W)


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_mixed_projective_keeps_non_shrinking_pixels(padding_mode, paths):
    x = torch.rand(1, 2, 32, 32, generator=torch.Generator().manual_seed(5))
    p = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.7, 0.0]], dtype=F64)  # shrinks to the left
    plain, out = _warp(x.double(), p, "projective", (24, 24), padding_mode=padding_mode)
    s = _shrink(p, (24, 24), (32, 32))
    inside = (stnkit.grid(p, "projective", (24, 24)).abs() < 0.8).all(-1)
    keep, shrink = s < 0.98, (s > 2.2) & inside
    assert keep.sum() > 100 and shrink.sum() > 30
    assert torch.equal(out[:, :, keep[0]], plain[:, :, keep[0]])
    assert ((out - plain).abs().amax(1)[shrink] > 1e-3).float().mean() > 0.9
    assert paths == ["super"]  # mixed: no prefilter


def test_projective_horizon_still_reads_fill():
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(6))
    p = torch.tensor([[1.0, 0, 0, 0, 1, 0, 0, -1.5]])  # the horizon crosses the output
    for padding_mode in ("zeros", "border", "reflection"):
        out = stnkit.warp(x, p, "projective", (16, 16), padding_mode=padding_mode, fill=0.25, antialias=True)
        g = stnkit.grid(p, "projective", (16, 16))
        nowhere = (g == -8).all(-1)[:, None]
        assert nowhere.sum() > 10 and torch.isfinite(out).all()
        assert torch.equal(out[nowhere], torch.full_like(out[nowhere], 0.25))


# ----------------------------------------------------------------------------- dense families


def _alias_energy(out):
    """Mean squared distance from the checkerboard's area average 1/2, inside the image."""
    return ((out - 0.5)[..., 2:-2, 2:-2] ** 2).mean()


@pytest.mark.parametrize("padding_mode", ["zeros", "reflection"])
def test_tps_and_flow_reduce_aliasing(padding_mode):
    gen = torch.Generator().manual_seed(7)
    x = _checker((96, 96))  # a 1-pixel checkerboard shrunk 6x
    tps = stnkit.transforms.identity("tps", 1, dtype=F64) + 0.05 * torch.randn(1, 32, generator=gen, dtype=F64)
    coarse = 0.03 * torch.randn(1, 2, 4, 4, generator=gen, dtype=F64)
    flow = F.interpolate(coarse, size=(16, 16), mode="bilinear").permute(0, 2, 3, 1)
    for family, p, size in (("tps", tps, (16, 16)), ("flow", flow, None)):
        plain, out = _warp(x, p, family, size, padding_mode=padding_mode)
        assert _alias_energy(plain) > 0.02
        assert _alias_energy(out) < 0.01 * _alias_energy(plain)


# ----------------------------------------------------------------------------- gradients


def _affine(angle, scale, tx=0.03, ty=-0.05):
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    return torch.tensor([[c, -s, tx, s, c, ty]], dtype=F64, requires_grad=True)


@pytest.mark.parametrize("family, params, size, padding_mode, route", [
    ("affine", _affine(0.3, 1.0), (3, 3), "reflection", "super"),  # shrink 2.7-3: 3 x 3 subsamples
    ("affine", _affine(0.2, 0.9), (4, 4), "reflection", "super"),  # shrink 1.8-2: the ramp
    ("affine", _affine(0.0, 1.0), (4, 4), "zeros", "box"),  # shrink 2 and 2.25: box k = 2, 2 in x
    ("affine", _affine(0.0, 1.0, 0.1, 0.2), (2, 3), "border", "box"),  # box k = 3, 2 boxes in y
    ("projective", torch.tensor([[1.0, 0.1, 0.05, -0.05, 1.1, 0.02, 0.5, -0.3]], dtype=F64,
                                requires_grad=True), (4, 5), "zeros", "super"),
])
def test_gradcheck(family, params, size, padding_mode, route, paths):
    x = torch.rand(1, 1, 8, 9, generator=torch.Generator().manual_seed(8), dtype=F64, requires_grad=True)

    def f(x, p):
        return stnkit.warp(x, p, family, size, padding_mode=padding_mode, antialias=True)

    assert gradcheck(f, (x, params))
    assert paths[0] == route


# ----------------------------------------------------------------------------- API


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_antialias_must_be_bool(bad):
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"antialias must be True or False, got "):
        stnkit.warp(x, torch.tensor([[1.0, 0, 0]]), "attention", antialias=bad)


def test_spatial_transformer_passes_antialias():
    loc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8))
    st = stnkit.SpatialTransformer(loc, "attention", (2, 2), antialias=True)
    assert "antialias=True" in repr(st)
    assert "antialias" not in repr(stnkit.SpatialTransformer(loc, "attention", (2, 2)))
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(st(x), F.avg_pool2d(x, 4))  # starts at the identity: a 4x shrink


def test_empty_batch():
    out = stnkit.warp(torch.rand(0, 2, 8, 8), torch.zeros(0, 3), "attention", (2, 2), antialias=True)
    assert out.shape == (0, 2, 2, 2)
