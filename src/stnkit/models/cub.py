"""CUB-200-2011 birds models (SPEC 3.3): a CNN, and N parallel attention transformers whose crops
each go through their own part network, features concatenated into one linear classifier.

Input x: (B, 3, S, S) (224 or 448 in the paper); output logits (B, num_classes).

backbone: what a part network is. None: `small_cnn` (four conv 3x3 stride-2 layers with batch
norm, global average pooling: 256 features), so CPU tests and runs are fast. Otherwise a factory
`backbone() -> nn.Module` (called once per part, e.g. a torchvision-style network with its fc
replaced by nn.Identity, loading whatever weights you give it: nothing is downloaded), or an
nn.Module instance (deep-copied once per part). Either must map (B, 3, s, s) to features (B, F)
(or (B, F, 1, 1)); F is read from `num_features` / `out_features` or from one dummy forward.

The N transformers share ONE localisation net (`model.localisation`: the paper's ST-CNN conv net
on the input max-pooled to about 56 px, FC 64); each has its own 3-parameter attention
regression. The shared net is registered once, on the model (so `state_dict` and checkpoints hold
one copy), and referenced by every transformer; it runs once per transformer. Crops start at
distinct, non-identity windows so the parts can specialise: scale 0.5 (half the image side), centred
on a circle of radius 0.25 around the image centre, evenly spaced clockwise from the top (N = 2: top
and bottom halves, head and body of an upright bird; N = 4: top, right, bottom, left). See
`initial_crops` (each transformer's `init`).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .._checks import check_size
from ..layers import SpatialTransformer, conv_localisation
from .registry import register_model

Backbone = Callable[[], nn.Module] | nn.Module | None


def small_cnn(in_channels: int = 3, channels: Sequence[int] = (32, 64, 128, 256)) -> nn.Sequential:
    """conv 3x3 stride 2 -> BN -> ReLU per entry of `channels`, then global average pooling:
    (B, C, s, s) -> (B, channels[-1])."""
    layers: list[nn.Module] = []
    c = in_channels
    for ch in channels:
        layers += [nn.Conv2d(c, ch, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(inplace=True)]
        c = ch
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.num_features = c
    return net


def initial_crops(n: int, scale: float = 0.5, radius: float = 0.25) -> torch.Tensor:
    """(n, 3) attention parameters (s, tx, ty): scale `scale`, centres evenly spaced clockwise on a
    circle of `radius` (normalised coordinates, y down) starting at the top; n = 1: the centre."""
    if n == 1:
        return torch.tensor([[scale, 0.0, 0.0]])
    angles = -math.pi / 2 + 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
    crops = torch.stack([torch.full((n,), scale, dtype=torch.float64), radius * angles.cos(), radius * angles.sin()], 1)
    return crops.float()


def _parts(backbone: Backbone, n: int) -> list[nn.Module]:
    if backbone is None:
        return [small_cnn() for _ in range(n)]
    if isinstance(backbone, nn.Module):
        return [copy.deepcopy(backbone) for _ in range(n)]
    if callable(backbone):
        parts = [backbone() for _ in range(n)]
        if not all(isinstance(p, nn.Module) for p in parts):
            raise ValueError(f"backbone() must return an nn.Module, got {type(parts[0]).__name__}")
        return parts
    raise ValueError(f"backbone must be None, an nn.Module or a factory returning one, got {backbone!r}")


def _num_features(net: nn.Module, in_channels: int, size: tuple[int, int]) -> int:
    n = getattr(net, "num_features", None) or getattr(net, "out_features", None)
    if isinstance(n, int):
        return n
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, in_channels, *size))
    finally:
        net.train(was_training)
    return out.flatten(1).shape[1]


class PartClassifier(nn.Module):
    """Crops from parallel transformers (none: the whole image) -> one part net per crop ->
    concatenated features -> linear classifier. forward: x (B, C, H, W) -> (B, num_classes)."""

    def __init__(self, localisation: nn.Module | None, transformers: Sequence[SpatialTransformer],
                 parts: Sequence[nn.Module], classifier: nn.Module):
        super().__init__()
        if transformers and len(transformers) != len(parts):
            raise ValueError(f"{len(transformers)} transformers but {len(parts)} part networks")
        self.localisation = localisation
        self.transformers = nn.ModuleList(transformers)
        for st in self.transformers:  # register the shared net once (here), referenced by each ST
            del st._modules["localisation"]
            object.__setattr__(st, "localisation", localisation)
        self.parts = nn.ModuleList(parts)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        crops = [st(x) for st in self.transformers] if len(self.transformers) else [x]
        feats = [part(crop).flatten(1) for part, crop in zip(self.parts, crops)]  # N x (B, F)
        return self.classifier(torch.cat(feats, dim=1))  # (B, N F) -> (B, classes)


def part_model(n_st: int, in_shape=(3, 224, 224), num_classes: int = 200, crop_size=None,
               backbone: Backbone = None) -> PartClassifier:
    """n_st = 0: the plain CNN on the whole image; else n_st attention transformers (SPEC 3.3)."""
    in_shape = tuple(in_shape)
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise ValueError(f"in_shape must be (C, H, W), got {in_shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    C, H, W = in_shape
    size = (H // 2, W // 2) if crop_size is None else check_size(crop_size, 2, "crop_size")
    parts = _parts(backbone, max(n_st, 1))
    F = _num_features(parts[0], C, size if n_st else (H, W))
    localisation, sts = None, []
    if n_st:
        localisation = conv_localisation(C, (H, W), hidden=64, downsample=max(1, H // 56))
        sts = [SpatialTransformer(localisation, "attention", size, init=crop) for crop in initial_crops(n_st)]
    return PartClassifier(localisation, sts, parts, nn.Linear(F * max(n_st, 1), num_classes))


@register_model("cub-cnn")
def cub_cnn(in_shape=(3, 224, 224), num_classes=200, crop_size=None, backbone=None):
    """The backbone on the whole image and a linear classifier (crop_size is unused)."""
    return part_model(0, in_shape, num_classes, crop_size, backbone)


@register_model("cub-2xst-cnn")
def cub_2xst_cnn(in_shape=(3, 224, 224), num_classes=200, crop_size=None, backbone=None):
    """2xST-CNN: two attention transformers (initially the top and bottom halves), two part nets."""
    return part_model(2, in_shape, num_classes, crop_size, backbone)


@register_model("cub-4xst-cnn")
def cub_4xst_cnn(in_shape=(3, 224, 224), num_classes=200, crop_size=None, backbone=None):
    """4xST-CNN: four attention transformers (initially top, right, bottom, left), four part nets."""
    return part_model(4, in_shape, num_classes, crop_size, backbone)
