"""Forward+backward time and peak memory of stnkit's tricubic sampler against two peers.

    python benchmarks/bench_tricubic.py --quick        # under a minute
    python benchmarks/bench_tricubic.py                # 2x1x64^3 and 1x1x96^3
    python benchmarks/bench_tricubic.py --sizes 1x2x48x48x48 --repeats 9

Implementations, all sampling x (B, C, D, H, W) at a random near-identity affine grid of the
same size (zeros padding, align_corners=False), gradients w.r.t. x AND the grid, with a fixed
random output gradient:
  tricubic   stnkit.functional.cubic.grid_sample_3d_bicubic (an autograd.Function: 64 gathers
             forward, weights and gathers recomputed in backward, index scatter_add_ for x)
  trilinear  F.grid_sample(mode="bilinear") on 5-D input: the fused C++ kernel, 8 taps
  gather64   the same tricubic written plainly (below): 64 gathers times weights, autograd
             saving what it needs for every tap
Times are interleaved medians (bench_warp.bench_interleaved). Peak memory: each (size,
implementation) runs once more in a fresh subprocess, which reports its peak resident set during one
forward+backward (Linux VmHWM, reset just before) minus its resident set just before the call, the inputs
already made: what the call adds on top of its inputs, the gradients included.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

from bench_warp import bench_interleaved, spread  # same directory: run as a script
from stnkit.functional.cubic import A, grid_sample_3d_bicubic

DEFAULT_SIZES = ["2x1x64x64x64", "1x1x96x96x96"]
QUICK_SIZES = ["1x1x32x32x32"]
IMPLS = ("tricubic", "trilinear", "gather64")


def _kernel(s):
    """The cubic convolution kernel at |s| (s in [0, 2))."""
    near = ((A + 2) * s - (A + 3)) * s * s + 1
    far = ((A * s - 5 * A) * s + 8 * A) * s - 4 * A
    return torch.where(s <= 1, near, far)


def gather64(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Plain tricubic, zeros padding, align_corners=False: x (B, C, D, H, W), g (B, D', H', W', 3)."""
    B, C, D, H, W = x.shape
    N = g[..., 0].numel() // B
    taps = []
    for k, n in enumerate((W, H, D)):
        u = ((g[..., k].reshape(B, N) + 1) * n - 1) / 2
        i0 = torch.floor(u)
        t = u - i0
        i = [i0 + (j - 1) for j in range(4)]
        w = [_kernel((t - (j - 1)).abs()) * ((c >= 0) & (c < n)) for j, c in enumerate(i)]
        taps.append(([c.clamp(0, n - 1).long() for c in i], w))
    (ix, wx), (iy, wy), (iz, wz) = taps
    src = x.reshape(B, C, D * H * W)
    out = 0
    for c in range(4):
        for b in range(4):
            for a in range(4):
                idx = (iz[c] * (H * W) + iy[b] * W + ix[a])[:, None].expand(B, C, N)
                out = out + src.gather(2, idx) * (wz[c] * wy[b] * wx[a])[:, None]
    return out.reshape(B, C, *g.shape[1:4])


FNS = {
    "tricubic": lambda x, g: grid_sample_3d_bicubic(x, g, "zeros", False),
    "trilinear": lambda x, g: F.grid_sample(x, g, mode="bilinear", padding_mode="zeros", align_corners=False),
    "gather64": gather64,
}


def inputs(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen).requires_grad_()
    theta = torch.eye(3, 4) + 0.05 * torch.randn(shape[0], 3, 4, generator=gen)
    g = F.affine_grid(theta, list(shape), align_corners=False).requires_grad_()
    gout = torch.randn(*shape, generator=gen)
    return x, g, gout


def step_for(name, x, g, gout):
    def step():
        return torch.autograd.grad(FNS[name](x, g), (x, g), gout)
    return step


def _status_mib(key: str) -> float:
    """A size line of /proc/self/status (Linux): VmRSS (resident now), VmHWM (its peak), MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def measure_peak(name: str, size: str) -> float:
    """In this process: the peak resident set during one forward+backward minus the resident set
    just before it (MiB). A call on a tiny volume first, so that torch's one-time set-up is not
    counted; the peak is reset then (writing 5 to /proc/self/clear_refs)."""
    step_for(name, *inputs((1, 1, 4, 4, 4)))()
    x, g, gout = inputs(parse(size))
    step = step_for(name, x, g, gout)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_mib("VmRSS")
    step()
    return _status_mib("VmHWM") - before


def peak_mb(name: str, size: str, threads: int) -> float:
    """measure_peak in a fresh process, so that no earlier call's pages are reused."""
    code = (f"import sys, json, torch; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"torch.set_num_threads({threads}); import bench_tricubic as b; "
            f"print(json.dumps(b.measure_peak({name!r}, {size!r})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def parse(s: str):
    shape = tuple(int(v) for v in s.lower().split("x"))
    if len(shape) != 5:
        raise argparse.ArgumentTypeError(f"size {s!r}: expected BxCxDxHxW")
    return shape


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small volume, few repeats")
    ap.add_argument("--sizes", nargs="+", default=None, help="BxCxDxHxW ...")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    repeats = args.repeats or (5 if args.quick else 11)

    print(f"# tricubic benchmark\n\ntorch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"repeats={repeats}, interleaved medians, fwd+bwd w.r.t. x and grid\n")
    print("| size | tricubic ms | trilinear ms | gather64 ms | tricubic / trilinear | gather64 / tricubic "
          "| peak MiB tricubic | trilinear | gather64 | gather64 / tricubic memory | max abs diff gather64 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        x, g, gout = inputs(parse(size))
        steps = {n: step_for(n, x, g, gout) for n in IMPLS}
        with torch.no_grad():
            diff = (FNS["gather64"](x, g) - FNS["tricubic"](x, g)).abs().max().item()
        med, samples = bench_interleaved(steps, repeats, warmup=1, min_sample_s=0.0, max_impl_s=1e9)
        ms = {n: f"{1e3 * med[n]:.0f} (±{spread(samples[n]):.0f}%)" for n in IMPLS}
        mem = {n: float("nan") for n in IMPLS} if args.no_memory else {n: peak_mb(n, size, args.threads) for n in IMPLS}
        print(f"| {size} | {ms['tricubic']} | {ms['trilinear']} | {ms['gather64']} "
              f"| {med['tricubic'] / med['trilinear']:.1f}x | {med['gather64'] / med['tricubic']:.2f}x "
              f"| {mem['tricubic']:.0f} | {mem['trilinear']:.0f} | {mem['gather64']:.0f} "
              f"| {mem['gather64'] / mem['tricubic']:.1f}x | {diff:.1e} |", flush=True)
    print("\n(ms = median per fwd+bwd call, ± = interquartile range / median; peak MiB = peak resident "
          "set during one call minus the resident set before it, in a fresh process, gradients included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
