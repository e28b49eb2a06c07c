"""Deformable convolution, forward + backward, against the peers people write today.

Every number is a ratio measured in the same run: the implementations are timed interleaved
(A B C D, reversed every other round), the median of the repeats reported, so that a noisy
shared machine hits all of them alike. Nothing here passes or fails.

    python benchmarks/bench_deform.py            # ~1 min on 2 threads
    python benchmarks/bench_deform.py --quick    # one small case, ~20 s
    python benchmarks/bench_deform.py --memory   # and peak memory per implementation (fresh processes), ~3 min

Implementations (all: gradients w.r.t. input, offset, weight, bias and mask)
  stnkit       stnkit.deform_conv2d (its compiled CPU kernel)
  fallback     stnkit's grid_sample path, what runs where the kernel cannot be built (no compiler)
  grid_sample  each of the kh*kw taps sampled with F.grid_sample (zeros padding), then one matmul
  gather       bilinear im2col written with gathers (torch.gather on the flattened image), matmul
  conv2d       F.conv2d of the same shape: the floor, with no sampling at all
  torchvision  torchvision.ops.deform_conv2d, with --device cuda where torchvision imports (its
               compiled ops are CUDA builds; it does not import beside the CPU build of torch)

    python benchmarks/bench_deform.py --device cuda   # on a GPU (stnkit runs its grid_sample path there)
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import stnkit
from stnkit.functional import deform as D
from stnkit.kernels import deform_cpu

CASES = [  # (B, C_in, H, W), C_out, stride, mask
    ((8, 64, 56, 56), 64, 1, False), ((8, 64, 56, 56), 64, 1, True), ((8, 64, 56, 56), 64, 2, False),
    ((32, 32, 28, 28), 32, 1, False), ((32, 32, 28, 28), 32, 1, True), ((32, 32, 28, 28), 32, 2, True),
]
QUICK = [((4, 16, 28, 28), 16, 1, True)]


def _taps(B, K, Ho, Wo, kh, kw, stride, offset, dtype):
    """Sampling positions (B, K, Ho, Wo) y and x of every tap (padding 1, dilation 1)."""
    ki = torch.arange(kh, dtype=dtype).repeat_interleave(kw)
    kj = torch.arange(kw, dtype=dtype).repeat(kh)
    by = (torch.arange(Ho, dtype=dtype) * stride - 1)[None, :, None] + ki[:, None, None]  # (K, Ho, 1)
    bx = (torch.arange(Wo, dtype=dtype) * stride - 1)[None, None, :] + kj[:, None, None]  # (K, 1, Wo)
    off = offset.view(B, K, 2, Ho, Wo)
    return by + off[:, :, 0], bx + off[:, :, 1]


def peer_grid_sample(x, offset, weight, bias, mask, stride):
    """The common pure-PyTorch DCN: F.grid_sample per tap (align_corners=True in pixel units)."""
    B, C, H, W = x.shape
    Co, _, kh, kw = weight.shape
    Ho, Wo = offset.shape[2:]
    y, xx = _taps(B, kh * kw, Ho, Wo, kh, kw, stride, offset, x.dtype)
    cols = []
    for k in range(kh * kw):
        g = torch.stack([2 * xx[:, k] / (W - 1) - 1, 2 * y[:, k] / (H - 1) - 1], dim=-1)  # (B, Ho, Wo, 2)
        v = F.grid_sample(x, g, mode="bilinear", padding_mode="zeros", align_corners=True)  # (B, C, Ho, Wo)
        cols.append(v * mask[:, k : k + 1] if mask is not None else v)
    cols = torch.stack(cols, dim=2).reshape(B, C * kh * kw, Ho * Wo)  # (B, C K, L), channel-major like weight
    out = torch.matmul(weight.reshape(Co, -1), cols) + bias[:, None]
    return out.view(B, Co, Ho, Wo)


def peer_gather(x, offset, weight, bias, mask, stride):
    """Bilinear im2col with gathers: four corner gathers of the flattened image, masked by range."""
    B, C, H, W = x.shape
    Co, _, kh, kw = weight.shape
    Ho, Wo = offset.shape[2:]
    K = kh * kw
    y, xx = _taps(B, K, Ho, Wo, kh, kw, stride, offset, x.dtype)
    y0, x0 = y.floor(), xx.floor()
    flat = x.reshape(B, C, H * W)
    val = 0
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        yi, xi = y0 + dy, x0 + dx
        w = (1 - (y - yi).abs()) * (1 - (xx - xi).abs())
        ok = (yi >= 0) & (yi < H) & (xi >= 0) & (xi < W)
        idx = (yi.clamp(0, H - 1) * W + xi.clamp(0, W - 1)).long().view(B, 1, -1).expand(B, C, -1)
        v = torch.gather(flat, 2, idx).view(B, C, K, Ho, Wo)
        val = val + v * (w * ok)[:, None]
    if mask is not None:
        val = val * mask.view(B, 1, K, Ho, Wo)
    out = torch.matmul(weight.reshape(Co, -1), val.reshape(B, C * K, Ho * Wo)) + bias[:, None]
    return out.view(B, Co, Ho, Wo)


def ours(x, offset, weight, bias, mask, stride):
    return stnkit.deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)


class _Fallback(torch.autograd.Function):
    """stnkit's grid_sample path (functional/deform.py), which deform_conv2d takes without a compiler."""

    @staticmethod
    def forward(ctx, x, offset, weight, bias, mask, stride):
        ctx.geo = D.Geometry(3, 3, (stride, stride), (1, 1), (1, 1), 1, 1)
        ctx.save_for_backward(x, offset, weight, mask)
        return D.forward(x, offset, weight, bias, mask, ctx.geo)

    @staticmethod
    def backward(ctx, grad):
        x, offset, weight, mask = ctx.saved_tensors
        gx, go, gw, gb, gm = D.backward(grad.contiguous(), x, offset, weight, mask, ctx.geo, True)
        return gx, go, gw, gb, gm, None


