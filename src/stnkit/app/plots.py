"""Figures without a plotting dependency: image grids with coloured boxes, written as PNG."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import torch

from .._io import atomic_write

COLOURS = torch.tensor([[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240]],
                       dtype=torch.uint8)


def write_png(path: str | Path, image: torch.Tensor) -> Path:
    """image: (H, W) or (H, W, 3) uint8 -> an 8-bit PNG at path (written whole, then renamed)."""
    if image.dtype != torch.uint8 or image.dim() not in (2, 3) or (image.dim() == 3 and image.shape[2] != 3):
        raise ValueError(f"write_png needs a uint8 (H, W) or (H, W, 3) image, got {image.dtype} {tuple(image.shape)}")
    H, W = image.shape[:2]
    colour = 2 if image.dim() == 3 else 0
    rows = image.reshape(H, -1).contiguous()
    raw = torch.cat([torch.zeros(H, 1, dtype=torch.uint8), rows], 1).numpy().tobytes()  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, colour, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    return atomic_write(path, png)


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """x: (N, C, H, W) float in [0, 1] -> (N, H, W', 3) uint8; C == 3 is colour, any other C is
    shown as grey channels side by side; (N, C, D, H, W) volumes as their maximum over depth."""
    if x.dim() == 5:
        x = x.amax(2)
    x = x.detach().float().clamp(0, 1)
    N, C, H, W = x.shape
    if C != 3:
        x = x.permute(0, 2, 1, 3).reshape(N, 1, H, C * W).expand(N, 3, H, C * W)
    return (x * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def draw_box(img: torch.Tensor, box, colour: torch.Tensor) -> None:
    """Outline box (x0, y0, x1, y1) in pixels (x1, y1 exclusive) on img (H, W, 3), in place; clipped."""
    H, W = img.shape[:2]
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    x1, y1 = x1 - 1, y1 - 1
    cx0, cx1, cy0, cy1 = max(x0, 0), min(x1, W - 1), max(y0, 0), min(y1, H - 1)
    if cx0 > cx1 or cy0 > cy1:
        return
    for y in (y0, y1):
        if 0 <= y < H:
            img[y, cx0:cx1 + 1] = colour
    for x in (x0, x1):
        if 0 <= x < W:
            img[cy0:cy1 + 1, x] = colour


def grid_image(tiles: torch.Tensor, ncol: int = 8, pad: int = 2, background: int = 128) -> torch.Tensor:
    """tiles: (N, H, W, 3) uint8 -> one (rows * (H + pad) + pad, ...) uint8 mosaic."""
    N, H, W, _ = tiles.shape
    ncol = max(1, min(ncol, N))
    nrow = (N + ncol - 1) // ncol
    out = torch.full((nrow * (H + pad) + pad, ncol * (W + pad) + pad, 3), background, dtype=torch.uint8)
    for i in range(N):
        r, c = divmod(i, ncol)
        out[pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = tiles[i]
    return out


def upscale(img: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour enlargement of an (H, W, 3) image, so small digits are visible."""
    return img.repeat_interleave(factor, 0).repeat_interleave(factor, 1) if factor > 1 else img
