"""Data: real digit sources and the paper's datasets as seeded generators."""
from .base import NO_DIGIT, SPLITS, Batch, Task
from .datasets import DESCRIPTIONS, GeneratedDataset, make_dataset, names
from .download import DownloadError, download
from .idx import IDXError, read_idx, read_idx_pair, write_idx
from .cub import CUB200
from .sources import Digits, bundled_mnist, data_dir, idx_digits, load_digits
from .svhn import SVHNSequences, svhn_cropped

__all__ = [
    "Batch", "CUB200", "NO_DIGIT", "SPLITS", "Task", "DESCRIPTIONS", "SVHNSequences", "svhn_cropped", "Digits", "DownloadError", "GeneratedDataset", "IDXError", "bundled_mnist",
    "data_dir", "download", "idx_digits", "load_digits", "make_dataset", "names", "read_idx",
    "read_idx_pair", "write_idx",
]
