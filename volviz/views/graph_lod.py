"""Level of detail for the network graph: layers when zoomed out, units when a layer is opened.

:class:`GraphLODScene` keeps two scenes in one plotter and shows one of them:

* ``"layers"``: :class:`~volviz.views.graph_overview.LayerOverviewScene`, one tile per layer
  (what a 50-layer, 18k-unit network needs to be readable);
* ``"units"``: :class:`~volviz.views.graph_scene.GraphScene`, every unit (built only when first
  needed: the overview of a big model never pays for 18k nodes and 10k edges).

``view_overview()`` shows the layer tiles (or, with ``lod="units"`` or below
:data:`LOD_UNITS` units with ``lod="auto"``, the unit overview as before); ``view_layer(name)``
opens a layer: the unit scene, zoomed onto that layer's plane. The rest of the API is
``GraphScene``'s (``update_activations``, ``set_scales``, ``set_unit_scale``, ``set_input_image``,
``set_label``, ``set_legend``, ``set_title``, ``screenshot``, ``close``), forwarded to both, so a
caller that drives a ``GraphScene`` can drive this instead.
"""

from __future__ import annotations

import numpy as np
import pyvista as pv

from .graph_layout import GraphLayout, layered_layout
from .graph_overview import LayerOverviewScene, OverviewStyle

__all__ = ["GraphLODScene", "LOD_UNITS", "LODS", "choose_lod"]

#: ``lod="auto"`` draws layer tiles for the overview above this many units
LOD_UNITS = 3000
LODS = ("auto", "layers", "units")


def choose_lod(graph, lod: str = "auto", max_units: int = LOD_UNITS) -> str:
    """``"layers"`` or ``"units"`` for the overview of ``graph``."""
    if lod not in LODS:
        raise ValueError(f"lod must be one of {', '.join(LODS)}, got {lod!r}")
    if lod != "auto":
        return lod
    n = sum(int(d["n_units"]) for d in graph.graph["layers"] if d.get("kind") != "input")
    return "layers" if n > max_units else "units"


class GraphLODScene:
    """Layer tiles when zoomed out, units when a layer is opened (see the module docstring).

    Parameters as :class:`~volviz.views.graph_scene.GraphScene` (``style`` is its
    ``GraphStyle``), plus ``lod`` (``auto`` | ``layers`` | ``units``), ``max_units`` (the
    ``auto`` threshold) and ``overview_style`` (:class:`OverviewStyle`).
    """

    def __init__(
        self,
        graph,
        layout: GraphLayout | None = None,
        thumbnails=None,
        *,
        input_image=None,
        style=None,
        title: str = "",
        window_size=(1024, 768),
        plotter: pv.Plotter | None = None,
        lod: str = "auto",
        max_units: int = LOD_UNITS,
        overview_style: OverviewStyle | None = None,
    ):
        self.graph = graph
        self.lod = choose_lod(graph, lod, max_units)
        self._layout = layout
        self.thumbnails = dict(thumbnails or {})
        self.input_image = input_image
        self.style = style
        self.title = str(title)
        self.window_size = tuple(int(v) for v in window_size)
        self._owns_plotter = plotter is None
        self.plotter = plotter or pv.Plotter(off_screen=True, window_size=list(self.window_size))
        self._state: dict = {"scales": {}, "values": {}, "unit_scale": None, "label": "", "legend": None}
        self.overview = None
        if self.lod == "layers":
            self.overview = LayerOverviewScene(
                graph,
                self.thumbnails,
                input_image=input_image,
                style=overview_style,
                title=self.title,
                plotter=self.plotter,
            )
        self.units_scene = None
        self.mode = "layers" if self.overview is not None else "units"
        if self.overview is None:
            self._units()

    # ------------------------------------------------------------------ the unit scene, lazily
    @property
    def layout(self) -> GraphLayout:
        """The unit layout (layer planes), as ``GraphScene.layout``."""
        if self._layout is None:
            self._layout = layered_layout(self.graph.graph["layers"])
        return self._layout

    def _units(self):
        if self.units_scene is None:
            from .graph_scene import GraphScene

            sc = GraphScene(
                self.graph,
                self.layout,
                self.thumbnails,
                input_image=self.input_image,
                style=self.style,
                title=self.title,
                window_size=self.window_size,
                plotter=self.plotter,
            )
            sc.set_scales(self._state["scales"])
            sc.update_activations(self._state["values"])
            if self._state["unit_scale"] is not None:
                sc.set_unit_scale(self._state["unit_scale"])
            sc.set_label(self._state["label"])
            if self._state["legend"] is not None:
                sc.set_legend(self._state["legend"])
            self.units_scene = sc
        return self.units_scene

    def _show(self, mode: str) -> None:
        self.mode = mode
        if self.overview is not None:
            self.overview.set_visible(mode == "layers")
        if self.units_scene is not None:
            self.units_scene.set_visible(mode == "units")

    def _each(self):
        return [s for s in (self.overview, self.units_scene) if s is not None]

    # ------------------------------------------------------------------ views
    @property
    def aspect(self) -> float:
        w, h = self.plotter.window_size
        return w / max(h, 1)

    def view_overview(self, **kw):
        """The whole network: layer tiles (``lod`` layers) or the unit overview."""
        if self.overview is not None:
            self._show("layers")
            return self.overview.view_overview(**{k: v for k, v in kw.items() if k in ("azimuth", "elevation", "zoom")})
        self._show("units")
        return self.units_scene.view_overview(**kw)

    def view_layer(self, layer: str, **kw):
        """Open ``layer``: its units (the unit scene, zoomed onto its plane)."""
        sc = self._units()
        self._show("units")
        return sc.view_layer(layer, **kw)

    def view_unit(self, layer: str, unit: int, **kw):
        from .camera_path import unit_pose

        sc = self._units()
        self._show("units")
        pose = unit_pose(self.layout, layer, unit, aspect=self.aspect, **kw)
        sc.set_pose(pose)
        return pose

    # ------------------------------------------------------------------ GraphScene's API, to both
    def set_scales(self, scales) -> None:
        self._state["scales"] = dict(scales)
        for s in self._each():
            s.set_scales(scales)

    def update_activations(self, values) -> None:
        self._state["values"] = dict(values)
        for s in self._each():
            s.update_activations(values)

    def set_unit_scale(self, scales=None) -> None:
        """Unit sizes (the unit scene only: a layer tile keeps its size)."""
        self._state["unit_scale"] = scales
        if self.units_scene is not None:
            self.units_scene.set_unit_scale(scales)

    def set_input_image(self, image) -> None:
        self.input_image = image
        for s in self._each():
            s.set_input_image(image)

    def set_label(self, text: str) -> None:
        self._state["label"] = str(text)
        for s in self._each():
            s.set_label(text)

    def set_legend(self, text: str) -> None:
        self._state["legend"] = str(text)
        for s in self._each():
            s.set_legend(text)

    def set_title(self, text: str) -> None:
        self.title = str(text)
        for s in self._each():
            s.set_title(text)

    def screenshot(self, path=None) -> np.ndarray:
        return (self.overview if self.mode == "layers" else self.units_scene).screenshot(path)

    def close(self) -> None:
        if self._owns_plotter:
            self.plotter.close()
            return
        for s in self._each():
            s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
