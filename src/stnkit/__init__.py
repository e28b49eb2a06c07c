"""stnkit: Spatial Transformer Networks for PyTorch."""
from . import transforms
from ._checks import checks
from .conventions import (
    displacement_from_flow, flow_from_displacement, from_pixel_matrix, identity_grid, to_pixel_matrix,
)
from .functional.coords import to_normalised, to_pixels
from .layers import (
    CompositionalTransformer, LocalisationDiverged, SpatialTransformer, conv_localisation, fc_localisation,
)
from .registration import compose_flows, integrate_velocity, jacobian_determinant
from .deform import DeformConv2d, deform_conv2d
from .warp import compose, grid, invert, warp, warp_points

__version__ = "0.1.0"

__all__ = [
    "CompositionalTransformer",
    "DeformConv2d",
    "LocalisationDiverged",
    "SpatialTransformer",
    "checks",
    "compose",
    "compose_flows",
    "conv_localisation",
    "deform_conv2d",
    "displacement_from_flow",
    "fc_localisation",
    "flow_from_displacement",
    "from_pixel_matrix",
    "grid",
    "identity_grid",
    "integrate_velocity",
    "invert",
    "jacobian_determinant",
    "to_normalised",
    "to_pixel_matrix",
    "to_pixels",
    "transforms",
    "warp",
    "warp_points",
]
