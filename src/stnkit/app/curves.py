"""Training curves: per epoch, the error (or the co-localisation hit rate), the losses and the
learning rate of one run or several overlaid (one colour per run; train dashed, test solid)."""
from __future__ import annotations

from pathlib import Path

from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from .plots import colour, new_figure

# (panel title, y label, [(row key, split)]): a panel is drawn when some run has one of its keys
PANELS = (
    ("error", "error (%)", [("train_err", "train"), ("test_err", "test")]),
    ("crops on the digit", "test crops with IoU > 0.5 (%)", [("iou_over_half", "test")]),
    ("loss", "loss", [("train_loss", "train"), ("test_loss", "test")]),
    ("learning rate", "learning rate", [("lr", None)]),
)
STYLE = {"train": "--", "test": "-", None: "-"}


def curves_figure(runs: list[tuple[str, list[dict]]]):
    """runs: [(label, metrics rows)] (rows as in metrics.jsonl: "epoch" and the metric keys)
    -> a Figure with one panel per kind of curve the runs have, x = epoch. The figure's legend
    names the runs (one entry each, by colour); a panel's legend, its splits (by line style).
    Each line's gid is "label:key" (e.g. "a:test_err")."""
    if not runs or not any(rows for _, rows in runs):
        raise ValueError("no finished epoch to plot")
    panels = [p for p in PANELS if any(k in r for _, rows in runs for r in rows for k, _ in p[2])]
    fig = new_figure(3.6 * len(panels), 3.3)
    axes = [fig.add_subplot(1, len(panels), i + 1, gid=title) for i, (title, _, _) in enumerate(panels)]
    for ax, panel in zip(axes, panels):
        _panel(ax, runs, *panel)
    fig.legend(handles=[Line2D([], [], color=colour(j), label=label) for j, (label, _) in enumerate(runs)],
               loc="outside upper center", ncol=min(len(runs), 4), fontsize=8, frameon=False)
    return fig


def _panel(ax, runs: list[tuple[str, list[dict]]], title: str, ylabel: str, keys: list[tuple[str, str | None]]):
    """One panel: each run's curve of each key it has; a legend of the splits drawn."""
    splits = []
    for j, (label, rows) in enumerate(runs):
        for key, split in keys:
            pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, STYLE[split], color=colour(j), marker="." if len(pts) < 30 else None,
                        label=f"{label}, {split}" if split else label, gid=f"{label}:{key}")
                splits += [split] if split and split not in splits else []
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if title == "learning rate" and len({y for ln in ax.get_lines() for y in ln.get_ydata()}) > 1:
        ax.set_yscale("log")
    if splits:
        ax.legend(handles=[Line2D([], [], color="0.3", linestyle=STYLE[s], label=s) for s in splits], fontsize=7)


def read_runs(run_dirs: list[str | Path]) -> list[tuple[str, list[dict]]]:
    """Run folders -> [(label, metrics rows)], labelled by folder name (by path when two names
    clash); a folder that is not a run, or a run with no finished epoch, is a ValueError."""
    from ..train import runs

    dirs = [Path(d) for d in run_dirs]
    names = [d.name for d in dirs]
    labels = names if len(set(names)) == len(names) else [str(d) for d in dirs]
    series = []
    for d, label in zip(dirs, labels):
        runs.read_config(d)  # a folder that holds no run says what it is instead
        rows = runs.read_rows(d)
        if not rows:
            raise ValueError(f"{d} has no finished epoch yet: nothing to plot")
        series.append((label, rows))
    return series


def plot_runs(run_dirs: list[str | Path], out: str | Path) -> Path:
    """`stnkit plot`: the curves of these run folders overlaid -> the PNG written."""
    from .plots import save_figure

    return save_figure(curves_figure(read_runs(run_dirs)), out)
