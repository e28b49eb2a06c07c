"""What a run leaves to be read besides metrics.jsonl, written by rank 0 only:

    RUN/metrics.csv      one row per finished epoch, the same numbers as metrics.jsonl
    RUN/curves.png       error, loss and learning rate per epoch, redrawn at each epoch end
    RUN/train.log        the console's lines (appended on resume)
    RUN/tensorboard/     event files when tensorboard=true: training loss and lr every log_every
                         steps, every number of each epoch's row, the transformer figure

The engine opens a RunLogs when the run folder is ready and closes it however the run ends."""
from __future__ import annotations

import csv
import io
import json
import logging
import numbers
from pathlib import Path

import torch

from .._io import atomic_write, require

log = logging.getLogger("stnkit")

CSV, CURVES, LOG, TENSORBOARD = "metrics.csv", "curves.png", "train.log", "tensorboard"


def check(cfg) -> None:
    """Fail before any work when the config asks for a log this machine cannot write."""
    if cfg.tensorboard:
        require("tensorboard", "config key tensorboard=true", "stnkit[tb]")  # first: the message names it
        require("torch.utils.tensorboard", "config key tensorboard=true", "stnkit[tb]")


def write_csv(path: Path, rows: list[dict]) -> Path:
    """rows -> a CSV with every key as a column, in order of first appearance; a list (e.g.
    co-localisation's restart_loss) as its JSON text, a key a row lacks as an empty cell."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, lineterminator="\n")
    w.writeheader()
    w.writerows({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()} for r in rows)
    return atomic_write(path, buf.getvalue())


def scalars(row: dict) -> list[tuple[str, float]]:
    """An epoch row's numbers as TensorBoard tags: epoch/KEY, a list's items as epoch/KEY/i (the
    step, their x axis, left out)."""
    out = []
    for k, v in row.items():
        for i, x in enumerate(v) if isinstance(v, list) else [(None, v)]:
            if isinstance(x, numbers.Real) and not isinstance(x, bool) and k != "step":
                out.append((f"epoch/{k}" + ("" if i is None else f"/{i}"), float(x)))
    return out


class Early(logging.Handler):
    """Keeps the lines said while a run is opened, before its folder may be written to; a
    context manager (attached while open)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def __enter__(self):
        log.addHandler(self)
        self.restore = _info_level()  # (not self.level: that is the handler's own threshold)
        return self

    def __exit__(self, *exc):
        log.removeHandler(self)
        _restore_level(self.restore)


def _info_level() -> int | None:
    """Let stnkit's info lines through to train.log when nobody configured logging (a library
    caller's logger stops at warnings by default; the console shows nothing new then: Python's
    last-resort handler prints warnings only). Where handlers were set up (logging.basicConfig,
    the caller's own), their levels are theirs to keep. -> the level to restore, or None."""
    ours = (Early, logging.FileHandler)
    configured = logging.getLogger().handlers or [h for h in log.handlers if not isinstance(h, ours)]
    if log.getEffectiveLevel() > logging.INFO and not configured:
        before = log.level
        log.setLevel(logging.INFO)
        return before
    return None


def _restore_level(level: int | None) -> None:
    if level is not None:
        log.setLevel(level)


class RunLogs:
    """The run folder's logs. main: whether this process writes (rank 0); global_step: where the
    run starts (a resumed run's TensorBoard events after it are dropped); early: lines already
    said, written to train.log first."""

    def __init__(self, run_dir: Path, cfg, main: bool, global_step: int, early: list[str] = ()):
        self.run_dir, self.cfg, self.main = Path(run_dir), cfg, main
        self.file, self.writer, self.level = None, None, None
        if not main:
            return
        with open(self.run_dir / LOG, "a", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in early)
        self.file = logging.FileHandler(self.run_dir / LOG, mode="a", encoding="utf-8")
        self.file.setFormatter(logging.Formatter("%(message)s"))
        self.file.setLevel(logging.INFO)
        log.addHandler(self.file)
        self.level = _info_level()
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # a resume continues at global_step + 1: what an earlier try logged after that is hidden
                self.writer = SummaryWriter(str(self.run_dir / TENSORBOARD),
                                            purge_step=global_step + 1 if global_step else None)
            except BaseException:
                self.close()  # the log file is let go even when the writer cannot start
                raise

    def step(self, global_step: int, loss: float, lr: float) -> None:
        """After an optimizer step: the step's loss (already on the host) every log_every steps."""
        if self.writer is not None and global_step % self.cfg.log_every == 0:
            self.writer.add_scalar("train/loss", loss, global_step)
            self.writer.add_scalar("train/lr", lr, global_step)

    def epoch(self, rows: list[dict], figure=None) -> None:
        """At an epoch end: CSV and curves from every row so far; the last row's numbers and the
        figure (a callable returning a matplotlib Figure, or None) to TensorBoard."""
        if not self.main:
            return
        self.rows(rows)
        from ..app.curves import curves_figure
        from ..app.plots import save_figure

        save_figure(curves_figure([(self.run_dir.name, rows)]), self.run_dir / CURVES)
        if self.writer is not None:
            row = rows[-1]
            for tag, v in scalars(row):
                self.writer.add_scalar(tag, v, row["step"])
            if figure is not None:
                self.writer.add_figure("transformers", figure(), row["step"])
            self.writer.flush()

    def rows(self, rows: list[dict]) -> None:
        """metrics.csv from these rows (also when a resume dropped rows after its checkpoint)."""
        if self.main:
            write_csv(self.run_dir / CSV, rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.file is not None:
            log.removeHandler(self.file)
            self.file.close()
            self.file = None
        _restore_level(self.level)
        self.level = None


def transformer_figure_of(model, test_ds, classifies: bool, device, n: int = 8):
    """A callable drawing the transformers of model on n fixed test examples, or None when the
    model has none (what TensorBoard shows each epoch)."""
    from ..models import transformers

    if not transformers(model):
        return None

    def draw():
        from ..app.figures import transformer_figure

        with torch.random.fork_rng(devices=[]):  # drawing never moves the run's random streams
            batch = test_ds.sample(n, seed=0)
            was = model.training
            try:
                return transformer_figure(model, batch.x.to(device), batch.y if classifies else None,
                                          None if classifies else batch.box)
            finally:
                model.train(was)
    return draw
