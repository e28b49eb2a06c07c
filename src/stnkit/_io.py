"""The one home of file side effects: checksums, atomic writes and optional packages."""
from __future__ import annotations

import hashlib
import importlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator:
    """Open a uniquely named temporary file beside `path`; on a clean exit it is flushed to disk
    and renamed over `path`, on an error it is removed. Readers see the old file or the whole
    new one, never a part, and two writers never share a temporary file."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write text or bytes to `path` atomically (see atomic_open) -> path."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return Path(path)


class MissingDependency(ImportError):
    """An optional package is not installed; the message says what needs it and what to pip install."""


def require(module: str, purpose: str, install: str | None = None):
    """Import an optional package or raise MissingDependency: "`purpose` needs `module`: pip
    install `install`" (install: the pip argument, by default the module's name)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(f"{purpose} needs {module.split('.')[0]}: pip install {install or module}") from None
