"""Forward+backward timing of ``stnkit.warp(..., antialias=True)`` against the plain warp.

Both are timed interleaved in the same run (A B, B A, ...) and the median of the repeats is
reported; the number that matters is the ratio antialias / plain (target: at most 3x at the
sizes of docs/performance.md).  Nothing here is an absolute pass/fail.

    python benchmarks/bench_antialias.py --quick        # ~1 minute
    python benchmarks/bench_antialias.py                # full run
    python benchmarks/bench_antialias.py --input-grad   # gradients w.r.t. the image too

Maps (bilinear, zeros padding, align_corners=False): at the same output size an identity-like
map (attention: s in [0.8, 1], t ~ 0.1 N(0, 1), a zoom-in; affine: identity + 0.1 N(0, 1)), at
448 -> 224 a 2x shrink (attention s = 1; affine 2x: the same noise, so that it shrinks by about
1.9-2.1 along skewed axes), and a 4x shrink, 128 -> 32.  The route column says how the call
was served: "plain" (nothing shrinks), "box k" (the k x k box prefilter, then one sample) or
"n_x x n_y" subsamples (after a box k, if any).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import stnkit
from stnkit.functional import antialias as aa

SIZES = ["256x1x28x28", "256x1x42x42", "256x1x60x60", "32x3x128x128", "8x3x448x448:224x224", "32x3x128x128:32x32"]
FAMILIES = ["attention", "affine"]
TARGET = 3.0


def parse_size(s: str):
    """``BxCxHxW`` or ``BxCxHxW:H'xW'`` -> ((B, C, H, W), (H', W'))."""
    a, _, b = s.partition(":")
    shape = tuple(int(v) for v in a.split("x"))
    return shape, tuple(int(v) for v in b.split("x")) if b else shape[2:]


def make_params(family: str, b: int, shrink: float, g: torch.Generator) -> torch.Tensor:
    if family == "attention":
        s = torch.ones(b, 1) if shrink > 1 else 0.8 + 0.2 * torch.rand(b, 1, generator=g)
        return torch.cat([s, 0.1 * torch.randn(b, 2, generator=g)], dim=1)
    return torch.tensor([1.0, 0, 0, 0, 1, 0]) + 0.1 * torch.randn(b, 6, generator=g)


def route(x, p, family, out) -> str:
    """How one antialiased call is served (an untimed call with the two routes spied on)."""
    seen = []
    box, sup = aa._prefilter, aa._supersample
    aa._prefilter = lambda *a: seen.append(f"box {a[2]}") or box(*a)
    aa._supersample = lambda *a: seen.append("x".join(map(str, a[4]))) or sup(*a)
    try:
        with torch.no_grad():
            stnkit.warp(x, p, family, out, antialias=True)
    finally:
        aa._prefilter, aa._supersample = box, sup
    return ", ".join(seen) or "plain"


def make_step(x, p, family, out, antialias: bool, inputs):
    gout = torch.randn(x.shape[0], x.shape[1], *out, generator=torch.Generator().manual_seed(1))

    def step():
        y = stnkit.warp(x, p, family, out, antialias=antialias)
        torch.autograd.grad(y, inputs, gout)

    return step


def bench_interleaved(steps: dict, repeats: int, min_sample_s: float) -> dict:
    """Median seconds per call of each step, measured interleaved (A B, B A, A B, ...)."""
    inner = {}
    for n, f in steps.items():
        f()
        t0 = time.perf_counter()
        f()
        inner[n] = max(1, int(min_sample_s / max(time.perf_counter() - t0, 1e-6)))
    samples = {n: [] for n in steps}
    for r in range(repeats):
        for n in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            t0 = time.perf_counter()
            for _ in range(inner[n]):
                steps[n]()
            samples[n].append((time.perf_counter() - t0) / inner[n])
    return {n: statistics.median(v) for n, v in samples.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="about a minute: fewer repeats, shorter samples")
    ap.add_argument("--sizes", nargs="+", default=SIZES, help="BxCxHxW[:H'xW'] ...")
    ap.add_argument("--families", nargs="+", default=FAMILIES, choices=FAMILIES)
    ap.add_argument("--input-grad", action="store_true", help="gradients w.r.t. the image as well as the params")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (5 if args.quick else 21)
    min_sample_s = 0.02 if args.quick else 0.1
    grads = "params and image" if args.input_grad else "params"

    print("# stnkit antialiased warp benchmark\n")
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, repeats={repeats}, "
          f"interleaved; forward + backward, gradient w.r.t. {grads}\n")
    print("| size | family | route | plain ms | antialias ms | antialias / plain | target |")
    print("|---|---|---|---:|---:|---:|---|")
    for s in args.sizes:
        shape, out = parse_size(s)
        shrink = shape[2] / out[0]
        label = s.replace(":", " -> ")
        for family in args.families:
            g = torch.Generator().manual_seed(0)
            x = torch.rand(*shape, generator=g).requires_grad_(args.input_grad)
            p = make_params(family, shape[0], shrink, g).requires_grad_(True)
            inputs = [p, x] if args.input_grad else [p]
            steps = {k: make_step(x, p, family, out, k == "antialias", inputs) for k in ("plain", "antialias")}
            med = bench_interleaved(steps, repeats, min_sample_s)
            ratio = med["antialias"] / med["plain"]
            target = "-" if shrink > 2 else (f"<= {TARGET:g}x: " + ("met" if ratio <= TARGET else "NOT met"))
            print(f"| {label} | {family} | {route(x, p, family, out)} | {1e3 * med['plain']:.2f} | "
                  f"{1e3 * med['antialias']:.2f} | {ratio:.2f}x | {target} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
