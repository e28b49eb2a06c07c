"""GPU forward+backward timing of ``stnkit.warp`` (torch and Triton backends) against plain torch
and kornia, peak memory, and the cost of the deterministic backward (issue 14).

Every number is measured in the same run: a row's contenders are timed interleaved (A B C D, D C B A,
...), each sample an inner loop between two ``torch.cuda.synchronize()`` calls (perf_counter), after
warm-up calls (Triton compiles then); the median of the repeats is reported.

    python benchmarks/bench_gpu.py --quick                 # ~1-2 minutes on one GPU
    python benchmarks/bench_gpu.py --repeats 50 --json bench_gpu.json
    python benchmarks/bench_gpu.py --smoke                 # CPU, tiny sizes: the script runs end to end

Rows: 2D affine, projective and tps (16 points; no plain-torch peer) at 256x1x28x28, 256x1x42x42, 256x1x60x60, 32x3x128x128 and
8x3x448x448 -> 224x224; affine3d at 2x1x128^3 and 1x1x160x192x224 (output = input size).
Contenders: stnkit.warp(backend="torch"), stnkit.warp(backend="triton"), the torch peer
(F.affine_grid + F.grid_sample; projective: a hand-built homography grid; 3D: a (B, 3, 4) theta,
5-D grid_sample) and kornia (warp_affine, warp_perspective, warp_affine3d: its align_corners=True
with the pixel-centre matrix is the same map).  Bilinear / trilinear, zeros, align_corners=False.
Gradients w.r.t. the transform parameters AND the input image, with ``torch.autograd.grad`` and a
fixed random output gradient.  Peak memory: ``max_memory_allocated`` above what was allocated
before, in a separate untimed call (gradients included); "grid MiB" is the size of the float32
sampling grid (B, H', W', 2) / (B, D', H', W', 3) a fused kernel does not need to store.
Second table: backend="triton" with and without ``torch.use_deterministic_algorithms(True)``
(torch's defaults there, so also its NaN fill of torch.empty results: what a user gets).
Third table: the warp's share of the paper's ST-CNN training step (bench_step.py's model, batch
256, 42x42 -> 21x21), per backend; target <= 5%.
A cell is "-" where a contender cannot run (not installed, backend= not there yet, a case the
Triton backend does not cover); the footnotes say why.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import statistics
import sys
import time

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS under deterministic mode

import torch
import torch.nn.functional as F

import stnkit

try:
    import kornia.geometry.transform as KT

    _KORNIA_ERR = None
except Exception as e:  # reported in a footnote
    KT, _KORNIA_ERR = None, f"kornia: {type(e).__name__}: {e}"

SIZES_2D = ["256x1x28x28", "256x1x42x42", "256x1x60x60", "32x3x128x128", "8x3x448x448:224x224"]
SIZES_3D = ["2x1x128x128x128", "1x1x160x192x224"]
SMOKE_2D, SMOKE_3D = ["2x1x8x8"], ["1x1x6x6x6"]
NAMES = ["torch-peer", "stnkit-torch", "stnkit-triton", "kornia"]
TARGET_2D, TARGET_3D, TARGET_DET = 2.0, 1.5, 1.3
MIB = 2.0**20


def parse_size(s):
    a, _, b = s.partition(":")
    shape = tuple(int(v) for v in a.lower().split("x"))
    return shape, (tuple(int(v) for v in b.lower().split("x")) if b else shape[2:])


def label(shape, out):
    s = "x".join(map(str, shape))
    return s + ("->" + "x".join(map(str, out)) if tuple(out) != tuple(shape[2:]) else "")


def base_params(family, b, g):
    if family == "affine":
        return (torch.eye(2, 3) + 0.1 * torch.randn(b, 2, 3, generator=g)).reshape(b, 6)
    if family == "projective":
        n = 0.05 * torch.randn(b, 8, generator=g)
        n[:, 6:] *= 0.1
        return torch.tensor([1.0, 0, 0, 0, 1, 0, 0, 0]) + n
    if family == "affine3d":
        return (torch.eye(3, 4) + 0.1 * torch.randn(b, 3, 4, generator=g)).reshape(b, 12)
    if family == "tps":  # 16 control points, the paper's 4 x 4
        return stnkit.transforms.identity("tps", b) + 0.05 * torch.randn(b, 32, generator=g)
    raise ValueError(family)


def build_row(family, shape, out, dev, seed=0):
    """{name: (fn, [tensors to differentiate]) or an error string}, plus the grid's MiB."""
    g = torch.Generator().manual_seed(seed)
    b, c, *sp = shape
    nd = len(sp)
    mode = "bilinear"
    # a smooth image (upsampled noise), so the outputs can be compared meaningfully
    lo = torch.rand(b, c, *[s // 4 + 2 for s in sp], generator=g)
    x = F.interpolate(lo, size=tuple(sp), mode="bilinear" if nd == 2 else "trilinear", align_corners=False)
    x = x.contiguous().to(dev).requires_grad_(True)
    p0 = base_params(family, b, g).to(dev)
    cases = {}

    def st(backend):
        p = p0.clone().requires_grad_(True)
        size = None if tuple(out) == tuple(sp) else tuple(out)
        return (lambda: stnkit.warp(x, p, family, size, mode=mode, padding_mode="zeros", backend=backend)), [p, x]

    cases["stnkit-torch"], cases["stnkit-triton"] = st("torch"), st("triton")

    if family == "tps":  # no plain-torch TPS warp to compare: stnkit's torch path is the peer
        cases["torch-peer"] = "tps: no plain-torch peer (compare stnkit-torch)"
        cases["kornia"] = "tps: kornia's TPS is timed in bench_warp.py (a different map)"
        return cases, b * 2 * 4 * int(torch.tensor(out).prod()) / MIB
    pt = p0.clone().requires_grad_(True)
    if family == "projective":
        oh, ow = out
        ys = (torch.arange(oh, dtype=torch.float32, device=dev) * 2 + 1) / oh - 1
        xs = (torch.arange(ow, dtype=torch.float32, device=dev) * 2 + 1) / ow - 1
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        base = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).view(1, oh * ow, 3)

        def f_peer():
            hm = torch.cat([pt, pt.new_ones(b, 1)], dim=1).view(b, 3, 3)
            pts = base @ hm.transpose(1, 2)
            grid = (pts[..., :2] / pts[..., 2:]).view(b, oh, ow, 2)
            return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)
    else:
        def f_peer():
            theta = pt.view(b, nd, nd + 1)
            grid = F.affine_grid(theta, [b, c, *out], align_corners=False)
            return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)
    cases["torch-peer"] = (f_peer, [pt, x])

    if KT is None:
        cases["kornia"] = _KORNIA_ERR
    else:
        try:  # kornia takes the pixel matrix, input -> output
            M0 = stnkit.to_pixel_matrix(p0, family, tuple(sp), tuple(out))
            M = (M0 if family == "projective" else M0[:, :nd, :]).contiguous().requires_grad_(True)
            if nd == 2:
                kf = KT.warp_affine if family == "affine" else KT.warp_perspective
                fk = lambda: kf(x, M, tuple(out), mode="bilinear", padding_mode="zeros", align_corners=False)
            else:
                fk = lambda: KT.warp_affine3d(x, M, tuple(out), flags="bilinear", padding_mode="zeros",
                                              align_corners=True)
            cases["kornia"] = (fk, [M, x])
        except Exception as e:
            cases["kornia"] = f"kornia: {type(e).__name__}: {str(e)[:120]}"
    grid_mib = b * nd * 4 * int(torch.tensor(out).prod()) / MIB
    return cases, grid_mib


