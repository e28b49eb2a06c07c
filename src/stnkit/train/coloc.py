"""Co-localisation (SPEC 3.5): given only images that each hold a digit of one (unknown) class,
an attention ST learns to crop that digit, with the paper's triplet hinge loss: the crops of two
different images must be closer, in a digit encoder's embedding, than a crop and a random patch
of the same image, by a margin of 1. Scored by the fraction of images whose crop has IoU > 0.5
with the digit's true box.

Choices where the paper is unconfirmed, and why (measurements in docs/results.md):
- The embedding e() is a digit CNN's class probabilities: the CNN is first trained as a digit
  classifier on the training digits of all classes (28x28, ENCODER_EPOCHS epochs), then frozen.
  Probabilities are bounded (squared distances at most 2), which gives the margin of 1 its
  meaning, and crops of one class's digits agree on them. On the CNN's penultimate features
  instead, crops of one fixed empty corner score a lower loss than crops exactly on the digits,
  so no optimiser can find the digits. The softmax runs at temperature 2: at 1 the classifier's
  confident probabilities saturate, the gradient that should move a crop onto its digit
  vanishes, and for some classes (the 7s) the transformer never learned to move.
- The ST starts as a digit-sized (28 px) crop of the canvas centre, its scale bounded to 0.6-1.8
  times that and its centre kept where a digit-sized crop stays inside the canvas.
- A placement curriculum (`curriculum_epochs`): training digits start at the canvas centre and
  their placement range widens linearly to the whole canvas over that many epochs. Without it
  the crops head for an empty region: an empty crop has no gradient (no ink moves under it), and
  while most crops miss their digits the pair term pulls the others off theirs too. Test images
  always use the whole canvas.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import RunConfig
from .config import save as save_config
from ..data import make_dataset
from ..data.batching import _seed
from ..data.sources import load_digits
from .engine import _progress
from ..functional.coords import box_to_pixels
from ..layers import SpatialTransformer, conv_localisation
from ..models.mnist import cnn

CROP = 28


def coloc_transformer(canvas: int = 84) -> SpatialTransformer:
    s = CROP / canvas  # a digit-sized crop at the canvas centre to start
    return SpatialTransformer(conv_localisation(1, (canvas, canvas)), "attention", (CROP, CROP), init=[s, 0.0, 0.0],
                              bounds={"scale": (0.6 * s, 1.8 * s), "translation": (s - 1, 1 - s)})


ENCODER_EPOCHS = 2
TEMPERATURE = 2.0  # softmax(logits / 2): see Temperature


def encoder(cfg: RunConfig, log=print) -> nn.Module:
    """A digit CNN trained briefly on the training digits of every class, then frozen;
    -> (B, 10) class probabilities."""
    digits = load_digits(cfg.source, "train", cfg.data_dir)
    net = cnn((1, CROP, CROP), 10, 16)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(cfg.seed)
    x_all, y_all = digits.images.float().div(255)[:, None], digits.labels
    for _ in range(ENCODER_EPOCHS):
        order = torch.randperm(len(y_all), generator=g)
        for i in range(0, len(order) - 63, 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(net(x_all[idx]), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    for p in net.parameters():
        p.requires_grad_(False)
    log(f"encoder: digit CNN trained {ENCODER_EPOCHS} epochs on {len(y_all)} digits, frozen; "
        f"embedding = class probabilities at temperature {TEMPERATURE:g}")
    return nn.Sequential(net, Temperature(TEMPERATURE), nn.Softmax(dim=1)).eval()


class Temperature(nn.Module):
    """logits / t: a softened softmax keeps gradients where a confident classifier's saturate."""

    def __init__(self, t: float):
        super().__init__()
        self.t = t

    def forward(self, logits):
        return logits / self.t

    def extra_repr(self) -> str:
        return f"t={self.t:g}"


def crop_boxes(params: torch.Tensor, canvas: int) -> torch.Tensor:
    """Attention params (B, 3) = (s, tx, ty) -> the sampled square in pixels (B, 4) (x0, y0, x1, y1)."""
    s, t = params[:, :1], params[:, 1:]
    return box_to_pixels(torch.cat([t - s, t + s], 1), (canvas, canvas))


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
    from ..warp import warp

    B, _, H, _ = x.shape
    s = CROP / H
    t = (torch.rand(B, 2, generator=g) * 2 - 1) * (1 - s)
    return warp(x, torch.cat([torch.full((B, 1), s), t], 1).to(x.dtype), "attention", (CROP, CROP))


@torch.no_grad()
def crop_stats(st: SpatialTransformer, dataset, batch_size: int = 200) -> dict:
    """How the crops sit on the digits: {"iou_over_half": % of images whose crop has IoU > 0.5
    with the digit's box, "centre_err_px": mean distance of crop and box centres, "crop_px":
    mean crop side}."""
    hits, err, side, n = 0, 0.0, 0.0, 0
    for b in dataset.batches(batch_size, shuffle=False):
        st(b.x)
        crop = crop_boxes(st.last_params, b.x.shape[-1])
        box = b.box.float()
        hits += int((iou(crop, box) > 0.5).sum())
        err += float(((crop[:, :2] + crop[:, 2:]) / 2 - (box[:, :2] + box[:, 2:]) / 2).norm(dim=1).sum())
        side += float((crop[:, 2] - crop[:, 0]).sum())
        n += len(b.y)
    n = max(n, 1)
    return {"iou_over_half": 100.0 * hits / n, "centre_err_px": round(err / n, 2), "crop_px": round(side / n, 2)}


