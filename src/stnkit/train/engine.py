"""The one training loop. No argument parsing: `train(cfg)` -> run folder (runs.py says what is in
it). What is trained is the objective's business (objectives.py); everything a run owes its user
is the engine's: the run-folder rules, exact resume, checkpoints, the NaN stop, stopping on a
signal, several processes.

    open_run   the folder's rules, the config it continues, data, model, optimizer, restore
    one_epoch  the steps of an epoch, then its test metrics -> a metrics row
    save       a checkpoint of where the run is (atomic, checksummed)
    finish     summary.json from the last epoch's row
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .._io import atomic_write
from .._checks import Checks, checks
from ..layers import LocalisationDiverged
from ..models import count_params, transformers
from . import checkpoint as ckpt
from . import distributed as dist
from . import logs, runs
from .config import RunConfig, resume_changes
from .config import save as save_config
from .objectives import Objective, autocast, check_processes, objective_for
from .runs import run_dir_of
from .stops import StopSignals, TrainingInterrupted

log = logging.getLogger("stnkit")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the message names the step, the batch and the last good checkpoint."""


@dataclass
class Progress:
    """Where a run is; a checkpoint's state. epoch: the epoch in progress (0-based), of which
    step_in_epoch steps are done; sums, seen: that epoch's running training sums."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    wall_s: float = 0.0
    sums: dict = field(default_factory=dict)
    seen: int = 0


@dataclass
class Run:
    cfg: RunConfig
    objective: Objective
    run_dir: Path
    world: dist.World
    device: torch.device
    train_ds: object
    test_ds: object
    steps: int  # per epoch
    model: nn.Module
    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    opt: torch.optim.Optimizer
    progress: Progress
    rows: list[dict]
    t0: float = 0.0
    last_saved: Path | None = None
    stop: StopSignals | None = None
    logs: logs.RunLogs | None = None
    pending: list = field(default_factory=list)  # steps trained since the last host sync (_Trained)

    def say(self, text: str) -> None:
        if self.world.main:  # one voice for a multi-process run
            log.info(text)


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


def localisation_params(model: nn.Module) -> list[nn.Parameter]:
    seen, out = set(), []
    for st in transformers(model):
        for p in list(st.localisation.parameters()) + list(st.regression.parameters()):
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def make_optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD or Adam over the trainable parameters; localisation nets and regressions in a group of
    their own whose lr is cfg.loc_lr_mult times the schedule's (param group key "lr_mult")."""
    loc = [p for p in localisation_params(model) if p.requires_grad]
    loc_ids = {id(p) for p in loc}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in loc_ids]
    groups = [g for g in ({"params": rest, "lr_mult": 1.0}, {"params": loc, "lr_mult": cfg.loc_lr_mult}) if g["params"]]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_at(cfg: RunConfig, epoch: int) -> float:
    """The stepped schedule: lr times gamma for every step epoch already passed."""
    return cfg.lr * cfg.gamma ** sum(epoch >= s for s in cfg.lr_steps)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g["lr_mult"]


def progress_bar(total: int, desc: str, enabled: bool, initial: int = 0):
    from tqdm import tqdm

    # bars only on a terminal; logs get the one-line epoch summaries instead
    tty = sys.stderr.isatty() or os.environ.get("STNKIT_TTY") == "1"  # set by `stnkit train --nproc` on a terminal
    return tqdm(total=total, initial=initial, desc=desc, disable=not (enabled and tty),
                file=sys.stderr, dynamic_ncols=True, leave=False, unit="step")


