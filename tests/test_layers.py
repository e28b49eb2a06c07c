"""SpatialTransformer and localisation helpers: identity at init, bounds, composition, errors."""
import math

import pytest
import torch
from torch import nn

import stnkit
from stnkit import transforms as T
from stnkit.layers import BoundedParams

FAMILIES_2D = [n for n in T.names() if T.get(n).dim == 2 and not n.startswith("flow")]


@pytest.mark.parametrize("family", FAMILIES_2D)
def test_identity_at_init_returns_input(family):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 20, 18)
    st = stnkit.SpatialTransformer(stnkit.conv_localisation(4, (20, 18), channels=(6, 6), kernel_size=3), family)
    y = st(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)
    expected = T.identity(family, 3)
    torch.testing.assert_close(st.last_params, expected)
    assert not st.last_params.requires_grad


@pytest.mark.parametrize("family", ["affine", "projective", "tps", "attention"])
def test_every_parameter_gets_a_gradient(family):
    torch.manual_seed(0)
    st = stnkit.SpatialTransformer(stnkit.fc_localisation(2 * 9 * 9, hidden=(16, 8)), family, (5, 5))
    x = torch.randn(4, 2, 9, 9)
    # the regression starts at zero weight, so the loc net's own weights get no gradient
    # until it moves: take one step first.
    target = torch.randn(4, 2, 5, 5)
    opt = torch.optim.SGD(st.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        (st(x) - target).pow(2).mean().backward()
        opt.step()
    for name, p in st.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name
        assert torch.isfinite(p.grad).all(), name


def test_feature_maps_series_and_parallel_compose():
    torch.manual_seed(0)
    feats = nn.Conv2d(3, 16, 3, padding=1)(torch.randn(2, 3, 20, 20))  # any channel count
    loc = lambda c: nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(c * 16, 8), nn.ReLU())
    series = nn.Sequential(
        stnkit.SpatialTransformer(loc(16), "affine", (16, 16)),
        stnkit.SpatialTransformer(loc(16), "attention", (8, 8)),
    )
    assert series(feats).shape == (2, 16, 8, 8)
    heads = nn.ModuleList(stnkit.SpatialTransformer(loc(16), "attention", (10, 10)) for _ in range(3))
    out = torch.cat([h(feats) for h in heads], dim=1)
    assert out.shape == (2, 48, 10, 10)


def test_3d_transformer():
    x = torch.randn(2, 1, 8, 8, 8)
    loc = nn.Sequential(nn.Flatten(), nn.Linear(512, 16), nn.ReLU())
    st = stnkit.SpatialTransformer(loc, "affine3d", (4, 6, 6))
    assert st(x).shape == (2, 1, 4, 6, 6)
    assert st.last_params.shape == (2, 12)


def test_bounds_squash_and_keep_identity():
    fam = T.get("similarity")
    b = BoundedParams(fam, {"scale": (0.5, 1.5), "translation": (-1, 1)})
    ident = fam.identity_params()
    raw0 = b.raw(ident)
    torch.testing.assert_close(b(raw0[None]), ident[None])
    huge = torch.tensor([[1e6, 1e6, 1e6, -1e6], [-1e6, -3.0, 0.0, 0.0]])
    out = b(huge)
    assert torch.isfinite(out).all()
    assert out[:, 0].min() >= 0.5 and out[:, 0].max() <= 1.5  # scale squashed
    assert out[:, 2:].abs().max() <= 1.0  # translation squashed
    assert out[0, 1] == 1e6 and out[1, 1] == -3.0  # angle stays free


def test_bounded_transformer_starts_at_identity():
    x = torch.randn(2, 1, 16, 16)
    st = stnkit.SpatialTransformer(
        stnkit.fc_localisation(256), "attention", bounds={"s": (0.2, 1.2), "translation": (-0.5, 0.5)}
    )
    torch.testing.assert_close(st(x), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(st.last_params, T.identity("attention", 2), atol=1e-6, rtol=0)


def test_bound_errors_are_clear():
    fam = T.get("attention")
    with pytest.raises(ValueError, match="strictly inside"):
        BoundedParams(fam, {"scale": (0.2, 1.0)})  # identity s=1 on the bound
    with pytest.raises(ValueError, match="unknown bound 'shear'"):
        BoundedParams(fam, {"shear": (0, 1)})
    with pytest.raises(ValueError, match="low < high"):
        BoundedParams(fam, {"translation": (1, -1)})
    with pytest.raises(ValueError, match="pair"):
        BoundedParams(fam, {"translation": 1.0})


def test_features_inferred_or_asked_for():
    with pytest.raises(ValueError, match="features=F"):
        stnkit.SpatialTransformer(nn.Flatten(), "affine")
    st = stnkit.SpatialTransformer(nn.Flatten(), "affine", features=64)
    assert st(torch.randn(2, 1, 8, 8)).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="flow"):
        stnkit.SpatialTransformer(nn.Flatten(), "flow", features=64)
    with pytest.raises(ValueError, match="output_size"):
        stnkit.SpatialTransformer(nn.Flatten(), "affine", output_size=(0, 4), features=64)


def test_conv_localisation_too_small_input_is_clear():
    with pytest.raises(ValueError, match="input_size"):
        stnkit.conv_localisation(1, (12, 12))


def test_conv_localisation_matches_paper_layout():
    loc = stnkit.conv_localisation(1, (42, 42))
    convs = [m for m in loc if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [20, 20] and all(c.kernel_size == (5, 5) for c in convs)
    assert isinstance(loc[0], nn.MaxPool2d)  # 2x-downsampled input
    assert loc(torch.randn(2, 1, 42, 42)).shape == (2, 20) and loc.out_features == 20


def test_learns_to_undo_a_rotation():
    """End to end: an ST trained on the task loss alone (match an upright template) learns the
    inverse of the rotation applied to its input."""
    torch.manual_seed(0)
    template = torch.zeros(1, 1, 16, 16)
    template[..., 3:13, 6:10] = 1.0
    template[..., 3:6, 3:13] = 1.0  # a "T"
    angle = math.radians(30)
    rot = torch.tensor([[angle, 0.0, 0.0]])
    x = stnkit.warp(template, rot, "rigid")
    loc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())  # one feature: the angle is learned in the bias
    st = stnkit.SpatialTransformer(loc, "rigid", features=1)
    opt = torch.optim.Adam(st.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        loss = (st(x) - template).pow(2).mean()
        loss.backward()
        opt.step()
    # rigid T maps output -> input; undoing a rotation by +30 degrees samples at -30.
    assert abs(float(st.last_params[0, 0]) + angle) < 0.05


def test_init_starts_at_given_params_inside_bounds():
    x = torch.rand(2, 1, 30, 30)
    st = stnkit.SpatialTransformer(stnkit.fc_localisation(900), "attention", (10, 10),
                                   init=[1 / 3, 0.2, -0.1], bounds={"scale": (0.2, 0.6)})
    out = st(x)
    torch.testing.assert_close(st.last_params, torch.tensor([[1 / 3, 0.2, -0.1]] * 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out, stnkit.warp(x, st.last_params, "attention", (10, 10)))
    with pytest.raises(ValueError, match="strictly"):
        stnkit.SpatialTransformer(stnkit.fc_localisation(900), "attention", init=[0.9, 0, 0], bounds={"scale": (0.2, 0.6)})
    with pytest.raises(ValueError, match="init must be 3 finite values"):
        stnkit.SpatialTransformer(stnkit.fc_localisation(900), "attention", init=[0.5, 0])
