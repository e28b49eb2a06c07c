"""Training and evaluation loops. No argument parsing: `train(RunConfig)` -> run folder.

A run folder holds config.yaml (the resolved config), metrics.jsonl (one line per epoch),
checkpoints/step-N/ (see checkpoint.py), summary.json and figures.
"""
from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from . import distributed as dist
from .config import RunConfig, save as save_config
from ..data import make_dataset
from ..layers import LocalisationDiverged
from ..models import count_params, create_model, model_options, transformers


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the message names the step, the batch and the last good checkpoint."""


def device_of(cfg: RunConfig, local_rank: int | None = None) -> torch.device:
    """The config's device; a process of a multi-GPU job takes the GPU of its local rank."""
    if cfg.device == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    elif cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"config key 'device' = {cfg.device!r} but no CUDA GPU is available; use device=cpu or auto")
    else:
        kind = cfg.device
    if kind == "cuda" and local_rank is not None:
        return torch.device("cuda", local_rank)
    return torch.device(kind)


def run_dir_of(cfg: RunConfig) -> Path:
    return Path(cfg.out) / (cfg.name or f"{cfg.experiment}-{cfg.model}-seed{cfg.seed}")


def datasets(cfg: RunConfig):
    kw = dict(source=cfg.source, seed=cfg.seed, root=cfg.data_dir)
    train = make_dataset(cfg.experiment, "train", fixed=cfg.fixed_train, **kw)
    test = make_dataset(cfg.experiment, "test", **kw)
    return train, test


def build_model(cfg: RunConfig, dataset) -> nn.Module:
    """The config's model for this dataset's input shape and classes, sized to the budget."""
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


def localisation_params(model: nn.Module) -> list[nn.Parameter]:
    seen, out = set(), []
    for st in transformers(model):
        for p in list(st.localisation.parameters()) + list(st.regression.parameters()):
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def make_optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    loc = localisation_params(model)
    loc_ids = {id(p) for p in loc}
    rest = [p for p in model.parameters() if id(p) not in loc_ids]
    groups = [{"params": rest, "lr_mult": 1.0}]
    if loc:
        groups.append({"params": loc, "lr_mult": cfg.loc_lr_mult})
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_at(cfg: RunConfig, epoch: int) -> float:
    """The stepped schedule: lr times gamma for every step epoch already passed."""
    return cfg.lr * cfg.gamma ** sum(epoch >= s for s in cfg.lr_steps)


