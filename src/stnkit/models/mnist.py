"""Distorted MNIST, TC and MNIST-addition models (SPEC 3.1, 3.4): FCN and CNN baselines and
their spatial-transformer versions, with widths that can be sized to a parameter budget.

Every model takes in_shape (C, H, W), num_classes, and budget (None, or a parameter count the
classifier width is chosen to match, as the paper matched its rows). ST models also take
st_size: the transformer's output size (None: the input's; "half": 2x downsampled, the paper's
setting for RTS and TC).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..deform import DeformConv2d
from ..layers import CompositionalTransformer, Localisation, SpatialTransformer, conv_localisation, fc_localisation
from .registry import count_params, register_model

TRANSFORMS = ("affine", "projective", "tps")  # the families of Table 1 and Table 4


def fcn(in_shape: Sequence[int], num_classes: int, width: int) -> nn.Sequential:
    """Three weight layers: in -> width -> width -> classes."""
    n = int(torch.tensor(in_shape).prod())
    return nn.Sequential(nn.Flatten(), nn.Linear(n, width), nn.ReLU(inplace=True),
                         nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, num_classes))


def cnn(in_shape: Sequence[int], num_classes: int, width: int) -> nn.Sequential:
    """conv 9x9 (width) -> max-pool 2 -> conv 7x7 (2 width) -> max-pool 2 -> FC: three weight layers."""
    C, H, W = in_shape
    return nn.Sequential(
        nn.Conv2d(C, width, 9, padding=4), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 7, padding=3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * (H // 4) * (W // 4), num_classes),
    )


def dcn_cnn(in_shape: Sequence[int], num_classes: int, width: int, modulated: bool = False,
            out_channels: int | None = None) -> nn.Sequential:
    """`cnn` with its later convolution deformable (DCN, Dai et al. 2017; modulated: DCNv2, Zhu et
    al. 2019): the 7x7 conv predicts an offset (and a mask) for each of its 49 taps.
    out_channels: the deformable conv's (default 2 width, as in `cnn`)."""
    C, H, W = in_shape
    out_channels = out_channels or 2 * width
    return nn.Sequential(
        nn.Conv2d(C, width, 9, padding=4), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        DeformConv2d(width, out_channels, 7, padding=3, modulated=modulated), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(out_channels * (H // 4) * (W // 4), num_classes),
    )


def fit_width(build: Callable[[int], nn.Module], budget: int | None, default: int, lo: int = 2) -> nn.Module:
    """build(width) with the width whose parameter count is closest to budget (default if None)."""
    if budget is None:
        return build(default)
    if budget <= 0:
        raise ValueError(f"budget must be a positive parameter count, got {budget}")
    hi = lo
    while count_params(build(hi)) < budget:  # counts grow with width: bracket the budget by doubling
        lo, hi = hi, hi * 2
    while lo < hi:  # then bisect for the first width at or over it
        mid = (lo + hi) // 2
        if count_params(build(mid)) < budget:
            lo = mid + 1
        else:
            hi = mid
    cands = [w for w in (lo - 1, lo) if w >= 2]
    return min((build(w) for w in cands), key=lambda m: abs(count_params(m) - budget))


def _st_size(in_shape, st_size):
    H, W = in_shape[1:]
    if st_size is None:
        return (H, W)
    if st_size == "half":
        return (H // 2, W // 2)
    return tuple(st_size) if not isinstance(st_size, int) else (st_size, st_size)


class STClassifier(nn.Module):
    """One or more spatial transformers in parallel on the input, their outputs concatenated on
    channels, then a classifier."""

    def __init__(self, transformers: Sequence[SpatialTransformer], classifier: nn.Module):
        super().__init__()
        self.transformers = nn.ModuleList(transformers)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        warped = [st(x) for st in self.transformers]
        return self.classifier(warped[0] if len(warped) == 1 else torch.cat(warped, dim=1))


def _loc(kind: str, in_shape) -> nn.Module:
    C, H, W = in_shape
    if kind == "fcn":  # ST-FCN: three FC layers (the last is the regression) on the 2x-pooled input
        fc = fc_localisation(C * (H // 2) * (W // 2), hidden=(32, 32))
        return Localisation(nn.MaxPool2d(2), *fc, out_features=fc.out_features)
    return conv_localisation(C, (H, W))  # ST-CNN: 2x downsample, 2 conv 5x5 x 20, FC 20


def st_model(kind: str, transform: str, copies: int = 1, *, in_shape=(1, 28, 28), num_classes: int = 10,
             budget: int | None = None, st_size=None, bounds=None, steps: int | None = None) -> STClassifier:
    """steps: None for the paper's ST; an int for an inverse-compositional ST of that many steps."""
    in_shape = tuple(in_shape)
    size = _st_size(in_shape, st_size)
    if steps is None:
        sts = [SpatialTransformer(_loc(kind, in_shape), transform, size, bounds=bounds) for _ in range(copies)]
    else:
        sts = [CompositionalTransformer(_loc(kind, in_shape), transform, size, steps=steps) for _ in range(copies)]
    head_shape = (in_shape[0] * copies, *size)
    head = fcn if kind == "fcn" else cnn
    loc_params = sum(count_params(s) for s in sts)
    default = 128 if kind == "fcn" else 32
    classifier = fit_width(lambda w: head(head_shape, num_classes, w), None if budget is None else max(budget - loc_params, 1000), default)
    return STClassifier(sts, classifier)


@register_model("fcn")
def _fcn(in_shape=(1, 28, 28), num_classes=10, budget=None, width=128):
    return fit_width(lambda w: fcn(in_shape, num_classes, w), budget, width)


@register_model("cnn")
def _cnn(in_shape=(1, 28, 28), num_classes=10, budget=None, width=32):
    return fit_width(lambda w: cnn(in_shape, num_classes, w), budget, width)


def _fit_dcn(in_shape, num_classes, budget, width, modulated):
    """The width first, then the deformable conv's out_channels to meet the budget within about
    1%: one step of the width alone moves the count by 10-20% here, most of it in the offset
    predictor (49 taps x 2 or 3 values, from every input channel)."""
    if budget is None:
        return dcn_cnn(in_shape, num_classes, width, modulated)
    coarse = fit_width(lambda w: dcn_cnn(in_shape, num_classes, w, modulated), budget, width)
    w = coarse[0].out_channels
    return fit_width(lambda c: dcn_cnn(in_shape, num_classes, w, modulated, out_channels=c), budget, 2 * w, lo=max(2, w // 2))


@register_model("dcn-cnn")
def _dcn_cnn(in_shape=(1, 28, 28), num_classes=10, budget=None, width=32):
    """Beyond the paper: the CNN with a deformable second convolution (DCN)."""
    return _fit_dcn(in_shape, num_classes, budget, width, modulated=False)


@register_model("dcn-cnn-v2")
def _dcn_cnn_v2(in_shape=(1, 28, 28), num_classes=10, budget=None, width=32):
    """Beyond the paper: the CNN with a modulated deformable second convolution (DCNv2)."""
    return _fit_dcn(in_shape, num_classes, budget, width, modulated=True)


@register_model("ic-stn-cnn-affine")
def _ic_stn_cnn_affine(in_shape=(1, 28, 28), num_classes=10, budget=None, st_size=None, steps=4):
    """Beyond the paper: the ST-CNN with an inverse-compositional affine ST (IC-STN, Lin and Lucey 2017)."""
    return st_model("cnn", "affine", in_shape=in_shape, num_classes=num_classes, budget=budget, st_size=st_size,
                    steps=steps)


@register_model("ic-stn-cnn-projective")
def _ic_stn_cnn_projective(in_shape=(1, 28, 28), num_classes=10, budget=None, st_size=None, steps=4):
    """Beyond the paper: the ST-CNN with an inverse-compositional projective ST (IC-STN)."""
    return st_model("cnn", "projective", in_shape=in_shape, num_classes=num_classes, budget=budget, st_size=st_size,
                    steps=steps)


def _register_st(kind: str, transform: str, copies: int):
    prefix = "2x" if copies == 2 else ""
    name = f"{prefix}st-{kind}-{transform}"

    @register_model(name)
    def build(in_shape=(1, 28, 28), num_classes=10, budget=None, st_size=None, bounds=None):
        return st_model(kind, transform, copies, in_shape=in_shape, num_classes=num_classes, budget=budget,
                        st_size=st_size, bounds=bounds)

    build.__doc__ = f"{prefix}ST-{kind.upper()} with a {transform} transformer (SPEC 3.1/3.4)."
    return build


for _kind in ("fcn", "cnn"):
    for _t in TRANSFORMS:
        _register_st(_kind, _t, 1)
for _t in TRANSFORMS:
    _register_st("fcn", _t, 2)  # MNIST addition: two STs, each warping both channels
