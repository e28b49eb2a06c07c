"""Street View House Numbers (SVHN), in its two official formats.

Full numbers (Table 2 of the paper): a folder per split (train/, test/, extra/) holding PNG
photos 1.png, 2.png, ... and digitStruct.mat, a MATLAB v7.3 (HDF5) file of per-digit boxes.
`SVHNSequences` turns it into the crops of Goodfellow et al. 2014, used by Jaderberg et al. 2015:
the union box of the digits, grown by a scale factor, cut out and resized to a square
(`CROP_SCALE`). Cropped digits: {train,test,extra}_32x32.mat (MATLAB v5), read by `svhn_cropped`.

Both come from http://ufldl.stanford.edu/housenumbers/. h5py, scipy and pillow are needed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .._io import require
from .base import NO_DIGIT, check_split
from .sources import atomic_save

DATA_EXTRA = "'stnkit[data]'"  # h5py, scipy and pillow

SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
SPLITS = ("train", "test", "extra")  # SVHN's own: it adds "extra"
MAX_DIGITS = 5  # sequences are padded to this length; longer ones are skipped
# Crop side / union-box side, per output size. 64: Goodfellow et al.'s "expand by 30% in both
# the x and the y direction", read as width and height each x1.3 (15% of the box on each side).
# 128: the looser crop of the paper's 128px column, whose exact margin is unconfirmed; we take
# the box x2 (digits span the central half of each axis, about a quarter of the area).
CROP_SCALE = {64: 1.3, 128: 2.0}
_CACHE_VERSION = 1
_FIELDS = ("left", "top", "width", "height", "label")


class SVHNFormatError(ValueError):
    """A file that is not a well-formed SVHN file; the message names the file and the fault."""


@dataclass
class DigitRecord:
    """One photo of digitStruct.mat."""

    name: str  # the PNG's file name, e.g. "1.png"
    boxes: np.ndarray  # (K, 4) float64: left, top, width, height in pixels
    labels: np.ndarray  # (K,) int64: digits 0-9 (the file's 10 is read as 0)


def _layout_hint(root: Path) -> str:
    return (
        f"get train.tar.gz / test.tar.gz / extra.tar.gz from {SVHN_URL} and unpack them in {root}, "
        f"giving {root}/train/digitStruct.mat and {root}/train/1.png, 2.png, ... (likewise test/, extra/)"
    )


# ---- digitStruct.mat ----------------------------------------------------------------------

def _read(dataset_id) -> np.ndarray:
    """A whole dataset through h5py's low-level API (4x faster than `f[ref][()]` on 33k photos)."""
    h5py = require("h5py", "reading SVHN", DATA_EXTRA)
    out = np.empty(dataset_id.shape, dtype=dataset_id.dtype)
    dataset_id.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
    return out


def _numbers(file_id, group_id, field: str) -> np.ndarray:
    """A bbox field -> (K,) float64: a (1, 1) value for one digit, else (K, 1) references to (1, 1) values."""
    h5py = require("h5py", "reading SVHN", DATA_EXTRA)
    values = _read(h5py.h5d.open(group_id, field.encode()))
    if h5py.check_dtype(ref=values.dtype) is None:
        return values.astype(np.float64).ravel()
    return np.array([_read(h5py.h5r.dereference(r, file_id)).item() for r in values.ravel()], dtype=np.float64)


def _record(file_id, name_ref, bbox_ref, path: Path, i: int) -> DigitRecord:
    h5py = require("h5py", "reading SVHN", DATA_EXTRA)
    name = "".join(chr(c) for c in _read(h5py.h5r.dereference(name_ref, file_id)).ravel())  # uint16 codes (L, 1)
    group_id = h5py.h5r.dereference(bbox_ref, file_id)
    fields = {k: _numbers(file_id, group_id, k) for k in _FIELDS}  # each (K,)
    k = {len(v) for v in fields.values()}
    if len(k) != 1 or 0 in k:
        raise SVHNFormatError(f"{path}: image {i + 1} ({name}) has box fields of lengths "
                              f"{ {n: len(v) for n, v in fields.items()} }; expected equal and non-zero")
    labels = fields["label"]
    if not np.all(np.isin(labels, np.arange(1, 11))):
        raise SVHNFormatError(f"{path}: image {i + 1} ({name}) has labels {labels.tolist()}; expected 1-10")
    boxes = np.stack([fields[n] for n in _FIELDS[:4]], axis=1)  # (K, 4)
    return DigitRecord(name, boxes, (labels % 10).astype(np.int64))


