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
stay under CHUNK_BYTES (see _chunks); a chunk's columns meet the weight in torch's GEMM, and
the kernel splits its own loops over torch.get_num_threads() threads: OpenMP's (built with
-fopenmp, it shares torch's OpenMP threads where torch uses GNU OpenMP), else std::threads.
"""
from __future__ import annotations

import ctypes
import hashlib
import itertools
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from .._io import atomic_write
from ..functional.deform import Geometry

SOURCE = Path(__file__).with_name("deform_cpu.cpp")
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC")
OPENMP = ("-fopenmp",)  # tried first; without it (clang with no libomp) the kernel uses std::thread
CHUNK_BYTES = 16 * 2**20  # the columns of one chunk, at most
MIN_CHUNK_BYTES = 2**20  # ... and at most a quarter of the call's columns, unless that is under this
DTYPES = {torch.float32: "f32", torch.float64: "f64"}
_P, _I = ctypes.c_void_p, ctypes.c_int64
_SIGNATURES = {  # (*inputs, geo, nr, threads, *outputs)
    "im2col": [_P, _P, _P, _P, _I, _I, _P],
    "col2im_coords": [_P, _P, _P, _P, _P, _I, _I, _P, _P, _P],
}
ABI = 5
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
    """Compile the source (once per source, compiler, flags and CPU) -> the shared library's path.
    With OpenMP if the compiler has it, else without."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cxx, version, *FLAGS, *OPENMP, _cpu_id()]).encode()).hexdigest()[:16]
    for root in (cache_dir(), Path(tempfile.gettempdir()) / f"stnkit-kernels-{os.getuid()}"):
        lib = root / f"deform_cpu-{key}.so"
        if lib.exists():
            return lib
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "lib.so"
            for flags in (FLAGS + OPENMP, FLAGS):
                done = subprocess.run([cxx, *flags, "-o", str(out), str(SOURCE)], capture_output=True, text=True, timeout=600)
                if not done.returncode:
                    break
            else:
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


INT32 = 2**31 - 1  # the kernel indexes pixels with int32, up to (H + 2) (W + 2) (taps clamped to 2 pixels outside)


def usable(x: torch.Tensor) -> bool:
    """Whether the kernel runs on x (B, C, H, W): CPU, float32/64, pixel indices within int32, built."""
    fits = (x.shape[-2] + 2) * (x.shape[-1] + 2) <= INT32
    return x.device.type == "cpu" and x.dtype in DTYPES and fits and available()


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


