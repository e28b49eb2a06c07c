"""The one way stnkit draws: matplotlib's object API on the Agg canvas (no display, no pyplot
state), images as tensors turned into arrays, and PNGs written whole then renamed."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from .._io import atomic_write, require

# one colour per transformer (and per run in `stnkit plot`), in order; colour-blind safe (Okabe-Ito)
COLOURS = ("#E69F00", "#56B4E9", "#009E73", "#D55E00", "#CC79A7", "#0072B2", "#F0E442")
RIGHT, WRONG = "#009E73", "#D55E00"  # a tile's class: correct, wrong


def colour(k: int) -> str:
    return COLOURS[k % len(COLOURS)]


def new_figure(width: float, height: float, dpi: int = 100, layout: str | None = "constrained"):
    """A matplotlib Figure of width x height inches, drawn by Agg (works without a display);
    "constrained" layout keeps titles, labels and legends from overlapping."""
    require("matplotlib", "figures", "matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path, dpi: int | None = None) -> Path:
    """fig as a PNG at path (written whole, then renamed: a reader never sees half a file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi)
    return atomic_write(path, buf.getvalue())


def to_rgb(x: torch.Tensor):
    """x: (N, C, H, W) float in [0, 1] -> (N, H, W', 3) float numpy array; C == 3 is colour, any
    other C is shown as grey channels side by side; (N, C, D, H, W) volumes as their maximum
    over depth."""
    if x.dim() == 5:
        x = x.amax(2)
    x = x.detach().float().cpu().clamp(0, 1)
    N, C, H, W = x.shape
    if C != 3:
        x = x.permute(0, 2, 1, 3).reshape(N, 1, H, C * W).expand(N, 3, H, C * W)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def image_axes(ax, img, title: str | None = None, *, fontsize: float = 8) -> None:
    """Show an (H, W, 3) image on ax in pixel-edge coordinates (x from 0 to W, y from 0 to H
    downwards), without ticks."""
    H, W = img.shape[:2]
    ax.imshow(img, extent=(0, W, H, 0), interpolation="nearest", vmin=0, vmax=1)
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)


def box_patch(ax, box, edge: str, gid: str, lw: float = 1.0) -> None:
    """Outline box (x0, y0, x1, y1), in the pixel-edge coordinates of image_axes, dashed on ax."""
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = (float(v) for v in box)
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ls="--", lw=lw, ec=edge, gid=gid))


def figure_pixels(fig):
    """The figure as drawn: (H, W, 4) uint8 numpy array (what save_figure writes)."""
    import numpy as np

    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba()).copy()
