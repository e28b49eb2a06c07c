"""Other libraries' conventions <-> stnkit's: pixel-space matrices (OpenCV, kornia, scipy.ndimage,
MONAI) and voxel displacement fields (VoxelMorph, MONAI).

A pixel matrix maps pixel-centre coordinates (pixel 0's centre is 0) in one of two directions:
``maps="input_to_output"`` (OpenCV's warpAffine / warpPerspective, kornia's warp_*) or
``"output_to_input"`` (scipy.ndimage.affine_transform, MONAI's voxel matrices, stnkit itself);
in one of two axis orders: ``axes="xy"`` (x, y[, z]: along width first) or ``"ij"`` (array axes:
row, column[, ...]). stnkit's params map normalised output coordinates to normalised input
coordinates, so
``src_norm_from_dst_norm = norm_from_pixel(input) @ src_pix_from_dst_pix @ pixel_from_norm(output)``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from . import transforms as _t
from ._checks import check_choice, check_finite, check_float_tensor, check_size
from .functional import coords as _coords
from .functional.compose import homogeneous

__all__ = ["from_pixel_matrix", "to_pixel_matrix", "identity_grid", "flow_from_displacement", "displacement_from_flow"]

MAPS = ("input_to_output", "output_to_input")
AXES = ("xy", "ij")
_FROM_FAMILIES = ("affine", "projective", "affine3d")
_SINGULAR = 1e-12  # |det| below this times the product of the rows' norms: not invertible


# ---- pure pieces: homogeneous (d + 1, d + 1) matrices -------------------------------------

def _pixel_from_norm(size: Sequence[int], align_corners: bool, like: torch.Tensor) -> torch.Tensor:
    """(d + 1, d + 1): normalised (x, y[, z], 1) -> pixel-centre coordinates, as `to_pixels`."""
    scale, offset = _coords._scale_offset(size, align_corners, like)  # (d,) each, (x, y[, z])
    m = torch.diag(torch.cat([scale, scale.new_ones(1)]))
    m[:-1, -1] = offset
    return m


def _norm_from_pixel(size: Sequence[int], align_corners: bool, like: torch.Tensor) -> torch.Tensor:
    """(d + 1, d + 1): the inverse of `_pixel_from_norm`, as `to_normalised`."""
    scale, offset = _coords._scale_offset(size, align_corners, like)
    m = torch.diag(torch.cat([1 / scale, scale.new_ones(1)]))
    m[:-1, -1] = -offset / scale
    return m


def _swap_axes(A: torch.Tensor) -> torch.Tensor:
    """(B, d + 1, d + 1) in (i, j[, k]) order <-> in (x, y[, z]) order: reverse the spatial axes."""
    d = A.shape[-1] - 1
    order = list(range(d - 1, -1, -1)) + [d]
    return A[:, order][:, :, order]


def _homogeneous(A: torch.Tensor) -> torch.Tensor:
    """(B, d, d + 1) affine -> (B, d + 1, d + 1) with last row (0, .., 0, 1)."""
    last = torch.zeros_like(A[:, :1])
    last[:, 0, -1] = 1
    return torch.cat([A, last], dim=1)


def _check_invertible(name: str, A: torch.Tensor) -> None:
    """A: (B, n, n). Hadamard: |det A| <= prod of row norms; near that bound times 1e-12 is singular."""
    det = torch.linalg.det(A).abs()
    bad = ~(det > _SINGULAR * torch.linalg.vector_norm(A, dim=-1).prod(-1))  # NaN too
    if bool(bad.any()):
        items = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"{name} must be invertible to convert it, but it is singular (|det| below "
            f"{_SINGULAR:g} times the product of its rows' norms) for batch item(s) {items}"
        )


def _inverse(name: str, A: torch.Tensor, affine: bool) -> torch.Tensor:
    """(B, d + 1, d + 1) -> its inverse; affine maps keep their last row exactly."""
    d = A.shape[-1] - 1
    if not affine:
        _check_invertible(name, A)
        return torch.linalg.inv(A)
    lin = A[:, :d, :d]
    _check_invertible(f"the linear part of {name}", lin)
    inv = torch.linalg.inv(lin)
    return _homogeneous(torch.cat([inv, -(inv @ A[:, :d, d:])], dim=2))


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    """Conversions run in float64 (pixel translations of 1000s lose digits in float32)."""
    return torch.promote_types(t.dtype, torch.float64)


# ---- pixel matrices -> params ---------------------------------------------------------------

def _family_of(M: torch.Tensor, transform: str | None) -> str:
    """The stnkit family for M (B, r, c): from its shape (and a 3x3's last row), or `transform`."""
    rc = tuple(M.shape[1:])
    dim = {(2, 3): 2, (3, 3): 2, (3, 4): 3, (4, 4): 3}.get(rc)
    if dim is None:
        raise ValueError(f"M must be (B,) 2x3 or 3x3 (2D), or 3x4 or 4x4 (3D), got shape {tuple(M.shape)}")
    if transform is not None:
        name = _t.get(transform).name
        check_choice("transform", name, _FROM_FAMILIES, "for a pixel matrix")
        if _t.get(name).dim != dim:
            raise ValueError(f"a {rc[0]}x{rc[1]} M is {dim}D, but transform {name!r} is {_t.get(name).dim}D")
        return name
    if dim == 3:
        return "affine3d"
    return "affine" if rc == (2, 3) or _affine_last_row(M) else "projective"


def _affine_last_row(M: torch.Tensor) -> bool:
    """True when every square M (B, n, n) ends in the row (0, .., 0, 1), to within 1e-9."""
    want = torch.zeros_like(M[0, -1])
    want[-1] = 1
    return bool(((M[:, -1] - want).abs() <= 1e-9).all())


def _src_from_dst_pixels(M: torch.Tensor, family: str, maps: str, axes: str) -> torch.Tensor:
    """M (B, r, c), checked -> (B, d + 1, d + 1): output pixel (x, y[, z]) -> input pixel."""
    affine = family != "projective"
    d = M.shape[-1] - 1
    if affine and M.shape[1] == d + 1 and not _affine_last_row(M):
        raise ValueError(f"an affine M ({d + 1}x{d + 1}) must end in the row (0, .., 0, 1), got {M[:, -1].tolist()}")
    A = _homogeneous(M[:, :d]) if affine else (M if M.shape[1] == 3 else _homogeneous(M))
    if not affine:
        h33 = A[:, 2, 2].abs()
        bad = ~(h33 >= 1e-12 * A.abs().amax((1, 2)))
        if bool(bad.any()):
            items = bad.nonzero().flatten().tolist()
            raise ValueError(f"a projective M must have h33 != 0, but it is ~0 for batch item(s) {items}")
        A = A / A[:, 2:, 2:]
    if maps == "input_to_output":
        A = _inverse("M", A, affine)
    return _swap_axes(A) if axes == "ij" else A


def from_pixel_matrix(
    M,
    input_size: int | Sequence[int],
    output_size: int | Sequence[int] | None = None,
    *,
    transform: str | None = None,
    align_corners: bool = False,
    maps: str = "input_to_output",
    axes: str = "xy",
) -> torch.Tensor:
    """A pixel-space matrix (OpenCV, kornia, scipy.ndimage, MONAI) -> stnkit params (B, P).

    M: a tensor or NumPy array, (B, r, c) or (r, c) (-> B = 1): 2x3, or 3x3 ending in (0, 0, 1)
    -> "affine" (B, 6); any other 3x3 -> "projective" (B, 8); 3x4 or 4x4 ending in (0, 0, 0, 1)
    -> "affine3d" (B, 12). transform: None (from M as above), or "affine" | "projective" |
    "affine3d" to ask for one (a 2x3 M as "projective" too). input_size, output_size: (H, W) or
    (D, H, W) of the images M maps between (output_size defaults to input_size).
    maps: "input_to_output" (cv2.warpAffine without WARP_INVERSE_MAP, kornia) or
    "output_to_input" (scipy.ndimage, MONAI, stnkit); axes: "xy" (pixel x, y[, z]) or "ij" (array
    axes, as scipy.ndimage and MONAI). Pixel 0's centre is coordinate 0.
    Returns params for ``stnkit.warp(x, params, family, output_size, align_corners=...)``.

    >>> M = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 30, 1.0)  # what cv2.warpAffine(img, M, (w, h)) takes
    >>> out = stnkit.warp(x, stnkit.from_pixel_matrix(M, (h, w)), "affine")
    """
    if isinstance(M, np.ndarray):
        M = torch.from_numpy(M)
    check_float_tensor("M", M, ndims=(2, 3))
    M = M[None] if M.dim() == 2 else M
    check_finite("M", M)
    family = _family_of(M, transform)
    check_choice("maps", maps, MAPS)
    check_choice("axes", axes, AXES)
    dim = _t.get(family).dim
    size_in = check_size(input_size, dim, "input_size")
    size_out = size_in if output_size is None else check_size(output_size, dim, "output_size")
    A = _src_from_dst_pixels(M.to(_work_dtype(M)), family, maps, axes)
    theta = _norm_from_pixel(size_in, align_corners, A) @ A @ _pixel_from_norm(size_out, align_corners, A)
    if family != "projective":
        return theta[:, :dim].flatten(1).to(M.dtype)  # (B, d (d + 1))
    w = theta[:, 2:, 2:]  # the denominator at the output's normalised centre
    if bool((w.abs() < 1e-12).any()):
        raise ValueError(
            "M maps the centre of the output to infinity: stnkit's projective params (h33 = 1) cannot hold it"
        )
    return (theta / w).flatten(1)[:, :8].to(M.dtype)


# ---- params -> pixel matrices ---------------------------------------------------------------

def _norm_matrix(family: _t.Transform, p: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Flat params (B, P) -> (B, d + 1, d + 1) src_norm_from_dst_norm, and whether it is affine."""
    if isinstance(family, (_t.MatrixTransform, _t.Projective)):
        return homogeneous(family, p), isinstance(family, _t.MatrixTransform)
    matrix = [n for n in _t.names() if isinstance(_t.get(n), (_t.MatrixTransform, _t.Projective))]
    raise ValueError(f"to_pixel_matrix needs a matrix family, one of {matrix}, got {family.name!r}")


def to_pixel_matrix(
    params: torch.Tensor,
    transform: str | _t.Transform,
    input_size: int | Sequence[int],
    output_size: int | Sequence[int] | None = None,
    *,
    align_corners: bool = False,
    maps: str = "input_to_output",
    axes: str = "xy",
) -> torch.Tensor:
    """stnkit params -> homogeneous pixel matrices: the inverse of `from_pixel_matrix`.

    params: (B, P) (or the family's matrix form) of any matrix family (translation, attention,
    rigid, similarity, affine, projective and their 3D versions; tps and flow: ValueError)
    -> (B, 3, 3) in 2D, (B, 4, 4) in 3D; a projective one scaled to h33 = 1 where h33 != 0.
    Take ``[:, :2]`` (2D) or ``[:, :3]`` (3D) of an affine one for cv2.warpAffine, kornia or scipy.
    Sizes, align_corners, maps and axes mean what they mean in `from_pixel_matrix`.
    """
    family = _t.get(transform)
    p = family.canonical(params)
    check_finite("params", p)
    check_choice("maps", maps, MAPS)
    check_choice("axes", axes, AXES)
    size_in = check_size(input_size, family.dim, "input_size")
    size_out = size_in if output_size is None else check_size(output_size, family.dim, "output_size")
    theta, affine = _norm_matrix(family, p.to(_work_dtype(p)))
    A = _pixel_from_norm(size_in, align_corners, theta) @ theta @ _norm_from_pixel(size_out, align_corners, theta)
    A = _swap_axes(A) if axes == "ij" else A  # output pixel -> input pixel, in `axes` order
    if maps == "input_to_output":
        A = _inverse("the pixel matrix of params", A, affine)
    if not affine:
        h33 = A[:, 2:, 2:]
        A = A / torch.where(h33.abs() >= 1e-12 * A.abs().amax((1, 2), keepdim=True), h33, 1.0)
    return A.to(p.dtype)


# ---- grids and displacement fields ----------------------------------------------------------

def identity_grid(size: Sequence[int], align_corners: bool = False, *, dtype=None, device=None) -> torch.Tensor:
    """The grid that samples every pixel at its own centre, normalised like `F.grid_sample`.

    size: (H, W) -> (H, W, 2), or (D, H, W) -> (D, H, W, 3); last axis (x, y[, z]).
    ``stnkit.grid(identity params, t, size)[0]`` equals it for every matrix family.
    """
    if isinstance(size, torch.Size):
        size = tuple(size)
    if not isinstance(size, (tuple, list)) or len(size) not in (2, 3):
        raise ValueError(f"size must be a tuple (H, W) or (D, H, W) of ints, got {size!r}")
    size = check_size(size, len(size), "size")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return _coords.identity_grid(size, bool(align_corners), dtype=dtype, device=device)


def _field_scale(size: Sequence[int], align_corners: bool, like: torch.Tensor) -> torch.Tensor:
    """(d,) pixels per normalised unit along (x, y[, z]): the scale of `to_pixels`."""
    return _coords._scale_offset(size, align_corners, like)[0]


def flow_from_displacement(ddf: torch.Tensor, *, align_corners: bool = False, axes: str = "ij") -> torch.Tensor:
    """A displacement field in pixels / voxels, channels first -> stnkit `flow` params.

    ddf: (B, 2, H, W) or (B, 3, D, H, W); channel i is the displacement along array axis i for
    ``axes="ij"`` (VoxelMorph, MONAI's Warp), along x, y[, z] for "xy" -> (B, H, W, 2) or
    (B, D, H, W, 3) normalised (x, y[, z]) for ``warp(x, flow, "flow", align_corners=...)``,
    which then samples output pixel p at input pixel p + ddf[:, :, p]. The field's size is the
    output's, and the input is taken to have that size too (as in registration).
    """
    check_float_tensor("ddf", ddf, ndims=(4, 5))
    check_choice("axes", axes, AXES)
    d = ddf.dim() - 2
    if ddf.shape[1] != d:
        want = f"(B, {d}, *size)"
        raise ValueError(f"a {d}D ddf must have {d} channels, one per spatial axis: {want}, got {tuple(ddf.shape)}")
    v = ddf.flip(1) if axes == "ij" else ddf  # channels (x, y[, z])
    return v.movedim(1, -1) / _field_scale(ddf.shape[2:], align_corners, ddf)


def displacement_from_flow(flow: torch.Tensor, *, align_corners: bool = False, axes: str = "ij") -> torch.Tensor:
    """stnkit `flow` params -> a displacement field in pixels / voxels: the inverse of
    `flow_from_displacement`. flow: (B, H, W, 2) or (B, D, H, W, 3) -> (B, 2|3, *size)."""
    check_float_tensor("flow", flow, ndims=(4, 5))
    check_choice("axes", axes, AXES)
    d = flow.dim() - 2
    if flow.shape[-1] != d:
        want = f"(B, *size, {d})"
        raise ValueError(f"a {d}D flow must have {d} coordinates on its last axis: {want}, got {tuple(flow.shape)}")
    v = (flow * _field_scale(flow.shape[1:-1], align_corners, flow)).movedim(-1, 1)
    return v.flip(1) if axes == "ij" else v
