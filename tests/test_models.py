"""The model zoo: every registered model builds by name, has the right output shape, finite
outputs and trains every parameter; ST models start as their classifier alone; per-family checks
(parameter budgets, where the transformers sit, shared localisation, initial crops)."""
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import stnkit
from stnkit.layers import SpatialTransformer
from stnkit.models import count_params, create_model, list_models, transformers
from stnkit.models.cub import PartClassifier, initial_crops
from stnkit.models.mnist import STClassifier
from stnkit.models.svhn import CONV_FILTERS, FC_UNITS

MNIST = r"fcn|cnn|(2x)?st-(fcn|cnn)-(affine|projective|tps)|dcn-cnn(-v2)?|ic-stn-cnn-(affine|projective)"
# Output shape after the batch axis, by model name (full match). A new model must be added here.
OUTPUTS = [
    (MNIST, (10,)),
    (r"svhn-cnn|svhn-st-cnn-(single|multi)", (5, 11)),
    (r"cub-cnn|cub-[24]xst-cnn", (200,)),
    (r"3d-cnn|3d-st-cnn-affine", (10,)),
    (r"coloc-attention", (1, 28, 28)),  # the kept transformer's crops
]
ST_CLASSIFIERS = r"(2x)?st-(fcn|cnn)-.*|svhn-st-cnn-single|ic-stn-cnn-.*"


def expected_output(name: str) -> tuple[int, ...]:
    for pattern, shape in OUTPUTS:
        if re.fullmatch(pattern, name):
            return shape
    pytest.fail(f"model {name!r} is not in tests/test_models.py OUTPUTS: add its expected output shape there")


def inputs(model, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1] (noise upsampled 4x, like a photo's scale of detail: raw
    pixel noise has huge spatial gradients, and one SGD step would fling the transformers off it)."""
    g = torch.Generator().manual_seed(seed)
    C, *size = model.in_shape
    coarse = torch.rand(batch, C, *(max(1, s // 4) for s in size), generator=g)
    return F.interpolate(coarse, size=tuple(size), mode="bilinear" if len(size) == 2 else "trilinear")


@pytest.mark.parametrize("name", list_models())
def test_shape_finite_and_every_parameter_trains(name):
    torch.manual_seed(0)
    model = create_model(name)
    x = inputs(model)
    out = model(x)
    assert out.shape == (2, *expected_output(name))
    assert torch.isfinite(out).all()

    # ST regressions start at zero weight, so their localisation nets get no gradient on the first
    # backward: take one step, then every parameter must have a nonzero gradient.
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    target = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    for step in range(2):
        opt.zero_grad()
        out = model(x)
        F.mse_loss(out, target).backward()
        if step == 0:
            opt.step()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}  # coloc's digit encoder
    dead = [n for n, p in model.named_parameters() if n not in frozen and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not dead, f"{name}: no gradient reaches {dead}"
    assert all(torch.isfinite(p.grad).all() for n, p in model.named_parameters() if n not in frozen)


def identity_view(x: torch.Tensor, size) -> torch.Tensor:
    """What an identity transformer should output: x itself at its own size, its 2x2 block means
    at half size (bilinear, align_corners=False, samples each block's centre)."""
    if tuple(size) == tuple(x.shape[-2:]):
        return x
    assert tuple(size) == (x.shape[-2] // 2, x.shape[-1] // 2)
    return F.avg_pool2d(x, 2)


ST_CASES = [(n, {}) for n in list_models() if re.fullmatch(ST_CLASSIFIERS, n)] + [
    ("st-cnn-affine", {"in_shape": (1, 60, 60), "st_size": "half"}),
    ("st-fcn-tps", {"in_shape": (1, 42, 42), "st_size": "half"}),
]


@pytest.mark.parametrize("name, kwargs", ST_CASES, ids=[f"{n}-{k.get('st_size', 'full')}" for n, k in ST_CASES])
def test_st_model_starts_as_its_classifier(name, kwargs):
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    assert isinstance(model, STClassifier)
    x = inputs(model)
    views = []
    for st in model.transformers:
        size = st.output_size or x.shape[-2:]
        ident = stnkit.transforms.identity(st.transform, x.shape[0])
        warped = stnkit.warp(x, ident, st.transform, size)
        torch.testing.assert_close(warped, identity_view(x, size), atol=1e-5, rtol=0)
        torch.testing.assert_close(st(x), warped, atol=1e-5, rtol=0)
        views.append(identity_view(x, size))
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.classifier(torch.cat(views, dim=1)), atol=1e-5, rtol=1e-5)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'nope'.*svhn-cnn"):
        create_model("nope")


@pytest.mark.parametrize("name, kwargs, match", [
    ("cnn", {"nope": 1}, "bad options for model 'cnn'"),
    ("svhn-cnn", {"colour": 3}, "bad options"),
    ("svhn-cnn", {"width": 0}, "width must be positive"),
    ("svhn-st-cnn-multi", {"in_shape": (1, 60, 60)}, "multiples of 16"),
    ("svhn-st-cnn-single", {"dropout": 1.5}, "dropout"),
    ("svhn-cnn", {"max_digits": 0}, "max_digits"),
    ("cub-2xst-cnn", {"backbone": 42}, "backbone must be"),
    ("cub-4xst-cnn", {"crop_size": 0}, "crop_size must be positive"),
    ("cub-cnn", {"in_shape": (224, 224)}, r"in_shape must be \(C, H, W\)"),
    ("cnn", {"budget": -5}, "budget must be a positive"),
])
def test_bad_options_raise(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, **kwargs)


@pytest.mark.parametrize("budget", [100_000])
@pytest.mark.parametrize("name", [n for n in list_models() if re.fullmatch(MNIST, n)])
def test_mnist_budget_within_2_percent(name, budget):
    n = count_params(create_model(name, budget=budget))
    assert abs(n - budget) <= 0.02 * budget, f"{name}: {n} parameters for a budget of {budget}"


# ---- SVHN -----------------------------------------------------------------------------------

def test_svhn_cnn_has_the_papers_shapes_at_width_1():
    model = create_model("svhn-cnn", width=1.0, in_shape=(3, 64, 64))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [c.out_channels for c in convs] == list(CONV_FILTERS)
    assert all(c.kernel_size == (5, 5) for c in convs)
    assert [m.out_features for m in linears] == [*FC_UNITS, 5 * 11]
    assert linears[0].in_features == 192 * 4 * 4  # four stride-2 pools: 64 -> 4
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert [p.stride for p in pools] == [2, 1] * 4


@pytest.mark.parametrize("size", [64, 128])
def test_svhn_sizes_keep_the_sequence_output(size):
    model = create_model("svhn-st-cnn-single", in_shape=(1, size, size), width=0.125)
    assert model(torch.rand(1, 1, size, size)).shape == (1, 5, 11)
    model = create_model("svhn-cnn", max_digits=3, num_classes=7, width=0.125)
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 3, 7)


