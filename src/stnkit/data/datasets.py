"""The paper's datasets as seeded, batched generators over real digits.

`make_dataset(name, split, ...)` -> GeneratedDataset; iterate `dataset.batches(batch_size,
epoch)` for `Batch(x, y, box)`. The test split is fixed by the seed; the training split draws
fresh distortions every epoch (`fixed=True` keeps epoch 0's for every epoch).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .._checks import did_you_mean
from .base import Batch
from .batching import _seed, rank_slices
from .distort import DISTORTIONS
from .files import DESCRIPTIONS as FILE_DESCRIPTIONS
from .files import FILES, make_file_dataset
from .sources import Digits, load_digits
from .tasks import Addition, CoLocalisation, Sequences, Volumes3D


@dataclass(frozen=True)
class Classification:
    """A distortion of one digit as a task: the label is the digit's class."""

    distortion: object

    @property
    def out_size(self):
        return self.distortion.out_size

    def make_params(self, g, n, pool_size):
        return self.distortion.make_params(g, n, pool_size)

    def apply(self, images, labels, params, pool, pool_labels):
        return self.distortion.apply(images, params, pool), labels


TASKS = {
    **{k: Classification(d) for k, d in DISTORTIONS.items()},
    "addition": Addition(),
    "coloc": CoLocalisation(),
    "coloc-clutter": CoLocalisation(clutter=16),
    "3d": Volumes3D(),
    "seq64": Sequences(canvas=64),
    "seq128": Sequences(canvas=128),
}
DESCRIPTIONS = {
    "r": "distorted MNIST R: rotation +-90 deg, 28x28",
    "rts": "distorted MNIST RTS: rotation +-45 deg, scale 0.7-1.2, translation, 42x42",
    "p": "distorted MNIST P: scale 0.75-1, corners moved by 5 px noise (projective), 28x28",
    "e": "distorted MNIST E: scale 0.75-1, elastic TPS with 1.5 px control noise, 28x28",
    "tc": "translated and cluttered MNIST: 60x60 with six 6x6 clutter patches",
    "addition": "MNIST addition: two RTS digits in two 42x42 channels, label = sum (19 classes)",
    "coloc": "co-localisation: one digit in an 84x84 canvas, with its true box",
    "coloc-clutter": "co-localisation with 16 random 6x6 clutter patches",
    "3d": "3D: an extruded digit at a random 3D pose in a 60x60x60 volume",
    "seq64": "multi-digit sequences (SVHN stand-in): 1-5 digits, 64x64 crops, 10 = no digit",
    "seq128": "multi-digit sequences, looser 128x128 crops",
    **FILE_DESCRIPTIONS,
}
NUM_CLASSES = {"addition": 19, "seq64": 11, "seq128": 11}


def names() -> list[str]:
    """Every dataset: the generated ones (TASKS), then the user's files (FILES)."""
    return list(TASKS) + list(FILES)


class GeneratedDataset:
    """A paper dataset over a split of real digits.

    name: one of `names()`; split: train | test; source: bundled | mnist | fashion-mnist;
    digit_class: keep only that class (co-localisation sets); fixed: reuse epoch 0's draws.
    """

    def __init__(self, name: str, split: str = "train", source: str = "bundled", seed: int = 0,
                 fixed: bool | None = None, digit_class: int | None = None, root=None,
                 digits: Digits | None = None):
        if name not in TASKS:
            hint = did_you_mean(name, names())
            raise ValueError(f"unknown dataset {name!r}; known: {names()}" + (f"; {hint}" if hint else ""))
        self.name, self.split, self.seed = name, split, seed
        self.task = TASKS[name]
        self.fixed = (split == "test") if fixed is None else fixed
        d = digits if digits is not None else load_digits(source, split, root)
        self.pool = d.images.float().div_(255)  # (M, 28, 28)
        self.pool_labels = d.labels
        keep = torch.arange(len(d)) if digit_class is None else (d.labels == digit_class).nonzero().flatten()
        if len(keep) == 0:
            raise ValueError(f"digit_class {digit_class!r} has no digits in the {split} split; use 0-9")
        self.index = keep
        self.num_classes = NUM_CLASSES.get(name, 10)

    def __len__(self) -> int:
        return len(self.index)

    def generator(self, epoch: int = 0, rank: int | None = None) -> torch.Generator:
        """The epoch's generator; a process of a data-parallel job (rank) gets its own stream."""
        e = 0 if self.fixed else epoch
        parts = (self.seed, self.name, self.split, e) + (() if rank is None else ("rank", rank))
        return torch.Generator().manual_seed(_seed(*parts))

    def batches(self, batch_size: int, epoch: int = 0, shuffle: bool | None = None, drop_last: bool = False,
                rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Each digit of the split once per epoch (in a seeded order for training).

        With world > 1 (data-parallel training) batch_size is the global batch: every process
        walks the same epoch order and renders its own slice of each global batch, drawing the
        distortions from a seed of (seed, rank, epoch); one process renders exactly as before.
        """
        g = self.generator(epoch)
        shuffle = self.split == "train" if shuffle is None else shuffle
        order = self.index[torch.randperm(len(self.index), generator=g)] if shuffle else self.index
        if world > 1:
            g = self.generator(epoch, rank)
        for mine in rank_slices(order, batch_size, drop_last, rank, world):
            yield self.render(mine, g)

    def render(self, idx: torch.Tensor, g: torch.Generator) -> Batch:
        """The batch for digit indices idx (B,), drawing its distortions from g."""
        images = self.pool[idx][:, None]  # (B, 1, 28, 28)
        labels = self.pool_labels[idx]
        params = self.task.make_params(g, len(idx), len(self.pool))
        return Batch(*self.task.apply(images, labels, params, self.pool, self.pool_labels))

    def sample(self, n: int, seed: int = 0) -> Batch:
        """n examples drawn from the split with their own seed (for figures and checks)."""
        g = torch.Generator().manual_seed(_seed(self.seed, self.name, "sample", seed))
        idx = self.index[torch.randint(0, len(self.index), (n,), generator=g)]
        return self.render(idx, g)


def make_dataset(name: str, split: str = "train", **kwargs):
    """GeneratedDataset for a generated dataset, FileDataset for SVHN/CUB from the user's files."""
    if name in FILES:
        return make_file_dataset(name, split, seed=kwargs.get("seed", 0), root=kwargs.get("root"))
    return GeneratedDataset(name, split, **kwargs)
