"""3-D layer volumes: a layer's C maps (or a weight tensor's C_out filters) stacked into one volume
and rendered with VTK through pyvista, off screen, updated in place.

Geometry of a scene (see ``docs/views.md``): channel ``c`` of the *displayed* order lies at
``z = c * z_spacing`` (channel 0 at the bottom of the stack), map column ``w`` at ``x = w`` and map
row ``h`` at ``y = H - 1 - h`` so that, seen from the default camera (front, above, z up), every
map reads upright. One voxel per value, nearest-neighbour by default, so every channel is a slab.

The arrays come from :mod:`volviz.views.volume_data`, the look from
:mod:`volviz.views.volume_style`, the slices and separators from
:mod:`volviz.views.volume_geometry`; this module owns the scene and its actors.
Pure numpy in, pyvista scene / images out; no torch, no trame.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pyvista as pv

from . import text_layout
from .colors import auto_clim
from .render_probe import rendering_available  # noqa: F401  (old path: volviz/app/server.py)
from .volume_data import (
    MAX_SAMPLES,
    as_volume,
    bin_stack,
    check_order,
    stack_bin,
    weight_volume,  # noqa: F401  (old path: tests/test_app.py)
)
from .volume_geometry import separators_mesh, slices_mesh
from .volume_style import SCALARS as _SCALARS
from .volume_style import VolumeStyle, check_style, make_mapper, nan_fill_value, set_sample_distance, transfer_functions

__all__ = ["LayerVolumeScene"]

#: auto z_spacing is max(H, W) / C (a cube) but at most this: a few channels make a flat stack
#: of thick slabs (3 x 64 x 64 -> 8 apart) instead of a cube of long extruded columns
_MAX_AUTO_Z_SPACING = 8.0


# --------------------------------------------------------------------------------- scene
class LayerVolumeScene:
    """One layer volume in an off-screen pyvista ``Plotter``, updated in place.

    Actors (created once, kept for the scene's life so a time slider never rebuilds them):
    ``volume_actor`` (the data), ``slices_actor`` (orthogonal slices, one actor),
    ``outline_actor``, ``separators_actor`` (all cluster separators, one actor), a scalar bar,
    a title, a step label and a warning text. ``grid`` is the one ``pyvista.ImageData`` whose
    point scalars ``update()`` overwrites.

    Parameters
    ----------
    volume : (C, H, W) array in *natural* channel order.
    order : permutation of ``range(C)``; ``order[i]`` is the channel drawn at stack position
        ``i``. ``None``: natural order.
    boundaries : stack positions where a new cluster starts (e.g. an orderer's
        ``boundaries_``); a separator is drawn below each position ``b`` with ``0 < b < C``.
    style : :class:`VolumeStyle`.
    title : text in the upper left corner.
    window_size : (width, height) in pixels.
    plotter : draw into this ``pyvista.Plotter`` instead of creating an off-screen one (e.g.
        the app's); the scene then does not close it.

    Examples
    --------
    >>> scene = LayerVolumeScene(maps, title="conv1")          # doctest: +SKIP
    >>> img = scene.screenshot("conv1.png")                       # doctest: +SKIP
    >>> scene.update(next_maps); scene.set_order(order, bounds)   # doctest: +SKIP
    """

    def __init__(
        self,
        volume: np.ndarray,
        order=None,
        boundaries=None,
        style: VolumeStyle | None = None,
        title: str = "",
        window_size: tuple[int, int] = (800, 600),
        plotter: pv.Plotter | None = None,
    ):
        self.style = dataclasses.replace(style) if style is not None else VolumeStyle()
        self._data = as_volume(volume).copy()
        self.shape = self._data.shape  # natural (C, H, W) the scene accepts in update()
        self.order = check_order(order, self.shape[0])
        self.boundaries = self._check_boundaries(boundaries)
        self.has_nonfinite = False
        self.n_nonfinite = 0
        self.clim = self._resolve_clim(self.style)

        uid = f"volviz-{id(self):x}"  # actor names unique per scene (a shared plotter)
        self._owns_plotter = plotter is None
        if plotter is None:
            plotter = pv.Plotter(off_screen=True, window_size=list(window_size))
        self.plotter = plotter
        plotter.disable_anti_aliasing()

        # the one ImageData: dims (W, H, C / bin) (each padded to >= 2 by repetition, see _display)
        self.grid = pv.ImageData()
        self._size_grid()
        self._write_scalars()

        self._lut = pv.LookupTable()
        self.volume_actor = pv.Volume()
        self.volume_actor.prop = pv.VolumeProperty()
        self.volume_actor.mapper = self._make_mapper(self.style.mapper)
        plotter.add_actor(self.volume_actor, reset_camera=False, name=f"{uid}-volume")

        self._slices_mesh = self._build_slices()
        self.slices_actor = plotter.add_mesh(
            self._slices_mesh,
            scalars=_SCALARS,
            cmap=self._lut,
            show_scalar_bar=False,
            name=f"{uid}-slices",
            lighting=False,
            reset_camera=False,
        )
        self._outline_mesh = self.grid.outline()
        self.outline_actor = plotter.add_mesh(
            self._outline_mesh,
            color="#9aa0a6",
            line_width=1,
            name=f"{uid}-outline",
            reset_camera=False,
        )
        self._sep_mesh = self._build_separators()
        self.separators_actor = plotter.add_mesh(
            self._sep_mesh,
            scalars="rgba",
            rgba=True,
            name=f"{uid}-separators",
            lighting=False,
            line_width=2,
            reset_camera=False,
            show_scalar_bar=False,
        )
        fs = max(12, round(plotter.window_size[1] / 30))  # px; fixed, unlike corner annotations
        self._bar_key = f"{uid}-bar"  # pyvista keys scalar bars by title: a unique one, then
        self.scalar_bar = plotter.add_scalar_bar(  # the shown title is set by _apply_style
            title=self._bar_key,
            mapper=self.slices_actor.mapper,
            vertical=True,
            position_x=0.86,
            position_y=0.15,
            width=0.05,
            height=0.6,
            n_labels=5,
            color=self.style.text_color,
            title_font_size=fs,
            label_font_size=fs - 2,
            fmt="%.3g",
        )
        # title top left, caption bottom left (never overlapping, shortened to the window)
        self.texts = text_layout.CornerTexts(
            plotter.renderer,
            lambda: plotter.window_size,
            size=fs,
            color=pv.Color(self.style.text_color).float_rgb,
        )
        self.title_text, self.label_text, self.warning_text, self.note_text = str(title), "", "", ""
        self.texts.set(title=self.title_text, note=self._note())
        self._apply_style(self.style, first=True)
        self._update_warning()
        self.reset_camera()

    # ------------------------------------------------------------------ public API
    @property
    def displayed(self) -> np.ndarray:
        """The volume as drawn: ``(C, H, W)`` in the current order, before NaN/Inf replacement."""
        return self._data[self.order]

    def update(self, volume: np.ndarray, clim: tuple[float, float] | None = None) -> None:
        """Show new data of the same shape (natural channel order), in place.

        The ImageData, its scalar array, the actors and the mapper stay the same objects; only
        the values change (and the slices follow). ``clim`` stays as it was unless given here
        (compute one over all steps with :func:`~volviz.views.colors.auto_clim`).
        """
        v = as_volume(volume)
        if v.shape != self.shape:
            raise ValueError(f"update() needs shape {self.shape}, got {v.shape}")
        np.copyto(self._data, v)
        if clim is not None:
            self.set_style(clim=tuple(clim))  # also rewrites scalars
            return
        self._refresh_data()

    def set_order(self, order, boundaries=None) -> None:
        """Redraw the stack in ``order`` with separators at ``boundaries`` (both may be None)."""
        self.order = check_order(order, self.shape[0])
        self.boundaries = self._check_boundaries(boundaries)
        self._refresh_data()
        self._sep_mesh.copy_from(self._build_separators())
        self.separators_actor.SetVisibility(self._separators_visible())

    def set_style(self, style: VolumeStyle | None = None, **changes) -> VolumeStyle:
        """Change the look in place: a whole new ``style``, and/or single fields as keywords."""
        new = dataclasses.replace(style if style is not None else self.style, **changes)
        self._apply_style(new)
        return self.style

    def set_title(self, text: str) -> None:
        """Text in the upper left corner (shortened with ``...`` to the window's width)."""
        self.title_text = str(text)
        self.texts.set(title=self.title_text)

    def set_note(self, text: str) -> None:
        """A muted line under the title (e.g. the shape and order; the binning of deep stacks is
        added to it)."""
        self.note_text = str(text)
        self.texts.set(note=self._note())

    def set_label(self, text: str) -> None:
        """Text in the lower left corner, e.g. the image and its classes or the time step."""
        self.label_text = str(text)
        self.texts.set(caption=self.label_text)

    def reset_camera(self, azimuth: float = 30.0, elevation: float = 35.0, zoom: float = 1.0):
        """Oblique default view: from the front (-y), ``azimuth`` degrees to the right and
        ``elevation`` degrees above, z (the channel stack) up, whole volume in view."""
        cam = self.plotter.camera
        center = np.array(self.grid.center)
        az, el = math.radians(azimuth), math.radians(elevation)
        direction = np.array([math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)])
        cam.focal_point = tuple(center)
        cam.position = tuple(center + direction * self.grid.length * 2.0)
        cam.up = (0.0, 0.0, 1.0)
        # keep the stack clear of the colour bar on the right: shift the picture left a little
        cam.SetWindowCenter(0.1 if self.style.show_scalar_bar else 0.0, 0.0)
        self.plotter.reset_camera()
        cam.zoom(zoom * 0.95)

    def render(self) -> None:
        self.plotter.render()

    def screenshot(self, path=None) -> np.ndarray:
        """Render and return the image ``uint8 (height, width, 3)``; also write it to ``path``."""
        self.plotter.render()
        img = self.plotter.screenshot(return_img=True)
        img = np.ascontiguousarray(img[..., :3])
        if path is not None:
            import imageio.v3 as iio

            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            iio.imwrite(p, img, extension=p.suffix or ".png")
        return img

    def close(self) -> None:
        """Close the plotter if the scene made it, else take the scene's actors out of it."""
        if self._owns_plotter:
            self.plotter.close()
            return
        for actor in (self.volume_actor, self.slices_actor, self.outline_actor, self.separators_actor):
            self.plotter.remove_actor(actor, render=False)
        self.texts.remove()
        self.plotter.remove_scalar_bar(self._bar_key, render=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ internals
    def _check_boundaries(self, boundaries) -> np.ndarray:
        if boundaries is None:
            return np.zeros(0, np.intp)
        b = np.unique(np.asarray(boundaries, dtype=np.intp).ravel())
        return b[(b > 0) & (b < self.shape[0])]

    def _resolve_clim(self, style: VolumeStyle) -> tuple[float, float]:
        if style.clim is not None:
            lo, hi = float(style.clim[0]), float(style.clim[1])
            if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
                raise ValueError(f"clim must be finite with lo < hi, got {style.clim}")
            return lo, hi
        sym = True if style.opacity == "diverging" else None
        return auto_clim(self._data, symmetric=sym)

    def _z_spacing(self) -> float:
        if self.style.z_spacing is not None:
            if not self.style.z_spacing > 0:
                raise ValueError(f"z_spacing must be > 0, got {self.style.z_spacing}")
            return float(self.style.z_spacing)
        c, h, w = self.shape
        return min(max(h, w) / max(c, 1), _MAX_AUTO_Z_SPACING)

    def _apply_spacing(self) -> None:
        self.grid.spacing = (1.0, 1.0, self._z_spacing() * self.bin)

    def _size_grid(self) -> None:
        """Dimensions of the ImageData for the current bin (maps per displayed slab)."""
        c, h, w = self.shape
        self.bin = stack_bin(self.shape, self._z_spacing(), MAX_SAMPLES)
        slabs = -(-c // self.bin)
        self._dims = (max(w, 2), max(h, 2), max(slabs, 2))
        if tuple(self.grid.dimensions) != self._dims or _SCALARS not in self.grid.point_data:
            self.grid.dimensions = self._dims
            self._values = np.zeros(int(np.prod(self._dims)), np.float32)
            self.grid.point_data.set_array(self._values, _SCALARS)
            self.grid.point_data.active_scalars_name = _SCALARS
        self._apply_spacing()

    def _note(self) -> str:
        parts = [getattr(self, "note_text", "")]
        if self.bin > 1:
            c = self.shape[0]
            parts.append(
                f"{c} maps as {-(-c // self.bin)} slabs of {self.bin} (largest magnitude per slab, against aliasing)"
            )
        return ";  ".join(p for p in parts if p)

    def _fill_value(self) -> float:
        """The value NaN is drawn as: where the opacity curve is lowest (transparent)."""
        return nan_fill_value(self.style, self.clim)

    def _display(self) -> np.ndarray:
        """Data in display order, NaN/Inf replaced, y flipped, padded to >= 2 per axis."""
        d = self._data[self.order]
        bad = ~np.isfinite(d)
        self.n_nonfinite = int(bad.sum())
        self.has_nonfinite = self.n_nonfinite > 0
        d = bin_stack(d, self.bin)
        if self.has_nonfinite:
            lo, hi = self.clim
            d = np.nan_to_num(d, nan=self._fill_value(), posinf=hi, neginf=lo)
        d = d[:, ::-1, :]
        for axis in range(3):
            if d.shape[axis] == 1:
                d = np.repeat(d, 2, axis=axis)
        return d

    def _write_scalars(self) -> None:
        self._values[:] = self._display().ravel()  # C order: x (W) fastest, then y, then z
        self.grid.point_data[_SCALARS].VTKObject.Modified()
        self.grid.Modified()

    def _refresh_data(self) -> None:
        self._write_scalars()
        self._refresh_slices()
        self._update_warning()

    def _refresh_slices(self) -> None:
        """Rebuild the slice geometry in place (same mesh object), only while it is shown."""
        if self.style.show_slices:
            self._slices_mesh.copy_from(self._build_slices())
        self.slices_actor.SetVisibility(self.style.show_slices and self._slices_mesh.n_points > 1)

    def _update_warning(self) -> None:
        text = ""
        if self.has_nonfinite:
            text = f"warning: {self.n_nonfinite} NaN/Inf values (NaN hidden, Inf clamped)"
        self.warning_text = text
        self.texts.set(warning=text)

    def _make_mapper(self, name: str):
        return make_mapper(name, self.grid)

    def _set_sample_distance(self) -> None:
        set_sample_distance(self.volume_actor.mapper, self.grid, MAX_SAMPLES)

    def _apply_transfer_functions(self) -> None:
        st = self.style
        lo, hi = self.clim
        n = 256
        ctf, otf = transfer_functions(st, self.clim, n)
        prop = self.volume_actor.prop
        prop.SetColor(ctf)
        prop.SetScalarOpacity(otf)
        prop.interpolation_type = st.interpolation
        prop.shade = False
        # opacity per unit length: a ray through the whole stack crosses ~24 "units" at density 1
        size = max(
            self.grid.bounds[1] - self.grid.bounds[0],
            self.grid.bounds[3] - self.grid.bounds[2],
            self.grid.bounds[5] - self.grid.bounds[4],
            1.0,
        )
        prop.opacity_unit_distance = size / (24.0 * max(st.density, 1e-6))
        # the lookup table (opaque) drives the slices and the scalar bar
        self._lut.apply_cmap(st.resolved_cmap(), n)
        self._lut.apply_opacity(1.0)
        self._lut.scalar_range = (lo, hi)
        self.volume_actor.mapper.lookup_table = self._lut
        if self.slices_actor is not None:
            self.slices_actor.mapper.lookup_table = self._lut
            self.slices_actor.mapper.scalar_range = (lo, hi)

    def _apply_style(self, new: VolumeStyle, first: bool = False) -> None:
        old = self.style
        # validate everything before touching the scene: a bad value leaves it as it was
        clim = self._resolve_clim(new)
        check_style(new)
        mapper = None
        if not first and new.mapper != old.mapper:
            mapper = self._make_mapper(new.mapper)
        self.style = new
        self.clim = clim
        if mapper is not None:
            self.volume_actor.mapper = mapper
        spacing_changed = (not first) and self._z_spacing() * self.bin != self.grid.spacing[2]
        if spacing_changed:
            self._size_grid()
            self._outline_mesh.copy_from(self.grid.outline())
            self.texts.set(note=self._note())
        self._set_sample_distance()
        self._apply_transfer_functions()
        self._write_scalars()  # NaN fill value depends on clim and the opacity preset
        if not first:
            self._sep_mesh.copy_from(self._build_separators())
        self._refresh_slices()
        p = self.plotter
        p.set_background(new.background)
        self.outline_actor.SetVisibility(new.show_outline)
        self.separators_actor.SetVisibility(self._separators_visible())
        self.scalar_bar.SetVisibility(new.show_scalar_bar)
        self.scalar_bar.SetTitle(new.scalar_bar_title)
        self.texts.set_color(pv.Color(new.text_color).float_rgb)
        self.scalar_bar.GetTitleTextProperty().SetColor(pv.Color(new.text_color).float_rgb)
        self.scalar_bar.GetLabelTextProperty().SetColor(pv.Color(new.text_color).float_rgb)
        if spacing_changed:
            self.reset_camera()

    def _separators_visible(self) -> bool:
        return bool(self.style.show_separators and self.boundaries.size)

    def _build_slices(self) -> pv.PolyData:
        """Opaque orthogonal slices through voxel centres at the style's fractions."""
        return slices_mesh(self.grid, self._dims, self.style.slice_positions)

    def _build_separators(self) -> pv.PolyData:
        """All cluster separators as one mesh (see :func:`~volviz.views.volume_geometry.separators_mesh`)."""
        return separators_mesh(
            self.grid, self.boundaries / self.bin, self.style.separator_color, self.style.separator_opacity
        )
