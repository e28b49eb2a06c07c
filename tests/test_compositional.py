"""stnkit.compose and the inverse-compositional CompositionalTransformer (IC-STN)."""
import math

import pytest
import torch
from torch import nn

import stnkit
from stnkit.layers import CompositionalTransformer
from stnkit.transforms import get


def _shift(dx_px: int, dy_px: int, W: int, H: int) -> torch.Tensor:
    """translation params moving the sampling point by whole pixels (align_corners=False)."""
    return torch.tensor([[2 * dx_px / W, 2 * dy_px / H]], dtype=torch.float64)


def _inside(params, family, size):
    """Output pixels whose (intermediate) source point lies inside the image: (1, 1, H, W)."""
    g = stnkit.grid(params, family, size)
    return ((g.abs() < 1).all(-1))[:, None]


def test_compose_is_warping_twice_with_nearest_on_integer_shifts_and_rotations():
    H = W = 8
    x = torch.arange(H * W, dtype=torch.float64).view(1, 1, H, W) + 1
    rot90 = torch.tensor([[math.pi / 2, 0.0, 0.0]], dtype=torch.float64)
    shift = torch.tensor([[0.0, 2 * 3 / W, 2 * -1 / H]], dtype=torch.float64)  # rigid: 3 px right, 1 up
    for p, q in ((rot90, shift), (shift, rot90)):
        twice = stnkit.warp(stnkit.warp(x, p, "rigid", mode="nearest"), q, "rigid", mode="nearest")
        once = stnkit.warp(x, stnkit.compose(p, q, "rigid"), "rigid", mode="nearest")
        keep = _inside(q, "rigid", (H, W))  # where the second warp read the first one's image
        assert torch.equal(once * keep, twice * keep)
        assert keep.float().mean() > 0.5
    a, b = stnkit.compose(rot90, shift, "rigid"), stnkit.compose(shift, rot90, "rigid")
    assert not torch.allclose(a, b)  # the order matters, and the test above tells them apart
    t = stnkit.compose(_shift(2, 1, W, H), _shift(-3, 2, W, H), "translation")
    torch.testing.assert_close(t, _shift(-1, 3, W, H), atol=1e-15, rtol=0)


FAMILIES = ["translation", "attention", "rigid", "similarity", "affine", "projective",
            "translation3d", "attention3d", "affine3d"]


def _random(family: str, B: int, g: torch.Generator) -> torch.Tensor:
    fam = get(family)
    ident = fam.identity_params(dtype=torch.float64)
    return ident + 0.2 * torch.randn(B, ident.numel(), generator=g, dtype=torch.float64)


def _hom(family, p):
    fam = get(family)
    if family == "projective":
        return torch.cat([p, torch.ones(p.shape[0], 1, dtype=p.dtype)], 1).view(-1, 3, 3)
    A = fam.matrix(p)
    return torch.cat([A, torch.eye(A.shape[2], dtype=p.dtype)[-1:].expand(A.shape[0], 1, -1)], 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_compose_is_the_matrix_product_in_the_familys_own_layout(family):
    g = torch.Generator().manual_seed(0)
    p, q = _random(family, 5, g), _random(family, 5, g)
    c = stnkit.compose(p, q, family)
    assert c.shape == p.shape
    want = _hom(family, p) @ _hom(family, q)
    torch.testing.assert_close(_hom(family, c), want / want[:, -1:, -1:], atol=1e-12, rtol=1e-12)
    pts = torch.rand(5, 7, get(family).dim, dtype=torch.float64, generator=g) * 2 - 1
    twice = stnkit.warp_points(stnkit.warp_points(pts, q, family), p, family)  # T_p(T_q(u))
    torch.testing.assert_close(stnkit.warp_points(pts, c, family), twice, atol=1e-12, rtol=1e-12)
    if get(family).has_inverse:
        torch.testing.assert_close(stnkit.compose(p, stnkit.invert(p, family), family),
                                   get(family).identity_params(dtype=torch.float64).expand_as(p), atol=1e-12, rtol=0)


def test_compose_refuses_what_it_cannot_compose():
    with pytest.raises(ValueError, match="compose_flows"):
        stnkit.compose(torch.zeros(1, 4, 4, 2), torch.zeros(1, 4, 4, 2), "flow")
    with pytest.raises(ValueError, match="matrix family"):
        stnkit.compose(torch.zeros(1, 32), torch.zeros(1, 32), "tps")
    with pytest.raises(ValueError, match="batch"):
        stnkit.compose(torch.zeros(2, 6), torch.zeros(3, 6), "affine")


class Recorder(nn.Module):
    """A localisation 'net' that records what it sees and outputs fixed features."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.out_features = 1

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return x.new_ones(x.shape[0], 1)


def test_starts_at_the_identity_and_every_step_samples_the_original_input():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 12, 12)
    st = CompositionalTransformer(Recorder(), "attention", steps=3)
    out = st(x)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)  # identity update: the identity
    assert len(st.step_params) == 3
    # now a fixed update: zoom 0.8 and shift right; after k steps the params are its k-th power
    with torch.no_grad():
        st.regression.bias.copy_(torch.tensor([0.8, 0.1, 0.0]))
    st.localisation.seen.clear()
    out = st(x)
    upd = torch.tensor([[0.8, 0.1, 0.0]])
    p = upd
    for k in range(3):
        torch.testing.assert_close(st.step_params[k], p.expand(2, 3), atol=1e-6, rtol=0)
        if k < 2:  # step k + 2 sees the ORIGINAL input warped once by the params after step k + 1
            torch.testing.assert_close(st.localisation.seen[k + 1], stnkit.warp(x, p.expand(2, 3), "attention"))
        p = stnkit.compose(p, upd, "attention")
    torch.testing.assert_close(st.localisation.seen[0], x)
    torch.testing.assert_close(st.last_params, st.step_params[-1])
    torch.testing.assert_close(out, stnkit.warp(x, st.last_params, "attention"))
    # not the same as resampling the resampled image (what a stack of plain STs would do)
    resampled = stnkit.warp(stnkit.warp(x, upd.expand(2, 3), "attention"), upd.expand(2, 3), "attention")
    assert not torch.allclose(st.localisation.seen[2], resampled, atol=1e-4)


def test_gradients_reach_the_shared_localisation_through_every_step():
    torch.manual_seed(0)
    loc = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Tanh())
    loc.out_features = 8
    st = CompositionalTransformer(loc, "projective", (6, 6), steps=4)
    with torch.no_grad():
        st.regression.weight.normal_(0, 0.01)
    x = torch.rand(3, 1, 8, 8)
    st(x).sum().backward()
    assert loc[1].weight.grad.abs().sum() > 0 and st.regression.weight.grad.abs().sum() > 0
    assert "steps=4" in repr(st)


@pytest.mark.parametrize("kw,match", [
    (dict(steps=0), "steps must be an int >= 1"),
    (dict(transform="tps"), "matrix family"),
    (dict(bounds={"scale": (0.5, 1.5)}), "no bounds="),
])
def test_bad_arguments(kw, match):
    args = dict(transform="affine", steps=2, **{k: v for k, v in kw.items() if k not in ("transform", "steps")})
    args.update({k: v for k, v in kw.items() if k in ("transform", "steps")})
    with pytest.raises(ValueError, match=match):
        CompositionalTransformer(Recorder(), **args)