def train(cfg: RunConfig, objective: Objective | None = None, *, resume: bool = False) -> Path:
    """Train cfg on its objective (default: the one its experiment needs); -> the run folder.

    resume: continue the run in cfg's folder from its newest good checkpoint, exactly (the same
    final weights as an unbroken run, on CPU), or start it if the folder holds none. The folder's
    own config.yaml is what continues: cfg may differ from it only in config.RESUMABLE keys, and
    each such change is said and recorded (history.jsonl). A finished run says so and is left alone.

    Started by torchrun (WORLD_SIZE > 1) it trains data-parallel: batch_size is the global
    batch, split evenly over the processes; only rank 0 writes the run folder."""
    objective = objective or objective_for(cfg)
    world = dist.setup(device_of(cfg).type)
    run = None
    try:
        run = open_run(cfg, objective, resume, world)
        if run is None:
            return run_dir_of(cfg)
        with StopSignals(announce=world.main) as stop:
            run.stop = stop
            for epoch in range(run.progress.epoch, run.cfg.epochs):
                one_epoch(run, epoch)
        return finish(run)
    finally:
        if run is not None and run.logs is not None:
            run.logs.close()  # however the run ended: no handler or writer is left open
        dist.teardown(world)


def resume(run_dir: str | Path, overrides: dict | None = None, objective: Objective | None = None) -> Path:
    """Continue the run in `run_dir` with its own config and these overrides (only config.RESUMABLE
    keys may differ from what it ran with; `epochs` may grow, never shrink below what has run)."""
    from .config import build

    run_dir = Path(run_dir)
    saved = runs.read_config(run_dir)
    cfg = build(saved.to_dict(), overrides or {})
    if run_dir_of(cfg).resolve() != run_dir.resolve():  # the folder was moved or renamed: it is where it is
        cfg = replace(cfg, out=str(run_dir.parent), name=run_dir.name)
    return train(cfg, objective, resume=True)


# -- open_run: rules, config, restore ------------------------------------------------------------

def open_run(cfg: RunConfig, objective: Objective, resume: bool, world: dist.World) -> Run | None:
    """Check the folder's rules and the config (nothing is written before every check passed),
    build data, model and optimizer, restore the newest good checkpoint -> the Run (its logs
    open, holding what was said meanwhile), or None when a resumed run is already finished."""
    with logs.Early() as early:
        run = _open_run(cfg, objective, resume, world)
    if run is not None:
        run.logs = logs.RunLogs(run.run_dir, cfg, world.main, run.progress.global_step, early.lines)
        try:
            run.logs.rows(run.rows)
        except BaseException:  # train() never saw this run: let its logs go here
            run.logs.close()
            raise
    return run


def _open_run(cfg: RunConfig, objective: Objective, resume: bool, world: dist.World) -> Run | None:
    run_dir = run_dir_of(cfg)
    check_processes(objective, world.size)
    logs.check(cfg)
    if cfg.batch_size % world.size:
        raise ValueError(f"config key 'batch_size' = {cfg.batch_size} (the global batch) must be a multiple of "
                         f"the number of processes ({world.size})")
    exists = runs.holds_run(run_dir)
    if exists and not resume:
        raise ValueError(f"{run_dir} already holds a run: continue it with `stnkit train --resume {run_dir}`, "
                         "or pass name=... for a new one")
    changes, found, state = {}, None, None
    if exists:
        if (run_dir / runs.CONFIG).is_file():
            changes = resume_changes(runs.read_config(run_dir), cfg)
        found, state = _newest_checkpoint(run_dir, world)
        done = Progress(**{k: state[k] for k in ("epoch", "step_in_epoch")}) if state else Progress()
        if cfg.epochs < done.epoch + (done.step_in_epoch > 0):
            raise ValueError(f"epochs={cfg.epochs} is fewer than this run has already trained "
                             f"({done.epoch} epochs{f' and {done.step_in_epoch} steps' if done.step_in_epoch else ''}); "
                             "a run cannot be shortened: start a new one (name=...)")
        if state and done.epoch >= cfg.epochs and (run_dir / runs.SUMMARY).is_file():
            s = runs.summary(run_dir) or {}
            metric = s.get("metric", objective.metric)
            if world.main:
                log.info(f"{run_dir} is finished: {done.epoch} of {cfg.epochs} epochs, {metric} {s.get(metric)}; "
                         f"nothing to do. To train it longer: stnkit train --resume {run_dir} epochs=N")
            return None
    run = _build(cfg, objective, run_dir, world)
    if found is not None:
        _restore(run, found)
    else:
        if exists:
            run.say(f"no checkpoint in {run_dir}: starting from scratch")
        objective.prepare(cfg, run.model)
    _open_folder(run, changes, "resume" if found is not None else "start")
    return run