def load_coloc_run(run_dir: str | Path) -> tuple[RunConfig, SpatialTransformer, object]:
    """(config, trained transformer, test dataset) of a finished co-localisation run."""
    from .config import build, load_file

    run_dir = Path(run_dir)
    cfg = build(load_file(run_dir / "config.yaml"))
    weights = run_dir / "transformer.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"{run_dir} has no transformer.pt: the co-localisation run did not finish; train it again")
    test_ds = make_dataset(cfg.experiment, "test", source=cfg.source, seed=cfg.seed, root=cfg.data_dir,
                           digit_class=3 if cfg.digit_class is None else cfg.digit_class)
    st = coloc_transformer(test_ds.task.canvas)
    st.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return cfg, st.eval(), test_ds


def spread_at(epoch: int, curriculum_epochs: int) -> float:
    """The share of the placement range training digits use in `epoch` (0-based): from 0 (the
    canvas centre) up to 1 (the whole canvas) over curriculum_epochs; 1 without a curriculum."""
    return 1.0 if curriculum_epochs <= 0 else min(1.0, epoch / curriculum_epochs)


def train_coloc(cfg: RunConfig, digit_class: int = 3, log=print) -> Path:
    """Train the co-localising ST on one class's images (cfg.experiment: coloc | coloc-clutter);
    writes config.yaml, metrics.jsonl, summary.json, transformer.pt and transformers.png.

    cfg.restarts > 1 trains that many transformers from different starts and keeps the one
    whose training loss ended lowest: a choice made without labels or test images."""
    torch.manual_seed(cfg.seed)
    run_dir = Path(cfg.out) / (cfg.name or f"{cfg.experiment}-class{digit_class}-seed{cfg.seed}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    kw = dict(source=cfg.source, seed=cfg.seed, root=cfg.data_dir, digit_class=digit_class)
    train_ds, test_ds = make_dataset(cfg.experiment, "train", **kw), make_dataset(cfg.experiment, "test", **kw)
    enc = encoder(cfg, log)
    t0 = time.perf_counter()
    fits = []
    for r in range(cfg.restarts):
        if r > 0:  # restart 0 starts exactly as a run without restarts
            torch.manual_seed(_seed(cfg.seed, "restart", r))
        st, tail, stats = _fit(cfg, r, train_ds, test_ds, enc, run_dir, t0, log, digit_class)
        fits.append((tail, r, st, stats))
    tail, r, st, stats = min(fits, key=lambda f: f[0])
    if cfg.restarts > 1:
        log(f"kept restart {r + 1} of {cfg.restarts}: final training loss {tail:.4f} "
            f"(the others: {', '.join(f'{f[0]:.4f}' for f in fits if f[1] != r)})")
    summary = {"experiment": cfg.experiment, "digit_class": digit_class, "iou_over_half": stats["iou_over_half"],
               "test_n": len(test_ds), "wall_s": round(time.perf_counter() - t0, 1), "restart": r,
               "restarts": [{"restart": f[1], "final_loss": round(f[0], 4), "iou_over_half": f[3]["iou_over_half"]}
                            for f in fits]}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    torch.save(st.state_dict(), run_dir / "transformer.pt")
    from ..app.figures import transformer_figure
    from ..app.plots import write_png

    write_png(run_dir / "transformers.png", transformer_figure(st, test_ds.sample(12, seed=1).x, ncol=4))
    return run_dir


def _fit(cfg: RunConfig, restart: int, train_ds, test_ds, enc, run_dir: Path, t0: float, log, digit_class: int):
    """One transformer trained from the current RNG state -> (it, its mean training loss over
    the last 10 epochs, its test crop_stats)."""
    task = replace(train_ds.task, spread=1.0)
    st = coloc_transformer(task.canvas)
    opt = torch.optim.Adam(st.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed + 1 if restart == 0 else _seed(cfg.seed, "patches", restart))
    every = max(1, cfg.epochs // 10)
    tag = f" restart {restart + 1}/{cfg.restarts}" if cfg.restarts > 1 else ""
    bar = _progress(cfg.epochs, f"coloc class {digit_class}{tag}", cfg.progress)
    losses = []
    for epoch in range(cfg.epochs):
        spread = spread_at(epoch, cfg.curriculum_epochs)
        train_ds.task = replace(task, spread=spread)
        total = 0.0
        for i, b in enumerate(train_ds.batches(cfg.batch_size, epoch=epoch, drop_last=True)):
            if cfg.steps_per_epoch and i >= cfg.steps_per_epoch:
                break
            loss = triplet_loss(enc(st(b.x)), enc(random_patches(b.x, g)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        losses.append(total / max(i + 1, 1))
        stats = crop_stats(st, test_ds)
        acc = stats["iou_over_half"]
        row = {"epoch": epoch + 1, **({"restart": restart} if cfg.restarts > 1 else {}), "spread": round(spread, 4),
               "loss": losses[-1], **stats, "wall_s": round(time.perf_counter() - t0, 1)}
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}", iou=f"{acc:.0f}%")
        if (epoch + 1) % every == 0 or epoch + 1 == cfg.epochs:
            log(f"epoch {epoch + 1}/{cfg.epochs}{tag}: placement {100 * spread:.0f}% of the canvas | loss {row['loss']:.4f}"
                f" | test crops with IoU > 0.5: {acc:.1f}%, {stats['centre_err_px']:.1f} px off, {stats['crop_px']:.0f} px wide")
    bar.close()
    tail = losses[-10:]
    return st, sum(tail) / len(tail), stats
