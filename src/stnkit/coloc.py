"""Co-localisation (SPEC 3.5): given only images that each hold a digit of one (unknown) class,
an attention ST learns to crop that digit, with the paper's triplet hinge loss: the crops of two
different images must be closer, in a digit encoder's embedding, than a crop and a random patch
of the same image, by a margin of 1. Scored by the fraction of images whose crop has IoU > 0.5
with the digit's true box.

Choices where the paper is unconfirmed: the encoder is a small CNN first trained as a digit
classifier on the training digits (28x28, 2 epochs) and then frozen, its embedding shifted so an
empty patch maps to the origin (so that "far from a random, mostly empty patch" means "holds
ink": without it, crops drift off the digits, where they all look alike); the ST starts as a digit-sized (28 px)
crop of the canvas centre, its scale bounded to 0.6-1.8 times that, so it can neither collapse to
a point nor zoom out to the whole canvas, and its centre kept where a digit-sized crop stays
inside the canvas (an empty crop off the image would make every crop alike).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import RunConfig
from .config import save as save_config
from .data import make_dataset
from .data.sources import load_digits
from .layers import SpatialTransformer, conv_localisation
from .models.mnist import cnn

CROP = 28


def coloc_transformer(canvas: int = 84) -> SpatialTransformer:
    s = CROP / canvas  # a digit-sized crop at the canvas centre to start
    return SpatialTransformer(conv_localisation(1, (canvas, canvas)), "attention", (CROP, CROP), init=[s, 0.0, 0.0],
                              bounds={"scale": (0.6 * s, 1.8 * s), "translation": (s - 1, 1 - s)})


def encoder(cfg: RunConfig, log=print) -> nn.Module:
    """A digit CNN trained briefly on plain training digits, then frozen; -> (B, F) features."""
    digits = load_digits(cfg.source, "train", cfg.data_dir)
    net = cnn((1, CROP, CROP), 10, 16)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(cfg.seed)
    x_all, y_all = digits.images.float().div(255)[:, None], digits.labels
    for _ in range(2):
        order = torch.randperm(len(y_all), generator=g)
        for i in range(0, len(order) - 63, 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(net(x_all[idx]), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    feats = Centred(net[:-1])  # drop the class layer
    for p in feats.parameters():
        p.requires_grad_(False)
    log(f"encoder: digit CNN trained 2 epochs on {len(y_all)} digits, frozen")
    return feats.eval()


class Centred(nn.Module):
    """e(x) - e(blank): an empty patch embeds at the origin, so ink means distance from it."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x) - self.net(torch.zeros_like(x[:1]))


def crop_boxes(params: torch.Tensor, canvas: int) -> torch.Tensor:
    """Attention params (B, 3) = (s, tx, ty) -> the sampled square in pixels (B, 4) (x0, y0, x1, y1)."""
    s, t = params[:, :1], params[:, 1:]
    lo, hi = (t - s + 1) * canvas / 2, (t + s + 1) * canvas / 2
    return torch.cat([lo, hi], 1)


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Boxes (B, 4) (x0, y0, x1, y1) -> (B,) intersection over union."""
    lo, hi = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (hi - lo).clamp(min=0).prod(1)
    area = lambda r: (r[:, 2:] - r[:, :2]).clamp(min=0).prod(1)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp(min=1e-9)


def triplet_loss(e_crop: torch.Tensor, e_rand: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Mean over pairs n != m of max(0, |e_n - e_m|^2 - |e_n - r_n|^2 + margin). e_*: (B, F)."""
    d_pair = torch.cdist(e_crop, e_crop).pow(2)  # (B, B)
    d_rand = (e_crop - e_rand).pow(2).sum(1, keepdim=True)  # (B, 1)
    off = ~torch.eye(len(e_crop), dtype=torch.bool, device=e_crop.device)
    return F.relu(d_pair - d_rand + margin)[off].mean()


def random_patches(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random CROP x CROP patch of each image (B, 1, H, W) -> (B, 1, CROP, CROP)."""
    from .warp import warp

    B, _, H, _ = x.shape
    s = CROP / H
    t = (torch.rand(B, 2, generator=g) * 2 - 1) * (1 - s)
    return warp(x, torch.cat([torch.full((B, 1), s), t], 1).to(x.dtype), "attention", (CROP, CROP))


@torch.no_grad()
def score(st: SpatialTransformer, dataset, batch_size: int = 200) -> float:
    """% of images whose crop has IoU > 0.5 with the digit's box."""
    hits, n = 0, 0
    for b in dataset.batches(batch_size, shuffle=False):
        st(b.x)
        hits += int((iou(crop_boxes(st.last_params, b.x.shape[-1]), b.box.float()) > 0.5).sum())
        n += len(b.y)
    return 100.0 * hits / max(n, 1)


def train_coloc(cfg: RunConfig, digit_class: int = 3, log=print) -> Path:
    """Train the co-localising ST on one class's images (cfg.experiment: coloc | coloc-clutter).

    Status: the loss, the encoder and the IoU score work and are tested, but on our CPU runs the
    transformer has not yet learned to find the digit (it settles on one image region for all
    inputs); see docs/results.md."""
    torch.manual_seed(cfg.seed)
    run_dir = Path(cfg.out) / (cfg.name or f"{cfg.experiment}-class{digit_class}-seed{cfg.seed}")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    kw = dict(source=cfg.source, seed=cfg.seed, root=cfg.data_dir, digit_class=digit_class)
    train_ds, test_ds = make_dataset(cfg.experiment, "train", **kw), make_dataset(cfg.experiment, "test", **kw)
    enc = encoder(cfg, log)
    st = coloc_transformer(train_ds.task.canvas)
    opt = torch.optim.Adam(st.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        total = 0.0
        for i, b in enumerate(train_ds.batches(cfg.batch_size, epoch=epoch, drop_last=True)):
            if cfg.steps_per_epoch and i >= cfg.steps_per_epoch:
                break
            loss = triplet_loss(enc(st(b.x)), enc(random_patches(b.x, g)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        acc = score(st, test_ds)
        row = {"epoch": epoch + 1, "loss": total / max(i + 1, 1), "iou_over_half": acc,
               "wall_s": round(time.perf_counter() - t0, 1)}
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f} | test crops with IoU > 0.5: {acc:.1f}%")
    summary = {"experiment": cfg.experiment, "digit_class": digit_class, "iou_over_half": acc,
               "test_n": len(test_ds), "wall_s": round(time.perf_counter() - t0, 1)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    torch.save(st.state_dict(), run_dir / "transformer.pt")
    from .figures import transformer_figure
    from .plots import write_png

    write_png(run_dir / "transformers.png", transformer_figure(st, test_ds.sample(12, seed=1).x, ncol=4))
    return run_dir
