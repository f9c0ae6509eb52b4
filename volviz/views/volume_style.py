"""How a layer volume looks: the :class:`VolumeStyle` settings and what VTK makes of them
(colour and opacity transfer functions, the ray-cast mapper).

Kept apart from :class:`~volviz.views.volume.LayerVolumeScene` so that the look can be checked
and built without a scene: :func:`check_style` validates a whole style before the scene
changes anything, and the transfer functions depend only on the style and the colour range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyvista as pv
from vtkmodules.vtkCommonDataModel import vtkPiecewiseFunction
from vtkmodules.vtkRenderingCore import vtkColorTransferFunction

from .colors import DEFAULT_CMAP, DIVERGING_CMAP, get_cmap, opacity_curve, sample_cmap

__all__ = ["VolumeStyle", "check_style", "make_mapper", "nan_fill_value", "set_sample_distance", "transfer_functions"]

#: name of the one point-data array of a scene's ImageData
SCALARS = "values"


@dataclass
class VolumeStyle:
    """How a :class:`LayerVolumeScene` looks. Change it live with ``scene.set_style(**changes)``.

    Attributes
    ----------
    cmap : colormap name or matplotlib Colormap. ``None``: ``"inferno"``, or ``"RdBu_r"`` when
        ``opacity == "diverging"``.
    opacity : preset name (``linear``, ``sigmoid``, ``high``, ``flat``, ``diverging``) or a list of
        opacities over the colour range, see :mod:`volviz.views.colors`.
    clim : ``(lo, hi)``; ``None``: :func:`~volviz.views.colors.auto_clim` of the data given at
        construction (symmetric around 0 for signed data or the diverging preset), then kept
        fixed by ``update()`` so time steps stay comparable.
    z_spacing : distance between stacked maps (x/y pixel = 1). ``None``: ``max(H, W) / C``, an
        about cubic volume (at most 8, so 1-10 channels make a flat stack, not tall columns).
    density : opacity per unit length multiplier (>1 more opaque, <1 clearer).
    interpolation : ``"nearest"`` (each channel a slab, honest) or ``"linear"`` (smooth).
    show_slices, slice_positions : opaque orthogonal slices at fractions of x, y, z in [0, 1];
        ``None`` for an axis skips that slice.
    show_outline, show_separators, show_scalar_bar : toggles.
    separator_color, separator_opacity : look of the cluster separators.
    background, text_color : colours.
    mapper : ``"fixed_point"`` (default, fastest measured on llvmpipe), ``"gpu"`` or ``"smart"``.
    scalar_bar_title : title of the colour bar.
    """

    cmap: object = None
    opacity: str | Sequence[float] = "sigmoid"
    clim: tuple[float, float] | None = None
    z_spacing: float | None = None
    density: float = 1.0
    interpolation: str = "nearest"
    show_slices: bool = False
    slice_positions: tuple[float | None, float | None, float | None] = (0.5, 0.5, 0.5)
    show_outline: bool = True
    show_separators: bool = True
    separator_color: str = "white"
    separator_opacity: float = 0.04
    show_scalar_bar: bool = True
    scalar_bar_title: str = "value"
    background: str = "#15171c"
    text_color: str = "white"
    mapper: str = "fixed_point"

    def resolved_cmap(self):
        if self.cmap is not None:
            return self.cmap
        return DIVERGING_CMAP if self.opacity == "diverging" else DEFAULT_CMAP


MAPPERS = {
    "fixed_point": pv.FixedPointVolumeRayCastMapper,
    "gpu": pv.GPUVolumeRayCastMapper,
    "smart": pv.SmartVolumeMapper,
}


def check_style(style: VolumeStyle) -> None:
    """Raise ``ValueError`` for a style a scene cannot show (the clim is checked by the scene,
    which resolves ``None`` from its data)."""
    opacity_curve(style.opacity, 2)
    get_cmap(style.resolved_cmap())
    if style.interpolation not in ("nearest", "linear"):
        raise ValueError(f"interpolation must be 'nearest' or 'linear', not {style.interpolation!r}")
    if style.z_spacing is not None and not style.z_spacing > 0:
        raise ValueError(f"z_spacing must be > 0, got {style.z_spacing}")
    if len(style.slice_positions) != 3:
        raise ValueError("slice_positions needs 3 entries (x, y, z fractions or None)")
    if style.mapper not in MAPPERS:
        raise ValueError(f"unknown mapper {style.mapper!r}; choose one of {sorted(MAPPERS)}")
    pv.Color(style.background), pv.Color(style.text_color), pv.Color(style.separator_color)


def make_mapper(name: str, grid: pv.ImageData):
    """A volume mapper of kind ``name`` (see :attr:`VolumeStyle.mapper`) reading ``grid``."""
    try:
        mapper = MAPPERS[name]()
    except KeyError:
        raise ValueError(f"unknown mapper {name!r}; choose one of {sorted(MAPPERS)}") from None
    mapper.SetInputData(grid)
    mapper.SetScalarModeToUsePointFieldData()
    mapper.SelectScalarArray(SCALARS)
    return mapper


def transfer_functions(style: VolumeStyle, clim: tuple[float, float], n: int = 256):
    """The colour and opacity transfer functions of ``style`` over ``clim``, sampled at ``n``
    points and clamped outside it: ``(vtkColorTransferFunction, vtkPiecewiseFunction)``."""
    lo, hi = clim
    rgb = sample_cmap(style.resolved_cmap(), n)
    alpha = opacity_curve(style.opacity, n)
    values = np.linspace(lo, hi, n)
    ctf = vtkColorTransferFunction()
    otf = vtkPiecewiseFunction()
    for v, (r, g, b), a in zip(values, rgb, alpha):
        ctf.AddRGBPoint(float(v), float(r), float(g), float(b))
        otf.AddPoint(float(v), float(a))
    ctf.ClampingOn()
    otf.ClampingOn()
    return ctf, otf


def nan_fill_value(style: VolumeStyle, clim: tuple[float, float]) -> float:
    """The value NaN is drawn as: where the opacity curve is lowest (transparent)."""
    curve = opacity_curve(style.opacity, 257)
    t = int(np.argmin(curve)) / 256.0
    lo, hi = clim
    return lo + t * (hi - lo)


def set_sample_distance(mapper, grid: pv.ImageData, max_samples: int = 320) -> float:
    """Ray sampling every half voxel along the thinnest axis, but at most ``max_samples`` samples
    across the longest side (deep stacks of tiny maps, 512 x 7 x 7, would otherwise cost thousands
    of samples per ray; :func:`~volviz.views.volume_data.stack_bin` then bins their slabs so each
    still gets two samples). Returns the distance."""
    b = grid.bounds
    longest = max(b[1] - b[0], b[3] - b[2], b[5] - b[4], 1.0)
    step = max(0.5 * min(grid.spacing), longest / max_samples)
    if hasattr(mapper, "SetAutoAdjustSampleDistances"):
        mapper.SetAutoAdjustSampleDistances(False)
    if hasattr(mapper, "SetSampleDistance"):
        mapper.SetSampleDistance(step)
    if hasattr(mapper, "SetInteractiveSampleDistance"):
        mapper.SetInteractiveSampleDistance(step)
    return step
