"""The IDX file format of MNIST and Fashion-MNIST (raw or gzip), read with every header checked.

Layout: a 4-byte magic (0, 0, type code, number of dimensions), then one big-endian uint32 per
dimension, then the data, big-endian, in C order.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .._io import atomic_write

_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IDXError(ValueError):
    """A file that is not a well-formed IDX file; the message names the file and the fault."""


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise IDXError(f"{path}: no such file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip, whatever the name says
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise IDXError(f"{path}: corrupt or truncated gzip data ({e})") from None
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (`.gz` or raw) into an array of its stored dtype and shape."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IDXError(f"{path}: {len(data)} bytes is too short for an IDX header")
    zero, code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or code not in _TYPES or ndim == 0:
        raise IDXError(
            f"{path}: bad magic number {data[:4].hex()} (expected 0000 + a type code in "
            f"{sorted(hex(c) for c in _TYPES)} + a dimension count); is this an IDX file?"
        )
    head = 4 + 4 * ndim
    if len(data) < head:
        raise IDXError(f"{path}: header promises {ndim} dimensions but the file ends at byte {len(data)}")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_TYPES[code])
    want = int(np.prod(shape)) * dtype.itemsize
    got = len(data) - head
    if got != want:
        kind = "truncated" if got < want else "has trailing bytes"
        raise IDXError(f"{path}: {kind}: shape {shape} of {dtype} needs {want} data bytes, found {got}")
    return np.frombuffer(data, dtype=dtype, offset=head).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx_pair(images: str | Path, labels: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8 and labels (N,) int64 from an IDX image file and label file."""
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise IDXError(f"{images}: expected uint8 images (N, H, W), got {x.dtype} {x.shape}")
    if y.ndim != 1:
        raise IDXError(f"{labels}: expected labels (N,), got shape {y.shape}")
    if len(x) != len(y):
        raise IDXError(f"{images} has {len(x)} images but {labels} has {len(y)} labels")
    return x, y.astype(np.int64)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write an array as IDX (gzip if the name ends in .gz): for fixtures and exports."""
    array = np.ascontiguousarray(array)
    codes = {np.dtype(t): c for c, t in _TYPES.items()}
    code = codes.get(array.dtype.newbyteorder(">")) or codes.get(array.dtype)
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; use uint8, int8, int16, int32, float32 or float64")
    body = bytes([0, 0, code, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    body += array.astype(array.dtype.newbyteorder(">")).tobytes()
    path = Path(path)
    atomic_write(path, gzip.compress(body) if path.suffix == ".gz" else body)