def loss_and_errors(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and the number of wrong examples. Classes: logits (B, K), y (B,); sequences:
    logits (B, L, K), y (B, L), a sequence is wrong if any position is."""
    if y.dim() == 1:
        return F.cross_entropy(logits.float(), y), (logits.argmax(1) != y).sum()
    B, L, K = logits.shape
    loss = F.cross_entropy(logits.float().reshape(B * L, K), y.reshape(B * L)) * L
    return loss, (logits.argmax(2) != y).any(1).sum()


@torch.no_grad()
def evaluate(model: nn.Module, dataset, batch_size: int = 500, device=None, bf16: bool = False,
             world: dist.World = dist.World()) -> dict:
    """Test loss and % error over the whole split. In a data-parallel job process r scores
    batches r, r + N, ... and the sums are all-reduced: every image counted exactly once."""
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    total, wrong, loss_sum = 0, 0, 0.0
    for i, b in enumerate(dataset.batches(batch_size, shuffle=False)):
        if i % world.size != world.rank:
            continue  # rendered anyway: the test set's random stream is the same for every process
        x, y = b.x.to(device), b.y.to(device)
        with _autocast(device, bf16):
            logits = model(x)
        loss, err = loss_and_errors(logits, y)
        total += len(y)
        wrong += int(err)
        loss_sum += float(loss) * len(y)
    model.train(was)
    total, wrong, loss_sum = dist.all_reduce_sum([total, wrong, loss_sum], device)
    total, wrong = int(total), int(wrong)
    return {"test_loss": loss_sum / max(total, 1), "test_err": 100.0 * wrong / max(total, 1), "test_n": total}


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def _progress(total: int, desc: str, enabled: bool, initial: int = 0):
    from tqdm import tqdm

    # bars only on a terminal; logs get the one-line epoch summaries instead
    return tqdm(total=total, initial=initial, desc=desc, disable=not (enabled and sys.stderr.isatty()),
                file=sys.stderr, dynamic_ncols=True, leave=False, unit="step")


def _trim_metrics(path: Path, global_step: int) -> None:
    """Drop metric lines written after the checkpoint a resumed run restarts from."""
    if path.is_file():
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= global_step]
        path.write_text("".join(ln + "\n" for ln in keep))


def train(cfg: RunConfig, resume: bool = False, log=print) -> Path:
    """Train cfg.model on cfg.experiment; returns the run folder. `resume` continues from the
    newest good checkpoint exactly (same final weights as an unbroken run on CPU).

    Started by torchrun (WORLD_SIZE > 1) it trains data-parallel: batch_size is the global
    batch, split evenly over the processes; only rank 0 writes the run folder."""
    world = dist.setup(device_of(cfg).type)
    try:
        return _train(cfg, resume, log if world.main else (lambda *_: None), world)
    finally:
        dist.teardown(world)


def _train(cfg: RunConfig, resume: bool, log, world: dist.World) -> Path:
    run_dir = run_dir_of(cfg)
    if not resume and ckpt.candidates(run_dir):
        raise ValueError(f"{run_dir} already holds a run: pass --resume to continue it, or name=... for a new one")
    if cfg.batch_size % world.size:
        raise ValueError(f"config key 'batch_size' = {cfg.batch_size} (the global batch) must be a multiple of "
                         f"the number of processes ({world.size})")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = device_of(cfg, world.local_rank if world.size > 1 else None)
    torch.manual_seed(cfg.seed)
    train_ds, test_ds = datasets(cfg)
    steps = len(train_ds) // cfg.batch_size
    if steps == 0:
        raise ValueError(f"config key 'batch_size' = {cfg.batch_size} is larger than the training set "
                         f"({len(train_ds)} examples); use batch_size <= {len(train_ds)}")
    steps = min(steps, cfg.steps_per_epoch or steps)
    model = build_model(cfg, train_ds).to(device)  # the same initial weights in every process
    if world.size > 1:
        torch.manual_seed(cfg.seed * 1000003 + world.rank)  # but each its own dropout stream
    opt = make_optimizer(cfg, model)
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "wall_s": 0.0}
    if resume:
        if world.main:
            for left in ckpt.remove_partial(run_dir):
                log(f"removed {left}: a checkpoint whose writing was interrupted")
        found = ckpt.latest_good(run_dir, warn=log)
        if found is None and ckpt.candidates(run_dir):
            raise ckpt.CheckpointError(f"every checkpoint in {run_dir / 'checkpoints'} is damaged (see above); "
                                       "move that folder away to start the run again from scratch")
        if found is None:
            log(f"no checkpoint in {run_dir}: starting from scratch")
        else:
            state = ckpt.load(found, model, opt, rank=world.rank)
            log(f"resuming {run_dir} from {found.name} (epoch {state['epoch']}, step {state['step_in_epoch']})")
            if state.get("world_size", 1) != world.size:
                log(f"note: {found.name} was written by {state.get('world_size', 1)} process(es), this run has "
                    f"{world.size}: the same global batch goes on, with other distortion streams, so the result "
                    "is not bit-identical to an unbroken run")
    net = model
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    metrics_path = run_dir / "metrics.jsonl"
    if world.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        _trim_metrics(metrics_path, state["global_step"])
    n_params = count_params(model)
    log(f"{cfg.model} on {cfg.experiment} ({cfg.source}): {n_params:,} parameters, {len(train_ds)} train / "
        f"{len(test_ds)} test, device {device}" + (f" x {world.size} processes" if world.size > 1 else "")
        + f", run folder {run_dir}")

    t_start = time.perf_counter() - state["wall_s"]
    last_saved = None

    def checkpoint(epoch, step_in_epoch, extra=None):
        nonlocal last_saved
        rng = dist.gather_objects(torch.get_rng_state())  # every process takes part
        if not world.main:
            return
        bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:  # never write weights a later resume would choke on
            raise TrainingDiverged(f"weights {bad[:3]} became NaN/Inf by global step {state['global_step']} "
                                   f"(epoch {epoch + 1}); last good checkpoint: {last_saved or 'none'}. "
                                   "Try a lower lr or clip_grad.")
        st = {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": state["global_step"],
              "wall_s": time.perf_counter() - t_start, "world_size": world.size, **(extra or {})}
        folder = run_dir / "checkpoints" / f"step-{state['global_step']:08d}"
        try:
            last_saved = ckpt.save(folder, model, opt, st, rng=rng)
        except OSError as e:  # a full disk, a lost mount: the previous checkpoint is untouched
            raise ckpt.CheckpointError(
                f"could not write checkpoint {folder}: {e}. The previous checkpoint "
                f"({last_saved or ckpt.latest_good(run_dir, warn=log) or 'none'}) is intact; "
                "free space and continue with --resume") from e
        ckpt.prune(run_dir, cfg.keep_checkpoints)

    model.train()
    for epoch in range(state["epoch"], cfg.epochs):
        lr = lr_at(cfg, epoch)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_mult"]
        start = state["step_in_epoch"] if epoch == state["epoch"] else 0
        bar = _progress(steps, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and world.main, initial=start)
        loss_sum, wrong, seen = 0.0, 0, 0
        batches = train_ds.batches(cfg.batch_size, epoch=epoch, drop_last=True, rank=world.rank, world=world.size)
        for i, batch in enumerate(batches):
            if i >= steps:
                break
            if i < start:
                continue  # rendered anyway, so the epoch's random stream stays the same on resume
            x, y = batch.x.to(device), batch.y.to(device)
            why = ""
            try:
                with _autocast(device, cfg.bf16):
                    logits = net(x)
                loss, err = loss_and_errors(logits, y)
                value = float(loss.detach())
            except LocalisationDiverged as e:  # a transformer predicted NaN/Inf parameters
                value, why = math.nan, f" ({e})"
            if world.size > 1:  # every process must stop together, or the others wait forever
                value = dist.all_reduce_sum([value], device)[0] / world.size
            if not math.isfinite(value):
                where = last_saved or ckpt.latest_good(run_dir, warn=log)
                raise TrainingDiverged(
                    f"loss is {value}{why} at epoch {epoch + 1}, step {i + 1} (global step "
                    f"{state['global_step'] + 1}), batch of digits {i * cfg.batch_size}-{(i + 1) * cfg.batch_size - 1} "
                    f"of the epoch's order; last good checkpoint: {where or 'none'}. Try a lower lr or clip_grad."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            opt.step()
            state["global_step"] += 1
            loss_sum, wrong, seen = loss_sum + float(loss.detach()) * len(y), wrong + int(err), seen + len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", err=f"{100 * wrong / seen:.1f}%")
            if cfg.checkpoint_every and (i + 1) % cfg.checkpoint_every == 0 and i + 1 < steps:
                checkpoint(epoch, i + 1)
        bar.close()
        loss_sum, wrong, seen = dist.all_reduce_sum([loss_sum, wrong, seen], device)
        try:
            metrics = evaluate(model, test_ds, cfg.eval_batch_size, device, cfg.bf16, world)
        except LocalisationDiverged as e:  # the epoch's last steps broke a localisation net
            raise TrainingDiverged(
                f"weights became NaN/Inf by global step {state['global_step']} (epoch {epoch + 1}), found while "
                f"testing: {e}; last good checkpoint: {last_saved or ckpt.latest_good(run_dir, warn=log) or 'none'}"
            ) from e
        row = {"epoch": epoch + 1, "step": state["global_step"], "lr": lr,
               "train_loss": loss_sum / max(seen, 1), "train_err": 100.0 * wrong / max(seen, 1), **metrics,
               "wall_s": round(time.perf_counter() - t_start, 2)}
        if world.main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f} err {row['train_err']:.2f}% | "
            f"test err {metrics['test_err']:.2f}% | {row['wall_s']:.0f} s")
        checkpoint(epoch + 1, 0)
        state["step_in_epoch"] = 0

    final = evaluate(model, test_ds, cfg.eval_batch_size, device, cfg.bf16, world)
    summary = {"model": cfg.model, "experiment": cfg.experiment, "source": cfg.source, "seed": cfg.seed,
               "params": n_params, "epochs": cfg.epochs, "processes": world.size, **final,
               "wall_s": round(time.perf_counter() - t_start, 1)}
    if world.main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    log(f"done: {cfg.model} on {cfg.experiment}: test error {final['test_err']:.2f}% "
        f"({final['test_n']} images), {n_params:,} params, {summary['wall_s']:.0f} s -> {run_dir}")
    dist.barrier()  # no process leaves before the run folder is complete
    return run_dir


def finished(cfg: RunConfig) -> bool:
    """True when cfg's run folder holds a finished run of exactly these settings (reuse it);
    a finished run with other settings is an error rather than a silent reuse."""
    import yaml

    run_dir = run_dir_of(cfg)
    if not (run_dir / "summary.json").is_file():
        return False
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    default = RunConfig().to_dict()  # a key added after the run was saved holds its default there
    changed = {k: (saved.get(k, default[k]), v) for k, v in cfg.to_dict().items()
               if saved.get(k, default[k]) != v and k not in ("progress", "threads")}
    if changed:
        diff = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"{run_dir} holds a finished run with other settings ({diff}); use another output folder")
    return True


def load_run(run_dir: str | Path, device=None):
    """(config, model with the newest good weights, test dataset) of a finished or stopped run."""
    from .config import build, load_file

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml); runs are under runs/ by default")
    cfg = build(load_file(run_dir / "config.yaml"))
    _, test_ds = datasets(cfg)
    model = build_model(cfg, test_ds)
    found = ckpt.latest_good(run_dir)
    if found is None:
        raise FileNotFoundError(f"{run_dir} has no usable checkpoint")
    ckpt.load(found, model)
    return cfg, model.to(device or "cpu").eval(), test_ds
