"""How fast the paper's datasets are generated, and how fast the bundled MNIST loads.

    python benchmarks/bench_data.py [--batches 20] [--batch-size 256]

Targets (SPEC issue 3): RTS and TC at >= 20,000 images/s on 2 CPU cores; the bundled MNIST
loads in < 1 s once cached. Prints a table; never fails.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from stnkit.data import load_digits, make_dataset, names


def rate(name: str, batches: int, batch_size: int) -> float:
    ds = make_dataset(name, "train")
    it = ds.batches(batch_size, epoch=0)
    next(it)  # warm-up
    n, t0 = 0, time.perf_counter()
    for epoch in range(1, 100):
        for b in ds.batches(batch_size, epoch=epoch):
            n += len(b.y)
            if n >= batches * batch_size:
                return n / (time.perf_counter() - t0)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--datasets", nargs="*", default=names())
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        load_digits("bundled", "train", root)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        load_digits("bundled", "train", root)
        warm = time.perf_counter() - t0
    print(f"bundled MNIST first load: {cold:.2f} s (parse + cache), cached load: {warm * 1000:.1f} ms "
          f"-> target < 1 s: {'met' if warm < 1 else 'NOT met'}")
    print(f"\n| dataset | images/s (batch {args.batch_size}, {torch.get_num_threads()} threads) | target |")
    print("|---|---|---|")
    for name in args.datasets:
        r = rate(name, args.batches if name != "3d" else 2, args.batch_size)
        target = ">= 20,000: " + ("met" if r >= 20000 else "NOT met") if name in ("rts", "tc") else ""
        print(f"| {name} | {r:,.0f} | {target} |")


if __name__ == "__main__":
    main()
