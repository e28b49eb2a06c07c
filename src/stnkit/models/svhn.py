"""Street View House Numbers models (SPEC 3.2): the paper's 11-hidden-layer CNN and its single-
and multi-transformer versions, reading up to `max_digits` digits with one softmax head each.

Input x: (B, C, H, W), 64x64 or 128x128 crops (C = 3 for real SVHN, 1 for the `seq64` / `seq128`
stand-ins). Output: logits (B, max_digits, num_classes); class 10 of 11 is "no digit".

The CNN (Goodfellow et al. 2014, as used by Jaderberg et al.): 8 conv layers of 48, 64, 128, 160,
192, 192, 192, 192 filters, 5x5 'same', ReLU, each followed by a 2x2 max-pool whose stride
alternates 2, 1, 2, 1, ... (a stride-1 pool is zero-padded on the right and bottom so it keeps the
size; after a ReLU that padding never wins a max), then 2 FC layers of 3072 units and the heads.
`width` scales every filter count and FC size: 1.0 is the paper's network (about 23M parameters at
64 px, 780M multiply-adds per image); the default 0.25 (12..48 filters, FC 768: about 1.5M
parameters, 52M multiply-adds) trains on a 2-core CPU. Conv and FC layers get He
initialisation (no batch norm, as in the paper: 11 plain ReLU layers need it). `dropout` (default
0) is applied after every hidden layer, as in Goodfellow et al.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..layers import Localisation, SpatialTransformer, conv_localisation, fc_localisation
from .mnist import STClassifier
from .registry import register_model

CONV_FILTERS = (48, 64, 128, 160, 192, 192, 192, 192)
FC_UNITS = (3072, 3072)
DEFAULT_WIDTH = 0.25
NUM_ST_MULTI = 4  # ST-CNN Multi: a transformer before each of the first 4 conv layers


def _scaled(n: int, width: float) -> int:
    return max(1, round(n * width))


def _check(in_shape, num_classes, max_digits, width, dropout) -> tuple[int, int, int]:
    in_shape = tuple(in_shape)
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise ValueError(f"in_shape must be (C, H, W), got {in_shape}")
    C, H, W = in_shape
    if H % 16 or W % 16:
        raise ValueError(f"H and W must be multiples of 16 (four stride-2 pools), got {(H, W)}")
    if num_classes < 2 or max_digits < 1:
        raise ValueError(f"need num_classes >= 2 and max_digits >= 1, got {num_classes}, {max_digits}")
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return C, H, W


class SequenceCNN(nn.Module):
    """features (conv stack, possibly with transformers between layers) -> FC -> FC -> heads.

    forward: x (B, C, H, W) -> logits (B, max_digits, num_classes).
    """

    def __init__(self, features: nn.Sequential, head: nn.Sequential, max_digits: int, num_classes: int):
        super().__init__()
        self.features = features
        self.head = head
        self.max_digits, self.num_classes = max_digits, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        logits = self.head(self.features(x))  # (B, max_digits * num_classes)
        return logits.view(B, self.max_digits, self.num_classes)


def conv_blocks(in_channels: int, width: float, dropout: float = 0.0) -> list[nn.Sequential]:
    """The 8 conv layers, each conv 5x5 'same' -> ReLU -> 2x2 max-pool (stride 2, 1, 2, ...)."""
    blocks, c = [], in_channels
    for i, n in enumerate(CONV_FILTERS):
        out = _scaled(n, width)
        pool = nn.MaxPool2d(2) if i % 2 == 0 else nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(2, stride=1))
        layers = [nn.Conv2d(c, out, 5, padding=2), nn.ReLU(inplace=True), pool]
        blocks.append(nn.Sequential(*layers, *([nn.Dropout(dropout)] if dropout else [])))
        c = out
    return blocks


def _head(in_features: int, width: float, max_digits: int, num_classes: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    n = in_features
    for units in FC_UNITS:
        h = _scaled(units, width)
        layers += [nn.Linear(n, h), nn.ReLU(inplace=True), *([nn.Dropout(dropout)] if dropout else [])]
        n = h
    layers.append(nn.Linear(n, max_digits * num_classes))  # five independent softmaxes, side by side
    return nn.Sequential(*layers)


def _he_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)


def sequence_cnn(in_shape: Sequence[int] = (1, 64, 64), num_classes: int = 11, max_digits: int = 5,
                 width: float = DEFAULT_WIDTH, dropout: float = 0.0,
                 transformers: Sequence[nn.Module] = ()) -> SequenceCNN:
    """The CNN; `transformers[i]` (if given) is placed before conv layer i (at most 8)."""
    C, H, W = _check(in_shape, num_classes, max_digits, width, dropout)
    if len(transformers) > len(CONV_FILTERS):
        raise ValueError(f"at most {len(CONV_FILTERS)} transformers (one per conv layer), got {len(transformers)}")
    blocks = conv_blocks(C, width, dropout)
    features = _scaled(CONV_FILTERS[-1], width) * (H // 16) * (W // 16)
    head = _head(features, width, max_digits, num_classes, dropout)
    for block in (*blocks, head):
        _he_init(block)
    layers: list[nn.Module] = []
    for i, block in enumerate(blocks):
        if i < len(transformers):
            layers.append(transformers[i])
        layers.append(block)
    return SequenceCNN(nn.Sequential(*layers), head, max_digits, num_classes)


def conv_shapes(in_shape: Sequence[int], width: float) -> list[tuple[int, int, int]]:
    """The (C, H, W) entering each conv layer."""
    C, H, W = in_shape
    shapes = []
    for i, n in enumerate(CONV_FILTERS):
        shapes.append((C, H, W))
        C = _scaled(n, width)
        if i % 2 == 0:
            H, W = H // 2, W // 2
    return shapes


def single_localisation(in_shape: Sequence[int]) -> Localisation:
    """ST-CNN Single's 4-layer CNN localisation: the input max-pooled to about 32 px, conv 5x5 x 32,
    max-pool 2, conv 5x5 x 32, FC 32, FC 32 (the regression layer comes with the transformer)."""
    C, H, W = in_shape
    trunk = conv_localisation(C, (H, W), channels=(32, 32), kernel_size=5, hidden=32, downsample=max(1, H // 32))
    return Localisation(*trunk, nn.Linear(32, 32), nn.ReLU(inplace=True), out_features=32)


@register_model("svhn-cnn")
def svhn_cnn(in_shape=(1, 64, 64), num_classes=11, max_digits=5, width=DEFAULT_WIDTH, dropout=0.0):
    """The paper's baseline CNN (SPEC 3.2), scaled by `width`."""
    return sequence_cnn(in_shape, num_classes, max_digits, width, dropout)