def read_digit_struct(path: str | Path) -> list[DigitRecord]:
    """Every photo of a digitStruct.mat: its file name, digit boxes and digit labels.

    Layout (HDF5): /digitStruct/name and /digitStruct/bbox are (N, 1) object references; a name
    points at uint16 character codes, a bbox at a group with fields height, left, top, width, label.
    """
    h5py = require("h5py", "reading SVHN", DATA_EXTRA)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; {_layout_hint(path.parent.parent)}")
    try:
        with h5py.File(path, "r") as f:
            if "digitStruct" not in f:
                raise SVHNFormatError(f"{path}: no /digitStruct group; is this SVHN's digitStruct.mat?")
            names, bboxes = f["digitStruct/name"][()].ravel(), f["digitStruct/bbox"][()].ravel()
            if len(names) != len(bboxes):
                raise SVHNFormatError(f"{path}: {len(names)} names but {len(bboxes)} bboxes")
            return [_record(f.id, n, b, path, i) for i, (n, b) in enumerate(zip(names, bboxes))]
    except SVHNFormatError:
        raise
    except (OSError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise SVHNFormatError(
            f"{path}: corrupt, truncated or not SVHN's MATLAB v7.3 digitStruct.mat ({type(e).__name__}: {e}); "
            f"download it again from {SVHN_URL}"
        ) from None


# ---- crops ----------------------------------------------------------------------------------

def union_box(boxes: np.ndarray) -> np.ndarray:
    """boxes (K, 4) as (left, top, width, height) -> their union (4,) as (x0, y0, x1, y1)."""
    x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
    x1, y1 = (boxes[:, 0] + boxes[:, 2]).max(), (boxes[:, 1] + boxes[:, 3]).max()
    return np.array([x0, y0, x1, y1], dtype=np.float64)


def expand_box(box: np.ndarray, scale: float) -> np.ndarray:
    """(x0, y0, x1, y1) -> the box about the same centre with width and height x `scale` (at least 1 px)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half_w, half_h = max(box[2] - box[0], 1.0) * scale / 2, max(box[3] - box[1], 1.0) * scale / 2
    return np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h])


def crop_resize(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """image (H, W, 3) uint8, box (x0, y0, x1, y1) in pixel edges (0 = left edge of the image)
    -> (size, size, 3) uint8, bilinear, aspect not kept; outside the image the edge pixels repeat."""
    Image = require("PIL.Image", "reading SVHN", DATA_EXTRA)
    H, W, _ = image.shape
    x0, y0, x1, y1 = box
    left, top = max(0, math.ceil(-x0)), max(0, math.ceil(-y0))
    right, bottom = max(0, math.ceil(x1 - W)), max(0, math.ceil(y1 - H))
    if left or top or right or bottom:
        image = np.pad(image, ((top, bottom), (left, right), (0, 0)), mode="edge")
    region = (x0 + left, y0 + top, x1 + left, y1 + top)
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, box=region))


def sequence_label(digits: np.ndarray) -> np.ndarray:
    """digits (K,) with K <= 5 -> (5,) int64, padded with NO_DIGIT (10)."""
    out = np.full(MAX_DIGITS, NO_DIGIT, dtype=np.int64)
    out[: len(digits)] = digits
    return out


def _read_png(path: Path) -> np.ndarray:
    Image = require("PIL.Image", "reading SVHN", DATA_EXTRA)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: listed in digitStruct.mat but missing; {_layout_hint(path.parent.parent)}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as e:
        raise SVHNFormatError(f"{path}: not a readable image ({e}); download the split again from {SVHN_URL}") from None


def build_crops(folder: str | Path, size: int = 64) -> dict[str, np.ndarray]:
    """Crop every photo of one split folder: images (N, 3, S, S) uint8, labels (N, 5) int64,
    lengths (N,) int64, names (N,) str, skipped () int64 (photos with more than 5 digits, left out)."""
    folder = Path(folder)
    records = read_digit_struct(folder / "digitStruct.mat")
    kept = [r for r in records if len(r.labels) <= MAX_DIGITS]
    images = np.empty((len(kept), 3, size, size), dtype=np.uint8)
    for i, r in enumerate(kept):
        box = expand_box(union_box(r.boxes), CROP_SCALE[size])
        images[i] = crop_resize(_read_png(folder / r.name), box, size).transpose(2, 0, 1)  # (S, S, 3) -> (3, S, S)
    return {
        "images": images,
        "labels": np.array([sequence_label(r.labels) for r in kept], dtype=np.int64).reshape(-1, MAX_DIGITS),
        "lengths": np.array([len(r.labels) for r in kept], dtype=np.int64),
        "names": np.array([r.name for r in kept], dtype=str),
        "skipped": np.array(len(records) - len(kept), dtype=np.int64),
    }


def _load_cache(path: Path, source_bytes: int) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path) as z:
            if int(z["version"]) != _CACHE_VERSION or int(z["source_bytes"]) != source_bytes:
                return None
            return {k: z[k] for k in ("images", "labels", "lengths", "names", "skipped")}
    except (OSError, ValueError, KeyError, EOFError):
        return None  # damaged or foreign: rebuilt, never trusted


def cached_crops(folder: str | Path, size: int = 64) -> dict[str, np.ndarray]:
    """`build_crops`, saved once as <folder>/stnkit-crops-<size>px.npz (written atomically) and
    reused while digitStruct.mat keeps its size."""
    folder = Path(folder)
    mat = folder / "digitStruct.mat"
    if not mat.is_file():
        raise FileNotFoundError(f"SVHN split folder {folder} has no digitStruct.mat; {_layout_hint(folder.parent)}")
    cache, source_bytes = folder / f"stnkit-crops-{size}px.npz", mat.stat().st_size
    if cache.is_file() and (arrays := _load_cache(cache, source_bytes)) is not None:
        return arrays
    arrays = build_crops(folder, size)
    try:
        atomic_save(cache, version=np.array(_CACHE_VERSION), source_bytes=np.array(source_bytes), **arrays)
    except OSError:
        pass  # a read-only folder only costs the preprocessing next time
    return arrays


class SVHNSequences(Dataset):
    """SVHN house-number sequences of up to 5 digits, cropped around the digits (see `CROP_SCALE`).

    root holds train/, test/ and extra/ as unpacked from the official archives. Attributes:
    images (N, 3, S, S) uint8, labels (N, 5) int64 (digits 0-9, then 10 = no digit),
    lengths (N,) int64, names (N,) file names, skipped: photos with more than 5 digits left out.
    Item i: (image (3, S, S) float32 in [0, 1], labels (5,) int64, length () int64).
    """

    def __init__(self, root: str | Path, split: str = "train", size: int = 64):
        check_split(split, SPLITS)
        if size not in CROP_SCALE:
            raise ValueError(f"size must be one of {sorted(CROP_SCALE)} (the paper's 64px and 128px crops), got {size!r}")
        arrays = cached_crops(Path(root) / split, size)
        self.images = torch.from_numpy(arrays["images"])
        self.labels = torch.from_numpy(arrays["labels"])
        self.lengths = torch.from_numpy(arrays["lengths"])
        self.names = [str(n) for n in arrays["names"]]
        self.skipped = int(arrays["skipped"])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.images[i].float() / 255, self.labels[i], self.lengths[i]


# ---- cropped digits (32x32) -----------------------------------------------------------------

def read_cropped_mat(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A {split}_32x32.mat (X (32, 32, 3, N) uint8, y (N, 1) with 10 for the digit 0)
    -> images (N, 3, 32, 32) uint8 and labels (N,) int64 in 0-9."""
    sio = require("scipy.io", "reading SVHN", DATA_EXTRA)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; get {path.name} from {SVHN_URL} (format 2, cropped digits) "
                                f"and put it in {path.parent}")
    try:
        mat = sio.loadmat(path, variable_names=["X", "y"])
    except Exception as e:  # scipy raises a zoo of types (ValueError, MatReadError, zlib.error, ...) for bad files
        raise SVHNFormatError(f"{path}: corrupt, truncated or not a MATLAB v5 file ({type(e).__name__}: {e}); "
                              f"download it again from {SVHN_URL}") from None
    if "X" not in mat or "y" not in mat:
        raise SVHNFormatError(f"{path}: expected variables X and y, found {sorted(k for k in mat if not k.startswith('__'))}")
    x, y = mat["X"], mat["y"].ravel()
    if x.ndim != 4 or x.shape[2] != 3 or x.dtype != np.uint8:
        raise SVHNFormatError(f"{path}: expected X (H, W, 3, N) uint8, got {x.dtype} {x.shape}")
    if len(y) != x.shape[3] or not np.all(np.isin(y, np.arange(0, 11))):
        raise SVHNFormatError(f"{path}: expected y (N, 1) with N = {x.shape[3]} labels in 1-10, "
                              f"got {y.size} with values {np.unique(y)[:12].tolist()}")
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), (y % 10).astype(np.int64)  # (H, W, 3, N) -> (N, 3, H, W)


def svhn_cropped(root: str | Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The cropped-digit split <root>/<split>_32x32.mat: images (N, 3, 32, 32) uint8, labels (N,) int64."""
    check_split(split, SPLITS)
    x, y = read_cropped_mat(Path(root) / f"{split}_32x32.mat")
    return torch.from_numpy(x), torch.from_numpy(y)
