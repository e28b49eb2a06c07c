"""A PNG of samples from any dataset, so a user can look before training."""
from __future__ import annotations

from pathlib import Path

from ..app.plots import COLOURS, draw_box, grid_image, to_rgb, upscale, write_png
from .datasets import make_dataset


def sample_figure(name: str, n: int = 32, split: str = "test", seed: int = 0, ncol: int = 8, **dataset_kwargs):
    """-> ((H, W, 3) uint8 mosaic of n samples, their labels). Co-localisation boxes in colour."""
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


def show(name: str, out: str | Path, n: int = 32, split: str = "test", seed: int = 0, **dataset_kwargs) -> Path:
    img, _ = sample_figure(name, n, split, seed, **dataset_kwargs)
    return write_png(out, img)
