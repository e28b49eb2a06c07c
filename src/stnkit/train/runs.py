"""The run folder: what is in it, and the rules every run follows.

    RUN/config.yaml      the resolved config: the truth a resume continues
    RUN/metrics.jsonl    one JSON line per finished epoch
    RUN/history.jsonl    one JSON line per start and resume: the step, the changes it took, the command line
    RUN/checkpoints/step-N/   atomic, checksummed (checkpoint.py)
    RUN/summary.json     written when the run finishes: what the last epoch measured
    RUN/metrics.csv      metrics.jsonl as a table, rewritten whole at each epoch end and on resume
    RUN/curves.png       error, loss and learning rate per epoch, redrawn at each epoch end
    RUN/train.log        the console's lines, appended on resume
    RUN/tensorboard/     event files, when tensorboard=true (these four: logs.py)

Rules: a new run never writes into a folder that holds one; a resume continues the folder's own
config, taking only changes that leave what has been trained alone (config.RESUMABLE).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from .. import __version__
from . import checkpoint as ckpt
from .config import RunConfig, build, diff, load_file

log = logging.getLogger("stnkit")

CONFIG, METRICS, HISTORY, SUMMARY = "config.yaml", "metrics.jsonl", "history.jsonl", "summary.json"


def run_dir_of(cfg: RunConfig) -> Path:
    """out/name; the default name: experiment-model-seedN (co-localisation: experiment-classK-seedN)."""
    tag = cfg.model if cfg.digit_class is None else f"class{cfg.digit_class}"
    return Path(cfg.out) / (cfg.name or f"{cfg.experiment}-{tag}-seed{cfg.seed}")


def holds_run(run_dir: Path) -> bool:
    return (run_dir / CONFIG).is_file() or bool(ckpt.candidates(run_dir))


def read_config(run_dir: str | Path) -> RunConfig:
    """The config a run folder trained with; a folder that holds no stnkit run is a ValueError
    saying what it is instead."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} not found; runs are under runs/ by default")
    if not (run_dir / CONFIG).is_file():
        hint = (": it was written by an older stnkit (transformer.pt, no checkpoints); train it again"
                if (run_dir / "transformer.pt").is_file() else "")
        raise ValueError(f"{run_dir} is not a run folder (no {CONFIG}){hint}")
    try:
        return build(load_file(run_dir / CONFIG))
    except ValueError as e:
        raise ValueError(f"{run_dir / CONFIG} does not describe a run this stnkit can continue: {e}") from None


def read_rows(run_dir: Path, up_to_step: int | None = None) -> list[dict]:
    """metrics.jsonl's rows (up to a global step); a line cut short by a kill is dropped."""
    path = run_dir / METRICS
    if not path.is_file():
        return []
    rows = []
    for ln in path.read_text().splitlines():
        try:
            row = json.loads(ln)
        except ValueError:
            continue
        if up_to_step is None or row["step"] <= up_to_step:
            rows.append(row)
    return rows


def write_rows(run_dir: Path, rows: list[dict]) -> None:
    from .._io import atomic_write

    atomic_write(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in rows))


def append_line(path: Path, record: dict) -> None:
    """Append one JSON line (a line cut short by a kill is skipped by the readers)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def record_start(run_dir: Path, event: str, step: int, epoch: int, changes: dict, processes: int) -> None:
    append_line(run_dir / HISTORY, {
        "event": event, "step": step, "epoch": epoch,
        "changes": {k: {"from": a, "to": b} for k, (a, b) in changes.items()},
        "processes": processes, "argv": list(sys.argv),  # the process's command line
        "stnkit": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def history(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return []
    out = []
    for ln in path.read_text().splitlines():
        try:
            out.append(json.loads(ln))
        except ValueError:
            continue
    return out


def finished(cfg: RunConfig) -> bool:
    """True when cfg's run folder holds a finished run of exactly these settings (reuse it);
    a finished run with other settings is an error rather than a silent reuse."""
    run_dir = run_dir_of(cfg)
    if not (run_dir / SUMMARY).is_file():
        return False
    saved = read_config(run_dir)  # a key added after the run was saved holds its default there
    changed = {k: v for k, v in diff(saved, cfg).items() if k not in ("progress", "threads")}
    if changed:
        text = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"{run_dir} holds a finished run with other settings ({text}); use another output folder")
    return True


def summary(run_dir: Path) -> dict | None:
    path = Path(run_dir) / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None


def load_run(run_dir: str | Path, device=None):
    """(config, model with the newest good weights, test dataset) of a finished or stopped run;
    the model in eval mode on `device` (default CPU)."""
    from .objectives import objective_for

    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    objective = objective_for(cfg)
    _, test_ds = objective.datasets(cfg)
    model = objective.build(cfg, test_ds)
    found = ckpt.latest_good(run_dir, warn=log.warning)
    if found is None:
        raise ValueError(f"{run_dir} has no usable checkpoint: its training stopped before the first one was "
                         f"written; continue it with `stnkit train --resume {run_dir}`")
    ckpt.load(found, model)
    return cfg, model.to(device or "cpu").eval(), test_ds
