"""`stnkit demo`: a CNN and an ST-CNN (affine) trained on RTS-distorted bundled MNIST, their
test errors side by side, and a figure of what the transformer learned."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from .._io import atomic_write
from ..train.config import CONFIGS, build, load_file
from ..train.engine import train
from ..train.runs import finished
from .curves import plot_runs
from .figures import HOW_TO_READ, run_figure
from .plots import save_figure

log = logging.getLogger("stnkit")

CURVES = ("Per epoch, for each model (one colour each): the training (dashed) and test (solid) error, the loss, "
          "and the learning rate. The ST-CNN's test error falls below the CNN's once its transformer has "
          "learned to undo the distortion: the gap between the solid lines is what the transformer adds.")


def demo(out: str = "runs/demo", epochs: int | None = None) -> Path:
    out_dir = Path(out)
    over = {"out": str(out_dir)} | ({"epochs": epochs} if epochs else {})
    rows = []
    for model in ("cnn", "st-cnn-affine"):
        cfg = build(load_file(CONFIGS / "demo.yaml"), {"model": model, "name": model, **over})
        if not finished(cfg):
            train(cfg, resume=True)
        rows.append(json.loads((out_dir / model / "summary.json").read_text()))
    figure, kind = run_figure(out_dir / "st-cnn-affine", 12, seed=1, ncol=4)
    fig = save_figure(figure, out_dir / "transformer.png")
    curves = plot_runs([out_dir / "cnn", out_dir / "st-cnn-affine"], out_dir / "curves.png")
    table = ["| model | params | test error % | train time s |", "|---|---|---|---|"]
    table += [f"| {r['model']} | {r['params']:,} | {r['test_err']:.2f} | {r['wall_s']:.0f} |" for r in rows]
    report = ("# stnkit demo: RTS-distorted MNIST (bundled 4,000 train / 1,000 test digits)\n\n"
              + "\n".join(table) + f"\n\n![what the transformer sampled, and its output]({fig.name})\n\n"
              + HOW_TO_READ[kind] + "\n\n"
              + f"![training curves of both models]({curves.name})\n\n" + CURVES + "\n")
    atomic_write(out_dir / "report.md", report)
    log.info("\n" + "\n".join(table))
    log.info(f"\nreport: {out_dir / 'report.md'}; figures: {fig}, {curves}")
    return out_dir