@register_model("svhn-st-cnn-single")
def svhn_st_cnn_single(in_shape=(1, 64, 64), num_classes=11, max_digits=5, width=DEFAULT_WIDTH, dropout=0.0):
    """ST-CNN Single: one affine transformer on the input (output the input's size), a 4-layer
    CNN localisation net, then the CNN (`.classifier`)."""
    cnn = sequence_cnn(in_shape, num_classes, max_digits, width, dropout)
    st = SpatialTransformer(single_localisation(tuple(in_shape)), "affine")
    return STClassifier([st], cnn)


@register_model("svhn-st-cnn-multi")
def svhn_st_cnn_multi(in_shape=(1, 64, 64), num_classes=11, max_digits=5, width=DEFAULT_WIDTH, dropout=0.0):
    """ST-CNN Multi: an affine transformer before each of the first 4 conv layers, each with a
    2-layer FC (32, 32) localisation net on the flattened image or feature map it warps (sizes
    kept)."""
    _check(in_shape, num_classes, max_digits, width, dropout)
    shapes = conv_shapes(tuple(in_shape), width)[:NUM_ST_MULTI]
    sts = [SpatialTransformer(fc_localisation(C * H * W, hidden=(32, 32)), "affine") for C, H, W in shapes]
    return sequence_cnn(in_shape, num_classes, max_digits, width, dropout, transformers=sts)
