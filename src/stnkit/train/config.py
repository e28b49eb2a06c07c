"""Run settings: one dataclass, small YAML files per experiment, `key=value` overrides on top,
and the resolved config saved beside every run's results."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .._checks import did_you_mean
from .._io import atomic_write


CONFIGS = Path(__file__).resolve().parent / "configs"  # one YAML per experiment, shipped in the package


@dataclass
class RunConfig:
    """Every setting of a run; HELP says what each key means (and `stnkit train --help` shows it)."""

    experiment: str = "rts"
    model: str = "st-cnn-affine"
    source: str = "bundled"
    data_dir: str | None = None
    out: str = "runs"
    name: str | None = None
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_steps: list[int] = field(default_factory=list)
    gamma: float = 0.1
    loc_lr_mult: float = 1.0
    clip_grad: float | None = None
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    st_size: str | int | list[int] | None = None
    budget: int | None = None
    match_budget: str | None = None
    digit_class: int | None = None
    curriculum_epochs: int = 0
    restarts: int = 1
    fixed_train: bool = False
    steps_per_epoch: int | None = None
    eval_batch_size: int = 500
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    threads: int | None = None
    progress: bool = True
    log_every: int = 50
    sync_every: int = 0
    tensorboard: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


HELP = {  # one line per key of RunConfig: the one place that says what a key means
    "experiment": "dataset to train on (stnkit data list)",
    "model": "model name (stnkit.models.list_models()); co-localisation: coloc-attention",
    "source": "digits the generated datasets draw from: bundled | mnist | fashion-mnist",
    "data_dir": "data directory (null: $STNKIT_DATA, else ~/.cache/stnkit)",
    "out": "folder of run folders: a run is written to out/name",
    "name": "run folder name (null: experiment-model-seedN)",
    "epochs": "passes over the training set",
    "batch_size": "training examples per step (data-parallel: the global batch, split over processes)",
    "optimizer": "sgd | adam",
    "lr": "learning rate",
    "momentum": "SGD momentum",
    "weight_decay": "L2 weight decay",
    "lr_steps": "epochs after which lr *= gamma, e.g. [5, 8]",
    "gamma": "learning-rate factor at each of lr_steps",
    "loc_lr_mult": "learning-rate multiplier of localisation nets and regressions",
    "clip_grad": "max gradient norm (null: no clipping)",
    "seed": "random seed: weights, data order and distortions",
    "device": "auto | cpu | cuda | cuda:N",
    "bf16": "bf16 autocast",
    "st_size": "ST output size: null (the input's), half, N or [H, W]; models without an ST ignore it",
    "budget": "parameter count to size the model to (null: the model's own size)",
    "match_budget": "or: size the model to this other model's parameter count (e.g. cnn)",
    "digit_class": "co-localisation: the one digit class of the image set (null: 3)",
    "curriculum_epochs": "co-localisation: epochs over which digit placement widens from the centre to the canvas",
    "restarts": "co-localisation: transformers trained side by side; the lowest final training loss is kept",
    "fixed_train": "reuse epoch 0's training distortions every epoch",
    "steps_per_epoch": "cap on steps per epoch, for quick runs and tests (null: the whole training set)",
    "eval_batch_size": "test batch size; part of what a generated test set is (distortions drawn per batch)",
    "checkpoint_every": "also checkpoint every N steps inside an epoch (0: at epoch ends only)",
    "keep_checkpoints": "checkpoints kept in the run folder, newest first",
    "threads": "torch CPU threads (null: torch's default)",
    "progress": "progress bars (on a terminal)",
    "log_every": "TensorBoard: training scalars every N steps",
    "sync_every": "read the training loss back (and check it for NaN) every N steps (0: every step on a CPU, "
                  "every log_every steps on a GPU, where each read waits for the GPU); a NaN is named by its step",
    "tensorboard": "also write TensorBoard event files to RUN/tensorboard (pip install stnkit[tb])",
}
_CHOICES = {"optimizer": ("sgd", "adam"), "source": ("bundled", "mnist", "fashion-mnist")}
COLOC_EXPERIMENTS = ("coloc", "coloc-clutter")  # trained with the co-localisation objective
COLOC_MODEL = "coloc-attention"
# Keys a resumed run may change: they decide how long it goes on, where data is read and how it
# is watched, never what has already been trained. `out` and `name` say where the run lives.
# (Not eval_batch_size: a generated test set draws its distortions batch by batch, so it is part
# of what the test set is.)
RESUMABLE = ("epochs", "threads", "progress", "checkpoint_every", "keep_checkpoints", "data_dir", "device",
             "log_every", "sync_every", "tensorboard")
PLACE = ("out", "name")


def _is_size(v) -> bool:
    """null, "half", a positive side length or a positive [H, W]."""
    def pos(n):
        return isinstance(n, int) and not isinstance(n, bool) and n > 0
    return v is None or v == "half" or pos(v) or (isinstance(v, (list, tuple)) and len(v) == 2 and all(map(pos, v)))


def validate(cfg: RunConfig) -> RunConfig:
    """Reject bad values before any work, naming the key and what is allowed."""
    from ..data import names as dataset_names
    from ..models import list_models

    def bad(key, allowed, known=()):
        hint = did_you_mean(getattr(cfg, key), known)
        raise ValueError(f"config key {key!r} = {getattr(cfg, key)!r} is not allowed: {allowed}"
                         + (f"; {hint}" if hint else ""))

    for key, allowed in _CHOICES.items():
        if getattr(cfg, key) not in allowed:
            bad(key, f"one of {list(allowed)}", allowed)
    if not _is_size(cfg.st_size):
        bad("st_size", "null (the input's size), 'half', a positive integer N (N x N) or [H, W] of positive integers")
    if cfg.experiment not in dataset_names():
        bad("experiment", f"one of {dataset_names()}", dataset_names())
    if cfg.model not in list_models():
        bad("model", f"one of {list_models()}", list_models())
    if (cfg.experiment in COLOC_EXPERIMENTS) != (cfg.model == COLOC_MODEL):
        bad("model", f"{COLOC_MODEL!r} for the co-localisation experiments {list(COLOC_EXPERIMENTS)}, "
                     "and only for them")
    if cfg.match_budget is not None and cfg.match_budget not in list_models():
        bad("match_budget", f"a model name, one of {list_models()}", list_models())
    for key in ("epochs", "batch_size", "eval_batch_size", "log_every"):
        if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) <= 0:
            bad(key, "a positive integer")
    for key in ("lr", "gamma", "loc_lr_mult"):
        v = getattr(cfg, key)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            bad(key, "a positive finite number")
    for key in ("momentum", "weight_decay"):
        v = getattr(cfg, key)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            bad(key, "a finite number >= 0")
    if cfg.clip_grad is not None and not (isinstance(cfg.clip_grad, (int, float)) and cfg.clip_grad > 0):
        bad("clip_grad", "null or a positive number")
    if not all(isinstance(s, int) and s > 0 for s in cfg.lr_steps):
        bad("lr_steps", "a list of positive epoch numbers")
    if cfg.digit_class is not None and cfg.digit_class not in range(10):
        bad("digit_class", "null or a digit 0-9")
    if not isinstance(cfg.restarts, int) or isinstance(cfg.restarts, bool) or cfg.restarts < 1:
        bad("restarts", "a positive integer")
    if cfg.restarts > 1 and cfg.model != COLOC_MODEL:
        bad("restarts", f"1: restarts apply to co-localisation ({COLOC_MODEL}) only")
    for key in ("steps_per_epoch", "budget", "threads"):
        v = getattr(cfg, key)
        if v is not None and (not isinstance(v, int) or v <= 0):
            bad(key, "null or a positive integer")
    for key in ("checkpoint_every", "curriculum_epochs", "sync_every"):
        v = getattr(cfg, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            bad(key, "an integer >= 0")
    if not isinstance(cfg.keep_checkpoints, int) or cfg.keep_checkpoints < 1:
        bad("keep_checkpoints", "an integer >= 1")
    for key in ("progress", "bf16", "fixed_train", "tensorboard"):
        if not isinstance(getattr(cfg, key), bool):
            bad(key, "true or false")
    if not (cfg.device in ("auto", "cpu", "cuda") or str(cfg.device).startswith("cuda:")):
        bad("device", "auto, cpu, cuda or cuda:N")
    return cfg


def parse_override(text: str) -> tuple[str, object]:
    """'lr=0.1' -> ('lr', 0.1); values are read as YAML (numbers, null, lists, true/false)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def build(base: dict | None = None, overrides: dict | None = None) -> RunConfig:
    """RunConfig from a mapping plus overrides; unknown keys raise ValueError listing the known."""
    known = {f.name for f in dataclasses.fields(RunConfig)}
    merged = {**(base or {}), **(overrides or {})}
    unknown = sorted(set(merged) - known)
    if unknown:
        hints = {k: did_you_mean(k, known) for k in unknown}
        which = ", ".join(f"{k!r} ({hint})" if hint else repr(k) for k, hint in hints.items())
        raise ValueError(f"unknown config key{'s' * (len(unknown) > 1)} {which}; known keys: {sorted(known)} "
                         "(stnkit train --help says what each means)")
    return validate(RunConfig(**merged))


def load_file(path: str | Path) -> dict:
    """A YAML config file as a dict; a file that is not YAML, or not a mapping, is a ValueError
    naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{path}{where}: not valid YAML ({what}); write one `key: value` per line") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file; a config is YAML, one `key: value` per line") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must be a mapping of key: value, got {type(data).__name__}")
    return data


def save(cfg: RunConfig, path: Path) -> None:
    atomic_write(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def diff(saved: RunConfig, wanted: RunConfig) -> dict[str, tuple]:
    """{key: (saved value, wanted value)} for every key that differs, where the run lives aside."""
    a, b = saved.to_dict(), wanted.to_dict()
    return {k: (a[k], b[k]) for k in a if a[k] != b[k] and k not in PLACE}


def resume_changes(saved: RunConfig, wanted: RunConfig) -> dict[str, tuple]:
    """The changes a resumed run may take, or a ValueError naming the first key that would change
    what the run has already trained."""
    changes = diff(saved, wanted)
    refused = {k: v for k, v in changes.items() if k not in RESUMABLE}
    if refused:
        text = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
        raise ValueError(f"cannot change {text} on resume: that would change what this run has already trained. "
                         f"Start a new run instead (name=...); a resumed run may change only {list(RESUMABLE)}")
    return changes
