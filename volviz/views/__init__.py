"""The view layer: numpy arrays in, pyvista scenes and 2-D images out (no trame)."""

from . import _gl_order  # noqa: F401  (before anything makes a render context; see the module)
from .colors import DEFAULT_CMAP, DIVERGING_CMAP, OPACITY_PRESETS, auto_clim, opacity_curve
from .grid import near_square_grid, neuron_grid, save_png, tile_mosaic, to_rgb, vis_square
from .render_probe import rendering_available
from .volume import LayerVolumeScene
from .volume_data import activation_volume, check_order, weight_volume
from .volume_style import VolumeStyle

__all__ = [
    "DEFAULT_CMAP",
    "DIVERGING_CMAP",
    "OPACITY_PRESETS",
    "LayerVolumeScene",
    "VolumeStyle",
    "activation_volume",
    "auto_clim",
    "check_order",
    "near_square_grid",
    "neuron_grid",
    "opacity_curve",
    "rendering_available",
    "save_png",
    "tile_mosaic",
    "to_rgb",
    "vis_square",
    "weight_volume",
]