def _newest_checkpoint(run_dir: Path, world: dist.World) -> tuple[Path | None, dict | None]:
    warn = log.warning if world.main else (lambda *_: None)
    found = ckpt.latest_good(run_dir, warn=warn)  # temporary .step-* folders are never candidates
    if found is None and ckpt.candidates(run_dir):
        raise ckpt.CheckpointError(f"every checkpoint in {run_dir / 'checkpoints'} is damaged (see above); "
                                   "move that folder away to start the run again from scratch")
    return found, (ckpt.verify(found) if found is not None else None)


def _build(cfg: RunConfig, objective: Objective, run_dir: Path, world: dist.World) -> Run:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = device_of(cfg, world.local_rank if world.size > 1 else None)
    torch.manual_seed(cfg.seed)
    train_ds, test_ds = objective.datasets(cfg)
    steps = len(train_ds) // cfg.batch_size
    if steps == 0:
        raise ValueError(f"config key 'batch_size' = {cfg.batch_size} is larger than the training set "
                         f"({len(train_ds)} examples); use batch_size <= {len(train_ds)}")
    steps = min(steps, cfg.steps_per_epoch or steps)
    model = objective.build(cfg, train_ds).to(device)  # the same initial weights in every process
    if world.size > 1:
        torch.manual_seed(cfg.seed * 1000003 + world.rank)  # but each its own dropout stream
    opt = make_optimizer(cfg, model)
    return Run(cfg, objective, run_dir, world, device, train_ds, test_ds, steps, model, model, opt, Progress(), [])


def _restore(run: Run, found: Path) -> None:
    state = ckpt.load(found, run.model, run.opt, rank=run.world.rank)
    run.objective.load_state_dict(state.get("extra", {}))
    mine = state.get("epoch_sums", [])
    mine = mine[run.world.rank] if run.world.rank < len(mine) and len(mine) == run.world.size else {}
    if state["step_in_epoch"] and not mine:
        run.say("note: the checkpoint was written by another number of processes: the resumed epoch's training "
                "loss and error count only the steps after it")
    run.progress = Progress(state["epoch"], state["step_in_epoch"], state["global_step"], state["wall_s"],
                            dict(mine.get("sums", {})), mine.get("seen", 0))
    run.last_saved = found
    p = run.progress
    run.say(f"resuming {run.run_dir} from {found.name} (epoch {p.epoch + 1}, step {p.step_in_epoch} of {run.steps})")
    if state.get("world_size", 1) != run.world.size:
        run.say(f"note: {found.name} was written by {state.get('world_size', 1)} process(es), this run has "
                f"{run.world.size}: the same global batch goes on, with other distortion streams, so the result "
                "is not bit-identical to an unbroken run")


def _open_folder(run: Run, changes: dict, event: str) -> None:
    """Write what the run continues with: config.yaml, metrics up to the checkpoint, a history line."""
    cfg, p = run.cfg, run.progress
    if run.world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        run.net = DistributedDataParallel(run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    for k, (a, b) in changes.items():
        run.say(f"{k}: {a!r} -> {b!r} (from global step {p.global_step})")
    run.rows = runs.read_rows(run.run_dir, p.global_step)
    if run.world.main:
        for left in ckpt.remove_partial(run.run_dir):
            log.info(f"removed {left}: a checkpoint whose writing was interrupted")
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / runs.SUMMARY).unlink(missing_ok=True)  # the run is not finished while it trains
        save_config(cfg, run.run_dir / runs.CONFIG)
        runs.write_rows(run.run_dir, run.rows)
        runs.record_start(run.run_dir, event, p.global_step, p.epoch, changes, run.world.size)
    run.t0 = time.perf_counter() - p.wall_s
    run.say(f"{cfg.model} on {cfg.experiment} ({cfg.source}): {count_params(run.model):,} parameters, "
            f"{len(run.train_ds)} train / {len(run.test_ds)} test, device {run.device}"
            + (f" x {run.world.size} processes" if run.world.size > 1 else "") + f", run folder {run.run_dir}")


