"""Checkpoints: weights in safetensors, optimizer tensors and RNG states in a second safetensors
file, and a JSON training state with the SHA-256 of both. Each checkpoint is written into a
temporary folder and renamed into place, so a crash or a full disk never leaves a half-written
checkpoint under a real name; a checkpoint whose files do not match their checksums is
reported and skipped."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .._io import sha256

log = logging.getLogger("stnkit")

MODEL, EXTRA, STATE = "model.safetensors", "extra.safetensors", "state.json"
EXTRA_PREFIX = "x."


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or corrupted; the message names the file."""


def _split_optimizer(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, st in opt_state["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, k = key.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    for key, v in meta["scalars"].items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_states(per_rank: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """This process's RNG states; per_rank: the CPU RNG state of every process of a parallel job."""
    per_rank = per_rank or [torch.get_rng_state()]
    out = {"rng.torch": per_rank[0], **{f"rng.torch.rank{r}": s for r, s in enumerate(per_rank) if r}}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def set_rng_states(tensors: dict[str, torch.Tensor], rank: int = 0) -> None:
    torch.set_rng_state(tensors.get(f"rng.torch.rank{rank}", tensors["rng.torch"]))
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict,
         rng: list[torch.Tensor] | None = None, extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint to `folder` atomically (temporary folder + rename). rng: every
    process's CPU RNG state in a data-parallel job (default: this process's); extra: more
    tensors to keep (an objective's RNG streams), given back by `load` as state["extra"]."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / MODEL))
        tensors, meta = _split_optimizer(optimizer.state_dict())
        mine = {f"{EXTRA_PREFIX}{k}": v.detach().cpu().contiguous() for k, v in (extra or {}).items()}
        save_file({**tensors, **rng_states(rng), **mine}, str(tmp / EXTRA))
        full = {**state, "optimizer": meta, "sha256": {MODEL: sha256(tmp / MODEL), EXTRA: sha256(tmp / EXTRA)}}
        with open(tmp / STATE, "w") as f:
            json.dump(full, f)
            f.flush()
            os.fsync(f.fileno())
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def verify(folder: Path) -> dict:
    """The checkpoint's state after checking every file against its checksum."""
    folder = Path(folder)
    state_path = folder / STATE
    try:
        state = json.loads(state_path.read_text())
        sums = state["sha256"]
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{state_path}: unreadable training state ({e})") from None
    for name, want in sums.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        got = sha256(path)
        if got != want:
            raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupted): {got} != {want}")
    return state


def load(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
         rank: int = 0) -> dict:
    """Restore weights (and optimizer and this process's RNG states) from a verified checkpoint;
    -> its state, with the `extra` tensors given to save() under "extra" when optimizer is given."""
    folder = Path(folder)
    state = verify(folder)
    model.load_state_dict(load_file(str(folder / MODEL)))
    if optimizer is not None:
        extra = load_file(str(folder / EXTRA))
        optimizer.load_state_dict(_join_optimizer(extra, state["optimizer"]))
        set_rng_states(extra, rank)
        state["extra"] = {k[len(EXTRA_PREFIX):]: v for k, v in extra.items() if k.startswith(EXTRA_PREFIX)}
    return state


def candidates(run_dir: Path) -> list[Path]:
    """Checkpoint folders of a run, newest (highest global step) first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def latest_good(run_dir: Path, warn=None) -> Path | None:
    """The newest checkpoint that verifies; damaged newer ones are reported with their file."""
    for folder in candidates(run_dir):
        try:
            verify(folder)
            return folder
        except CheckpointError as e:
            (warn or log.warning)(f"skipping damaged checkpoint: {e}")
    return None


def remove_partial(run_dir: Path) -> list[Path]:
    """Delete temporary folders left by a checkpoint write that was killed; -> what was removed."""
    root = Path(run_dir) / "checkpoints"
    left = sorted(p for p in root.glob(".step-*") if p.is_dir()) if root.is_dir() else []
    for p in left:
        shutil.rmtree(p, ignore_errors=True)
    return left


def prune(run_dir: Path, keep: int) -> None:
    for folder in candidates(run_dir)[keep:]:
        shutil.rmtree(folder, ignore_errors=True)
