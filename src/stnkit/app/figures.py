"""What the transformers learned, as in the paper's Figure 3: each input with the region every
spatial transformer sampled drawn on it (one colour per transformer), then each output."""
from __future__ import annotations

import torch
from torch import nn

from ..layers import SpatialTransformer
from ..models import transformers
from ..data import make_dataset
from .plots import COLOURS, draw_box, grid_image, to_rgb, upscale
from ..functional.coords import to_pixels
from ..warp import warp_points


def outline(n: int = 64) -> torch.Tensor:
    """Points along the border of the output frame, normalised: (4n, 2)."""
    t = torch.linspace(-1, 1, n)
    one = torch.ones(n)
    return torch.cat([torch.stack([t, -one], 1), torch.stack([one, t], 1),
                      torch.stack([-t, one], 1), torch.stack([-one, -t], 1)])


def draw_points(img: torch.Tensor, xy: torch.Tensor, colour: torch.Tensor, thick: int = 1) -> None:
    """Plot points (N, 2) given in pixel units on img (H, W, 3), in place; points off the image skipped."""
    H, W = img.shape[:2]
    for dx in range(-(thick // 2), thick - thick // 2):
        for dy in range(-(thick // 2), thick - thick // 2):
            p = xy.round().long() + torch.tensor([dx, dy])
            ok = (p[:, 0] >= 0) & (p[:, 0] < W) & (p[:, 1] >= 0) & (p[:, 1] < H)
            img[p[ok, 1], p[ok, 0]] = colour


def record_transformers(model: nn.Module, x: torch.Tensor):
    """Run model on x without gradients; -> (its output, [(st, its input, its output)] for every
    transformer call, in call order)."""
    calls, hooks = [], []
    for st in transformers(model):
        hooks.append(st.register_forward_hook(lambda m, a, out: calls.append((m, a[0], out))))
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        for h in hooks:
            h.remove()
    return y, calls


def region_on_input(st: SpatialTransformer, params: torch.Tensor, size_hw, n: int = 64) -> torch.Tensor:
    """Where the border of st's output lies in its input, in input pixels (edge convention,
    0..W): (B, 4n, 2)."""
    pts = outline(n).to(params.dtype)
    src = warp_points(pts, params, st.transform, align_corners=st.align_corners)
    return to_pixels(src, size_hw) + 0.5  # edges lie half a pixel before centres


def transformer_figure(model: nn.Module, x: torch.Tensor, ncol: int = 3, scale: int | None = None) -> torch.Tensor:
    """x: (B, C, H, W) model inputs -> (H', W', 3) uint8 figure. Transformers that act on the
    input image get their sampled region drawn on it; every transformer's output is shown."""
    model.eval()
    _, calls = record_transformers(model, x)
    if not calls:
        raise ValueError("this model has no spatial transformer to show")
    B, C, H, W = x.shape[0], x.shape[1], x.shape[-2], x.shape[-1]
    scale = scale or max(1, 112 // H)
    base = upscale_batch(to_rgb(x), scale)  # (B, H s, C W s, 3)
    panels = []
    for k, (st, inp, out) in enumerate(calls):
        colour = COLOURS[k % len(COLOURS)]
        if inp is x and st.transform.dim == 2:
            pts = region_on_input(st, st.last_params, (H, W)) * scale  # (B, P, 2)
            for b in range(B):
                for c in range(C):  # the same region on every channel panel
                    draw_points(base[b], pts[b] + torch.tensor([c * W * scale, 0.0]), colour, thick=2)
        if out.shape[1] in (1, 2, 3):  # image-like outputs (volumes: their maximum over depth)
            panels.append(_fit_height(to_rgb(out.clamp(0, 1)), base.shape[1], colour))
    tiles = torch.cat([base] + panels, dim=2)  # side by side: input, then each output
    return grid_image(tiles, ncol=ncol, pad=4, background=255)


def upscale_batch(imgs: torch.Tensor, s: int) -> torch.Tensor:
    return torch.stack([upscale(i, s) for i in imgs])


def _fit_height(imgs: torch.Tensor, height: int, colour: torch.Tensor) -> torch.Tensor:
    """Nearest-resize (B, h, w, 3) to the given height, with a thin coloured frame."""
    B, h, w, _ = imgs.shape
    s = max(1, height // h)
    out = torch.full((B, height, w * s + 4, 3), 255, dtype=torch.uint8)
    up = upscale_batch(imgs, s)[:, :height]
    top = (height - up.shape[1]) // 2
    out[:, top:top + up.shape[1], 2:2 + up.shape[2]] = up
    out[:, :, :2] = colour
    out[:, :, -2:] = colour
    return out


def sample_figure(name: str, n: int = 32, split: str = "test", seed: int = 0, ncol: int = 8, **dataset_kwargs):
    """Samples of a dataset for `stnkit data show` -> ((H, W, 3) uint8 mosaic of n samples, their labels). Co-localisation boxes in colour."""
    ds = make_dataset(name, split, **dataset_kwargs)
    batch = ds.sample(n, seed=seed)
    tiles = to_rgb(batch.x)
    if batch.box is not None:
        for tile, box in zip(tiles, batch.box):
            draw_box(tile, box, COLOURS[0])
    factor = max(1, 96 // tiles.shape[1])
    tiles = upscale(tiles.permute(1, 2, 0, 3).reshape(tiles.shape[1], tiles.shape[2], -1), factor)
    tiles = tiles.reshape(tiles.shape[0], tiles.shape[1], n, 3).permute(2, 0, 1, 3)
    return grid_image(tiles, ncol=ncol), batch.y
