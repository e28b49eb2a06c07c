"""The distortions of the paper's distorted-MNIST experiments (SPEC 3.1), each split into
`make_params(generator, n)` (all randomness, seeded) and `apply(images, params)` (deterministic,
through the same `stnkit.warp` the models use).

images: (N, 1, 28, 28) float in [0, 1]; `pool` (M, 28, 28) is the set of digits that clutter
is cut from (unused by the others). Every matrix is `src_from_dst`: it maps output
(canvas) coordinates to input (digit) coordinates, in stnkit's normalised convention
(align_corners=False).

Choices where the paper is unconfirmed, following common reimplementations:
- R: rotation uniform in [-90, 90] degrees, 28x28 output.
- RTS: rotation [-45, 45] deg, scale [0.7, 1.2], centre uniform over the positions where the
  scaled 28s-pixel square stays inside the 42x42 canvas.
- P: scale [0.75, 1.0] about the centre, then each of the 4 corners of the digit square moved by
  Gaussian noise of std 5 px (redrawn when the corners would fold into a non-convex
  quadrilateral); the homography through the 4 corner pairs; 28x28 output.
- E: scale [0.75, 1.0], then a thin-plate spline through a 4x4 control grid whose points move by
  Gaussian noise of std 1.5 px; 28x28 output.
- TC: the digit at a uniformly random integer position in a 60x60 canvas, plus six 6x6 crops
  of other random digits at random positions, composited by pixel-wise maximum.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..warp import warp

DIGIT = 28


def _uniform(g: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def rotation2d(angle: torch.Tensor) -> torch.Tensor:
    """(N,) angles in radians -> (N, 2, 2) rotations acting on (x, y)."""
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def placement(rot: torch.Tensor, shown: torch.Tensor, centre: torch.Tensor, canvas: int) -> torch.Tensor:
    """src_from_dst (N, d, d + 1), 2D or 3D, that shows an image turned by `rot` (N, d, d), at a
    size of `shown` (N,) output pixels across, centred `centre` (N, d) px away from the centre of
    a canvas-px output. The one placement of every generated dataset."""
    k = canvas / shown  # output normalised units -> input normalised units
    t = -(2.0 / shown)[:, None] * (rot @ centre[:, :, None])[..., 0]  # (N, d)
    return torch.cat([rot * k[:, None, None], t[:, :, None]], dim=2)


@dataclass(frozen=True)
class RotateScaleTranslate:
    """R (defaults: angle 90, no scale, canvas 28) and RTS (angle 45, scale (0.7, 1.2), 42)."""

    max_angle: float = 90.0  # degrees
    scale: tuple[float, float] = (1.0, 1.0)
    canvas: int = DIGIT
    translate: bool = False

    @property
    def out_size(self) -> tuple[int, int]:
        return (self.canvas, self.canvas)

    def make_params(self, g: torch.Generator, n: int, pool_size: int | None = None) -> dict[str, torch.Tensor]:
        a = math.radians(self.max_angle)
        angle = _uniform(g, n, -a, a)
        scale = _uniform(g, n, *self.scale)
        room = ((self.canvas - DIGIT * scale) / 2).clamp(min=0)  # (n,) px of slack each side
        centre = (torch.rand(n, 2, generator=g) * 2 - 1) * room[:, None] if self.translate else torch.zeros(n, 2)
        return {"angle": angle, "scale": scale, "centre": centre}

    def matrix(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return placement(rotation2d(params["angle"]), DIGIT * params["scale"], params["centre"], self.canvas)

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor], pool=None) -> torch.Tensor:
        theta = self.matrix(params).to(images.dtype)
        return warp(images, theta, "affine", self.out_size)


def homography_from_points(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """The (N, 8) projective params mapping 4 points dst (N, 4, 2) onto src (N, 4, 2)."""
    x, y = dst[..., 0], dst[..., 1]
    X, Y = src[..., 0], src[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_x = torch.stack([x, y, one, zero, zero, zero, -x * X, -y * X], -1)  # (N, 4, 8)
    rows_y = torch.stack([zero, zero, zero, x, y, one, -x * Y, -y * Y], -1)
    A = torch.cat([rows_x, rows_y], dim=1)  # (N, 8, 8)
    b = torch.cat([X, Y], dim=1)  # (N, 8)
    return torch.linalg.solve(A.double(), b.double()).to(dst.dtype)


def convex(quad: torch.Tensor) -> torch.Tensor:
    """(N, 4, 2) corners in order -> (N,) True where the quadrilateral is strictly convex."""
    e = quad.roll(-1, 1) - quad  # edges
    cross = e[..., 0] * e.roll(-1, 1)[..., 1] - e[..., 1] * e.roll(-1, 1)[..., 0]
    return (cross > 0).all(1) | (cross < 0).all(1)


CORNERS = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])


@dataclass(frozen=True)
class Perspective:
    """P: scale, then the 4 corners moved by Gaussian noise (std in pixels); a homography."""

    scale: tuple[float, float] = (0.75, 1.0)
    corner_std: float = 5.0  # px
    canvas: int = DIGIT

    @property
    def out_size(self) -> tuple[int, int]:
        return (self.canvas, self.canvas)

    def make_params(self, g: torch.Generator, n: int, pool_size: int | None = None) -> dict[str, torch.Tensor]:
        scale = _uniform(g, n, *self.scale)
        noise = torch.randn(n, 4, 2, generator=g) * self.corner_std  # px
        # A folded (non-convex) quadrilateral is no view of a plane: draw those corners again.
        for _ in range(20):
            bad = ~convex(self.corners(scale, noise))
            if not bool(bad.any()):
                break
            noise[bad] = torch.randn(int(bad.sum()), 4, 2, generator=g) * self.corner_std
        noise[~convex(self.corners(scale, noise))] = 0.0
        return {"scale": scale, "corner_noise": noise}

    def corners(self, scale: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Where the digit's 4 corners land in the output, normalised: (N, 4, 2)."""
        return CORNERS * (scale[:, None, None] * (DIGIT / self.canvas)) + noise * (2.0 / self.canvas)

    def matrix(self, params) -> torch.Tensor:
        dst = self.corners(params["scale"], params["corner_noise"])
        return homography_from_points(dst, CORNERS.expand_as(dst))

    def apply(self, images, params, pool=None):
        return warp(images, self.matrix(params).to(images.dtype), "projective", self.out_size)


