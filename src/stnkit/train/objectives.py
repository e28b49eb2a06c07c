"""Objectives: what the one engine (engine.py) asks of a kind of training. An objective says
which datasets and model a config means, how a batch becomes a loss, how a model is scored,
and what else the run must keep (RNG streams, a choice among restarts).

    objective = objective_for(cfg)
    train_ds, test_ds = objective.datasets(cfg)
    model = objective.build(cfg, train_ds)
    loss, stats = objective.step(model, batch, device)   # stats: sums over the batch, 0-dim tensors

Two exist: Classification (every experiment but co-localisation) and CoLocalisation (coloc.py).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..data import make_dataset
from ..models import count_params, create_model, model_options
from . import distributed as dist
from .config import COLOC_EXPERIMENTS, RunConfig


class Objective(Protocol):
    name: str  # "classification", "coloc"
    metric: str  # the headline test metric, a key of evaluate()'s dict
    higher_is_better: bool
    test_keys: tuple[str, ...]  # evaluate()'s keys, copied from the last epoch into summary.json
    distributed: bool  # whether several processes may train it (each on a slice of every batch)
    why_one_process: str  # if not, why
    classifies: bool  # whether the model's output is class scores (predict)

    def datasets(self, cfg: RunConfig) -> tuple: ...
    def build(self, cfg: RunConfig, dataset) -> nn.Module: ...
    def prepare(self, cfg: RunConfig, model: nn.Module) -> None: ...
    def start_epoch(self, epoch: int, train_ds) -> dict: ...
    def step(self, model: nn.Module, batch, device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...
    def train_metrics(self, sums: dict[str, float], seen: int) -> dict: ...
    def evaluate(self, model: nn.Module, dataset, batch_size: int, device, bf16: bool = False, world=None) -> dict: ...
    def end_epoch(self, model: nn.Module, rows: list[dict]) -> dict: ...
    def summary(self, model: nn.Module, rows: list[dict]) -> dict: ...
    def describe(self, metrics: dict) -> str: ...
    def state_dict(self) -> dict[str, torch.Tensor]: ...
    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None: ...


def objective_for(cfg: RunConfig) -> Objective:
    """The objective a config trains with: co-localisation for its experiments, else classification."""
    if cfg.experiment in COLOC_EXPERIMENTS:
        from .coloc import CoLocalisation

        return CoLocalisation(cfg)
    return Classification()


def check_processes(objective: Objective, processes: int) -> None:
    """A clear refusal when several processes would train an objective that needs one."""
    if processes > 1 and not objective.distributed:
        raise ValueError(f"{objective.name} training runs in one process only: {objective.why_one_process}; "
                         "start it without torchrun or --nproc")


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def loss_and_errors(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and the number of wrong examples. Classes: logits (B, K), y (B,); sequences:
    logits (B, L, K), y (B, L), a sequence is wrong if any position is."""
    if y.dim() == 1:
        return F.cross_entropy(logits.float(), y), (logits.argmax(1) != y).sum()
    B, L, K = logits.shape
    loss = F.cross_entropy(logits.float().reshape(B * L, K), y.reshape(B * L)) * L
    return loss, (logits.argmax(2) != y).any(1).sum()


def build_model(cfg: RunConfig, dataset) -> nn.Module:
    """The config's classifier for this dataset's input shape and classes, sized to the budget."""
    x = dataset.sample(1).x
    kw = {"in_shape": tuple(x.shape[1:]), "num_classes": dataset.num_classes}
    budget = cfg.budget
    if budget is None and cfg.match_budget is not None:
        budget = count_params(create_model(cfg.match_budget, **kw))
    accepted = model_options(cfg.model)
    if cfg.st_size is not None and "st_size" in accepted:  # baselines of a table share its config
        kw["st_size"] = cfg.st_size
    if budget is not None:
        if "budget" not in accepted:
            raise ValueError(f"config key 'budget' does not apply to model {cfg.model!r}; set budget=null")
        kw["budget"] = budget
    return create_model(cfg.model, **kw)


class Classification:
    """Cross-entropy on class labels (or digit sequences); scored by % test error."""

    name, metric, higher_is_better = "classification", "test_err", False
    test_keys = ("test_loss", "test_err", "test_n")
    distributed, classifies, why_one_process = True, True, ""

    def datasets(self, cfg: RunConfig) -> tuple:
        kw = dict(source=cfg.source, seed=cfg.seed, root=cfg.data_dir)
        return (make_dataset(cfg.experiment, "train", fixed=cfg.fixed_train, **kw),
                make_dataset(cfg.experiment, "test", **kw))

    def build(self, cfg: RunConfig, dataset) -> nn.Module:
        return build_model(cfg, dataset)

    def prepare(self, cfg: RunConfig, model: nn.Module) -> None:
        pass

    def start_epoch(self, epoch: int, train_ds) -> dict:
        return {}

    def step(self, model: nn.Module, batch, device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch.x.to(device, non_blocking=True), batch.y.to(device, non_blocking=True)  # no host sync
        loss, wrong = loss_and_errors(model(x), y)
        return loss, {"loss": loss.detach().double() * len(y), "wrong": wrong}

    def train_metrics(self, sums: dict[str, float], seen: int) -> dict:
        n = max(seen, 1)
        return {"train_loss": sums.get("loss", 0.0) / n, "train_err": 100.0 * sums.get("wrong", 0.0) / n}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset, batch_size: int = 500, device=None, bf16: bool = False,
                 world=None) -> dict:
        """Test loss and % error over the whole split. In a data-parallel job process r scores
        batches r, r + N, ... and the sums are all-reduced: every image counted exactly once."""
        world = world or dist.World()
        device = device or next(model.parameters()).device
        was = model.training
        model.eval()
        total, wrong, loss_sum = 0, 0, 0.0
        for i, b in enumerate(dataset.batches(batch_size, shuffle=False)):
            if i % world.size != world.rank:
                continue  # rendered anyway: the test set's random stream is the same for every process
            x, y = b.x.to(device), b.y.to(device)
            with autocast(device, bf16):
                logits = model(x)
            loss, err = loss_and_errors(logits, y)
            total += len(y)
            wrong += int(err)
            loss_sum += float(loss) * len(y)
        model.train(was)
        total, wrong, loss_sum = dist.all_reduce_sum([total, wrong, loss_sum], device)
        total, wrong = int(total), int(wrong)
        return {"test_loss": loss_sum / max(total, 1), "test_err": 100.0 * wrong / max(total, 1), "test_n": total}

    def end_epoch(self, model: nn.Module, rows: list[dict]) -> dict:
        return {}

    def summary(self, model: nn.Module, rows: list[dict]) -> dict:
        return {}

    def describe(self, m: dict) -> str:
        train = f"train loss {m['train_loss']:.4f} err {m['train_err']:.2f}% | " if "train_loss" in m else ""
        return f"{train}test err {m['test_err']:.2f}% (loss {m['test_loss']:.4f}, {m['test_n']} images)"

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        pass
