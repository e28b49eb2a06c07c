"""The co-localisation model (SPEC 3.5): attention transformers that crop a digit-sized square
out of a canvas, and the frozen digit encoder whose embedding their triplet loss compares (the
loss and the encoder's training: stnkit.train.coloc).

Choices where the paper is unconfirmed (measurements in docs/results.md):
- Each transformer starts as a digit-sized (28 px) crop of the canvas centre, its scale bounded
  to 0.6-1.8 times that and its centre kept where a digit-sized crop stays inside the canvas.
- The embedding is a small digit CNN's class probabilities at softmax temperature 2 (at 1 a
  confident classifier saturates and the gradient that moves a crop onto its digit vanishes).
- `restarts` transformers train side by side from different starts, each on its own loss;
  `kept` (a buffer, so checkpoints hold it) names the one `forward` uses.
"""
from __future__ import annotations

import torch
from torch import nn

from ..data.batching import _seed
from ..layers import SpatialTransformer, conv_localisation
from .mnist import cnn
from .registry import register_model

CROP = 28  # the crop side: a digit's frame
TEMPERATURE = 2.0


def coloc_transformer(canvas: int = 84) -> SpatialTransformer:
    """An attention ST on a (1, canvas, canvas) input starting as a digit-sized centre crop."""
    s = CROP / canvas
    return SpatialTransformer(conv_localisation(1, (canvas, canvas)), "attention", (CROP, CROP), init=[s, 0.0, 0.0],
                              bounds={"scale": (0.6 * s, 1.8 * s), "translation": (s - 1, 1 - s)})


class Temperature(nn.Module):
    """logits / t: a softened softmax keeps gradients where a confident classifier's saturate."""

    def __init__(self, t: float):
        super().__init__()
        self.t = t

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.t

    def extra_repr(self) -> str:
        return f"t={self.t:g}"


def digit_encoder(num_classes: int = 10) -> nn.Sequential:
    """(B, 1, 28, 28) crops -> (B, num_classes) class probabilities at TEMPERATURE; frozen
    (its weights come from stnkit.train.coloc.train_encoder, or from a checkpoint)."""
    net = nn.Sequential(cnn((1, CROP, CROP), num_classes, 16), Temperature(TEMPERATURE), nn.Softmax(dim=1))
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


class CoLocaliser(nn.Module):
    """forward: canvases (B, 1, H, W) -> the kept transformer's crops (B, 1, 28, 28)."""

    def __init__(self, transformers: list[SpatialTransformer], encoder: nn.Module):
        super().__init__()
        self.transformers = nn.ModuleList(transformers)
        self.encoder = encoder
        self.register_buffer("kept", torch.tensor(0))
        self.kept_index = 0  # a Python int of `kept`, so forward reads no tensor (tracing, export)
        self.register_load_state_dict_post_hook(lambda module, _: module._read_kept())

    def _read_kept(self) -> None:
        self.kept_index = int(self.kept)

    def keep(self, restart: int) -> None:
        self.kept.fill_(restart)
        self.kept_index = restart

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen, always in inference mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transformers[self.kept_index](x)


@register_model("coloc-attention")
def coloc_attention(in_shape=(1, 84, 84), num_classes=10, restarts=1, seed=0):
    """Co-localisation (SPEC 3.5): `restarts` attention transformers and a frozen digit encoder.
    Restart 0 draws its initial weights from the global RNG as one transformer alone would;
    restart r > 0 from a seed of (seed, r), so that adding restarts never changes restart 0."""
    C, H, W = in_shape
    if C != 1 or H != W:
        raise ValueError(f"coloc-attention takes square grey canvases (1, N, N), got in_shape {tuple(in_shape)}")
    encoder = digit_encoder(num_classes)
    sts = [coloc_transformer(H)]
    for r in range(1, restarts):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed(seed, "restart", r))
            sts.append(coloc_transformer(H))
    return CoLocaliser(sts, encoder)
