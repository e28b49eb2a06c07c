"""Deformable convolution's compiled CPU kernel (`deform_cpu.cpp`), built on first use.

The first CPU call of `stnkit.deform_conv2d` compiles `deform_cpu.cpp` with the system C++
compiler ($CXX, else c++, g++ or clang++; about 2 s) into $XDG_CACHE_HOME/stnkit/kernels
(~/.cache/stnkit/kernels), keyed by a hash of the source, the compiler, its flags and the CPU,
and loads it with ctypes. No torch headers: the library does not depend on torch's ABI. Where it
cannot be built (no compiler, or STNKIT_NATIVE=0), `available()` is False, `why_not()` says why,
and deform_conv2d runs on its grid_sample path (`functional/deform.py`), which gives the same
results, slower: a warning says so once.

    available() / why_not()                     whether the kernel is loaded, and if not why
    forward(x, offset, weight, bias, mask, geo)  as functional.deform.forward
    backward(grad, x, offset, weight, mask, geo, need_bias)  as functional.deform.backward

Work is done in chunks (batch items, and output rows when one item is too large) whose columns
and tap table stay under CHUNK_BYTES; within a chunk, the kernel's work units (an item's channel,
or an item's tap) are split over torch.get_num_threads() threads (ctypes releases the GIL).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .._io import atomic_write
from ..functional.deform import Geometry

SOURCE = Path(__file__).with_name("deform_cpu.cpp")
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC")
CHUNK_BYTES = 32 * 2**20  # columns + tap table of one chunk
GRAIN = 2**16  # the least work worth a thread
DTYPES = {torch.float32: "f32", torch.float64: "f64"}
_P, _I = ctypes.c_void_p, ctypes.c_int64
_SIGNATURES = {  # (*inputs, geo, nr, u0, u1, table, *outputs)
    "taps": [_P, _P, _I, _I, _I, _P],
    "im2col": [_P, _P, _P, _I, _I, _I, _P, _P],
    "col2im": [_P, _P, _P, _I, _I, _I, _P, _P],
    "coord_grads": [_P, _P, _P, _P, _I, _I, _I, _P, _P, _P],
}
ABI = 3
_state: dict = {}
_lock = threading.Lock()


def _compiler() -> str | None:
    cxx = os.environ.get("CXX")
    return shutil.which(cxx) if cxx else next(filter(None, map(shutil.which, ("c++", "g++", "clang++"))), None)


def _cpu_id() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "".join(line for line in lines if line.startswith(("model name", "flags")))[:4096]
    except OSError:
        return platform.processor() + platform.machine()


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stnkit" / "kernels"


def _build(cxx: str) -> Path:
    """Compile the source (once per source, compiler, flags and CPU) -> the shared library's path."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cxx, version, *FLAGS, _cpu_id()]).encode()).hexdigest()[:16]
    for root in (cache_dir(), Path(tempfile.gettempdir()) / f"stnkit-kernels-{os.getuid()}"):
        lib = root / f"deform_cpu-{key}.so"
        if lib.exists():
            return lib
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "lib.so"
            done = subprocess.run([cxx, *FLAGS, "-o", str(out), str(SOURCE)], capture_output=True, text=True, timeout=600)
            if done.returncode:
                raise RuntimeError(f"{cxx} failed to compile {SOURCE.name}: {done.stderr.strip()[-500:]}")
            try:
                return atomic_write(lib, out.read_bytes())
            except OSError:
                continue  # an unwritable cache: the next root
    raise RuntimeError(f"no writable directory for the compiled kernel (tried {cache_dir()} and the temp dir)")


def _load():
    if os.environ.get("STNKIT_NATIVE") == "0":
        return None, "STNKIT_NATIVE=0"
    cxx = _compiler()
    if cxx is None:
        return None, "no C++ compiler found (set CXX, or install g++ or clang++)"
    try:
        lib = ctypes.CDLL(str(_build(cxx)))
        if lib.stnkit_dcn_abi() != ABI:
            return None, "the cached kernel library is from another stnkit version"
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        return None, str(e)
    for s in DTYPES.values():
        for name, args in _SIGNATURES.items():
            fn = getattr(lib, f"stnkit_dcn_{name}_{s}")
            fn.argtypes, fn.restype = args, None
        getattr(lib, f"stnkit_dcn_tap_bytes_{s}").restype = ctypes.c_int64
    return lib, None


