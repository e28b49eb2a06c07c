"""3D (SPEC 3.6): a 3D affine spatial transformer on 60^3 volumes whose output volume is
flattened along depth into a 2D image and classified by a 2D CNN; and the baseline that
classifies the same projection of the raw volume. The projection is the maximum along depth: it
keeps the [0, 1] range of an image (a depth mean of a thin extruded digit is ~0.03 bright, and
both models sat at chance for epochs on it)."""
from __future__ import annotations

from torch import nn

from ..layers import Localisation, SpatialTransformer
from .mnist import STClassifier, cnn, fit_width
from .registry import count_params, register_model


class DepthMax(nn.Module):
    """(B, C, D, H, W) -> (B, C, H, W): the volume flattened along depth (maximum projection)."""

    def forward(self, x):
        return x.amax(2)


def conv3d_localisation(in_channels: int, size: int) -> Localisation:
    """2x max-pool, conv 5^3 x 8, pool, conv 5^3 x 16, pool, FC 32 (the regression is added by the ST)."""
    layers = [nn.MaxPool3d(2), nn.Conv3d(in_channels, 8, 5), nn.ReLU(inplace=True), nn.MaxPool3d(2),
              nn.Conv3d(8, 16, 5), nn.ReLU(inplace=True), nn.MaxPool3d(2), nn.Flatten()]
    s = ((size // 2 - 4) // 2 - 4) // 2
    if s < 1:
        raise ValueError(f"volumes of {size}^3 are too small for the 3D localisation net (need >= 36)")
    return Localisation(*layers, nn.Linear(16 * s**3, 32), nn.ReLU(inplace=True), out_features=32)


class VolumeClassifier(STClassifier):
    """STClassifier whose transformers warp volumes and whose classifier sees their depth projection."""

    def forward(self, x):
        return self.classifier(self.transformers[0](x))


@register_model("3d-cnn")
def _cnn3d(in_shape=(1, 60, 60, 60), num_classes=10, budget=None, width=16):
    C, D, H, W = in_shape
    head = fit_width(lambda w: cnn((C, H, W), num_classes, w), budget, width)
    return nn.Sequential(DepthMax(), head)


@register_model("3d-st-cnn-affine")
def _st_cnn3d(in_shape=(1, 60, 60, 60), num_classes=10, budget=None, st_size="half"):
    """A 3D affine ST (output 30^3 by default) -> depth max -> 2D CNN."""
    C, D, H, W = in_shape
    size = ((D // 2, H // 2, W // 2) if st_size == "half" else (D, H, W) if st_size is None
            else (st_size,) * 3 if isinstance(st_size, int) else tuple(st_size))
    st = SpatialTransformer(conv3d_localisation(C, min(D, H, W)), "affine3d", size)
    rest = None if budget is None else max(budget - count_params(st), 1000)
    head = fit_width(lambda w: cnn((C, size[1], size[2]), num_classes, w), rest, 16)
    return VolumeClassifier([st], nn.Sequential(DepthMax(), head))
