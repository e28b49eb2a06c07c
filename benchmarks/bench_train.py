"""Training throughput (images/s) of the RTS ST-CNN against the same model without the ST and
against the PyTorch tutorial's STN, with and without bf16 autocast and torch.compile.

    python benchmarks/bench_train.py                 # every variant on the default device
    python benchmarks/bench_train.py --quick         # fewer steps
    python benchmarks/bench_train.py --no-compile    # skip torch.compile (slow to warm up on CPU)

Models (1x42x42 RTS inputs, batch 256, SGD momentum 0.9, cross-entropy):
  st-cnn-affine  stnkit's registry model as `stnkit train rts` builds it (budget 40,000 params,
                 ST output 21x21)
  cnn            the same config without the ST (sized to the same budget)
  tutorial-stn   the STN of PyTorch's "Spatial Transformer Networks" tutorial (conv 10/20 + FC
                 50 classifier, conv 8/10 localisation with FC 32), F.affine_grid +
                 F.grid_sample, flatten sizes adapted to 42x42 inputs
The batches are RTS test digits rendered once and kept on the device: the step is timed, not
data generation (see bench_data.py for that). Every variant is timed in alternation, median of
the rounds; ratios are against tutorial-stn eager measured in the same run.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from stnkit.train.config import CONFIGS, build, load_file
from stnkit.data import make_dataset
from stnkit.train.objectives import build_model

B = 256


class TutorialSTN(nn.Module):
    """The STN of PyTorch's spatial transformer tutorial, for inputs (B, 1, H, W)."""

    def __init__(self, size=(42, 42)):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 10, 5), nn.Conv2d(10, 20, 5)
        self.drop = nn.Dropout2d()
        self.localization = nn.Sequential(
            nn.Conv2d(1, 8, 7), nn.MaxPool2d(2, 2), nn.ReLU(True),
            nn.Conv2d(8, 10, 5), nn.MaxPool2d(2, 2), nn.ReLU(True))
        with torch.no_grad():
            x = torch.zeros(1, 1, *size)
            n_loc = self.localization(x).numel()
            n_cls = self.features(x).numel()
        self.fc_loc = nn.Sequential(nn.Linear(n_loc, 32), nn.ReLU(True), nn.Linear(32, 6))
        self.fc_loc[2].weight.data.zero_()
        self.fc_loc[2].bias.data.copy_(torch.tensor([1, 0, 0, 0, 1, 0], dtype=torch.float))
        self.fc1, self.fc2 = nn.Linear(n_cls, 50), nn.Linear(50, 10)

    def features(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        return F.relu(F.max_pool2d(self.drop(self.conv2(x)), 2))

    def forward(self, x):
        theta = self.fc_loc(self.localization(x).flatten(1)).view(-1, 2, 3)
        grid = F.affine_grid(theta, x.size(), align_corners=False)
        x = F.grid_sample(x, grid, align_corners=False)
        x = F.relu(self.fc1(self.features(x).flatten(1)))
        return self.fc2(F.dropout(x, training=self.training))


def models(test):
    base = load_file(CONFIGS / "table1-rts.yaml")
    return {
        "st-cnn-affine": build_model(build(base, {"model": "st-cnn-affine"}), test),
        "cnn": build_model(build(base, {"model": "cnn"}), test),
        "tutorial-stn": TutorialSTN(),
    }


def stepper(model, device, bf16, compiled):
    model = model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    fwd = torch.compile(model) if compiled else model

    def step(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(fwd(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-bf16", action="store_true")
    a = ap.parse_args()
    device = torch.device(a.device)
    torch.manual_seed(0)
    test = make_dataset("rts", "test")
    batch = next(test.batches(B, shuffle=False))
    x, y = batch.x.to(device), batch.y.to(device)
    steps, rounds = (5, 3) if a.quick else (20, 5)
    variants = []
    for name, model in models(test).items():
        for bf16 in (False,) if a.no_bf16 else (False, True):
            for compiled in (False,) if a.no_compile else (False, True):
                variants.append((name, bf16, compiled, stepper(copy.deepcopy(model), device, bf16, compiled)))
    for *_, step in variants:  # warm-up, and compilation
        for _ in range(3):
            step(x, y)
    sync(device)
    times = {v[:3]: [] for v in variants}
    for _ in range(rounds):
        for name, bf16, compiled, step in variants:
            sync(device)
            t = time.perf_counter()
            for _ in range(steps):
                step(x, y)
            sync(device)
            times[(name, bf16, compiled)].append((time.perf_counter() - t) / steps)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"training images/s, batch {B}, 1x42x42 RTS, {gpu}, torch {torch.__version__}")
    print("| model | bf16 | compile | images/s | vs tutorial-stn eager |")
    print("|---|---|---|---:|---:|")
    ref = B / statistics.median(times[("tutorial-stn", False, False)])
    for (name, bf16, compiled), ts in times.items():
        rate = B / statistics.median(ts)
        print(f"| {name} | {'yes' if bf16 else 'no'} | {'yes' if compiled else 'no'} | {rate:,.0f} | {rate / ref:.2f} |")


if __name__ == "__main__":
    main()
