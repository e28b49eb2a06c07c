"""The paper's multi-digit and 3D tasks built from single digits: MNIST addition (SPEC 3.4),
co-localisation (3.5), 3D volumes (3.6) and the multi-digit sequences that stand in for SVHN
(3.2). Like distort.py: `make_params(generator, ...)` draws, `apply(...)` renders.

Choices where the paper is unconfirmed:
- addition: each of the two digits gets its own RTS distortion (42x42), label = their sum.
- coloc: the 28x28 digit at a uniform integer position in an 84x84 canvas; with clutter,
  16 random 6x6 crops of other digits. The box is the digit's 28x28 frame where it was placed
  (which holds all its ink), (x0, y0, x1, y1) in pixels, x1/y1 exclusive: the ground truth of
  the paper's IoU > 0.5 measure. `spread` < 1 narrows the placement to that share of the
  range around the centre: a training curriculum (stnkit.train.coloc), never used for testing.
- 3d: the digit extruded to 8 voxels thick in a 28^3 volume, then rotated about x and y by
  uniform [-30, 30] deg and about z by [-45, 45] deg, scaled by [0.8, 1.1], and centred
  uniformly where it stays inside the 60^3 output volume.
- sequences: 1-5 digits (uniform), left to right, each a 28x28 digit scaled to the same height
  with 70% horizontal spacing and a little vertical jitter; in 64x64 crops the sequence fills
  most of the width around the centre; in 128x128 crops it keeps the 64-pixel scale at a random
  position (the paper's looser crops). Labels (5,), 10 = "no digit".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..warp import warp
from .base import NO_DIGIT
from .distort import DIGIT, RotateScaleTranslate, TranslateClutter, _uniform, placement



@dataclass(frozen=True)
class Addition:
    canvas: int = 42
    rts: RotateScaleTranslate = RotateScaleTranslate(max_angle=45.0, scale=(0.7, 1.2), canvas=42, translate=True)

    @property
    def out_size(self):
        return (self.canvas, self.canvas)

    def make_params(self, g, n, pool_size):
        return {"partner": torch.randint(0, pool_size, (n,), generator=g),
                "first": self.rts.make_params(g, n), "second": self.rts.make_params(g, n)}

    def apply(self, images, labels, params, pool, pool_labels):
        """images (N, 1, 28, 28), labels (N,) -> x (N, 2, 42, 42), y (N,) in 0..18."""
        other = pool[params["partner"]][:, None].to(images.dtype)
        x = torch.cat([self.rts.apply(images, params["first"]), self.rts.apply(other, params["second"])], dim=1)
        return x, labels + pool_labels[params["partner"]]


@dataclass(frozen=True)
class CoLocalisation:
    canvas: int = 84
    clutter: int = 0  # 16 for the cluttered variant
    patch_size: int = 6
    spread: float = 1.0  # share of the placement range used, around the centre (a training curriculum)

    @property
    def out_size(self):
        return (self.canvas, self.canvas)

    def make_params(self, g, n, pool_size):
        if not 0.0 <= self.spread <= 1.0:
            raise ValueError(f"spread must lie in [0, 1] (the share of the placement range), got {self.spread}")
        tc = TranslateClutter(self.canvas, self.clutter, self.patch_size)
        params = tc.make_params(g, n, pool_size)
        if self.spread < 1.0:  # the digit's top-left corner within spread * half the range of the centre
            mid, half = (self.canvas - DIGIT) / 2, self.spread * (self.canvas - DIGIT) / 2
            lo, hi = round(mid - half), round(mid + half)
            params["top"] = torch.randint(lo, hi + 1, (n,), generator=g)
            params["left"] = torch.randint(lo, hi + 1, (n,), generator=g)
        return params

    def apply(self, images, labels, params, pool, pool_labels):
        """-> x (N, 1, 84, 84), y (N,) the digit class, box (N, 4) the digit's 28x28 frame in pixels."""
        x = TranslateClutter(self.canvas, self.clutter, self.patch_size).apply(images, params, pool)
        left, top = params["left"], params["top"]
        return x, labels, torch.stack([left, top, left + DIGIT, top + DIGIT], 1)


