"""The model zoo: baselines and spatial-transformer models of every experiment, by name."""
from . import mnist  # noqa: F401  (registers the models)
from . import svhn  # noqa: F401
from . import cub  # noqa: F401
from . import volumes  # noqa: F401
from . import coloc  # noqa: F401
from .registry import count_params, create_model, list_models, model_options, register_model, transformers

__all__ = ["count_params", "create_model", "list_models", "model_options", "register_model", "transformers"]
