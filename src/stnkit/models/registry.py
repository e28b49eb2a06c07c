"""The model zoo registry: one small registered function per variant, created by name."""
from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from .._checks import did_you_mean

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Decorator: register `fn(**kwargs) -> nn.Module` under `name`."""

    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        return fn

    return deco


def list_models(pattern: str = "") -> list[str]:
    """Registered model names containing `pattern`, sorted."""
    return sorted(n for n in _MODELS if pattern in n)


def _check_known(name: str) -> None:
    if name not in _MODELS:
        hint = did_you_mean(name, _MODELS)
        raise ValueError(f"unknown model {name!r}; known: {list_models()}" + (f"; {hint}" if hint else ""))


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; `overrides` go to its constructor (in_shape, num_classes, ...).
    The model gets `model_name` and `in_shape` (C, H, W) or (C, D, H, W) attributes."""
    _check_known(name)
    try:
        model = _MODELS[name](**overrides)
    except TypeError as e:
        raise ValueError(f"bad options for model {name!r}: {e}") from None
    model.model_name = name
    defaults = {k: p.default for k, p in inspect.signature(_MODELS[name]).parameters.items()}
    model.in_shape = tuple(overrides.get("in_shape", defaults.get("in_shape", ())))
    return model


def model_options(name: str) -> list[str]:
    """The keyword options a registered model takes."""
    _check_known(name)
    return list(inspect.signature(_MODELS[name]).parameters)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def transformers(model: nn.Module) -> list[nn.Module]:
    """The SpatialTransformer modules of a model, in registration order."""
    from ..layers import SpatialTransformer

    return [m for m in model.modules() if isinstance(m, SpatialTransformer)]