# -- one_epoch, save -----------------------------------------------------------------------------

def one_epoch(run: Run, epoch: int) -> dict:
    """Train the epoch's remaining steps, test, append its row, checkpoint -> the row."""
    cfg, p = run.cfg, run.progress
    lr = lr_at(cfg, epoch)
    set_lr(run.opt, lr)
    extra = run.objective.start_epoch(epoch, run.train_ds)
    start = p.step_in_epoch if epoch == p.epoch else 0
    if start == 0:
        p.sums, p.seen = {}, 0
    run.model.train()
    interval = sync_interval(cfg, run.device)
    bar = progress_bar(run.steps, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and run.world.main, initial=start)
    batches = run.train_ds.batches(cfg.batch_size, epoch=epoch, drop_last=True, rank=run.world.rank,
                                   world=run.world.size)
    for i, batch in enumerate(batches):
        if i >= run.steps:
            break
        if i < start:
            continue  # rendered anyway, so the epoch's random stream stays the same on resume
        checkpoint = cfg.checkpoint_every and (i + 1) % cfg.checkpoint_every == 0
        sync = (i + 1) % interval == 0 or i + 1 == run.steps or bool(checkpoint)
        stop = one_step(run, batch, epoch, i, sync)
        bar.update(1)
        if not run.pending:  # the sums are on the host: show the loss so far
            bar.set_postfix(loss=f"{run.objective.train_metrics(p.sums, p.seen)['train_loss']:.3f}")
        if stop:
            bar.close()
            _interrupted(run, save(run, epoch, i + 1))
        if checkpoint and i + 1 < run.steps:
            save(run, epoch, i + 1)
    bar.close()
    keys = sorted(p.sums)
    totals = dist.all_reduce_sum([p.sums[k] for k in keys] + [p.seen], run.device)
    row = {"epoch": epoch + 1, "step": p.global_step, "lr": lr, **extra,
           **run.objective.train_metrics(dict(zip(keys, totals[:-1])), int(totals[-1]))}
    row.update(run.objective.end_epoch(run.model, run.rows + [row]))  # e.g. which restart leads, before testing
    row.update(_test(run, epoch))
    row["wall_s"] = round(time.perf_counter() - run.t0, 2)
    run.rows.append(row)
    if run.world.main:
        runs.append_line(run.run_dir / runs.METRICS, row)
        run.logs.epoch(run.rows, logs.transformer_figure_of(run.model, run.test_ds, run.objective.classifies,
                                                            run.device) if cfg.tensorboard else None)
    every = max(1, cfg.epochs // 50)
    if (epoch + 1) % every == 0 or epoch + 1 in (1, cfg.epochs):
        run.say(f"epoch {epoch + 1}/{cfg.epochs}: {run.objective.describe(row)} | {row['wall_s']:.0f} s")
    saved = save(run, epoch + 1, 0)
    if run.stop is not None and _stop_requested(run):
        _interrupted(run, saved)
    return row


@dataclass
class _Trained:
    """A step trained since the last host sync: where it was, and its numbers still on the device."""

    epoch: int
    i: int
    global_step: int
    values: torch.Tensor  # (2 + len(keys),) float64: loss, checks passed (1/0), stats
    keys: list[str]
    checks: Checks
    n: int


def sync_interval(cfg: RunConfig, device: torch.device) -> int:
    """Steps between host syncs: cfg.sync_every, or 1 on a CPU (a read costs nothing there) and
    log_every on a GPU (each read waits for the GPU's queue)."""
    return cfg.sync_every or (1 if device.type == "cpu" else cfg.log_every)


def one_step(run: Run, batch, epoch: int, i: int, sync: bool = True) -> bool:
    """One optimizer step; -> whether a stop was asked for (agreed by every process).

    Nothing is read back to the host unless `sync` (then every step since the last sync is
    checked for NaN, logged and summed, before this step's backward): stnkit's value checks are
    recorded on the device (`checks("deferred")`) and read with the loss."""
    cfg, p = run.cfg, run.progress
    try:
        with checks("deferred") as found, autocast(run.device, cfg.bf16):
            loss, stats = run.objective.step(run.net, batch, run.device)
    except LocalisationDiverged as e:  # raised at once (a model that asked for checks("sync"))
        if run.pending:
            _sync(run)  # an earlier step may have gone first
        raise _diverged(run, epoch, i, p.global_step + 1, math.nan, f" ({e})") from e
    ok = found.ok()
    passed = torch.ones((), dtype=torch.float64, device=loss.device) if ok is None else ok.double()
    values = torch.stack([loss.detach().double(), passed, *(v.double() for v in stats.values())])
    run.pending.append(_Trained(epoch, i, p.global_step + 1, values, list(stats), found, len(batch.y)))
    stop = run.stop is not None and run.stop.requested and run.world.size == 1
    if sync or stop:
        stop = _sync(run)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.clip_grad:
        nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_grad)
    run.opt.step()
    p.global_step += 1
    p.step_in_epoch = i + 1
    return stop