def make_step(fn, inputs, seed=1):
    """Run once (raises if the contender cannot run) -> (step, output)."""
    y = fn()
    gout = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y)

    def step():
        torch.autograd.grad(fn(), inputs, gout)

    return step, y.detach()


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(dev, fn, k=1):
    """Seconds per call of fn, k calls between two syncs."""
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(k):
        fn()
    sync(dev)
    return (time.perf_counter() - t0) / k


def bench(steps, dev, repeats, warmup, min_sample_s):
    """Median seconds per call of each step: warm-up calls, then interleaved samples (A B C, C B A, ...)
    of an inner loop that lasts >= min_sample_s."""
    inner = {n: max(1, int(min_sample_s / max(min(timed(dev, s) for _ in range(max(1, warmup))), 1e-6)))
             for n, s in steps.items()}
    samples, names = {n: [] for n in steps}, list(steps)
    for r in range(repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            samples[n].append(timed(dev, steps[n], inner[n]))
    return {n: statistics.median(v) for n, v in samples.items()}


def peak_mib(step, dev):
    if dev.type != "cuda":
        return None
    step()  # a backward kernel compiles on its first call
    sync(dev)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    step()
    sync(dev)
    return (torch.cuda.max_memory_allocated(dev) - base) / MIB


@contextlib.contextmanager
def deterministic():
    """torch.use_deterministic_algorithms(True) inside; the previous setting (and warn_only) after."""
    prev = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])