def test_svhn_multi_has_an_st_before_each_of_the_first_4_convs():
    model = create_model("svhn-st-cnn-multi")
    sts = transformers(model)
    assert len(sts) == 4
    assert all(st.transform.name == "affine" and st.output_size is None for st in sts)
    layers = list(model.features)
    convs_before = []
    for i, layer in enumerate(layers):
        if isinstance(layer, SpatialTransformer):
            convs_before.append(sum(isinstance(m, nn.Conv2d) for prev in layers[:i] for m in prev.modules()))
            assert isinstance(layers[i + 1][0], nn.Conv2d)
    assert convs_before == [0, 1, 2, 3]
    # the deeper transformers warp feature maps: their localisation reads the whole map
    x = torch.rand(2, *model.in_shape)
    seen = []
    hooks = [st.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[1:]))) for st in sts]
    model(x)
    for h in hooks:
        h.remove()
    assert seen[0] == (1, 64, 64) and seen[1][0] == model.features[1][0].out_channels
    assert [st.localisation[1].in_features for st in sts] == [c * h * w for c, h, w in seen]


# ---- CUB ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, n", [("cub-2xst-cnn", 2), ("cub-4xst-cnn", 4)])
def test_cub_transformers_share_one_localisation_and_start_at_distinct_crops(name, n, tmp_path):
    model = create_model(name, in_shape=(3, 112, 112))
    sts = transformers(model)
    assert len(sts) == n and len(model.parts) == n
    assert all(st.localisation is model.localisation for st in sts)
    shared = list(model.localisation.parameters())
    assert all(all(a is b for a, b in zip(st.localisation.parameters(), shared)) for st in sts)
    assert len({id(p) for part in model.parts for p in part.parameters()}) == sum(
        len(list(part.parameters())) for part in model.parts)  # part nets are separate copies
    # the shared net is stored once: state_dict and a safetensors checkpoint have no duplicates
    assert not [k for k in model.state_dict() if k.startswith("transformers.") and ".localisation." in k]
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))

    model(torch.rand(3, 3, 112, 112))
    params = torch.stack([st.last_params for st in sts], 1)  # (B, n, 3) as (s, tx, ty)
    torch.testing.assert_close(params, initial_crops(n).expand(3, n, 3))
    assert (params[..., 0] == 0.5).all() and len({tuple(p.tolist()) for p in params[0]}) == n
    assert all(st.output_size == (56, 56) for st in sts)  # crops default to half the input


def test_initial_crops_lie_inside_the_image_and_are_distinct():
    for n in (1, 2, 3, 4, 8):
        c = initial_crops(n)
        assert c.shape == (n, 3)
        assert (c[:, 1:].abs() + c[:, :1] <= 1 + 1e-6).all()  # window [t - s, t + s] within [-1, 1]
        assert len({tuple(round(v, 6) for v in row.tolist()) for row in c}) == n
    torch.testing.assert_close(initial_crops(2), torch.tensor([[0.5, 0.0, -0.25], [0.5, 0.0, 0.25]]))


def test_cub_backbone_factory_and_module():
    def tiny():  # no num_features: the feature size is read from a dummy forward
        return nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveMaxPool2d(2), nn.Flatten())

    model = create_model("cub-2xst-cnn", in_shape=(3, 64, 64), crop_size=24, num_classes=7, backbone=tiny)
    assert isinstance(model, PartClassifier)
    assert model.classifier.in_features == 2 * 5 * 4
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 7)
    assert all(st.output_size == (24, 24) for st in transformers(model))

    net = tiny()
    model = create_model("cub-4xst-cnn", in_shape=(3, 64, 64), backbone=net)
    assert all(part is not net for part in model.parts)
    assert model.parts[0][0].weight is not model.parts[1][0].weight
    torch.testing.assert_close(model.parts[3][0].weight, net[0].weight)
    plain = create_model("cub-cnn", in_shape=(3, 64, 64), backbone=tiny)
    assert transformers(plain) == [] and plain(torch.rand(2, 3, 64, 64)).shape == (2, 200)


def test_3d_transformer_at_identity_is_the_depth_mean_of_the_pooled_volume():
    model = create_model("3d-st-cnn-affine", in_shape=(1, 40, 40, 40))
    x = inputs(model)
    st = transformers(model)[0]
    warped = st(x)
    torch.testing.assert_close(warped, F.avg_pool3d(x, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(model(x), model.classifier(F.avg_pool3d(x, 2)), atol=1e-5, rtol=1e-4)