def _sync(run: Run) -> bool:
    """Read the pending steps back (the loop's one host sync per interval), raise TrainingDiverged
    naming the first whose loss is NaN/Inf or whose checks failed, else log and sum them -> whether
    a stop was asked for (agreed by every process)."""
    p, steps = run.progress, run.pending
    run.pending = []
    rows = torch.stack([s.values for s in steps]).tolist()  # the one host read: (n, 2 + stats)
    host, sums = [r[:2] for r in rows], [r[2:] for r in rows]  # (loss, checks passed), the stats
    stop = run.stop is not None and run.stop.requested
    if run.world.size > 1:  # every process must stop together, or the others wait forever
        flat = dist.all_reduce_sum([v for row in host for v in row] + [float(stop)], run.device)
        host = [[flat[2 * k] / run.world.size, flat[2 * k + 1] / run.world.size] for k in range(len(steps))]
        stop = flat[-1] > 0
    for s, (value, passed) in zip(steps, host):
        why = ""
        if passed < 1:  # a check failed (here, or in another process: then the loss says NaN)
            err = s.checks.error()
            why, value = (f" ({err})" if err is not None else ""), math.nan
        if not math.isfinite(value):
            raise _diverged(run, s.epoch, s.i, s.global_step, value, why)
    lr = run.opt.param_groups[0]["lr"] / run.opt.param_groups[0]["lr_mult"]
    for s, (value, _), row in zip(steps, host, sums):
        if run.logs is not None:
            run.logs.step(s.global_step, value, lr)
        for k, v in zip(s.keys, row):
            p.sums[k] = p.sums.get(k, 0.0) + v
        p.seen += s.n
    return stop


def _diverged(run: Run, epoch: int, i: int, global_step: int, value: float, why: str) -> TrainingDiverged:
    b = run.cfg.batch_size
    return TrainingDiverged(
        f"loss is {value}{why} at epoch {epoch + 1}, step {i + 1} (global step {global_step}), batch of examples "
        f"{i * b}-{(i + 1) * b - 1} of the epoch's order; last good checkpoint: {run.last_saved or 'none'}. "
        "Try a lower lr or clip_grad.")


def _test(run: Run, epoch: int) -> dict:
    try:
        with checks("sync"):  # testing reads every batch's errors back anyway: bad values raise here, named
            return run.objective.evaluate(run.model, run.test_ds, run.cfg.eval_batch_size, run.device, run.cfg.bf16,
                                      run.world)
    except LocalisationDiverged as e:  # the epoch's last steps broke a localisation net
        raise TrainingDiverged(
            f"weights became NaN/Inf by global step {run.progress.global_step} (epoch {epoch + 1}), found while "
            f"testing: {e}; last good checkpoint: {run.last_saved or 'none'}") from e


def _stop_requested(run: Run) -> bool:
    stop = run.stop.requested
    if run.world.size > 1:
        stop = dist.all_reduce_sum([float(stop)], run.device)[0] > 0
    return stop


