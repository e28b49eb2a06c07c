"""`stnkit demo`: a CNN and an ST-CNN (affine) trained on RTS-distorted bundled MNIST, their
test errors side by side, and a figure of what the transformer learned."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from .._io import atomic_write
from ..train.config import CONFIGS, build, load_file
from ..train.engine import train
from ..train.runs import finished, load_run
from .figures import transformer_figure
from .plots import write_png

log = logging.getLogger("stnkit")


def demo(out: str = "runs/demo", epochs: int | None = None) -> Path:
    out_dir = Path(out)
    over = {"out": str(out_dir)} | ({"epochs": epochs} if epochs else {})
    rows = []
    for model in ("cnn", "st-cnn-affine"):
        cfg = build(load_file(CONFIGS / "demo.yaml"), {"model": model, "name": model, **over})
        if not finished(cfg):
            train(cfg, resume=True)
        rows.append(json.loads((out_dir / model / "summary.json").read_text()))
    _, st_model, test = load_run(out_dir / "st-cnn-affine")
    fig = write_png(out_dir / "transformer.png", transformer_figure(st_model, test.sample(12, seed=1).x, ncol=4))
    table = ["| model | params | test error % | train time s |", "|---|---|---|---|"]
    table += [f"| {r['model']} | {r['params']:,} | {r['test_err']:.2f} | {r['wall_s']:.0f} |" for r in rows]
    report = ("# stnkit demo: RTS-distorted MNIST (bundled 4,000 train / 1,000 test digits)\n\n"
              + "\n".join(table) + f"\n\n![what the transformer sampled, and its output]({fig.name})\n")
    atomic_write(out_dir / "report.md", report)
    log.info("\n" + "\n".join(table))
    log.info(f"\nreport: {out_dir / 'report.md'}; figure: {fig}")
    return out_dir
