"""Co-localisation (SPEC 3.5) as an objective of the one engine: given only images that each hold
a digit of one (unknown) class, attention transformers learn to crop that digit with the paper's
triplet hinge loss: the crops of two different images must be closer, in a digit encoder's
embedding, than a crop and a random patch of the same image, by a margin of 1. Scored by the
share of test images whose crop has IoU > 0.5 with the digit's true box.

Choices where the paper is unconfirmed, and why (measurements in docs/results.md; the model's
own choices in stnkit.models.coloc):
- The embedding is a digit CNN's class probabilities: the CNN is first trained as a digit
  classifier on the training digits of all classes (28x28, ENCODER_EPOCHS epochs), then frozen.
  Probabilities are bounded (squared distances at most 2), which gives the margin of 1 its
  meaning, and crops of one class's digits agree on them. On the CNN's penultimate features
  instead, crops of one fixed empty corner score a lower loss than crops exactly on the digits.
- A placement curriculum (`curriculum_epochs`): training digits start at the canvas centre and
  their placement range widens linearly to the whole canvas over that many epochs. Without it
  the crops head for an empty region: an empty crop has no gradient (no ink moves under it), and
  while most crops miss their digits the pair term pulls the others off theirs too. Test images
  always use the whole canvas.
- `restarts=N` trains N transformers side by side (each on its own loss, so each trains exactly
  as it would alone) and keeps the one whose training loss over the last 10 epochs is lowest: a
  choice made without labels or test images.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..data import make_dataset
from ..data.batching import _seed
from ..data.sources import load_digits
from ..functional.coords import box_to_pixels
from ..layers import SpatialTransformer
from ..models import create_model
from ..models.coloc import CROP, TEMPERATURE
from ..warp import warp
from .config import RunConfig

log = logging.getLogger("stnkit")

ENCODER_EPOCHS = 2
TAIL = 10  # epochs of training loss a restart is judged by
DIGIT_CLASS = 3  # the image set when digit_class is not given


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
    B, _, H, _ = x.shape
    s = CROP / H
    t = (torch.rand(B, 2, generator=g) * 2 - 1) * (1 - s)
    params = torch.cat([torch.full((B, 1), s), t], 1).to(device=x.device, dtype=x.dtype)
    return warp(x, params, "attention", (CROP, CROP))


@torch.no_grad()
def crop_stats(st: SpatialTransformer, dataset, batch_size: int = 200, device=None) -> dict:
    """How the crops sit on the digits: {"iou_over_half": % of images whose crop has IoU > 0.5
    with the digit's box, "centre_err_px": mean distance of crop and box centres, "crop_px":
    mean crop side, "test_n": images}."""
    hits, err, side, n = 0, 0.0, 0.0, 0
    for b in dataset.batches(batch_size, shuffle=False):
        x = b.x if device is None else b.x.to(device)
        st(x)
        crop = crop_boxes(st.last_params.cpu(), b.x.shape[-1])
        box = b.box.float()
        hits += int((iou(crop, box) > 0.5).sum())
        err += float(((crop[:, :2] + crop[:, 2:]) / 2 - (box[:, :2] + box[:, 2:]) / 2).norm(dim=1).sum())
        side += float((crop[:, 2] - crop[:, 0]).sum())
        n += len(b.y)
    m = max(n, 1)
    return {"iou_over_half": 100.0 * hits / m, "centre_err_px": round(err / m, 2), "crop_px": round(side / m, 2),
            "test_n": n}


def spread_at(epoch: int, curriculum_epochs: int) -> float:
    """The share of the placement range training digits use in `epoch` (0-based): from 0 (the
    canvas centre) up to 1 (the whole canvas) over curriculum_epochs; 1 without a curriculum."""
    return 1.0 if curriculum_epochs <= 0 else min(1.0, epoch / curriculum_epochs)


def train_encoder(encoder: nn.Module, cfg: RunConfig) -> None:
    """Train the digit CNN at the head of `encoder` (stnkit.models.coloc.digit_encoder) as a
    classifier of every training digit (all classes) for ENCODER_EPOCHS, in place; it stays frozen."""
    digits = load_digits(cfg.source, "train", cfg.data_dir)
    net = encoder[0]
    params = list(net.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=2e-3)
    g = torch.Generator().manual_seed(cfg.seed)
    x_all, y_all = digits.images.float().div(255)[:, None], digits.labels
    net.train()
    for _ in range(ENCODER_EPOCHS):
        order = torch.randperm(len(y_all), generator=g)
        for i in range(0, len(order) - 63, 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(net(x_all[idx]), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    for p in params:
        p.requires_grad_(False)
    encoder.eval()
    log.info(f"encoder: digit CNN trained {ENCODER_EPOCHS} epochs on {len(y_all)} digits, frozen; "
             f"embedding = class probabilities at temperature {TEMPERATURE:g}")


class CoLocalisation:
    """The triplet hinge loss on the crops of `restarts` transformers, each with its own stream of
    random patches; scored by crops with IoU > 0.5 (higher is better). One process only: the loss
    compares every pair of crops in a batch, which a batch split over processes would change."""

    name, metric, higher_is_better = "coloc", "iou_over_half", True
    test_keys = ("iou_over_half", "centre_err_px", "crop_px", "test_n")
    distributed, classifies = False, False
    why_one_process = "its triplet loss compares every pair of crops in a batch, which a batch split over processes would change"

    def __init__(self, cfg: RunConfig):
        self.restarts = cfg.restarts
        self.digit_class = DIGIT_CLASS if cfg.digit_class is None else cfg.digit_class
        # restart 0's patch stream is the one a run without restarts draws
        self.patches = [torch.Generator().manual_seed(cfg.seed + 1 if r == 0 else _seed(cfg.seed, "patches", r))
                        for r in range(cfg.restarts)]
        self.curriculum_epochs = cfg.curriculum_epochs
        self.base_task = None

    def datasets(self, cfg: RunConfig) -> tuple:
        kw = dict(source=cfg.source, seed=cfg.seed, root=cfg.data_dir, digit_class=self.digit_class)
        return make_dataset(cfg.experiment, "train", **kw), make_dataset(cfg.experiment, "test", **kw)

    def build(self, cfg: RunConfig, dataset) -> nn.Module:
        return create_model(cfg.model, in_shape=tuple(dataset.sample(1).x.shape[1:]), restarts=cfg.restarts,
                            seed=cfg.seed)

    def prepare(self, cfg: RunConfig, model: nn.Module) -> None:
        """A fresh run only: resumed and loaded runs take the encoder from their checkpoint."""
        train_encoder(model.encoder, cfg)

    def start_epoch(self, epoch: int, train_ds) -> dict:
        if self.base_task is None:
            self.base_task = replace(train_ds.task, spread=1.0)
        spread = spread_at(epoch, self.curriculum_epochs)
        train_ds.task = replace(self.base_task, spread=spread)
        return {"spread": round(spread, 4)}

    def step(self, model: nn.Module, batch, device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = batch.x.to(device, non_blocking=True)  # no wait for the copy: the step makes no host sync
        losses = [triplet_loss(model.encoder(st(x)), model.encoder(random_patches(x, g)))
                  for st, g in zip(model.transformers, self.patches)]
        B = len(x)  # each restart's loss is its own: the sum's gradient reaches each transformer unchanged
        return (losses[0] if len(losses) == 1 else torch.stack(losses).sum(),
                {f"loss.{r}": loss.detach().double() * B for r, loss in enumerate(losses)})

    def train_metrics(self, sums: dict[str, float], seen: int) -> dict:
        per = [sums.get(f"loss.{r}", 0.0) / max(seen, 1) for r in range(self.restarts)]
        return {"train_loss": per[0] if self.restarts == 1 else sum(per) / len(per),
                **({"restart_loss": per} if self.restarts > 1 else {})}

    def evaluate(self, model: nn.Module, dataset, batch_size: int = 200, device=None, bf16: bool = False,
                 world=None) -> dict:
        """The kept transformer's crop_stats; with restarts, every restart's under "restarts"."""
        was = model.training
        model.eval()
        stats = [crop_stats(st, dataset, batch_size, device) for st in model.transformers]
        model.train(was)
        out = dict(stats[model.kept_index])
        if len(stats) > 1:
            out["restarts"] = stats
        return out

    def choice(self, rows: list[dict]) -> tuple[int, list[float]]:
        """(the restart with the lowest mean training loss over the last TAIL epochs, every restart's mean)."""
        tail = rows[-TAIL:]
        if self.restarts == 1 or not tail:
            return 0, [sum(r["train_loss"] for r in tail) / max(len(tail), 1)]
        means = [sum(r["restart_loss"][k] for r in tail) / len(tail) for k in range(self.restarts)]
        return min(range(self.restarts), key=means.__getitem__), means

    def end_epoch(self, model: nn.Module, rows: list[dict]) -> dict:
        """Keep the restart that leads now (it is what a checkpoint of this epoch holds)."""
        kept, _ = self.choice(rows)
        model.keep(kept)
        return {"kept": kept} if self.restarts > 1 else {}

    def summary(self, model: nn.Module, rows: list[dict]) -> dict:
        kept, means = self.choice(rows)
        out = {"digit_class": self.digit_class, "restart": kept}
        if self.restarts > 1:
            last = rows[-1].get("restarts", [])
            out["restarts"] = [{"restart": r, "final_loss": round(m, 4),
                                "iou_over_half": last[r]["iou_over_half"] if r < len(last) else None}
                               for r, m in enumerate(means)]
        return out

    def describe(self, m: dict) -> str:
        head = ""
        if "spread" in m:
            head += f"placement {100 * m['spread']:.0f}% of the canvas | "
        if "train_loss" in m:
            head += f"loss {m['train_loss']:.4f} | "
        tail = f" (restart {m['kept'] + 1} of {self.restarts} leads)" if "kept" in m else ""
        return (f"{head}test crops with IoU > 0.5: {m['iou_over_half']:.1f}%, {m['centre_err_px']:.1f} px off, "
                f"{m['crop_px']:.0f} px wide{tail}")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"patches.{r}": g.get_state() for r, g in enumerate(self.patches)}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        for r, g in enumerate(self.patches):
            g.set_state(tensors[f"patches.{r}"])
