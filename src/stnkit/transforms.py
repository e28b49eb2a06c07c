"""The registry of transformation families: name -> number of parameters, identity parameters,
parameters -> grid, points and inverse.

A family is an object; `get(name)` returns the registered one and every public function also
takes an instance, e.g. ``TPS(grid_size=5)`` or ``TPS(targets=my_points, reg=1e-3)``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._checks import check_finite, check_float_tensor, require
from .functional import matrix as M
from .functional import tps as T
from .functional.coords import identity_grid

__all__ = ["Transform", "TPS", "Flow", "names", "get", "num_params", "identity", "register"]


class Transform:
    """A family of maps T_theta from output (target) to input (source) coordinates."""

    name: str = ""
    dim: int = 2  # spatial dimensions: 2 or 3
    param_names: tuple[str, ...] = ()
    groups: dict[str, tuple[str, ...]] = {}  # named sets of parameters, e.g. "translation"
    has_inverse: bool = True

    @property
    def num_params(self) -> int:
        return len(self.param_names)

    def identity_params(self, dtype=None, device=None) -> torch.Tensor:  # (P,)
        raise NotImplementedError

    # params (B, P) in the canonical flat layout; subclasses map it on.
    def grid(self, params: torch.Tensor, size: Sequence[int], align_corners: bool) -> torch.Tensor:
        raise NotImplementedError

    def points(self, params: torch.Tensor, points: torch.Tensor, align_corners: bool) -> torch.Tensor:
        raise NotImplementedError

    def inverse(self, params: torch.Tensor) -> torch.Tensor:
        raise ValueError(
            f"{self.name!r} has no closed-form inverse; families that have one: "
            f"{[n for n in names() if get(n).has_inverse]}"
        )

    def coordinate_gain(self, params: torch.Tensor) -> float:
        """A bound on |source coordinate| / max |params| over output coordinates in [-1, 1]
        (for a homography: before the division by h31 x + h32 y + 1)."""
        return self.dim + 1.0

    def canonical(self, params) -> torch.Tensor:
        """Validate `params` and return them flat: (B, P)."""
        check_float_tensor("params", params)
        P = self.num_params
        if params.dim() == 2 and params.shape[1] == P:
            return params
        raise ValueError(
            f"{self.name!r} params must have shape (B, {P}) as ({', '.join(self.param_names)})"
            f"{self._matrix_hint()}, got {tuple(params.shape)}"
        )

    def _matrix_hint(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class MatrixTransform(Transform):
    """Families that are (special cases of) an affine map: params -> src_from_dst matrix."""

    identity_values: tuple[float, ...] = ()

    def identity_params(self, dtype=None, device=None) -> torch.Tensor:
        return torch.tensor(self.identity_values, dtype=dtype, device=device)

    def matrix(self, params: torch.Tensor) -> torch.Tensor:  # (B, P) -> (B, d, d + 1)
        raise NotImplementedError

    def grid(self, params, size, align_corners):
        return M.affine_grid(self.matrix(params), size, align_corners)

    def points(self, params, points, align_corners):
        return M.affine_points(self.matrix(params), points)


class Translation(MatrixTransform):
    def __init__(self, dim: int = 2):
        self.dim = dim
        self.name = "translation" if dim == 2 else "translation3d"
        self.param_names = ("tx", "ty", "tz")[:dim]
        self.groups = {"translation": self.param_names}
        self.identity_values = (0.0,) * dim

    def matrix(self, params):
        return M.translation_matrix(params)

    def inverse(self, params):
        return -params


class Attention(MatrixTransform):
    def __init__(self, dim: int = 2):
        self.dim = dim
        self.name = "attention" if dim == 2 else "attention3d"
        self.param_names = ("s", "tx", "ty", "tz")[: dim + 1]
        self.groups = {"scale": ("s",), "translation": self.param_names[1:]}
        self.identity_values = (1.0,) + (0.0,) * dim

    def matrix(self, params):
        return M.attention_matrix(params)

    def inverse(self, params):
        s = params[:, :1]
        _nonzero("scale s", s)
        return torch.cat([1 / s, -params[:, 1:] / s], dim=1)


class Rigid(MatrixTransform):
    name = "rigid"
    param_names = ("angle", "tx", "ty")
    groups = {"angle": ("angle",), "translation": ("tx", "ty")}
    identity_values = (0.0, 0.0, 0.0)

    def matrix(self, params):
        return M.rigid_matrix(params)

    def inverse(self, params):
        a, t = params[:, 0], params[:, 1:]
        c, s = torch.cos(a), torch.sin(a)
        # -R^T t
        tx = -(c * t[:, 0] + s * t[:, 1])
        ty = -(-s * t[:, 0] + c * t[:, 1])
        return torch.stack([-a, tx, ty], dim=1)


class Similarity(MatrixTransform):
    name = "similarity"
    param_names = ("s", "angle", "tx", "ty")
    groups = {"scale": ("s",), "angle": ("angle",), "translation": ("tx", "ty")}
    identity_values = (1.0, 0.0, 0.0, 0.0)

    def matrix(self, params):
        return M.similarity_params_matrix(params)

    def inverse(self, params):
        s, a, t = params[:, 0], params[:, 1], params[:, 2:]
        _nonzero("scale s", s)
        c, sn = torch.cos(a) / s, torch.sin(a) / s
        tx = -(c * t[:, 0] + sn * t[:, 1])
        ty = -(-sn * t[:, 0] + c * t[:, 1])
        return torch.stack([1 / s, -a, tx, ty], dim=1)


class Affine(MatrixTransform):
    def __init__(self, dim: int = 2):
        self.dim = dim
        self.name = "affine" if dim == 2 else "affine3d"
        rows = [f"a{i}{j}" for i in range(1, dim + 1) for j in range(1, dim + 2)]
        self.param_names = tuple(rows)
        self.groups = {
            "linear": tuple(f"a{i}{j}" for i in range(1, dim + 1) for j in range(1, dim + 1)),
            "translation": tuple(f"a{i}{dim + 1}" for i in range(1, dim + 1)),
        }
        eye = torch.eye(dim, dim + 1)
        self.identity_values = tuple(eye.reshape(-1).tolist())

    def _matrix_hint(self):
        return f" or a matrix (B, {self.dim}, {self.dim + 1})"

    def canonical(self, params):
        check_float_tensor("params", params)
        d = self.dim
        if params.dim() == 3 and tuple(params.shape[1:]) == (d, d + 1):
            return params.reshape(params.shape[0], d * (d + 1))
        return super().canonical(params)

    def matrix(self, params):
        return params.view(-1, self.dim, self.dim + 1)

    def inverse(self, params):
        d = self.dim
        A = self.matrix(params.to(_solve_dtype(params)))
        lin = A[:, :, :d]
        det = torch.linalg.det(lin)
        _nonzero("the determinant of the linear part", det)
        inv = torch.linalg.inv(lin)
        t = -(inv @ A[:, :, d:])
        return torch.cat([inv, t], dim=2).flatten(1).to(params.dtype)  # (B, d (d + 1))


class Projective(Transform):
    name = "projective"
    param_names = ("h11", "h12", "h13", "h21", "h22", "h23", "h31", "h32")
    groups = {
        "linear": ("h11", "h12", "h21", "h22"),
        "translation": ("h13", "h23"),
        "perspective": ("h31", "h32"),
    }

    def identity_params(self, dtype=None, device=None):
        return torch.tensor([1.0, 0, 0, 0, 1, 0, 0, 0], dtype=dtype, device=device)

    def coordinate_gain(self, params):
        # |h11 x + h12 y + h13| <= 3 max|h| over [-1, 1]^2, and ahead of the horizon the
        # denominator exceeds PROJECTIVE_EPS: |coordinate| < 3 max|h| / EPS. Bounding params by
        # this keeps every grid finite in the sampler without a pass over the grid.
        return 3.0 / M.PROJECTIVE_EPS

    def _matrix_hint(self):
        return " or a matrix (B, 3, 3)"

    def canonical(self, params):
        check_float_tensor("params", params)
        if params.dim() == 3 and tuple(params.shape[1:]) == (3, 3):
            h33 = params[:, 2:, 2:]
            check_finite("params", params)
            _nonzero("h33 of a (B, 3, 3) homography", h33, "cannot divide by h33")
            p = (params / h33).reshape(-1, 9)[:, :8]
            check_finite("params / h33", p, hint=f"; h33 is too small for {p.dtype}")
            return p
        return super().canonical(params)

    def grid(self, params, size, align_corners):
        return M.projective_grid(M.homography_matrix(params), size, align_corners)

    def points(self, params, points, align_corners):
        return M.projective_points(M.homography_matrix(params), points)

    def inverse(self, params):
        H = M.homography_matrix(params.to(_solve_dtype(params)))
        _nonzero("the determinant of the homography", torch.linalg.det(H))
        inv = torch.linalg.inv(H)
        h33 = inv[:, 2:, 2:]
        _nonzero("h33 of the inverse homography (it maps the origin to infinity)", h33)
        return (inv / h33).reshape(-1, 9)[:, :8].to(params.dtype)


class TPS(Transform):
    """Thin-plate spline through K control points with fixed target positions.

    TPS() / TPS(grid_size=n): the n x n grid over [-1, 1]^2 (n = 4: the paper's 16 points);
    TPS(targets=(K, 2) tensor): any target positions; reg >= 0 adds reg * I to the kernel
    (a smoothing spline that no longer passes exactly through the points).
    The registered "tps" infers n from the params: 2K values with K a square number.
    """

    has_inverse = False
    _CACHE_LIMIT = 8  # entries are (2K, 2H'W'): 51 MB at 448x448 float32

    def __init__(self, grid_size: int | None = None, targets: torch.Tensor | None = None, reg: float = 0.0):
        if grid_size is not None and targets is not None:
            raise ValueError("give TPS either grid_size or targets, not both")
        if reg < 0 or not math.isfinite(reg):
            raise ValueError(f"TPS reg must be a finite number >= 0, got {reg}")
        self.name = "tps"
        self.reg = float(reg)
        self._fixed_k = targets is None and grid_size is None
        if targets is not None:
            check_float_tensor("targets", targets, ndims=(2,))
            if targets.shape[1] != 2:
                raise ValueError(f"TPS targets must have shape (K, 2), got {tuple(targets.shape)}")
            self.targets = targets.detach().to(torch.float64, copy=True).cpu()
        else:
            self.targets = T.square_grid_points((grid_size or 4) ** 2)
        self.weights = T.solve_weights(self.targets, self.reg)  # (K + 3, K), float64, CPU
        self.gain = self._gain()
        self._grid_cache: dict = {}
        self._by_k: dict[int, TPS] = {}

    @property
    def K(self) -> int:
        return self.targets.shape[0]

    @property
    def param_names(self):
        return tuple(f"{c}{k}" for k in range(1, self.K + 1) for c in "xy")

    @property
    def groups(self):
        return {"points": self.param_names}

    def _for(self, params: torch.Tensor) -> "TPS":
        """The registered "tps" serves any square K: pick the instance for this params' K."""
        K = params.shape[1] // 2
        if not self._fixed_k or K == self.K:
            return self
        if K not in self._by_k:
            self._by_k[K] = TPS(grid_size=math.isqrt(K), reg=self.reg)
        return self._by_k[K]

    def _gain(self) -> float:
        """max over [-1, 1]^2 of sum_k |grid weight of control point k| (the Lebesgue constant),
        sampled on a 33 x 33 grid and doubled: |grid| <= gain * max |params|. About 3.4 for
        the square grids; large for nearly coincident targets."""
        pts = identity_grid((33, 33), True, dtype=torch.float64).reshape(-1, 2)
        m = T.basis(pts, self.targets) @ self.weights  # (N, K): grid points = m @ sources
        return 2.0 * max(1.0, float(m.abs().sum(1).max()))

    def coordinate_gain(self, params):
        return self._for(params).gain

    def canonical(self, params):
        check_float_tensor("params", params)
        if params.dim() == 3 and params.shape[2] == 2:
            params = params.flatten(1)  # (B, 2K), also for B = 0
        if params.dim() == 2 and params.shape[1] % 2 == 0 and self._fixed_k:
            K = params.shape[1] // 2
            n = math.isqrt(K)
            if n * n == K and n >= 2:
                return params
        if params.dim() == 2 and params.shape[1] == 2 * self.K:
            return params
        want = "2K values (x1, y1, ..., xK, yK) with K a square number >= 4" if self._fixed_k else f"{2 * self.K} values"
        raise ValueError(
            f"'tps' params must have shape (B, 2K) with {want}, or (B, K, 2); "
            f"got {tuple(params.shape)}"
        )

    def identity_params(self, dtype=None, device=None):
        return self.targets.reshape(-1).to(dtype=dtype or torch.get_default_dtype(), device=device)

    def grid_matrix(self, size: Sequence[int], align_corners: bool, dtype, device) -> torch.Tensor:
        """(2K, 2H'W'): flat grid (B, 2H'W') = flat params (B, 2K) @ this (`T.interleaved`).
        Built in float64 and cached per size, align_corners, dtype and device."""
        key = (tuple(size), bool(align_corners), dtype, str(device))
        m = self._grid_cache.get(key)
        if m is None:
            with torch.inference_mode(False), torch.no_grad():
                pts = identity_grid(size, align_corners, dtype=torch.float64).reshape(-1, 2)
                m = T.interleaved(T.basis(pts, self.targets) @ self.weights).to(dtype=dtype, device=device)
            if type(m) is not torch.Tensor or torch.compiler.is_compiling():
                return m  # built under a tracer (fake/functional tensor): never cache it
            if len(self._grid_cache) >= self._CACHE_LIMIT:
                self._grid_cache.pop(next(iter(self._grid_cache)))
            self._grid_cache[key] = m
        return m

    def grid(self, params, size, align_corners):
        m = self._for(params).grid_matrix(size, align_corners, params.dtype, params.device)
        return (params @ m).view(params.shape[0], *size, 2)  # (B, H', W', 2)

    def points(self, params, points, align_corners):
        me = self._for(params)
        B = params.shape[0]
        w = me.weights.to(dtype=params.dtype, device=params.device)
        return T.tps_points(params.view(B, me.K, 2), points, me.targets.to(params.device), w)

    def __repr__(self):
        return f"TPS(K={self.K}, reg={self.reg})"


class Flow(Transform):
    """A dense displacement field added to the identity grid (registration-style warps).

    params: (B, H', W', 2) in 2D or (B, D', H', W', 3) in 3D, normalised units; the output
    size is the field's size.
    """

    has_inverse = False

    def __init__(self, dim: int = 2):
        self.dim = dim
        self.name = "flow" if dim == 2 else "flow3d"

    @property
    def num_params(self):
        raise ValueError(f"{self.name!r} is dense: its params are a field (B, *output_size, {self.dim})")

    @property
    def param_names(self):
        return ()

    def canonical(self, params):
        check_float_tensor("params", params)
        if params.dim() != self.dim + 2 or params.shape[-1] != self.dim:
            shape = "(B, H', W', 2)" if self.dim == 2 else "(B, D', H', W', 3)"
            raise ValueError(f"{self.name!r} params must be a displacement field {shape}, got {tuple(params.shape)}")
        if 0 in params.shape[1:-1]:
            raise ValueError(
                f"a {self.name!r} field needs at least one pixel on every axis (it is the output's size), "
                f"got shape {tuple(params.shape)}"
            )
        return params

    def grid(self, params, size, align_corners):
        if tuple(params.shape[1:-1]) != tuple(size):
            raise ValueError(
                f"a {self.name!r} field of size {tuple(params.shape[1:-1])} makes an output of that "
                f"size, but output_size {tuple(size)} was asked for"
            )
        return identity_grid(size, align_corners, dtype=params.dtype, device=params.device) + params

    def points(self, params, points, align_corners):
        # Displacement at arbitrary points: the field sampled (linearly, border) at the points.
        field = params.movedim(-1, 1)  # (B, d, *size)
        loc = points.view(points.shape[0], *([1] * (self.dim - 1)), points.shape[1], self.dim)
        disp = torch.nn.functional.grid_sample(
            field, loc, mode="bilinear", padding_mode="border", align_corners=align_corners
        )  # (B, d, 1.., N)
        return points + disp.reshape(points.shape[0], self.dim, points.shape[1]).transpose(1, 2)

    def identity_params(self, dtype=None, device=None):
        raise ValueError(f"{self.name!r} identity depends on the output size: use torch.zeros(B, *size, {self.dim})")


def _solve_dtype(params: torch.Tensor) -> torch.dtype:
    """float16 and bfloat16 have no LU kernels: solve in float32."""
    return torch.promote_types(params.dtype, torch.float32)


def _nonzero(what: str, t: torch.Tensor, action: str = "cannot invert") -> None:
    """|t| >= 1e-12 (NaN fails too, e.g. an overflowing determinant); no host sync on a GPU."""

    def make(ok):
        items = (~ok).reshape(ok.shape[0], -1).any(1).nonzero().flatten().tolist()
        return ValueError(f"{action}: {what} is zero (below 1e-12 in magnitude) or NaN for batch item(s) {items}")

    if t.numel():
        require(t.detach().abs() >= 1e-12, make)


_REGISTRY: dict[str, Transform] = {}
_ALIASES = {"homography": "projective", "perspective": "projective", "thin_plate_spline": "tps"}


def register(t: Transform) -> Transform:
    _REGISTRY[t.name] = t
    return t


for _t in (
    Translation(2), Attention(2), Rigid(), Similarity(), Affine(2), Projective(), TPS(), Flow(2),
    Translation(3), Attention(3), Affine(3), Flow(3),
):
    register(_t)


def names() -> list[str]:
    """Names of the registered families."""
    return list(_REGISTRY)


def get(transform: str | Transform) -> Transform:
    """The family for a name (or the instance itself)."""
    if isinstance(transform, Transform):
        return transform
    if isinstance(transform, str):
        key = _ALIASES.get(transform.lower(), transform.lower())
        if key in _REGISTRY:
            return _REGISTRY[key]
    raise ValueError(f"unknown transform {transform!r}; known: {names()} (or a stnkit.transforms.Transform)")


def num_params(transform: str | Transform) -> int:
    """Number of parameters P of a family (params are (B, P))."""
    return get(transform).num_params


def identity(transform: str | Transform, batch_size: int, dtype=None, device=None) -> torch.Tensor:
    """Identity parameters repeated over a batch: (batch_size, P)."""
    if not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"batch_size must be an int >= 0, got {batch_size!r}")
    p = get(transform).identity_params(dtype=dtype, device=device)
    return p.expand(batch_size, -1).clone()