def fallback(x, offset, weight, bias, mask, stride):
    return _Fallback.apply(x, offset, weight, bias, mask, stride)


def conv2d(x, offset, weight, bias, mask, stride):
    return F.conv2d(x, weight, bias, stride=stride, padding=1)


IMPLS = {"stnkit": ours, "fallback": fallback, "grid_sample": peer_grid_sample, "gather": peer_gather, "conv2d": conv2d}


DEVICE = torch.device("cpu")


def make_case(shape, Co, stride, masked, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, C, H, W = shape
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    x = torch.randn(shape, generator=g)
    offset = torch.randn(B, 18, Ho, Wo, generator=g) * 2
    weight = torch.randn(Co, C, 3, 3, generator=g) * 0.05
    bias = torch.randn(Co, generator=g)
    mask = torch.rand(B, 9, Ho, Wo, generator=g) if masked else None
    grad = torch.randn(B, Co, Ho, Wo, generator=g).to(DEVICE)
    return [t.to(DEVICE).requires_grad_() if t is not None else None for t in (x, offset, weight, bias, mask)], grad


def step(fn, tensors, grad, stride):
    out = fn(*tensors, stride)
    leaves = [t for t in tensors if t is not None]
    return torch.autograd.grad(out, leaves, grad, allow_unused=True)


def check_peers(shape, Co, stride, masked):
    """The peers compute the same function (forward and gradients) as stnkit on this case."""
    tensors, grad = make_case(shape, Co, stride, masked)
    want = step(ours, tensors, grad, stride)
    for name in (n for n in IMPLS if n not in ("stnkit", "conv2d")):
        got = step(IMPLS[name], tensors, grad, stride)
        worst = max(float((a - b).abs().max() / (b.abs().max() + 1e-12)) for a, b in zip(got, want))
        assert worst < 1e-3, f"peer {name} disagrees with stnkit by {worst:.2e} (relative)"


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _add_torchvision() -> None:
    try:
        from torchvision.ops import deform_conv2d as tv
    except Exception as e:  # a failed import of its compiled ops is not only ImportError
        print(f"(torchvision not measured: {type(e).__name__}: {e})")
        return
    IMPLS["torchvision"] = lambda x, off, w, b, m, s: tv(x, off, w, b, stride=s, padding=1, mask=m)


def time_case(shape, Co, stride, masked, repeats):
    tensors, grad = make_case(shape, Co, stride, masked)
    names = list(IMPLS)
    samples = {n: [] for n in names}
    for n in names:  # warm-up
        step(IMPLS[n], tensors, grad, stride)
    for r in range(repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            _sync()
            t0 = time.perf_counter()
            step(IMPLS[n], tensors, grad, stride)
            _sync()
            samples[n].append(time.perf_counter() - t0)
    return {n: statistics.median(v) for n, v in samples.items()}


_HWM = ("mib = lambda key: next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key)) / 1024;"
        "open('/proc/self/clear_refs', 'w').write('5');")  # reset the high-water mark to now (Linux)


def peak_memory(name, shape, Co, stride, masked) -> float:
    """Peak resident MiB that one forward + backward adds, in a fresh process warmed up on a tiny
    case (code pages and thread pools not counted), gradients included: the high-water mark
    (VmHWM, reset just before the call) minus the resident set before it. Not ru_maxrss: Linux
    carries it over from the parent process across exec."""
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); import bench_deform as b, torch;"
        "torch.set_num_threads(2);"
        f"w, v = b.make_case((1, 4, 8, 8), 4, {stride}, {masked}); b.step(b.IMPLS[{name!r}], w, v, {stride});"
        f"t, g = b.make_case({shape!r}, {Co}, {stride}, {masked});"
        + _HWM + "base = mib('VmRSS');"
        f"b.step(b.IMPLS[{name!r}], t, g, {stride});"
        "print('PEAK', mib('VmHWM') - base)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(next(line.split()[1] for line in out.splitlines() if line.startswith("PEAK")))


def label(shape, Co, stride, masked):
    return f"{'x'.join(map(str, shape))} -> {Co}, s{stride}{', mask' if masked else ''}"


def sizes_mib(shape, Co, stride, masked) -> tuple[float, float]:
    """(columns, results) in MiB: the sampled columns (B, C_in * 9, H_out * W_out), and what any
    implementation must hand back, the output and the gradients of input, offset, weight, bias and
    mask (float32)."""
    (B, C, H, W) = shape
    L = ((H - 1) // stride + 1) * ((W - 1) // stride + 1)
    results = B * Co * L + B * C * H * W + B * 18 * L + Co * C * 9 + Co + (B * 9 * L if masked else 0)
    return B * C * 9 * L * 4 / 2**20, results * 4 / 2**20


PEERS = ("grid_sample", "gather")  # the pure-PyTorch deformable convolutions people write


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one small case")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--memory", action="store_true", help="also measure peak memory per implementation")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (adds torchvision's op; no --memory)")
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    cases = QUICK if args.quick else CASES
    if DEVICE.type == "cpu" and not deform_cpu.available():
        sys.exit(f"stnkit's compiled kernel is not available ({deform_cpu.why_not()}): nothing to measure")
    if DEVICE.type == "cuda":
        args.memory = False  # peak memory is measured as the CPU's resident set
        _add_torchvision()
    others = [n for n in IMPLS if n not in ("stnkit", "conv2d")]
    print(f"torch {torch.__version__}, {DEVICE}, {args.threads} threads, median of {args.repeats}; ratios = peer / stnkit")
    print("| case | stnkit ms | " + " | ".join(f"{n} / stnkit" for n in others) + " | best peer / stnkit | stnkit / conv2d |"
          + (" peak MiB: " + ", ".join(IMPLS) + " | columns MiB | stnkit workspace / columns |" if args.memory else ""))
    print("|---|---:|" + "---:|" * len(others) + "---:|---:|" + ("---|---:|---:|" if args.memory else ""))
    for case in cases:
        check_peers((2, *case[0][1:]), *case[1:])
        t = time_case(*case, args.repeats)
        best = min(t[n] for n in PEERS)
        row = (f"| {label(*case)} | {t['stnkit'] * 1e3:.1f} | " + " | ".join(f"{t[n] / t['stnkit']:.2f}" for n in others)
               + f" | {best / t['stnkit']:.2f} | {t['stnkit'] / t['conv2d']:.2f} |")
        if args.memory:
            columns, results = sizes_mib(*case)
            peaks = {n: peak_memory(n, *case) for n in IMPLS}
            row += (f" {', '.join(f'{v:.0f}' for v in peaks.values())} | {columns:.1f} | "
                    f"{(peaks['stnkit'] - results) / columns:.2f} |")
        print(row, flush=True)
    print("best peer: the faster of " + " and ".join(PEERS) + " (fallback is stnkit's own path without a compiler)."
          + (" workspace: stnkit's peak less its results (the output and the five gradients)." if args.memory else ""))


if __name__ == "__main__":
    main()
