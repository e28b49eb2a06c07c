"""Optional download of the full MNIST for users with internet access.

Every file is checked against its SHA-256 and written atomically: it is streamed into a
temporary file beside the target and renamed only once complete and verified, so a failure
never leaves a partial or wrong file under the real name.
"""
from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from .._io import atomic_open, sha256

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_FILES = {  # name -> SHA-256
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}


class DownloadError(RuntimeError):
    """No mirror gave a complete file with the right checksum; the message lists each try."""


def _fetch(url: str, target: Path, expected: str, timeout: float) -> None:
    h = hashlib.sha256()
    with atomic_open(target) as out, urllib.request.urlopen(url, timeout=timeout) as resp:
        total = resp.headers.get("Content-Length")
        n = 0
        for block in iter(lambda: resp.read(1 << 16), b""):
            out.write(block)
            h.update(block)
            n += len(block)
        if total is not None and n != int(total):
            raise DownloadError(f"transfer broke off after {n} of {total} bytes")
        if h.hexdigest() != expected:  # raised inside: the partial file is removed, target untouched
            raise DownloadError(f"SHA-256 mismatch: got {h.hexdigest()}, expected {expected}")


def download(
    root: str | Path,
    files: Mapping[str, str] = MNIST_FILES,
    mirrors: Sequence[str] = MNIST_MIRRORS,
    timeout: float = 30.0,
    progress=None,
) -> list[Path]:
    """Fetch `files` ({name: sha256}) into `root`, trying each mirror in turn.

    Files already present with the right checksum are kept. Returns the paths. Raises
    DownloadError naming every mirror's failure when a file cannot be had.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, expected in files.items():
        target = root / name
        if target.is_file() and sha256(target) == expected:
            paths.append(target)
            continue
        failures = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name
            if progress:
                progress(f"downloading {url}")
            try:
                _fetch(url, target, expected, timeout)
                break
            except (urllib.error.URLError, OSError, http.client.HTTPException, DownloadError) as e:
                reason = getattr(e, "reason", None) or e
                failures.append(f"  {url}: {reason}")
        else:
            offline = all("Name or service not known" in f or "Temporary failure" in f or "refused" in f for f in failures)
            hint = (
                "no mirror could be reached: are you offline? " if offline else ""
            ) + f"You can also copy the four MNIST files into {root} by hand."
            raise DownloadError(f"could not download {name}:\n" + "\n".join(failures) + "\n" + hint)
        paths.append(target)
    return paths
