"""CUB-200-2011 birds (Table 3 of the paper): 11,788 photos of 200 species, split 5,994 train and
5,794 test, one bounding box per bird.

Standard layout (the official CUB_200_2011.tgz, unpacked; `root` may also be the folder above it):
root/images.txt "id relpath", root/image_class_labels.txt "id class" (1-200),
root/train_test_split.txt "id is_train" (1 or 0), root/bounding_boxes.txt "id x y width height"
(pixels, x and y the top-left corner), and the photos under root/images/<relpath>.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .._io import require
from ..functional.coords import box_to_normalised
from .base import check_split

CUB_URL = "https://www.vision.caltech.edu/datasets/cub_200_2011/"
NUM_CLASSES = 200
_TABLES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt")


class CUBFormatError(ValueError):
    """A malformed CUB-200-2011 file; the message names the file, the line and the fault."""


def _missing_hint(root: Path) -> str:
    return (f"get CUB_200_2011.tgz from {CUB_URL} and unpack it so that {root} holds "
            f"{', '.join(_TABLES)} and images/")


def _class(s: str) -> int:
    c = int(s)
    if not 1 <= c <= NUM_CLASSES:
        raise ValueError(f"class {c} is outside 1-{NUM_CLASSES}")
    return c


def _flag(s: str) -> int:
    if s not in ("0", "1"):
        raise ValueError(f"is_train must be 0 or 1, got {s!r}")
    return int(s)


def _size(s: str) -> float:
    v = float(s)
    if not v > 0:
        raise ValueError(f"box width and height must be positive, got {s}")
    return v


def read_table(path: Path, fields: str, parse: Sequence[Callable[[str], object]]) -> dict[int, tuple]:
    """One CUB text file, a line per image "id v1 v2 ...", -> {id: (v1, v2, ...)}.

    fields names the columns for error messages; parse holds one converter per column after the id.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; {_missing_hint(path.parent)}")
    rows: dict[int, tuple] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split(None, len(parse))  # the last column may hold spaces (a path)
        if not parts:
            continue
        try:
            if len(parts) != 1 + len(parse):
                raise ValueError(f"{len(parts)} fields, expected {1 + len(parse)}")
            key, values = int(parts[0]), tuple(p(s) for p, s in zip(parse, parts[1:]))
        except ValueError as e:
            raise CUBFormatError(f"{path}:{n}: expected '{fields}', got {line.strip()!r} ({e})") from None
        if key in rows:
            raise CUBFormatError(f"{path}:{n}: image id {key} appears a second time")
        rows[key] = values
    return rows


def _find_root(root: Path) -> Path:
    if not (root / "images.txt").is_file() and (root / "CUB_200_2011" / "images.txt").is_file():
        return root / "CUB_200_2011"
    return root


def normalise_box(box: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """box (..., 4) as (x, y, width, height) in pixels of an image of size (H, W), x and y the
    top-left corner's edges -> (..., 4) as (x0, y0, x1, y1) in [-1, 1], align_corners=False.

    The result holds for the image resized to any size, as long as it is not cropped."""
    x, y, w, h = box.unbind(-1)
    return box_to_normalised(torch.stack([x, y, x + w, y + h], -1), size).clamp(-1.0, 1.0)


def _load_image(path: Path, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """A photo -> (3, size, size) float32 in [0, 1] (PIL bilinear, aspect not kept) and its original (H, W)."""
    Image = require("PIL.Image", "reading CUB-200-2011", "'stnkit[data]'")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: listed in images.txt but missing; unpack CUB_200_2011.tgz from {CUB_URL} again")
    try:
        with Image.open(path) as im:
            W, H = im.size
            pixels = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))  # (S, S, 3)
    except OSError as e:
        raise CUBFormatError(f"{path}: not a readable image ({e})") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255, (H, W)


class CUB200(Dataset):
    """CUB-200-2011, one split. Item i: (image (3, size, size) float32 in [0, 1], label in 0-199,
    box (4,) float32 as (x0, y0, x1, y1) in [-1, 1], align_corners=False).

    Attributes: ids (N,) image ids, files (N,) paths, labels (N,) int64, boxes (N, 4) float32 (x, y, w, h) pixels.
    """

    def __init__(self, root: str | Path, split: str = "train", size: int = 224):
        check_split(split)
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        root = _find_root(Path(root))
        paths = read_table(root / "images.txt", "id relpath", [str])
        tables = {
            "image_class_labels.txt": read_table(root / "image_class_labels.txt", "id class", [_class]),
            "train_test_split.txt": read_table(root / "train_test_split.txt", "id is_train", [_flag]),
            "bounding_boxes.txt": read_table(root / "bounding_boxes.txt", "id x y width height",
                                             [float, float, _size, _size]),
        }
        for name, rows in tables.items():
            if missing := sorted(set(paths) - set(rows)):
                raise CUBFormatError(f"{root / name}: no line for image id {missing[0]} "
                                     f"({len(missing)} ids of images.txt missing)")
        classes, is_train, boxes = tables.values()
        self.ids = [i for i in sorted(paths) if is_train[i][0] == (split == "train")]
        self.files = [root / "images" / paths[i][0] for i in self.ids]
        self.labels = torch.tensor([classes[i][0] - 1 for i in self.ids], dtype=torch.int64)
        self.boxes = torch.tensor([boxes[i] for i in self.ids], dtype=torch.float32).reshape(-1, 4)
        self.size = size

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        image, hw = _load_image(self.files[i], self.size)
        return image, int(self.labels[i]), normalise_box(self.boxes[i], hw)
