"""SpatialTransformer and the paper's localisation nets: thin modules wiring `stnkit.warp`."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from . import transforms as _t
from ._checks import BACKENDS, BadValues, check_choice, check_size, on_bad
from .warp import compose, warp

__all__ = ["SpatialTransformer", "CompositionalTransformer", "LocalisationDiverged", "BoundedParams", "fc_localisation", "conv_localisation"]


class LocalisationDiverged(ValueError):
    """A SpatialTransformer's localisation net predicted NaN, Inf or absurdly large parameters;
    `items`: the batch items concerned."""

    def __init__(self, message: str, items: list[int]):
        super().__init__(message)
        self.items = items


class BoundedParams(nn.Module):
    """Maps unbounded regression outputs to parameters, squashing the bounded ones.

    bounds: {name: (low, high)} where name is a parameter ("s", "tx", "angle", "a11", ...) or a
    group of the family ("scale", "translation", "angle", "linear", "perspective", "points").
    A bounded parameter is low + (high - low) * sigmoid(raw); the others pass through.
    `raw(params)` gives the raw values that produce given parameters exactly.
    """

    def __init__(self, family: _t.Transform, bounds: Mapping[str, Sequence[float]], start: torch.Tensor | None = None):
        super().__init__()
        names = family.param_names
        low = torch.full((len(names),), -math.inf)
        high = torch.full((len(names),), math.inf)
        for key, lh in bounds.items():
            idx = family.groups.get(key, (key,) if key in names else None)
            if idx is None:
                raise ValueError(
                    f"unknown bound {key!r} for {family.name!r}; use a parameter {list(names)} "
                    f"or a group {list(family.groups)}"
                )
            lo, hi = _pair(key, lh)
            for n in idx:
                low[names.index(n)], high[names.index(n)] = lo, hi
        start = family.identity_params(dtype=torch.float32) if start is None else start.float()
        inside = (start > low) & (start < high)
        if not bool(inside.all()):
            bad = [names[i] for i in (~inside).nonzero().flatten().tolist()]
            raise ValueError(
                f"bounds must contain the starting parameters (the identity unless init= is given) strictly "
                f"inside; {bad} start at {start[~inside].tolist()}, outside or on their bounds"
            )
        self.register_buffer("low", low, persistent=False)
        self.register_buffer("high", high, persistent=False)
        self.register_buffer("bounded", torch.isfinite(low), persistent=False)
        self.family_name = family.name

    def raw(self, params: torch.Tensor) -> torch.Tensor:
        """The raw values (P,) whose image is `params` (P,)."""
        span = torch.where(self.bounded, self.high - self.low, torch.ones_like(self.low))
        u = ((params - torch.where(self.bounded, self.low, torch.zeros_like(self.low))) / span)
        return torch.where(self.bounded, torch.logit(u.clamp(1e-6, 1 - 1e-6)), params)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:  # (B, P) -> (B, P)
        low = torch.where(self.bounded, self.low, torch.zeros_like(self.low))
        span = torch.where(self.bounded, self.high - self.low, torch.ones_like(self.low))
        return torch.where(self.bounded, low + span * torch.sigmoid(raw), raw)

    def extra_repr(self) -> str:
        return f"{self.family_name}, low={self.low.tolist()}, high={self.high.tolist()}"


def _pair(key, lh) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in lh)
    except (TypeError, ValueError):
        raise ValueError(f"bound {key!r} must be a pair (low, high), got {lh!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"bound {key!r} must be finite with low < high, got ({lo}, {hi})")
    return lo, hi


def _features(module: nn.Module) -> int | None:
    n = getattr(module, "out_features", None)
    if isinstance(n, int):
        return n
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


class SpatialTransformer(nn.Module):
    """A spatial transformer: localisation net -> regression -> grid -> sampler.

    localisation: any module mapping x (B, C, H, W) (or (B, C, D, H, W)) to features (B, F, ...)
    (flattened). The regression layer F -> P is added here, initialised to the identity
    transform (zero weight, bias = identity), so training starts from "no warp".
    forward(x) -> (B, C, *output_size); the parameters of the last call are kept, detached, in
    `last_params` (B, P).

    transform: a family name or instance (see `stnkit.transforms.names()`); output_size: None
    keeps the input's size; mode, padding_mode, align_corners, fill, antialias, backend: as in `stnkit.warp`;
    bounds: optional {parameter or group: (low, high)} squashing those outputs into a range
    (see BoundedParams); init: the starting parameters (P,) instead of the identity (e.g. a
    small crop for attention); features: F, when it cannot be read off the localisation net.
    """

    def __init__(
        self,
        localisation: nn.Module,
        transform: str | _t.Transform = "affine",
        output_size: int | Sequence[int] | None = None,
        *,
        mode: str = "bilinear",
        padding_mode: str = "zeros",
        align_corners: bool = False,
        fill: float | torch.Tensor | None = None,
        antialias: bool = False,
        backend: str = "auto",
        bounds: Mapping[str, Sequence[float]] | None = None,
        init: Sequence[float] | torch.Tensor | None = None,
        features: int | None = None,
    ):
        super().__init__()
        family = _t.get(transform)
        if isinstance(family, _t.Flow):
            raise ValueError(
                "SpatialTransformer predicts a few global parameters; for a dense 'flow' predict the "
                "field with your own network and call stnkit.warp(x, field, 'flow')"
            )
        n_features = features if features is not None else _features(localisation)
        if not isinstance(n_features, int) or n_features <= 0:
            raise ValueError(
                "cannot tell how many features the localisation net outputs (no `out_features` "
                "attribute and no nn.Linear inside); pass features=F"
            )
        self.localisation = localisation
        self.transform = family
        self.output_size = None if output_size is None else check_size(output_size, family.dim)
        self.mode, self.padding_mode, self.align_corners, self.fill = mode, padding_mode, align_corners, fill
        self.antialias = antialias
        check_choice("backend", backend, BACKENDS)
        self.backend = backend
        self.regression = nn.Linear(n_features, family.num_params)
        if init is not None:
            init = torch.as_tensor(init, dtype=torch.float32).flatten()
            if init.numel() != family.num_params or not bool(torch.isfinite(init).all()):
                raise ValueError(f"init must be {family.num_params} finite values ({', '.join(family.param_names)}), got {init.tolist()}")
        self.init = init
        self.bounds = BoundedParams(family, bounds, init) if bounds else None
        self.reset_regression()
        self.last_params: torch.Tensor | None = None

    @torch.no_grad()
    def reset_regression(self) -> None:
        """Zero weight and a bias giving the starting parameters (the identity, or `init`)."""
        start = self.transform.identity_params(dtype=torch.float32) if self.init is None else self.init
        if self.bounds is not None:
            start = self.bounds.raw(start)
        self.regression.weight.zero_()
        self.regression.bias.copy_(start)

    def params(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted transformation parameters for x: (B, P)."""
        feats = self.localisation(x).flatten(1)  # (B, F)
        raw = self.regression(feats)  # (B, P)
        return raw if self.bounds is None else self.bounds(raw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.params(x)
        self.last_params = theta.detach()
        return self._warp(x, theta, self.output_size)

    def _warp(self, x: torch.Tensor, theta: torch.Tensor, size) -> torch.Tensor:
        """warp(x, theta) with this module's sampling settings; unusable theta ->
        LocalisationDiverged."""
        kw = dict(mode=self.mode, padding_mode=self.padding_mode, align_corners=self.align_corners, fill=self.fill,
                  antialias=self.antialias, backend=getattr(self, "backend", "auto"))  # modules pickled before it: auto
        t = theta.detach()  # a recorded check keeps no graph alive
        with on_bad(lambda e: self._diverged(e, t)):
            return warp(x, theta, self.transform, size, **kw)

    def _diverged(self, e: Exception, theta: torch.Tensor) -> Exception:
        """Bad params from warp (NaN, Inf or huge: the localisation net diverged) -> LocalisationDiverged;
        any other error as it is. Built when the error is reported (at once, or by Checks.error())."""
        if not isinstance(e, BadValues) or e.name != "params":
            return e
        example = [round(v, 4) for v in theta[e.items[0]].flatten()[:9].tolist()]
        err = LocalisationDiverged(
            f"the localisation net of this SpatialTransformer predicted unusable {self.transform.name} "
            f"parameters for batch items {e.items[:8]} (item {e.items[0]}: {example}): it has diverged, "
            "or its input holds NaN. Lower the learning rate (or the localisation net's), clip "
            "gradients, or bound the parameters with bounds=", e.items)
        err.__cause__ = e
        return err

    def extra_repr(self) -> str:
        aa = ", antialias=True" if self.antialias else ""
        return f"transform={self.transform!r}, output_size={self.output_size}, mode={self.mode!r}{aa}"


class CompositionalTransformer(SpatialTransformer):
    """An inverse-compositional spatial transformer (IC-STN, Lin and Lucey, CVPR 2017).

    One localisation net, shared by every step, looks at the input warped by the current
    parameters and predicts an update; the update is composed with the current parameters in
    parameter space (`stnkit.compose`: warp with the current parameters, then with the update,
    so the matrix is M_current @ M_update). Every step samples the *original* input, never a
    resampled one; the output is the input warped once by the final parameters.

    localisation, transform, output_size and the sampling keywords: as in SpatialTransformer
    (the localisation net sees images of the input's size); steps: the number of updates, >= 1.
    Matrix families only (TPS and flow have no parameter-space composition here). The
    regression layer (`.regression`, shared) starts at the identity update, so the module
    starts as the identity. `last_params`: the composed parameters (B, P); `step_params`: the
    parameters after each step, a list of `steps` tensors (B, P) (detached).

    x: (B, C, H, W) (or volumes) -> (B, C, *output_size).
    """

    def __init__(self, localisation: nn.Module, transform: str | _t.Transform = "affine", output_size=None, *,
                 steps: int = 4, **kw):
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        for key in ("bounds", "init"):
            if kw.get(key) is not None:
                raise ValueError(f"CompositionalTransformer takes no {key}=: it starts at the identity and its "
                                 "updates are composed, not bounded")
        family = _t.get(transform)
        if not isinstance(family, (_t.MatrixTransform, _t.Projective)):
            raise ValueError(f"CompositionalTransformer needs a matrix family (composition in parameter space), "
                             f"got {family.name!r}")
        super().__init__(localisation, family, output_size, **kw)
        self.steps = steps
        self.step_params: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(int(s) for s in x.shape[2:])
        theta = self.params(x)  # step 1 sees the input itself: the identity warp is skipped
        steps = [theta.detach()]
        for _ in range(self.steps - 1):
            theta = compose(theta, self.params(self._warp(x, theta, size)), self.transform)
            steps.append(theta.detach())
        self.step_params, self.last_params = steps, theta.detach()
        return self._warp(x, theta, self.output_size)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", steps={self.steps}"


class Localisation(nn.Sequential):
    """nn.Sequential that knows its output width (`out_features`)."""

    def __init__(self, *layers: nn.Module, out_features: int):
        super().__init__(*layers)
        self.out_features = out_features


def fc_localisation(in_features: int, hidden: Sequence[int] = (32, 32)) -> Localisation:
    """The paper's ST-FCN localisation: fully connected layers with ReLU (the regression layer,
    the third weight layer, is added by SpatialTransformer). Input (B, ...) flattened to
    in_features."""
    layers: list[nn.Module] = [nn.Flatten()]
    n = in_features
    for h in hidden:
        layers += [nn.Linear(n, h), nn.ReLU(inplace=True)]
        n = h
    return Localisation(*layers, out_features=n)


def conv_localisation(
    in_channels: int,
    input_size: Sequence[int],
    channels: Sequence[int] = (20, 20),
    kernel_size: int = 5,
    hidden: int = 20,
    downsample: int = 2,
) -> Localisation:
    """The paper's ST-CNN localisation: max-pool by `downsample`, then for each entry of
    `channels` a conv (kernel_size, 'same'-free) + ReLU with a 2x2 max-pool between, then a
    fully connected layer of `hidden` units + ReLU. input_size: (H, W) of the input."""
    layers: list[nn.Module] = []
    if downsample > 1:
        layers.append(nn.MaxPool2d(downsample))
    c = in_channels
    for i, ch in enumerate(channels):
        if i > 0:
            layers.append(nn.MaxPool2d(2))
        layers += [nn.Conv2d(c, ch, kernel_size), nn.ReLU(inplace=True)]
        c = ch
    layers.append(nn.Flatten())
    try:
        with torch.no_grad():
            n = nn.Sequential(*layers)(torch.zeros(1, in_channels, *input_size)).shape[1]
    except RuntimeError as e:
        raise ValueError(
            f"input_size {tuple(input_size)} is too small for this localisation net (downsample "
            f"{downsample}, {len(channels)} convs of {kernel_size}x{kernel_size}): use a smaller "
            f"kernel_size or downsample, or fewer channels entries ({e})"
        ) from None
    layers += [nn.Linear(n, hidden), nn.ReLU(inplace=True)]
    return Localisation(*layers, out_features=hidden)
