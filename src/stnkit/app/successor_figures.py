"""Figures of what the paper's successors learned: where a deformable layer samples, and how an
inverse-compositional transformer's region moves step by step."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..deform import DeformConv2d
from ..layers import CompositionalTransformer
from .figures import region_on_input

from .plots import colour, image_axes, new_figure, to_rgb

def _first(model: nn.Module, kind: type, what: str):
    found = next((m for m in model.modules() if isinstance(m, kind)), None)
    if found is None:
        raise ValueError(f"this model has no {what} to show")
    return found


def steps_figure(model: nn.Module, x: torch.Tensor, ncol: int | None = None, title: str | None = None):
    """x: (B, C, H, W) inputs of a model with a CompositionalTransformer -> a Figure: per example
    the input with the region after every step (gid "step{k}" lines), then the final output."""
    st = _first(model, CompositionalTransformer, "CompositionalTransformer")
    model.eval()
    out = {}
    hook = st.register_forward_hook(lambda m, args, y: out.setdefault("y", y.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
    B, C, H, W = x.shape
    ncol = ncol or min(B, 4)
    nrow = math.ceil(B / ncol)
    fig = new_figure(ncol * 2 * 1.9 + 0.3, nrow * 2.2 + 0.7)
    cells = fig.add_gridspec(nrow, 2 * ncol)
    images, warped = to_rgb(x), to_rgb(out["y"])
    n = len(st.step_params)
    shades = [0.35 + 0.65 * (k + 1) / n for k in range(n)]
    for b in range(B):
        r, c = b // ncol, 2 * (b % ncol)
        ax = fig.add_subplot(cells[r, c], gid=f"input{b}")
        image_axes(ax, images[b], "input, region\nafter each step" if r == 0 else None)
        for k, p in enumerate(st.step_params):
            pts = region_on_input(st, p[b:b + 1], (H, W))[0]
            ax.plot(pts[:, 0], pts[:, 1], color=colour(0), alpha=shades[k], lw=0.8 + 1.2 * (k + 1) / n,
                    gid=f"step{k + 1}", label=f"step {k + 1}")
        oax = fig.add_subplot(cells[r, c + 1], gid=f"output{b}")
        image_axes(oax, warped[b], f"output after\n{n} steps" if r == 0 else None)
    fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=n, fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def _layer_input(model: nn.Module, layer: DeformConv2d, x: torch.Tensor) -> torch.Tensor:
    seen = {}
    hook = layer.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
    return seen["x"]


def deform_taps(layer: DeformConv2d, inp: torch.Tensor, where: tuple[int, int]):
    """The taps of output pixel `where` (ho, wo) of `layer` on its input inp (B, C, h, w) ->
    (regular (K, 2), moved (B, G, K, 2)) as (x, y) in the layer input's pixel-centre coordinates,
    and the mask (B, G, K) (ones when not modulated)."""
    kh, kw = layer.kernel_size
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    G, K = layer.offset_groups, kh * kw
    with torch.no_grad():
        pred = layer.offset_conv(inp)  # (B, (2 or 3) G K, Ho, Wo)
    ho, wo = where
    off = pred[:, : 2 * G * K, ho, wo].view(-1, G, K, 2)  # (dy, dx)
    i = torch.arange(kh).repeat_interleave(kw)
    j = torch.arange(kw).repeat(kh)
    regular = torch.stack([wo * sw - pw + j * dw, ho * sh - ph + i * dh], dim=-1).float()  # (K, (x, y))
    moved = regular + off.flip(-1)
    mask = torch.sigmoid(pred[:, 2 * G * K:, ho, wo]).view(-1, G, K) if layer.modulated else torch.ones(off.shape[:3])
    return regular, moved, mask


def deform_figure(model: nn.Module, x: torch.Tensor, where: tuple[int, int] | None = None, ncol: int | None = None,
                  title: str | None = None):
    """Where the first DeformConv2d of `model` samples: x (B, C, H, W) inputs -> a Figure with,
    on each input, the regular taps of one output pixel of that layer (default: the centre) and
    the learned ones, mapped from the layer's input grid (h, w) to the image's pixels by the
    scale H / h (a stride-only pyramid: conv with 'same' padding and pooling before it)."""
    layer = _first(model, DeformConv2d, "deformable convolution")
    model.eval()
    inp = _layer_input(model, layer, x)
    B, C, H, W = x.shape
    h, w = inp.shape[2:]
    Ho = (h + 2 * layer.padding[0] - layer.dilation[0] * (layer.kernel_size[0] - 1) - 1) // layer.stride[0] + 1
    Wo = (w + 2 * layer.padding[1] - layer.dilation[1] * (layer.kernel_size[1] - 1) - 1) // layer.stride[1] + 1
    where = where or (Ho // 2, Wo // 2)
    regular, moved, mask = deform_taps(layer, inp, where)
    scale = torch.tensor([W / w, H / h])
    to_img = lambda p: (p + 0.5) * scale  # layer pixel centre -> image pixel edges (image_axes' frame)
    ncol = ncol or min(B, 4)
    nrow = math.ceil(B / ncol)
    fig = new_figure(ncol * 2.3 + 0.3, nrow * 2.4 + 0.6)
    images = to_rgb(x)
    reg = to_img(regular)
    for b in range(B):
        ax = fig.add_subplot(nrow, ncol, b + 1, gid=f"input{b}")
        image_axes(ax, images[b], f"taps of output pixel {tuple(where)}" if b < ncol else None, fontsize=8)
        ax.scatter(reg[:, 0], reg[:, 1], s=14, facecolors="none", edgecolors="0.6", lw=0.8, gid="regular",
                   label="regular grid")
        for g in range(moved.shape[1]):
            pts = to_img(moved[b, g])
            ax.scatter(pts[:, 0], pts[:, 1], s=12, color=colour(g), alpha=(0.25 + 0.75 * mask[b, g]).clamp(0, 1).numpy(),
                       gid=f"moved{g}", label="learned" if moved.shape[1] == 1 else f"learned, offset group {g + 1}")
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
    fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=1 + moved.shape[1],
               fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