def rotation3d(ax: torch.Tensor, ay: torch.Tensor, az: torch.Tensor) -> torch.Tensor:
    """(N,) angles about x, y, z -> (N, 3, 3) = Rz @ Ry @ Rx acting on (x, y, z)."""
    one, zero = torch.ones_like(ax), torch.zeros_like(ax)

    def mat(rows):
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    cx, sx, cy, sy, cz, sz = ax.cos(), ax.sin(), ay.cos(), ay.sin(), az.cos(), az.sin()
    rx = mat([[one, zero, zero], [zero, cx, -sx], [zero, sx, cx]])
    ry = mat([[cy, zero, sy], [zero, one, zero], [-sy, zero, cy]])
    rz = mat([[cz, -sz, zero], [sz, cz, zero], [zero, zero, one]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Volumes3D:
    canvas: int = 60
    thickness: int = 8
    tilt: float = 30.0  # degrees about x and y
    spin: float = 45.0  # degrees about z
    scale: tuple[float, float] = (0.8, 1.1)

    @property
    def out_size(self):
        return (self.canvas,) * 3

    def make_params(self, g, n, pool_size=None):
        t, s = math.radians(self.tilt), math.radians(self.spin)
        scale = _uniform(g, n, *self.scale)
        room = ((self.canvas - DIGIT * scale * math.sqrt(2)) / 2).clamp(min=0)
        return {"ax": _uniform(g, n, -t, t), "ay": _uniform(g, n, -t, t), "az": _uniform(g, n, -s, s),
                "scale": scale, "centre": (torch.rand(n, 3, generator=g) * 2 - 1) * room[:, None]}

    def extrude(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) -> (N, 1, 28, 28, 28): the digit repeated over the middle slices."""
        vol = images.new_zeros(images.shape[0], 1, DIGIT, DIGIT, DIGIT)
        lo = (DIGIT - self.thickness) // 2
        vol[:, :, lo:lo + self.thickness] = images[:, :, None]
        return vol

    def matrix(self, params) -> torch.Tensor:
        R = rotation3d(params["ax"], params["ay"], params["az"])
        return placement(R, DIGIT * params["scale"], params["centre"], self.canvas)  # (N, 3, 4)

    def apply(self, images, labels, params, pool=None, pool_labels=None):
        """-> x (N, 1, 60, 60, 60), y (N,)."""
        vol = self.extrude(images)
        return warp(vol, self.matrix(params).to(images.dtype), "affine3d", self.out_size), labels


@dataclass(frozen=True)
class Sequences:
    canvas: int = 64
    max_digits: int = 5
    base: int = 64  # the crop size whose digit scale the sequence keeps
    spacing: float = 0.7  # digit advance, in digit widths

    @property
    def out_size(self):
        return (self.canvas, self.canvas)

    def make_params(self, g, n, pool_size):
        L = self.max_digits
        length = torch.randint(1, L + 1, (n,), generator=g)
        span = self.spacing * (length - 1) + 1  # sequence width in digit heights
        height = torch.minimum(_uniform(g, n, 0.45, 0.65) * self.base, 0.9 * self.base / span)
        width = height * span
        room_x = ((self.canvas - width) / 2).clamp(min=0)
        room_y = ((self.canvas - height) / 2).clamp(min=0)
        if self.canvas == self.base:  # tight crops: near the centre
            room_x, room_y = room_x * 0.3, room_y * 0.3
        centre = (torch.rand(n, 2, generator=g) * 2 - 1) * torch.stack([room_x, room_y], 1)
        return {"length": length, "height": height, "centre": centre,
                "digits": torch.randint(0, pool_size, (n, L), generator=g),
                "jitter": torch.randn(n, L, generator=g) * 0.05}

    def apply(self, images, labels, params, pool, pool_labels):
        """images/labels unused (the digits come from the pool) -> x (N, 1, S, S), y (N, 5)."""
        n, L = params["digits"].shape
        h, length = params["height"], params["length"]
        out = torch.zeros(n, 1, *self.out_size, dtype=pool.dtype if pool.is_floating_point() else torch.float32)
        y = torch.full((n, L), NO_DIGIT, dtype=torch.long)
        left = params["centre"][:, 0] - h * (self.spacing * (length - 1) + 1) / 2  # px from canvas centre
        for k in range(L):
            present = k < length
            cx = left + h * (self.spacing * k + 0.5)
            cy = params["centre"][:, 1] + params["jitter"][:, k] * h
            theta = _place(h, torch.stack([cx, cy], 1), self.canvas)
            digit = pool[params["digits"][:, k]][:, None].to(out.dtype)
            out = torch.maximum(out, warp(digit, theta.to(out.dtype), "attention", self.out_size) * present[:, None, None, None])
            y[:, k] = torch.where(present, pool_labels[params["digits"][:, k]], NO_DIGIT)
        return out, y


def _place(height_px, centre_px, canvas):
    """Attention params (N, 3) (scale, tx, ty) showing a digit height_px pixels high, centred
    centre_px (N, 2) px from the centre of a canvas-px output."""
    upright = torch.eye(2, dtype=centre_px.dtype).expand(len(centre_px), 2, 2)
    m = placement(upright, height_px, centre_px, canvas)  # (N, 2, 3)
    return torch.cat([m[:, 0, :1], m[:, :, 2]], 1)
