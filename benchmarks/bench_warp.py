"""Forward+backward timing of ``stnkit.warp`` against plain torch and kornia peers.

Every number is a *ratio measured in the same run*: the peers and stnkit are timed interleaved
(A B C A B C ..., the order reversed on every other round) so that machine noise hits all of
them alike, and the median of the repeats is reported.  Nothing here is an absolute pass/fail.

    python benchmarks/bench_warp.py --quick              # ~1 minute
    python benchmarks/bench_warp.py                      # full run
    python benchmarks/bench_warp.py --input-grad         # also time with d/d(input image)
    python benchmarks/bench_warp.py --sizes 256x1x28x28 8x3x448x448:224x224 --repeats 50
    python benchmarks/bench_warp.py --profile affine     # top ops of the stnkit call per size

Families and peers
  affine / attention : stnkit.warp  vs  F.affine_grid + F.grid_sample  vs  kornia warp_affine
  projective         : stnkit.warp  vs  hand-built homography grid (base meshgrid, matmul,
                       divide) + F.grid_sample  vs  kornia warp_perspective
  tps (16 points)    : stnkit.warp  vs  kornia get_tps_transform + warp_image_tps
All warps: bilinear, zeros padding, align_corners=False, same output size.  kornia's
warp_image_tps has no output-size argument (output = input size), so for a size given with a
different output size the TPS row is run at output = input size for both libraries.
Gradients are taken w.r.t. the transform parameters (and, with --input-grad, in a second table,
also w.r.t. the input image) with ``torch.autograd.grad`` and a fixed random output gradient.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
import warnings
from typing import Callable

import torch
import torch.nn.functional as F

try:  # the library under test
    import stnkit

    _STNKIT_ERR = None
    if not hasattr(stnkit, "warp"):
        raise ImportError("stnkit has no attribute 'warp' yet")
except Exception as e:  # pragma: no cover - reported in the output
    stnkit = None
    _STNKIT_ERR = f"{type(e).__name__}: {e}"

try:
    import kornia.geometry.transform as KT

    _KORNIA_ERR = None
except Exception as e:  # pragma: no cover
    KT = None
    _KORNIA_ERR = f"{type(e).__name__}: {e}"


DEFAULT_SIZES = ["256x1x28x28", "256x1x42x42", "256x1x60x60", "32x3x128x128", "8x3x448x448:224x224"]
QUICK_SIZES = DEFAULT_SIZES
FAMILIES = ["affine", "attention", "projective", "tps"]
TPS_K = 16
SMALL_PX = (28, 42, 60)
NOISY_IQR = 30.0  # percent: a row whose samples spread more than this is re-measured / flagged


# --------------------------------------------------------------------------------------------
# size parsing
# --------------------------------------------------------------------------------------------
def parse_size(s: str):
    """``BxCxHxW`` or ``BxCxHxW:H'xW'`` -> ((B, C, H, W), (H', W'))."""
    if ":" in s:
        a, b = s.split(":")
        out = tuple(int(v) for v in b.lower().split("x"))
    else:
        a, out = s, None
    shape = tuple(int(v) for v in a.lower().split("x"))
    if len(shape) != 4:
        raise argparse.ArgumentTypeError(f"size {s!r}: expected BxCxHxW[:HxW]")
    if out is None:
        out = shape[2:]
    return shape, out


def size_label(shape, out):
    b, c, h, w = shape
    s = f"{b}x{c}x{h}x{w}"
    if tuple(out) != (h, w):
        s += f"->{out[0]}x{out[1]}"
    return s


def tps_target_points(k: int = TPS_K) -> torch.Tensor:
    n = int(round(k**0.5))
    lin = torch.linspace(-1.0, 1.0, n)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")  # y outer, x inner (row-major)
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)  # (K, 2)


# --------------------------------------------------------------------------------------------
# cases: each returns {impl_name: (fn, [tensors that get gradients])}
# --------------------------------------------------------------------------------------------
def _base_params(family: str, b: int, g: torch.Generator):
    if family == "affine":
        eye = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
        return eye + 0.1 * torch.randn(b, 6, generator=g)
    if family == "attention":
        s = 0.8 + 0.2 * torch.rand(b, 1, generator=g)
        t = 0.1 * torch.randn(b, 2, generator=g)
        return torch.cat([s, t], dim=1)
    if family == "projective":
        eye = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
        p = eye + 0.05 * torch.randn(b, 8, generator=g)
        return p
    if family == "tps":
        tgt = tps_target_points()
        return (tgt + 0.05 * torch.randn(b, TPS_K, 2, generator=g)).reshape(b, 2 * TPS_K)
    raise ValueError(family)


def build_case(family: str, shape, out_hw, input_grad: bool, seed: int = 0, with_stnkit: bool = True):
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    if family == "tps":
        out_hw = (h, w)  # kornia's warp_image_tps cannot change the output size
    oh, ow = out_hw
    # a smooth image (bilinearly upsampled noise), so that the output-difference sanity column
    # is meaningful; timing does not depend on the content
    x = F.interpolate(torch.rand(b, c, h // 4 + 2, w // 4 + 2, generator=g), size=(h, w), mode="bilinear",
                      align_corners=False).contiguous()
    if input_grad:
        x.requires_grad_(True)
    xs = [x] if input_grad else []
    p0 = _base_params(family, b, g)
    cases: dict[str, tuple[Callable[[], torch.Tensor], list[torch.Tensor]]] = {}

    # ---- stnkit -----------------------------------------------------------------------------
    if with_stnkit and stnkit is not None:
        p_st = p0.clone().requires_grad_(True)
        if (oh, ow) == (h, w):

            def f_st(p=p_st):
                return stnkit.warp(x, p, family)

        else:

            def f_st(p=p_st):
                return stnkit.warp(x, p, family, (oh, ow))

        cases["stnkit"] = (f_st, [p_st] + xs)

    # ---- plain torch ------------------------------------------------------------------------
    if family in ("affine", "attention"):
        p_t = p0.clone().requires_grad_(True)
        if family == "affine":

            def f_torch(p=p_t):
                theta = p.view(b, 2, 3)
                grid = F.affine_grid(theta, [b, c, oh, ow], align_corners=False)
                return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        else:

            def f_torch(p=p_t):
                s, tx, ty = p.unbind(1)
                z = torch.zeros_like(s)
                theta = torch.stack([s, z, tx, z, s, ty], dim=1).view(b, 2, 3)
                grid = F.affine_grid(theta, [b, c, oh, ow], align_corners=False)
                return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        cases["torch"] = (f_torch, [p_t] + xs)
    elif family == "projective":
        p_t = p0.clone().requires_grad_(True)
        # the usual hand-built homography grid: base meshgrid of homogeneous target coords
        ys = (torch.arange(oh, dtype=torch.float32) * 2 + 1) / oh - 1
        xs_ = (torch.arange(ow, dtype=torch.float32) * 2 + 1) / ow - 1
        gy, gx = torch.meshgrid(ys, xs_, indexing="ij")
        base = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).view(1, oh * ow, 3)

        def f_torch(p=p_t):
            hm = torch.cat([p, p.new_ones(b, 1)], dim=1).view(b, 3, 3)
            pts = base @ hm.transpose(1, 2)  # (B, H'W', 3)
            grid = (pts[..., :2] / pts[..., 2:]).view(b, oh, ow, 2)
            return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        cases["torch"] = (f_torch, [p_t] + xs)

    # ---- kornia -----------------------------------------------------------------------------
    if KT is not None and (stnkit is not None or family == "tps"):
        if family in ("affine", "projective", "attention"):  # kornia's M: pixels, source -> target
            M0 = stnkit.to_pixel_matrix(p0, family, (h, w), (oh, ow))
        if family == "affine":
            M = M0[:, :2, :].contiguous().requires_grad_(True)

            def f_k(M=M):
                return KT.warp_affine(x, M, (oh, ow), mode="bilinear", padding_mode="zeros", align_corners=False)

            cases["kornia"] = (f_k, [M] + xs)
        elif family == "attention":
            # same 3-parameter family, expressed as kornia's pixel-space forward matrix
            a = M0[:, 0, 0].clone().requires_grad_(True)
            bx = M0[:, 0, 2].clone().requires_grad_(True)
            by = M0[:, 1, 2].clone().requires_grad_(True)

            def f_k(a=a, bx=bx, by=by):
                z = torch.zeros_like(a)
                M = torch.stack([a, z, bx, z, a, by], dim=1).view(b, 2, 3)
                return KT.warp_affine(x, M, (oh, ow), mode="bilinear", padding_mode="zeros", align_corners=False)

            cases["kornia"] = (f_k, [a, bx, by] + xs)
        elif family == "projective":
            M = M0.contiguous().requires_grad_(True)

            def f_k(M=M):
                return KT.warp_perspective(
                    x, M, (oh, ow), mode="bilinear", padding_mode="zeros", align_corners=False
                )

            cases["kornia"] = (f_k, [M] + xs)
        elif family == "tps":
            src = p0.view(b, TPS_K, 2).clone().requires_grad_(True)
            dst = tps_target_points().expand(b, TPS_K, 2).contiguous()

            def f_k(src=src):
                # documented kornia usage for warp_image_tps: weights from get_tps_transform
                # called reversed, kernel centres = the second argument
                kw, aw = KT.get_tps_transform(dst, src)
                return KT.warp_image_tps(x, src, kw, aw, align_corners=False, padding_mode="zeros")

            cases["kornia"] = (f_k, [src] + xs)
    return cases, (oh, ow)


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------
def make_step(fn, inputs, seed=1):
    out = fn()
    g = torch.Generator().manual_seed(seed)
    gout = torch.randn(out.shape, generator=g, dtype=out.dtype)

    def step():
        y = fn()
        torch.autograd.grad(y, inputs, gout)

    return step, out.detach()


def bench_interleaved(steps: dict[str, Callable[[], None]], repeats: int, warmup: int, min_sample_s: float,
                      max_impl_s: float = float("inf")):
    """Median seconds per call for each step, measured interleaved (A B C, C B A, A B C, ...).

    Each sample runs an inner loop long enough to last >= min_sample_s.  An implementation whose
    samples would take more than max_impl_s in total (kornia's TPS) gets fewer samples (at
    least 3); it simply sits out the later rounds.
    """
    names = list(steps)
    inner, nrep = {}, {}
    for n in names:
        dt = float("inf")
        for _ in range(max(1, warmup)):
            t0 = time.perf_counter()
            steps[n]()
            dt = min(dt, time.perf_counter() - t0)
        inner[n] = max(1, int(min_sample_s / max(dt, 1e-6)))
        nrep[n] = max(3, min(repeats, int(max_impl_s / max(dt * inner[n], 1e-9))))
    samples = {n: [] for n in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            if len(samples[n]) >= nrep[n]:
                continue
            k = inner[n]
            t0 = time.perf_counter()
            for _ in range(k):
                steps[n]()
            samples[n].append((time.perf_counter() - t0) / k)
    return {n: statistics.median(v) for n, v in samples.items()}, samples


def spread(v):
    """Interquartile range relative to the median, in percent."""
    if len(v) < 4:
        return float("nan")
    q = statistics.quantiles(v, n=4)
    return 100.0 * (q[2] - q[0]) / statistics.median(v)


# --------------------------------------------------------------------------------------------
# torch.compile checks
# --------------------------------------------------------------------------------------------
def compile_checks(verbose: bool = True):
    rows = []
    import torch._dynamo

    # 1. stnkit.SpatialTransformer compiled with dynamic=True, two batch sizes, fwd+bwd
    if stnkit is None:
        rows.append(("torch.compile(stnkit.SpatialTransformer, dynamic=True)", "n/a", f"stnkit not importable: {_STNKIT_ERR}"))
    else:
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        try:
            # SpatialTransformer appends the regression layer (features -> 6) itself
            loc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 20), torch.nn.ReLU())
            st = stnkit.SpatialTransformer(loc, "affine", output_size=(14, 14))
            cst = torch.compile(st, dynamic=True)
            msgs = []
            ok = True
            for bs in (8, 13):
                x = torch.rand(bs, 1, 28, 28, requires_grad=True)
                t0 = time.perf_counter()
                y = cst(x)
                if isinstance(y, (tuple, list)):
                    y = y[0]
                y.sum().backward()
                dt = time.perf_counter() - t0
                ye = st(x)
                if isinstance(ye, (tuple, list)):
                    ye = ye[0]
                err = (y - ye).abs().max().item()
                msgs.append(f"B={bs}: out {tuple(y.shape)}, max|compiled-eager|={err:.1e}, first call {dt:.1f}s")
                ok = ok and tuple(y.shape) == (bs, 1, 14, 14) and err < 1e-4
            frames = torch._dynamo.utils.counters["stats"].get("unique_graphs", 0)
            msgs.append(f"unique graphs compiled: {frames}")
            rows.append(("torch.compile(stnkit.SpatialTransformer, dynamic=True)", "yes" if ok else "NO", "; ".join(msgs)))
        except Exception as e:
            tb = traceback.format_exc().strip().splitlines()
            rows.append(("torch.compile(stnkit.SpatialTransformer, dynamic=True)", "NO", f"{type(e).__name__}: {str(e)[:400]} [{tb[-1][:200]}]"))

    # 2. plain F.affine_grid + grid_sample compiled, batch size changing (forward+backward, and
    #    forward only, so the report says which half breaks)
    def plain(x, theta):
        grid = F.affine_grid(theta, list(x.shape[:2]) + [14, 14], align_corners=False)
        return F.grid_sample(x, grid, align_corners=False)

    for dyn in (True, None):
        for backward in (True, False):
            torch._dynamo.reset()
            torch._dynamo.utils.counters.clear()
            label = f"torch.compile(F.affine_grid+grid_sample, dynamic={dyn}), {'fwd+bwd' if backward else 'fwd only'}"
            cf = torch.compile(plain, dynamic=dyn)
            msgs, ok = [], True
            for bs in (8, 13):
                x = torch.rand(bs, 1, 28, 28, requires_grad=backward)
                theta = (torch.eye(2, 3) + 0.1 * torch.randn(bs, 2, 3)).requires_grad_(backward)
                try:
                    y = cf(x, theta)
                    if backward:
                        y.sum().backward()
                    err = (y - plain(x, theta)).abs().max().item()
                    msgs.append(f"B={bs}: ok (max|compiled-eager|={err:.1e})")
                    ok = ok and err < 1e-4
                except Exception as e:
                    ok = False
                    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                    why = next((ln for ln in lines if "Error" in ln and "raised" not in ln), lines[0] if lines else "")
                    msgs.append(f"B={bs}: {type(e).__name__}: {why[:300]}")
            frames = torch._dynamo.utils.counters["stats"].get("unique_graphs", 0)
            msgs.append(f"unique graphs: {frames}")
            rows.append((label, "works" if ok else "FAILS", "; ".join(msgs)))
    torch._dynamo.reset()
    return rows


# --------------------------------------------------------------------------------------------
# profiling
# --------------------------------------------------------------------------------------------
def profile_family(family: str, sizes, input_grad: bool, row_limit: int = 15):
    from torch.profiler import ProfilerActivity, profile

    for shape, out in sizes:
        cases, _ = build_case(family, shape, out, input_grad)
        for name in ("stnkit", "torch"):
            if name not in cases:
                continue
            step, _ = make_step(*cases[name])
            for _ in range(3):
                step()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(10):
                    step()
            print(f"\n### profile: {name} {family} {size_label(shape, out)} (10 fwd+bwd calls)\n")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit))


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def target_for(family: str, shape, peer: str):
    """(minimum ratio peer_time / stnkit_time, description)."""
    if family == "tps":
        return 25.0, ">=25x"
    if shape[2] in SMALL_PX and shape[3] in SMALL_PX:
        return 2.0, ">=2x"
    return 1.0, ">=1x (never slower)"


def run_table(sizes, families, input_grad, repeats, warmup, min_sample_s, max_impl_s, retries=2, check_outputs=True):
    results = []  # dicts
    for shape, out in sizes:
        for fam in families:
            cases, out_used = build_case(fam, shape, out, input_grad)
            steps, outs = {}, {}
            for n, (fn, ins) in cases.items():
                try:
                    steps[n], outs[n] = make_step(fn, ins)
                except Exception as e:
                    print(f"  ! {n} {fam} {size_label(shape, out)} failed: {type(e).__name__}: {e}", file=sys.stderr)
            # under CPU contention a whole row can be hit (spread of the samples explodes): measure
            # such a row again, up to `retries` times, and keep the least noisy measurement
            best = None
            for attempt in range(1 + retries):
                med, samples = bench_interleaved(steps, repeats, warmup, min_sample_s, max_impl_s)
                iqr = {n: spread(v) for n, v in samples.items()}
                worst = max((v for v in iqr.values() if v == v), default=0.0)
                if best is None or worst < best[2]:
                    best = (med, iqr, worst)
                if worst <= NOISY_IQR:
                    break
            med, iqr, worst = best
            row = dict(size=size_label(shape, out_used), shape=shape, family=fam, med=med, iqr=iqr,
                       noisy=worst > NOISY_IQR)
            if check_outputs and "stnkit" in outs:
                ref = outs["stnkit"]
                row["diff"] = {n: (o - ref).abs().max().item() for n, o in outs.items() if n != "stnkit"}
            results.append(row)
            msg = " ".join(f"{n}={1e3 * t:.3f}ms" for n, t in med.items())
            print(f"  [{fam:10s} {row['size']:22s}] {msg}", file=sys.stderr, flush=True)
    return results


def print_table(results, title):
    print(f"\n## {title}\n")
    print("| size | family | stnkit ms | torch ms | kornia ms | torch/stnkit | kornia/stnkit | target | verdict | max abs out diff vs stnkit (torch, kornia) |")
    print("|---|---|---:|---:|---:|---:|---:|---|---|---|")
    verdicts = []
    for r in results:
        med = r["med"]
        st = med.get("stnkit")
        ok_all, notes = True, []
        ratios = {}
        for peer in ("torch", "kornia"):
            if peer in med and st:
                ratios[peer] = med[peer] / st
        need, desc = target_for(r["family"], r["shape"], None)
        for peer, rat in ratios.items():
            if rat < need:
                ok_all = False
                near = " (within 5 %: at the noise level)" if rat >= 0.95 * need else ""
                notes.append(f"{peer}: {rat:.2f}x < {need:g}x{near}")
        if st is None:
            verdict = "n/a (stnkit missing)"
        else:
            verdict = "met" if ok_all else "NOT met"
        fmt = lambda n: f"{1e3 * med[n]:.3f} (±{r['iqr'][n]:.0f}%)" if n in med else "-"
        rt = lambda n: f"{ratios[n]:.2f}x" if n in ratios else "-"
        d = r.get("diff", {})
        dd = ", ".join(f"{d[n]:.1e}" if n in d else "-" for n in ("torch", "kornia"))
        if r.get("noisy"):
            verdict += " (noisy row)"
        print(f"| {r['size']} | {r['family']} | {fmt('stnkit')} | {fmt('torch')} | {fmt('kornia')} | {rt('torch')} | {rt('kornia')} | {desc} | {verdict} | {dd} |")
        verdicts.append((r, verdict, notes))
    print("\n(ms = median per fwd+bwd call; ± = interquartile range / median of the repeats; a row whose "
          f"spread exceeded {NOISY_IQR:.0f} % was re-measured up to twice and the least noisy run kept; "
          "'noisy row' = still above that, trust its ratio less)")
    print("\nVerdicts:")
    fams = []
    for r, _, _ in verdicts:
        if r["family"] not in fams:
            fams.append(r["family"])
    for fam in fams:
        for group, pred in (("small (28/42/60 px)", lambda s: s[2] in SMALL_PX), ("large", lambda s: s[2] not in SMALL_PX)):
            rows = [(r, v, n) for r, v, n in verdicts if r["family"] == fam and pred(r["shape"])]
            if not rows:
                continue
            need, desc = target_for(fam, rows[0][0]["shape"], None)
            bad = [f"{r['size']} ({'; '.join(n)})" for r, v, n in rows if not v.startswith("met")]
            if any(v.startswith("n/a") for _, v, _ in rows):
                print(f"- {fam}, {group}, target {desc} vs all peers: n/a (stnkit not importable)")
            elif bad:
                print(f"- {fam}, {group}, target {desc} vs all peers: NOT met at " + ", ".join(bad))
            else:
                worst = min(min(r["med"][p] / r["med"]["stnkit"] for p in ("torch", "kornia") if p in r["med"]) for r, _, _ in rows)
                print(f"- {fam}, {group}, target {desc} vs all peers: met (worst ratio {worst:.2f}x)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="about a minute: fewer repeats, shorter samples")
    ap.add_argument("--sizes", nargs="+", default=None, help="BxCxHxW[:H'xW'] ...")
    ap.add_argument("--families", nargs="+", default=FAMILIES, choices=FAMILIES)
    ap.add_argument("--repeats", type=int, default=None, help="timed samples per implementation (median taken)")
    ap.add_argument("--input-grad", action="store_true", help="also time with gradients w.r.t. the input image (second table)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile checks")
    ap.add_argument("--profile", choices=FAMILIES, default=None, help="print torch.profiler top ops of stnkit and torch for this family, then exit")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--retries", type=int, default=None, help=f"re-measurements of a row whose spread exceeds {NOISY_IQR:.0f} %% (default 2, --quick 1)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    sizes = [parse_size(s) for s in (args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))]
    repeats = args.repeats or (7 if args.quick else 25)
    warmup = 1 if args.quick else 3
    min_sample_s = 0.01 if args.quick else 0.03
    max_impl_s = 3.0 if args.quick else 25.0

    print("# stnkit warp benchmark\n")
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"kornia {getattr(sys.modules.get('kornia'), '__version__', 'n/a')}, "
          f"stnkit {'importable' if stnkit else 'NOT importable: ' + str(_STNKIT_ERR)}; "
          f"repeats={repeats}, warmup={warmup}, min sample {min_sample_s * 1e3:.0f} ms, interleaved")

    if args.profile:
        profile_family(args.profile, sizes, args.input_grad)
        return 0

    retries = args.retries if args.retries is not None else (1 if args.quick else 2)
    res = run_table(sizes, args.families, False, repeats, warmup, min_sample_s, max_impl_s, retries)
    print_table(res, "forward + backward, gradient w.r.t. params")
    if args.input_grad:
        res2 = run_table(sizes, args.families, True, repeats, warmup, min_sample_s, max_impl_s, retries)
        print_table(res2, "forward + backward, gradient w.r.t. params AND input image")

    if not args.no_compile:
        print("\n## torch.compile\n")
        print("| what | result | details |")
        print("|---|---|---|")
        for what, res_, det in compile_checks():
            print(f"| {what} | {res_} | {det} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
