"""stnkit: Spatial Transformer Networks for PyTorch."""
from . import transforms
from .functional.coords import to_normalised, to_pixels
from .layers import LocalisationDiverged, SpatialTransformer, conv_localisation, fc_localisation
from .warp import grid, invert, warp, warp_points

__version__ = "0.1.0"

__all__ = [
    "LocalisationDiverged",
    "SpatialTransformer",
    "conv_localisation",
    "fc_localisation",
    "grid",
    "invert",
    "to_normalised",
    "to_pixels",
    "transforms",
    "warp",
    "warp_points",
]
