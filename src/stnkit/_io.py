"""Small file helpers shared by downloads and checkpoints."""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
