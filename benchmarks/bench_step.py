"""One training step of the paper's ST-CNN (RTS setting) and how its time splits.

    python benchmarks/bench_step.py --quick      # ~1 minute
    python benchmarks/bench_step.py              # full run
    python benchmarks/bench_step.py --profile    # also print torch.profiler top ops of a step

Model (batch 256, 1x42x42 inputs):
  localisation  MaxPool 2 -> Conv 5x5 20 -> ReLU -> MaxPool 2 -> Conv 5x5 20 -> ReLU -> FC 20 -> ReLU
                (stnkit.conv_localisation) + the regression FC 20 -> 6 that SpatialTransformer adds
  warp          stnkit.SpatialTransformer(loc, "affine", output_size=(21, 21)): grid + bilinear sampling
  classifier    Conv 9x9 32 (pad 4) -> ReLU -> MaxPool 2 -> Conv 7x7 64 (pad 3) -> ReLU -> MaxPool 2
                -> FC 10 (paddings added so the 21x21 ST output gives 21 -> 10 -> 5)
  step          cross-entropy, backward, SGD (lr 0.01, momentum 0.9)

Two independent measurements of the split (target: warp <= 5 % of the step):
  in-step  the real step, with timestamps taken at the part boundaries: forward hooks on the
           regression layer and on the SpatialTransformer, and identity autograd "markers" on
           their outputs whose backward records when the gradient reaches them.  On CPU autograd
           runs the backward synchronously in the calling thread, so the timestamps split
           backward exactly into classifier / warp / localisation.
  isolated each part's forward+backward timed on its own (interleaved, median), the warp with
           gradients w.r.t. the parameters only (the images are data).
The same is done with a plain-torch ST (F.affine_grid + F.grid_sample) for reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import stnkit

B, C, H, W = 256, 1, 42, 42
OUT = (21, 21)


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------
def make_localisation() -> nn.Module:
    return stnkit.conv_localisation(C, (H, W), channels=(20, 20), kernel_size=5, hidden=20, downsample=2)


def make_classifier() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(C, 32, 9, padding=4), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 7, padding=3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 5 * 5, 10),
    )


class TorchST(nn.Module):
    """The same ST with the plain-torch warp (reference)."""

    def __init__(self, localisation: nn.Module, regression: nn.Linear, output_size):
        super().__init__()
        self.localisation, self.regression, self.output_size = localisation, regression, output_size

    def forward(self, x):
        theta = self.regression(self.localisation(x).flatten(1)).view(-1, 2, 3)
        grid = F.affine_grid(theta, [x.shape[0], x.shape[1], *self.output_size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class Net(nn.Module):
    def __init__(self, st: nn.Module, clf: nn.Module):
        super().__init__()
        self.st, self.clf = st, clf

    def forward(self, x):
        return self.clf(self.st(x))


def build(kind: str, seed: int = 0) -> Net:
    torch.manual_seed(seed)
    loc = make_localisation()
    st = stnkit.SpatialTransformer(loc, "affine", output_size=OUT)
    with torch.no_grad():  # move off the exact identity, as after a few steps of training
        st.regression.weight.normal_(0, 0.01)
    if kind == "torch":
        st = TorchST(st.localisation, st.regression, OUT)
    return Net(st, make_classifier())


# --------------------------------------------------------------------------------------------
# in-step split with timestamps
# --------------------------------------------------------------------------------------------
class _Mark(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, log, key):
        ctx.log, ctx.key = log, key
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        ctx.log[ctx.key] = time.perf_counter()
        return g, None, None


class Timestamps:
    """Forward hooks + backward markers at the localisation/warp and warp/classifier boundaries."""

    def __init__(self, net: Net):
        self.log: dict[str, float] = {}
        st = net.st

        def after_regression(mod, inp, out):
            self.log["fwd_loc_end"] = time.perf_counter()
            return _Mark.apply(out, self.log, "bwd_warp_end")  # grad reaches theta: warp bwd done

        def after_st(mod, inp, out):
            self.log["fwd_warp_end"] = time.perf_counter()
            return _Mark.apply(out, self.log, "bwd_clf_end")  # grad reaches the ST output

        self.handles = [st.regression.register_forward_hook(after_regression), st.register_forward_hook(after_st)]

    def remove(self):
        for h in self.handles:
            h.remove()


def make_step(net: Net, opt, x, y):
    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()

    return step


def instep_split(net: Net, opt, x, y, repeats: int, warmup: int):
    ts = Timestamps(net)
    rows = []
    try:
        for i in range(warmup + repeats):
            log = ts.log
            log.clear()
            opt.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            t_fwd = time.perf_counter()
            loss.backward()
            t_bwd = time.perf_counter()
            opt.step()
            t_end = time.perf_counter()
            if i < warmup:
                continue
            rows.append(dict(
                loc=(log["fwd_loc_end"] - t0) + (t_bwd - log["bwd_warp_end"]),
                warp=(log["fwd_warp_end"] - log["fwd_loc_end"]) + (log["bwd_warp_end"] - log["bwd_clf_end"]),
                clf=(t_fwd - log["fwd_warp_end"]) + (log["bwd_clf_end"] - t_fwd),
                sgd=t_end - t_bwd,
                total=t_end - t0,
                warp_fwd=log["fwd_warp_end"] - log["fwd_loc_end"],
                warp_bwd=log["bwd_warp_end"] - log["bwd_clf_end"],
            ))
    finally:
        ts.remove()
    keys = rows[0].keys()
    med = {k: statistics.median(r[k] for r in rows) for k in keys}
    # per-step warp share, then its median: robust to a noisy step
    med["share"] = statistics.median(r["warp"] / r["total"] for r in rows)
    return med


# --------------------------------------------------------------------------------------------
# isolated parts
# --------------------------------------------------------------------------------------------
def isolated_parts(repeats: int, warmup: int):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, C, H, W, generator=g)
    y = torch.randint(0, 10, (B,), generator=g)
    net = build("stnkit")
    st, clf = net.st, net.clf
    with torch.no_grad():
        theta0 = st.params(x)
    g_theta = torch.randn(B, 6, generator=g)
    p_st = theta0.clone().requires_grad_(True)
    p_t = theta0.clone().requires_grad_(True)
    with torch.no_grad():
        z0 = stnkit.warp(x, theta0, "affine", OUT)
    g_z = torch.randn(z0.shape, generator=g)
    z = z0.clone().requires_grad_(True)

    def loc_part():
        theta = st.params(x)
        theta.backward(g_theta)

    def warp_stnkit():
        out = stnkit.warp(x, p_st, "affine", OUT)
        torch.autograd.grad(out, [p_st], g_z)

    def warp_torch():
        grid = F.affine_grid(p_t.view(B, 2, 3), [B, C, *OUT], align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        torch.autograd.grad(out, [p_t], g_z)

    def clf_part():
        loss = F.cross_entropy(clf(z), y)
        loss.backward()  # grads of the classifier's weights and of its input z

    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    for prm in net.parameters():
        prm.grad = torch.zeros_like(prm)

    def sgd_part():
        opt.step()

    parts = {"localisation": loc_part, "warp (stnkit)": warp_stnkit, "warp (torch peer)": warp_torch,
             "classifier": clf_part, "SGD update": sgd_part}
    for f in parts.values():
        for _ in range(warmup):
            f()
    samples = {k: [] for k in parts}
    names = list(parts)
    for r in range(repeats):
        for k in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            parts[k]()
            samples[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


# --------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--profile", action="store_true", help="print torch.profiler top ops of the stnkit step")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (7 if args.quick else 25)
    warmup = 2 if args.quick else 4

    g = torch.Generator().manual_seed(0)
    x = torch.rand(B, C, H, W, generator=g)
    y = torch.randint(0, 10, (B,), generator=g)

    print("# ST-CNN training step (RTS setting: batch 256, 1x42x42 -> ST 21x21)\n")
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, repeats={repeats}, warmup={warmup}")
    nets = {k: build(k) for k in ("stnkit", "torch")}
    opts = {k: torch.optim.SGD(n.parameters(), lr=0.01, momentum=0.9) for k, n in nets.items()}
    print(f"\nlocalisation: {nets['stnkit'].st.localisation}\nregression: {nets['stnkit'].st.regression}")
    print(f"classifier: {nets['stnkit'].clf}")

    # in-step split, interleaving the two models in chunks so noise hits both
    chunks = 5
    per = max(1, repeats // chunks)
    acc = {k: [] for k in nets}
    for c in range(chunks):
        for k in (("stnkit", "torch") if c % 2 == 0 else ("torch", "stnkit")):
            acc[k].append(instep_split(nets[k], opts[k], x, y, per, warmup if c == 0 else 1))
    split = {k: {m: statistics.median(d[m] for d in v) for m in v[0]} for k, v in acc.items()}

    print("\n## In-step split (median ms per step; the step timed as a whole, split by timestamps)\n")
    print("| model | localisation fwd+bwd | warp fwd+bwd (fwd / bwd) | classifier fwd+bwd (+loss) | SGD update | step total | warp share |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k, s in split.items():
        print(f"| ST-CNN, {k} warp | {1e3 * s['loc']:.2f} | {1e3 * s['warp']:.2f} ({1e3 * s['warp_fwd']:.2f} / {1e3 * s['warp_bwd']:.2f}) "
              f"| {1e3 * s['clf']:.2f} | {1e3 * s['sgd']:.2f} | {1e3 * s['total']:.2f} | {100 * s['share']:.1f} % |")

    iso = isolated_parts(repeats, warmup)
    tot = iso["localisation"] + iso["warp (stnkit)"] + iso["classifier"] + iso["SGD update"]
    tot_t = iso["localisation"] + iso["warp (torch peer)"] + iso["classifier"] + iso["SGD update"]
    print("\n## Isolated parts (median ms, each part's forward+backward timed alone, interleaved)\n")
    print("| part | ms | share of stnkit step (sum of parts) | share of torch-peer step |")
    print("|---|---:|---:|---:|")
    for k, v in iso.items():
        a = f"{100 * v / tot:.1f} %" if k != "warp (torch peer)" else "-"
        b_ = f"{100 * v / tot_t:.1f} %" if k != "warp (stnkit)" else "-"
        print(f"| {k} | {1e3 * v:.2f} | {a} | {b_} |")
    print(f"| sum (stnkit) | {1e3 * tot:.2f} | 100 % | |")

    share_in = split["stnkit"]["share"]
    share_iso = iso["warp (stnkit)"] / tot
    verdict = "met" if max(share_in, share_iso) <= 0.05 else ("NOT met" if min(share_in, share_iso) > 0.05 else "borderline")
    print(f"\nVerdict: warp <= 5 % of the step: {verdict} "
          f"(in-step {100 * share_in:.1f} %, isolated {100 * share_iso:.1f} %; "
          f"stnkit warp vs torch-peer warp: {iso['warp (torch peer)'] / iso['warp (stnkit)']:.2f}x faster isolated, "
          f"{split['torch']['warp'] / split['stnkit']['warp']:.2f}x in-step)")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        step = make_step(nets["stnkit"], opts["stnkit"], x, y)
        for _ in range(2):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                step()
        print("\n## torch.profiler, 5 stnkit steps, top ops by self CPU time\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    return 0


if __name__ == "__main__":
    sys.exit(main())
