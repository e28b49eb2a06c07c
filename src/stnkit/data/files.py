"""The user's own photo datasets (SVHN, CUB-200-2011) behind the interface of the generated ones,
so `stnkit train svhn64|svhn128|cub224|cub448` runs through the same engine.

Files live under the data directory (`data_dir=`, else $STNKIT_DATA, else ~/.cache/stnkit):
`DATA/svhn/{train,test}/` as unpacked from the SVHN archives, `DATA/CUB_200_2011/` as unpacked
from CUB's archive. Nothing is downloaded; a missing folder raises FileNotFoundError saying where
to get the files and where to put them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from ..functional.coords import box_to_pixels
from .base import Batch, check_split
from .batching import _seed, rank_slices
from .sources import data_dir

FILES = {  # name -> (folder under the data dir, loader, crop/input size, classes)
    "svhn64": ("svhn", "svhn", 64, 11),
    "svhn128": ("svhn", "svhn", 128, 11),
    "cub224": ("CUB_200_2011", "cub", 224, 200),
    "cub448": ("CUB_200_2011", "cub", 448, 200),
}
DESCRIPTIONS = {
    "svhn64": "SVHN house numbers (your files, DATA/svhn/): 64x64 crops, up to 5 digits, 10 = no digit",
    "svhn128": "SVHN house numbers (your files), the looser 128x128 crops",
    "cub224": "CUB-200-2011 birds (your files, DATA/CUB_200_2011/), 224x224, 200 classes",
    "cub448": "CUB-200-2011 birds (your files), 448x448",
}


class FileDataset:
    """A split of a real dataset: `get(idx) -> Batch` for indices into it; batches in a seeded
    order for training, the file order for testing; with world > 1 each process takes its slice
    of every global batch (see GeneratedDataset.batches)."""

    def __init__(self, name: str, split: str, size: int, get: Callable, n: int, num_classes: int, seed: int = 0):
        self.name, self.split, self.size, self.seed = name, split, size, seed
        self.get, self.n, self.num_classes = get, n, num_classes

    def __len__(self) -> int:
        return self.n

    def batches(self, batch_size: int, epoch: int = 0, shuffle: bool | None = None, drop_last: bool = False,
                rank: int = 0, world: int = 1) -> Iterator:
        shuffle = self.split == "train" if shuffle is None else shuffle
        g = torch.Generator().manual_seed(_seed(self.seed, self.name, self.split, epoch))
        order = torch.randperm(self.n, generator=g) if shuffle else torch.arange(self.n)
        for mine in rank_slices(order, batch_size, drop_last, rank, world):
            yield self.get(mine)

    def sample(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(_seed(self.seed, self.name, "sample", seed))
        return self.get(torch.randint(0, self.n, (n,), generator=g))


def make_file_dataset(name: str, split: str = "train", seed: int = 0, root=None, **_) -> FileDataset:
    """The split of one of FILES from the data directory (root, else $STNKIT_DATA, else ~/.cache/stnkit)."""
    check_split(split)
    folder, kind, size, classes = FILES[name]
    path = data_dir(root) / folder
    if kind == "svhn":
        from .svhn import SVHNSequences

        ds = SVHNSequences(path, split, size)
        images, labels = ds.images, ds.labels

        def get(idx):
            return Batch(images[idx].float().div_(255), labels[idx])
    else:
        from .cub import CUB200

        ds = CUB200(path, split, size)

        def get(idx):
            items = [ds[int(i)] for i in idx]
            box = box_to_pixels(torch.stack([it[2] for it in items]), (size, size))  # (B, 4) pixel edges
            return Batch(torch.stack([it[0] for it in items]), torch.tensor([it[1] for it in items]), box)
    if len(ds) == 0:
        raise ValueError(f"{path}: the {split} split of {name} is empty")
    return FileDataset(name, split, size, get, len(ds), classes, seed)