def _library():
    with _lock:
        if "lib" not in _state:
            _state["lib"], _state["why"] = _load()
            if _state["why"] and _state["why"] != "STNKIT_NATIVE=0":
                warnings.warn(f"stnkit: deform_conv2d's CPU kernel is not available ({_state['why']}); "
                              "using the slower grid_sample path", RuntimeWarning, stacklevel=4)
        return _state["lib"]


def available() -> bool:
    """Whether the compiled kernel is loaded (building it on the first call)."""
    return _library() is not None


def why_not() -> str | None:
    """Why the kernel is not available, or None when it is."""
    _library()
    return _state["why"]


def usable(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in DTYPES and available()


def _pool(n: int) -> ThreadPoolExecutor:
    pool = _state.get("pool")
    if pool is None or _state["pool_size"] < n or _state["pool_pid"] != os.getpid():  # threads do not survive fork
        pool = _state["pool"] = ThreadPoolExecutor(n, thread_name_prefix="stnkit-dcn")
        _state["pool_size"], _state["pool_pid"] = n, os.getpid()
    return pool


def _parallel(call, units: int, work: int) -> None:
    """call(u0, u1) over [0, units) (each unit about `work` multiply-adds), split into up to
    torch.get_num_threads() ranges of at least GRAIN multiply-adds each."""
    n = max(1, min(torch.get_num_threads(), units, units * work // GRAIN))
    edges = [units * i // n for i in range(n + 1)]
    if n == 1:
        return call(0, units)
    futures = [_pool(n - 1).submit(call, edges[i], edges[i + 1]) for i in range(1, n)]
    call(edges[0], edges[1])
    for f in futures:
        f.result()


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


class _Chunk:
    """Items [b0, b0 + nb) and output rows [r0, r0 + nr): its geometry array and tap table."""

    def __init__(self, lib, offset, shape, geo: Geometry, b0: int, nb: int, r0: int, nr: int):
        C, H, W, Ho, Wo = shape
        G, K = geo.offset_groups, geo.kh * geo.kw
        nc = max(1, min(C // 8, -(-2 * torch.get_num_threads() // nb)))  # col2im's channel blocks per item
        self.lib, self.s, self.nb, self.nr, self.n, self.nc = lib, DTYPES[offset.dtype], nb, nr, nr * Wo, nc
        self.geo = (ctypes.c_int64 * 18)(C, H, W, G, geo.kh, geo.kw, Ho, Wo, *geo.stride, *geo.padding,
                                         *geo.dilation, b0, r0, geo.groups, nc)
        tap_bytes = getattr(lib, f"stnkit_dcn_tap_bytes_{self.s}")()
        self.table = torch.empty(nb * self.n * G * K * tap_bytes, dtype=torch.uint8)  # (nb, n, G, K) taps
        self.run("taps", nb * self.n, 16 * G * K, offset)

    def run(self, name: str, units: int, work: int, *head, out=()) -> None:
        """kernel(*head, geo, nr, u0, u1, table, *out) over [0, units) (`work` per unit), in threads."""
        f = getattr(self.lib, f"stnkit_dcn_{name}_{self.s}")
        a = [*map(_ptr, head)], [self.table.data_ptr(), *map(_ptr, out)]
        _parallel(lambda u0, u1: f(*a[0], ctypes.addressof(self.geo), self.nr, u0, u1, *a[1]), units, work)


def _chunks(B: int, C: int, G: int, K: int, Ho: int, Wo: int, itemsize: int):
    """(b0, nb, r0, nr) covering the batch, each chunk's columns and tap table under CHUNK_BYTES."""
    per_row = K * Wo * (C * itemsize + G * (16 + 12 * itemsize))
    items = CHUNK_BYTES // (per_row * Ho)
    if items >= 1:
        return [(b0, min(items, B - b0), 0, Ho) for b0 in range(0, B, items)]
    rows = max(1, CHUNK_BYTES // per_row)
    return [(b, 1, r0, min(rows, Ho - r0)) for b in range(B) for r0 in range(0, Ho, rows)]


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) -> (B, H W + 1, C), the last pixel 0 (where corners outside the image read)."""
    B, C, H, W = x.shape
    out = x.new_empty(B, H * W + 1, C)
    out[:, :-1].view(B, H, W, C).copy_(x.permute(0, 2, 3, 1))
    out[:, -1] = 0
    return out


def _setup(x, offset, weight, mask, geo: Geometry):
    """-> (channels-last image, contiguous offset and mask, the weight as (groups, C_out / groups,
    K C_in / groups) in the columns' (tap, channel) order, and a function that makes a chunk:
    (b0, nb, r0, nr) -> (its _Chunk, its items, its output positions))."""
    offset = offset.contiguous()
    mask = None if mask is None else mask.contiguous()
    B, C, H, W = x.shape
    Ho, Wo = offset.shape[2:]
    Co, groups = weight.shape[0], geo.groups
    wmat = weight.permute(0, 2, 3, 1).reshape(groups, Co // groups, -1)
    lib = _library()

    def chunk(b0, nb, r0, nr):
        return _Chunk(lib, offset, (C, H, W, Ho, Wo), geo, b0, nb, r0, nr), slice(b0, b0 + nb), slice(r0 * Wo, (r0 + nr) * Wo)

    return _channels_last(x), offset, mask, wmat, chunk


def _plan(x, offset, geo: Geometry):
    B, C = x.shape[:2]
    return _chunks(B, C, geo.offset_groups, geo.kh * geo.kw, *offset.shape[2:], x.element_size())


def forward(x, offset, weight, bias, mask, geo: Geometry) -> torch.Tensor:
    """As functional.deform.forward: x (B, C_in, H, W), offset (B, 2 G K, Ho, Wo), weight
    (C_out, C_in / groups, kh, kw), bias (C_out,) or None, mask (B, G K, Ho, Wo) or None
    -> (B, C_out, Ho, Wo)."""
    B, C = x.shape[:2]
    Ho, Wo = offset.shape[2:]
    Co, groups, K = weight.shape[0], geo.groups, geo.kh * geo.kw
    xcl, offset, mask, wmat, chunk = _setup(x, offset, weight, mask, geo)
    out = x.new_empty(B, Co, Ho, Wo)
    by_group = out.view(B, groups, Co // groups, Ho * Wo)

    def one(ch, items, pos):  # a function, so that a chunk's buffers are gone before the next one's
        cols = x.new_empty(ch.nb, groups, ch.n, K * C // groups)  # (nb, groups, n, K C_in / groups)
        ch.run("im2col", ch.nb * ch.n, 4 * C * K, xcl, mask, out=(cols,))
        if ch.nr == Ho:
            torch.matmul(wmat, cols.transpose(-1, -2), out=by_group[items])
        else:
            by_group[items, :, :, pos] = torch.matmul(wmat, cols.transpose(-1, -2))

    for plan in _plan(x, offset, geo):
        one(*chunk(*plan))
    return out if bias is None else out.add_(bias[:, None, None])


def backward(grad, x, offset, weight, mask, geo: Geometry, need_bias: bool):
    """As functional.deform.backward: the gradients w.r.t. (x, offset, weight, bias, mask)."""
    B, C, H, W = x.shape
    Ho, Wo = offset.shape[2:]
    Co, groups, K = weight.shape[0], geo.groups, geo.kh * geo.kw
    xcl, offset, mask, wmat, chunk = _setup(x, offset, weight, mask, geo)
    go_all = grad.reshape(B, groups, Co // groups, Ho * Wo)
    g_xcl, g_off = torch.zeros_like(xcl), torch.empty_like(offset)
    g_mask = None if mask is None else torch.empty_like(mask)
    g_w = torch.zeros_like(wmat)

    def one(ch, items, pos):
        cols = x.new_empty(ch.nb, groups, ch.n, K * C // groups)
        ch.run("im2col", ch.nb * ch.n, 4 * C * K, xcl, mask, out=(cols,))
        go = go_all[items, :, :, pos]  # (nb, groups, C_out / groups, n)
        g_w.add_(torch.matmul(go, cols).sum(0))
        g_cols = torch.matmul(go.transpose(-1, -2), wmat, out=cols)  # d/d(masked columns), in the columns' memory
        ch.run("col2im", ch.nb * ch.nc, 4 * C * K * ch.n // ch.nc, g_cols, mask, out=(g_xcl,))
        ch.run("coord_grads", ch.nb * ch.n, 4 * C * K, xcl, g_cols, mask, out=(g_off, g_mask))

    for plan in _plan(x, offset, geo):
        one(*chunk(*plan))
    del xcl  # before the input gradient's copy back to (B, C, H, W): a lower peak
    g_x = g_xcl[:, :-1].view(B, H, W, C).permute(0, 3, 1, 2).contiguous()
    g_w = g_w.view(Co, geo.kh, geo.kw, C // groups).permute(0, 3, 1, 2).contiguous()
    g_bias = grad.sum((0, 2, 3)) if need_bias else None
    return g_x, g_off, g_w, g_bias, g_mask