@dataclass(frozen=True)
class Elastic:
    """E: scale, then a TPS through a grid x grid control lattice moved by Gaussian noise."""

    scale: tuple[float, float] = (0.75, 1.0)
    point_std: float = 1.5  # px
    grid: int = 4
    canvas: int = DIGIT

    @property
    def out_size(self) -> tuple[int, int]:
        return (self.canvas, self.canvas)

    def make_params(self, g, n, pool_size=None):
        scale = _uniform(g, n, *self.scale)
        noise = torch.randn(n, self.grid * self.grid, 2, generator=g) * self.point_std
        return {"scale": scale, "point_noise": noise}

    def tps_params(self, params) -> torch.Tensor:
        """(N, 2K) TPS params: source position of each control point of the output lattice."""
        a = torch.linspace(-1, 1, self.grid)
        yy, xx = torch.meshgrid(a, a, indexing="ij")
        targets = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)  # (K, 2)
        k = self.canvas / (DIGIT * params["scale"])[:, None, None]
        src = targets * k + params["point_noise"] * (2.0 / DIGIT)
        return src.reshape(src.shape[0], -1)

    def apply(self, images, params, pool=None):
        return warp(images, self.tps_params(params).to(images.dtype), "tps", self.out_size)


def _window(top: torch.Tensor, left: torch.Tensor, h: int, w: int, width: int) -> torch.Tensor:
    """Flat indices (N, h * w) of the h x w window at (top, left) (N,) in rows of `width` pixels."""
    rows = (top[:, None] + torch.arange(h)) * width  # (N, h)
    return (rows[:, :, None] + left[:, None, None] + torch.arange(w)).reshape(len(top), h * w)


def paste(canvas: torch.Tensor, patches: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Max-composite patches (N, h, w) into canvas (N, H, W) at integer (top, left) (N,), in place."""
    N, h, w = patches.shape
    flat = canvas.view(N, -1)
    idx = _window(top, left, h, w, canvas.shape[2])
    flat.scatter_(1, idx, torch.maximum(flat.gather(1, idx), patches.reshape(N, h * w)))
    return canvas


def crop(images: torch.Tensor, which: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """size x size crops of images[which] (images (M, H, W), which (N,)) at (top, left) -> (N, size, size)."""
    M, H, W = images.shape
    idx = _window(top, left, size, size, W) + (which * (H * W))[:, None]
    return images.reshape(-1)[idx].view(len(which), size, size)


@dataclass(frozen=True)
class TranslateClutter:
    """TC: the digit at a random position in a canvas, plus `patches` crops of other digits."""

    canvas: int = 60
    patches: int = 6
    patch_size: int = 6

    @property
    def out_size(self) -> tuple[int, int]:
        return (self.canvas, self.canvas)

    def make_params(self, g, n, pool_size: int):
        hi = self.canvas - DIGIT + 1
        P, p = self.patches, self.patch_size
        return {
            "top": torch.randint(0, hi, (n,), generator=g),
            "left": torch.randint(0, hi, (n,), generator=g),
            "clutter_index": torch.randint(0, pool_size, (n, P), generator=g),
            "clutter_from": torch.randint(0, DIGIT - p + 1, (n, P, 2), generator=g),
            "clutter_to": torch.randint(0, self.canvas - p + 1, (n, P, 2), generator=g),
        }

    def apply(self, images, params, pool):
        """images (N, 1, 28, 28) the digits; pool (M, 28, 28) where clutter is cut from."""
        N = images.shape[0]
        out = torch.zeros(N, self.canvas, self.canvas, dtype=images.dtype)
        for k in range(self.patches):
            f, t = params["clutter_from"][:, k], params["clutter_to"][:, k]
            patch = crop(pool, params["clutter_index"][:, k], f[:, 0], f[:, 1], self.patch_size)
            paste(out, patch.to(images.dtype), t[:, 0], t[:, 1])
        paste(out, images[:, 0], params["top"], params["left"])
        return out[:, None]


DISTORTIONS = {
    "r": RotateScaleTranslate(max_angle=90.0),
    "rts": RotateScaleTranslate(max_angle=45.0, scale=(0.7, 1.2), canvas=42, translate=True),
    "p": Perspective(),
    "e": Elastic(),
    "tc": TranslateClutter(),
}