def save(run: Run, epoch: int, step_in_epoch: int) -> Path | None:
    """Checkpoint the run as at (epoch, step_in_epoch) -> the folder (None on ranks other than 0).
    Every process takes part (their RNG states are gathered)."""
    p = run.progress
    p.epoch, p.step_in_epoch = epoch, step_in_epoch
    if step_in_epoch == 0:
        p.sums, p.seen = {}, 0
    rng = dist.gather_objects(torch.get_rng_state())
    sums = dist.gather_objects({"sums": p.sums, "seen": p.seen})  # each process's own share of the epoch
    if not run.world.main:
        return None
    bad = [k for k, v in run.model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:  # never write weights a later resume would choke on
        raise TrainingDiverged(f"weights {bad[:3]} became NaN/Inf by global step {p.global_step} "
                               f"(epoch {epoch + (step_in_epoch > 0)}); last good checkpoint: "
                               f"{run.last_saved or 'none'}. Try a lower lr or clip_grad.")
    state = {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": p.global_step,
             "wall_s": time.perf_counter() - run.t0, "world_size": run.world.size, "epoch_sums": sums}
    folder = run.run_dir / "checkpoints" / f"step-{p.global_step:08d}"
    try:
        run.last_saved = ckpt.save(folder, run.model, run.opt, state, rng=rng, extra=run.objective.state_dict())
    except OSError as e:  # a full disk, a lost mount: the previous checkpoint is untouched
        raise ckpt.CheckpointError(
            f"could not write checkpoint {folder}: {e}. The previous checkpoint "
            f"({run.last_saved or ckpt.latest_good(run.run_dir) or 'none'}) is intact; "
            "free space and continue with --resume") from e
    ckpt.prune(run.run_dir, run.cfg.keep_checkpoints)
    return run.last_saved


def _interrupted(run: Run, saved: Path | None):
    """Say (rank 0) what was saved and how to go on, wait for every process, raise TrainingInterrupted."""
    import signal

    p, signum = run.progress, run.stop.signum or signal.SIGINT
    where = f"epoch {p.epoch + 1}, step {p.step_in_epoch}" if p.step_in_epoch else f"the end of epoch {p.epoch}"
    message = (f"stopped by {signal.Signals(signum).name} at {where} (global step {p.global_step}): saved "
               f"{saved or run.last_saved}; continue with: stnkit train --resume {run.run_dir}"
               + (f" --nproc {run.world.size}" if run.world.size > 1 else ""))
    if run.world.main:
        log.warning(f"stnkit: {message}")
    dist.barrier()  # the others leave only once rank 0 has saved and said so (torchrun then stops the rest)
    raise TrainingInterrupted(message, signum, saved or run.last_saved, run.run_dir)


# -- finish --------------------------------------------------------------------------------------

def finish(run: Run) -> Path:
    """summary.json from the last epoch's row, so that summary and metrics.jsonl always agree."""
    cfg, p = run.cfg, run.progress
    last = run.rows[-1] if run.rows else {}
    changes = [h for h in runs.history(run.run_dir) if h.get("changes")] if run.world.main else []
    summary = {"model": cfg.model, "experiment": cfg.experiment, "objective": run.objective.name,
               "metric": run.objective.metric, "source": cfg.source, "seed": cfg.seed,
               "params": count_params(run.model), "epochs": cfg.epochs, "steps": p.global_step,
               "processes": run.world.size, **{k: last.get(k) for k in run.objective.test_keys},
               **run.objective.summary(run.model, run.rows), "wall_s": round(time.perf_counter() - run.t0, 1),
               "changes": [{"step": h["step"], **h["changes"]} for h in changes]}
    if run.world.main:
        atomic_write(run.run_dir / runs.SUMMARY, json.dumps(summary, indent=1))
    m = run.objective.metric
    run.say(f"done: {cfg.model} on {cfg.experiment}: {m} {summary[m]:.2f} ({summary.get('test_n')} test images), "
            f"{summary['params']:,} params, {summary['wall_s']:.0f} s -> {run.run_dir}")
    dist.barrier()  # no process leaves before the run folder is complete
    return run.run_dir