def step_share(dev, repeats, warmup, min_s, smoke=False):
    """The warp's share of the paper's ST-CNN training step (bench_step.py's model, batch 256,
    1x42x42 -> 21x21): the whole step, and the warp's forward + backward (d/d theta) alone at
    the same shapes, each backend -> {backend: (step ms, warp ms)}."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_step as bs

    b = 4 if smoke else bs.B
    g = torch.Generator().manual_seed(1)
    x = torch.rand(b, bs.C, bs.H, bs.W, generator=g).to(dev)
    y = torch.randint(0, 10, (b,), generator=g).to(dev)
    out = {}
    for backend in ("torch", "triton"):
        net = bs.build("stnkit").to(dev)
        net.st.backend = backend
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        with torch.no_grad():
            theta = net.st.params(x)
        p = theta.clone().requires_grad_(True)
        try:
            warp_step, _ = make_step(lambda: stnkit.warp(x, p, "affine", bs.OUT, backend=backend), [p])
        except (TypeError, ValueError) as e:
            out[backend] = short(e)
            continue
        t = bench({"step": bs.make_step(net, opt, x, y), "warp": warp_step}, dev, repeats, warmup, min_s)
        out[backend] = (t["step"] * 1e3, t["warp"] * 1e3)
    return out


def short(e):
    first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}"


def run(rows, dev, repeats, warmup, min_s, notes):
    def note(msg):
        return notes.setdefault(msg, len(notes) + 1)

    results, det_rows = [], []
    for family, shape, out in rows:
        cases, grid_mib = build_row(family, shape, out, dev)
        res = {"size": label(shape, out), "family": family, "grid_mib": grid_mib, "ms": {}, "peak_mib": {},
               "max_abs_diff_vs_peer": {}, "errors": {}}
        steps, outs = {}, {}
        for n in NAMES:
            c = cases[n]
            try:
                if isinstance(c, str):
                    raise RuntimeError(c)
                steps[n], outs[n] = make_step(*c)
            except Exception as e:  # same reason, same footnote, whichever contender
                res["errors"][n] = note(str(e) if isinstance(c, str) else short(e))
        if "torch-peer" in outs:
            res["max_abs_diff_vs_peer"] = {n: (o.float() - outs["torch-peer"].float()).abs().max().item()
                                           for n, o in outs.items() if n != "torch-peer"}
        for n in list(steps):
            try:
                res["peak_mib"][n] = peak_mib(steps[n], dev)
            except Exception as e:
                res["errors"][n] = note("memory pass: " + short(e))
                del steps[n]
        try:
            t = bench(steps, dev, repeats, warmup, min_s)
            res["ms"] = {n: v * 1e3 for n, v in t.items()}
        except Exception as e:
            res["errors"]["timing"] = note("timing: " + short(e))
        results.append(res)
        del outs

        drow = {"size": res["size"], "family": family, "ms": {}, "errors": {}}
        if "stnkit-triton" in steps:
            st = steps["stnkit-triton"]

            def det_step(st=st):
                with deterministic():
                    st()

            try:
                det_step()  # fails if the deterministic path uses an op with no deterministic version
                t = bench({"atomic": st, "deterministic": det_step}, dev, repeats, warmup, min_s)
                drow["ms"] = {n: v * 1e3 for n, v in t.items()}
            except Exception as e:
                drow["errors"]["deterministic"] = note("under use_deterministic_algorithms(True): " + short(e))
        else:
            drow["errors"]["atomic"] = res["errors"].get("stnkit-triton")
        det_rows.append(drow)
        del steps, cases
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return results, det_rows


def fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def ratio(a, b):
    return a / b if a is not None and b else None


def cell(res, key, n, spec):
    v = res[key].get(n)
    if v is not None:
        return format(v, spec)
    e = res["errors"].get(n) or res["errors"].get("timing")
    return f"-[{e}]" if e else "-"


def target(res):
    if res["family"] != "affine3d" and not res["size"].startswith("256x1x"):
        return None, "-"  # targets: the MNIST-size 2D rows and the 3D rows
    goal = TARGET_3D if res["family"] == "affine3d" else TARGET_2D
    r = ratio(res["ms"].get("torch-peer"), res["ms"].get("stnkit-triton"))
    return r, f">= {goal:g}x torch: " + ("?" if r is None else "met" if r >= goal else "**not met**")


def print_tables(results, det_rows, notes):
    print("\n## forward + backward (d/d params and d/d image), ms, median\n")
    print("| size | family | torch peer | stnkit torch | stnkit triton | kornia | peer / triton | st-torch / triton "
          "| target | peak MiB: peer, st-torch, st-triton, kornia | grid MiB | peer - triton MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|")
    for r in results:
        ms, tri = r["ms"], r["ms"].get("stnkit-triton")
        r["ratio_peer_triton"] = ratio(ms.get("torch-peer"), tri)
        r["ratio_sttorch_triton"] = ratio(ms.get("stnkit-torch"), tri)
        r["target_ratio"], r["target"] = target(r)
        pk = r["peak_mib"]
        a, b = pk.get("torch-peer"), pk.get("stnkit-triton")
        saved = r["peak_saved_mib"] = None if a is None or b is None else a - b
        print(f"| {r['size']} | {r['family']} | " + " | ".join(cell(r, "ms", n, ".3f") for n in NAMES)
              + f" | {fmt(r['ratio_peer_triton'])} | {fmt(r['ratio_sttorch_triton'])} | {r['target']} | "
              + ", ".join(cell(r, "peak_mib", n, ".1f") for n in NAMES)
              + f" | {r['grid_mib']:.1f} | {fmt(saved, '.1f')} |")
    print("\n## backend='triton': deterministic backward vs atomic, ms, median\n")
    print("| size | family | atomic | deterministic | det / atomic | target <= 1.3x |")
    print("|---|---|---:|---:|---:|---|")
    for d in det_rows:
        a, t = d["ms"].get("atomic"), d["ms"].get("deterministic")
        d["ratio"] = ratio(t, a)
        e = next((v for v in d["errors"].values() if v), None)
        dash = f"-[{e}]" if e else "-"
        verdict = "-" if d["ratio"] is None else "met" if d["ratio"] <= TARGET_DET else "**not met**"
        print(f"| {d['size']} | {d['family']} | {fmt(a, '.3f') if a else dash} | {fmt(t, '.3f') if t else dash} "
              f"| {fmt(d['ratio'])} | {verdict} |")
    bad = [(r["size"], r["family"], n, v) for r in results for n, v in r["max_abs_diff_vs_peer"].items() if v > 1e-3]
    if bad:
        print("\nOutputs differing from the torch peer by more than 1e-3 (max |diff|): "
              + "; ".join(f"{s} {f} {n}: {v:.2e}" for s, f, n, v in bad))
    if notes:
        print("\nFootnotes:")
        for msg, i in notes.items():
            print(f"  [{i}] {msg}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, shorter samples")
    ap.add_argument("--repeats", type=int, default=None, help="samples per contender (default 25, --quick 7)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, 1 repeat: checks the script runs")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    a = ap.parse_args(argv)
    if a.smoke:
        dev, s2, s3, repeats, warmup, min_s = torch.device("cpu"), SMOKE_2D, SMOKE_3D, 1, 1, 0.0
    elif not torch.cuda.is_available():
        print("no CUDA GPU here: nothing measured (run with --smoke to check the script on CPU)")
        return 0
    else:
        dev, s2, s3, repeats, warmup = torch.device("cuda"), SIZES_2D, SIZES_3D, (7 if a.quick else 25), a.warmup
        min_s = 0.01 if a.quick else 0.025
    repeats = a.repeats or repeats
    rows = [(f, *parse_size(s)) for s in s2 for f in ("affine", "projective", "tps")]
    rows += [("affine3d", *parse_size(s)) for s in s3]
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU (smoke), {torch.get_num_threads()} threads"
    try:
        tv = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        tv = "not installed"
    print(f"# bench_gpu: {name}; torch {torch.__version__}, triton {tv}, "
          f"kornia {getattr(sys.modules.get('kornia'), '__version__', 'n/a')}, "
          f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')!r}; repeats={repeats}, warmup={warmup}, "
          f"min sample {min_s * 1e3:.0f} ms, interleaved, perf_counter between cuda syncs")
    torch.manual_seed(0)
    notes = {}
    t0 = time.perf_counter()
    results, det_rows = run(rows, dev, repeats, warmup, min_s, notes)
    print_tables(results, det_rows, notes)
    share = step_share(dev, repeats, warmup, min_s, a.smoke)
    print("\n## the warp inside the ST-CNN training step (bench_step.py's model), ms, median\n")
    print("| backend | whole step | warp fwd + bwd | share | target <= 5% |\n|---|---:|---:|---:|---|")
    for backend, v in share.items():
        if isinstance(v, str):
            print(f"| {backend} | - | - | - | {v} |")
        else:
            pct = 100 * v[1] / v[0]
            print(f"| {backend} | {v[0]:.3f} | {v[1]:.3f} | {pct:.1f}% | {'met' if pct <= 5 else '**not met**'} |")
    print(f"\n(total {time.perf_counter() - t0:.1f} s)")
    if a.json:
        meta = {"device": name, "torch": torch.__version__, "triton": tv, "repeats": repeats, "smoke": a.smoke,
                "footnotes": {str(i): m for m, i in notes.items()}}
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "rows": results, "deterministic": det_rows, "step_share": share}, f, indent=1)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