class _Chunk:
    """Output rows [r0, r0 + nr) of nb batch items: its geometry array, its n = nr * Wo positions,
    and ns, the slices of each item's positions that the backward's threads share. More than one
    only where there are fewer items than threads: each slice then spreads its gradient into an
    image of its own (ns images per item, together at most half the chunk's columns), which are
    added up after."""

    def __init__(self, lib, dtype, shape, geo: Geometry, nb: int, r0: int, nr: int):
        C, H, W, Ho, Wo = shape
        K, n = geo.kh * geo.kw, nr * Wo
        ns = max(1, min(-(-torch.get_num_threads() // nb), n // 32, K * n // (2 * (H * W + 1))))
        self.lib, self.s, self.nb, self.nr, self.n, self.ns = lib, DTYPES[dtype], nb, nr, n, ns
        self.pos = slice(r0 * Wo, (r0 + nr) * Wo)  # its output positions
        self.geo = (ctypes.c_int64 * 18)(C, H, W, geo.offset_groups, geo.kh, geo.kw, Ho, Wo, *geo.stride,
                                         *geo.padding, *geo.dilation, r0, geo.groups, ns, nb)

    def run(self, name: str, *inputs, out=()) -> None:
        """kernel(*inputs, geo, nr, threads, *out) on up to torch.get_num_threads() threads; every
        tensor starts at the chunk's first item."""
        f = getattr(self.lib, f"stnkit_dcn_{name}_{self.s}")
        f(*map(_ptr, inputs), ctypes.addressof(self.geo), self.nr, torch.get_num_threads(), *map(_ptr, out))


def _chunks(B: int, C: int, K: int, Ho: int, Wo: int, itemsize: int):
    """(b0, nb, r0, nr) covering the batch: items [b0, b0 + nb), output rows [r0, r0 + nr). A
    chunk's columns stay under CHUNK_BYTES and, unless that is under MIN_CHUNK_BYTES, under a
    quarter of the call's: the work memory (a chunk's columns, and its items' image and image
    gradient channels-last) stays below the columns of the whole call."""
    per_row = K * Wo * C * itemsize
    budget = min(CHUNK_BYTES, max(MIN_CHUNK_BYTES, B * Ho * per_row // 4))
    items = budget // (per_row * Ho)
    if items >= 1:
        return [(b0, min(items, B - b0), 0, Ho) for b0 in range(0, B, items)]
    rows = max(1, budget // per_row)
    return [(b, 1, r0, min(rows, Ho - r0)) for b in range(B) for r0 in range(0, Ho, rows)]


def _groups(x, offset, geo: Geometry):
    """(the items, their chunks) for each run of chunks of the same items."""
    B, C, H, W = x.shape
    Ho, Wo = offset.shape[2:]
    lib = _library()
    plan = _chunks(B, C, geo.kh * geo.kw, Ho, Wo, x.element_size())
    for (b0, nb), rows in itertools.groupby(plan, key=lambda c: c[:2]):
        yield slice(b0, b0 + nb), [_Chunk(lib, x.dtype, (C, H, W, Ho, Wo), geo, nb, r0, nr) for _, _, r0, nr in rows]


class _Buffers:
    """Work buffers reused from chunk to chunk, one per name, allocated at the first chunk's size
    (the largest), so that memory is not handed back and forth with the allocator."""

    def __init__(self, like: torch.Tensor):
        self.like, self.data = like, {}

    def take(self, name: str, shape) -> torch.Tensor:
        n = math.prod(shape)
        if name not in self.data or self.data[name].numel() < n:
            self.data.pop(name, None)
            self.data[name] = self.like.new_empty(n)
        return self.data[name][:n].view(shape)


def _channels_last(x: torch.Tensor, bufs: _Buffers) -> torch.Tensor:
    """x (b, C, H, W) -> (b, H W + 1, C), the last pixel 0 (where corners outside the image read)."""
    b, C, H, W = x.shape
    out = bufs.take("image", (b, H * W + 1, C))
    out[:, :-1].view(b, H, W, C).copy_(x.permute(0, 2, 3, 1))
    out[:, -1] = 0
    return out


def _columns(ch: _Chunk, bufs: _Buffers, xcl, offset, mask, groups: int) -> torch.Tensor:
    """The chunk's masked columns (nb, groups, n, K C_in / groups); offset and mask from its first item."""
    K, C = ch.geo[4] * ch.geo[5], xcl.shape[-1]
    cols = bufs.take("columns", (ch.nb, groups, ch.n, K * C // groups))
    ch.run("im2col", xcl, offset, mask, out=(cols,))
    return cols


def _at(t: torch.Tensor | None, items: slice):
    return None if t is None else t[items]


def _prepare(offset, weight, mask, geo: Geometry):
    """-> (contiguous offset and mask, the weight as (groups, C_out / groups, K C_in / groups)
    in the columns' (tap, channel) order)."""
    Co, groups = weight.shape[0], geo.groups
    mask = None if mask is None else mask.contiguous()
    return offset.contiguous(), mask, weight.permute(0, 2, 3, 1).reshape(groups, Co // groups, -1)


def forward(x, offset, weight, bias, mask, geo: Geometry) -> torch.Tensor:
    """As functional.deform.forward: x (B, C_in, H, W), offset (B, 2 G K, Ho, Wo), weight
    (C_out, C_in / groups, kh, kw), bias (C_out,) or None, mask (B, G K, Ho, Wo) or None
    -> (B, C_out, Ho, Wo)."""
    B, Ho, Wo = x.shape[0], *offset.shape[2:]
    Co, groups = weight.shape[0], geo.groups
    offset, mask, wmat = _prepare(offset, weight, mask, geo)
    out = x.new_empty(B, Co, Ho, Wo)
    by_group = out.view(B, groups, Co // groups, Ho * Wo)
    bufs = _Buffers(x)
    for items, chunks in _groups(x, offset, geo):
        xcl = _channels_last(x[items], bufs)
        for ch in chunks:
            cols = _columns(ch, bufs, xcl, offset[items], _at(mask, items), groups)
            if ch.nr == Ho:
                torch.matmul(wmat, cols.transpose(-1, -2), out=by_group[items])
            else:
                by_group[items, :, :, ch.pos] = torch.matmul(wmat, cols.transpose(-1, -2))
    return out if bias is None else out.add_(bias[:, None, None])


def backward(grad, x, offset, weight, mask, geo: Geometry, need_bias: bool):
    """As functional.deform.backward: the gradients w.r.t. (x, offset, weight, bias, mask)."""
    B, C, H, W = x.shape
    Ho, Wo = offset.shape[2:]
    Co, groups = weight.shape[0], geo.groups
    offset, mask, wmat = _prepare(offset, weight, mask, geo)
    go_all = grad.reshape(B, groups, Co // groups, Ho * Wo)
    g_x, g_off = torch.empty_like(x), torch.empty_like(offset)
    g_mask = None if mask is None else torch.empty_like(mask)
    g_w = torch.zeros_like(wmat)
    bufs = _Buffers(x)
    for items, chunks in _groups(x, offset, geo):
        xcl = _channels_last(x[items], bufs)
        g_xcl = bufs.take("image gradient", xcl.shape).zero_()
        for ch in chunks:
            cols = _columns(ch, bufs, xcl, offset[items], _at(mask, items), groups)
            go = go_all[items, :, :, ch.pos]  # (nb, groups, C_out / groups, n)
            g_w.add_(torch.matmul(go, cols).sum(0))
            g_cols = torch.matmul(go.transpose(-1, -2), wmat, out=cols)  # d/d(masked columns), in the columns' memory
            images = bufs.take("slice images", (ch.nb, ch.ns, *xcl.shape[1:])).zero_() if ch.ns > 1 else g_xcl
            ch.run("col2im_coords", xcl, g_cols, offset[items], _at(mask, items),
                   out=(images, g_off[items], _at(g_mask, items)))
            if ch.ns > 1:
                g_xcl += images.sum(1)
        g_x[items] = g_xcl[:, :-1].view(-1, H, W, C).permute(0, 3, 1, 2)
    g_w = g_w.view(Co, geo.kh, geo.kw, C // groups).permute(0, 3, 1, 2).contiguous()
    g_bias = grad.sum((0, 2, 3)) if need_bias else None
    return g_x, g_off, g_w, g_bias, g_mask
