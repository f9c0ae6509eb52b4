"""The unit graph as an off-screen pyvista scene: layer planes of thumbnails, glowing nodes and
hot/cold edges, updated in place for each image of a time series.

Actors (built once; :meth:`GraphScene.update_activations` only rewrites arrays):

* ``edges_actor``: ONE line mesh with every drawn edge, per-edge RGBA: colour from cold (weak)
  to hot (strong) relative to the strongest edge into the same layer, opacity growing with the
  weight; strong edges are drawn last (on top).
* ``nodes_actor``: ONE quad mesh with a square behind every unit, its colour = the unit's
  response to the current image (dark -> bright on ``node_cmap``), grey when the unit does
  not fire, a neutral colour for layers without data. Seen around a thumbnail it is a glowing
  frame; for layers without thumbnails it is the node itself.
* ``thumb_actors[layer]``: one textured quad mesh per layer whose texture is an atlas of the
  layer's preferred-input thumbnails, next to a grey copy of them; a unit that does not fire
  switches its texture coordinates to the grey copy ([PreferredInputs2016]: grey thumbnails for units that
  do not fire). The input layer shows the current image, one tinted tile per channel.
* ``label_actors[layer]``: the layer's name above its plane; corner texts for title, caption
  and legend.

A camera pose may carry a clip depth: everything upstream of it is cut away (nodes, thumbnails,
edges, labels), so that a close view of one layer is not hidden by the layers in front of it.

Numpy in (graph as networkx, layout, thumbnails as uint8 arrays), images out; no torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyvista as pv

from .camera_path import CameraPose, layer_pose, overview_pose
from .colors import get_cmap
from .graph_atlas import _quads, channel_tiles, edge_arrays, make_atlas, thumbnails_to_uint8  # noqa: F401
from .graph_layout import DEPTH_AXIS, V_AXIS, GraphLayout

__all__ = ["GraphStyle", "GraphScene", "edge_arrays", "make_atlas", "channel_tiles", "thumbnails_to_uint8"]

INPUT = "input"


@dataclass
class GraphStyle:
    """How a :class:`GraphScene` looks.

    edges_per_node : draw only each node's strongest few incoming edges (``None``: all the
        graph kept). The graph's own ``k`` decides what exists; this only thins the drawing.
    max_edges : draw at most this many edges, the strongest relative to their layer (a VGG16
        graph with k = 8 has 107k; on a software renderer every 10k long lines cost about
        0.05 s per frame, and beyond ~20k the overview turns into a solid tube).
    fire_threshold : a unit "fires" when its response exceeds this fraction of its layer's
        scale (the largest response over the series); otherwise it is drawn grey.
    """

    background: str = "#0d0f14"
    edge_cmap: str = "turbo"
    node_cmap: str = "inferno"
    edge_alpha: tuple[float, float] = (0.06, 0.9)
    edge_gamma: float = 1.6
    line_width: float = 1.0
    edges_per_node: int | None = None
    max_edges: int | None = 10000
    missing_thumbnail: str = "grey"  # layers without preferred inputs: "grey" tiles or "none" (squares)
    missing_color: tuple[int, int, int] = (74, 79, 90)
    thumbnail_px: int = 48
    atlas_max_px: int = 4096
    node_fill: float = 0.92  # node square side / cell
    thumb_fill: float = 0.74  # thumbnail side / cell
    fire_threshold: float = 0.05
    grey: tuple[int, int, int] = (128, 128, 128)
    nodata_color: tuple[int, int, int] = (58, 63, 75)
    input_color: tuple[int, int, int] = (150, 160, 175)
    show_labels: bool = True
    label_size: int = 14
    text_color: str = "#e8eaed"
    anti_aliasing: str | None = None  # "ssaa" / "msaa": smoother lines, ~1.6x / ~3x slower on llvmpipe


# ------------------------------------------------------------------------------ scene
class GraphScene:
    """The graph in a pyvista ``Plotter`` (off screen unless ``plotter`` is given).

    Parameters
    ----------
    graph : networkx DiGraph from :func:`volviz.analysis.network_graph.build_network_graph`.
    layout : :class:`~volviz.views.graph_layout.GraphLayout` of the same layers.
    thumbnails : ``{layer: uint8 (n, H, W, 3)}`` preferred inputs (see
        :func:`thumbnails_to_uint8`); layers left out show neutral slate tiles
        (``style.missing_thumbnail = "grey"``) or plain squares (``"none"``).
    input_image : ``(C, H, W)`` in ``[0, 1]``, shown on the input layer.
    style, title, window_size, plotter : as in :class:`~volviz.views.volume.LayerVolumeScene`.

    Examples
    --------
    >>> scene = GraphScene(G, layered_layout(G.graph["layers"]), thumbs)   # doctest: +SKIP
    >>> scene.set_scales(scales); scene.update_activations(responses_of_image_0)  # doctest: +SKIP
    >>> scene.screenshot("graph.png")                                       # doctest: +SKIP
    """

    def __init__(
        self,
        graph,
        layout: GraphLayout,
        thumbnails: dict[str, np.ndarray] | None = None,
        *,
        input_image: np.ndarray | None = None,
        style: GraphStyle | None = None,
        title: str = "",
        window_size: tuple[int, int] = (1024, 768),
        plotter: pv.Plotter | None = None,
    ):
        self.style = dataclasses.replace(style) if style is not None else GraphStyle()
        self.layout = layout
        self.graph = graph
        self.window_size = tuple(int(v) for v in window_size)
        self._owns_plotter = plotter is None
        if plotter is None:
            plotter = pv.Plotter(off_screen=True, window_size=list(self.window_size))
        self.plotter = plotter
        plotter.set_background(self.style.background)
        plotter.disable_anti_aliasing()
        if self.style.anti_aliasing:
            plotter.enable_anti_aliasing(self.style.anti_aliasing)
        uid = f"volviz-graph-{id(self):x}"
        self._uid = uid
        fs = min(1.5, max(0.55, plotter.window_size[1] / 768))  # text scales with the window

        def font(size: int) -> int:
            return max(6, int(round(size * fs)))

        self.offsets = layout.offsets()
        self.positions = layout.all_positions()
        self.scales: dict[str, float] = {}
        self.values: dict[str, np.ndarray] = {}
        self.firing: dict[str, np.ndarray] = {}

        # nodes: one quad per unit, coloured per cell
        cells = np.concatenate([np.full(p.n, p.cell) for p in layout.planes.values()])
        self._cells = cells
        self.nodes_mesh = _quads(self.positions, cells * self.style.node_fill / 2)
        self._node_base = np.array(self.nodes_mesh.points, copy=True)  # for set_unit_scale
        self._node_rgb = np.zeros((len(self.positions), 3), np.uint8)
        self.unit_scale = np.ones(len(self.positions), np.float32)
        self.nodes_mesh.cell_data["rgb"] = self._node_rgb
        self.nodes_actor = plotter.add_mesh(
            self.nodes_mesh,
            scalars="rgb",
            rgb=True,
            lighting=False,
            show_scalar_bar=False,
            name=f"{uid}-nodes",
            reset_camera=False,
        )

        # edges: one line mesh
        self.edge_src, self.edge_dst, self.edge_t = edge_arrays(
            graph, layout, self.style.edges_per_node, self.style.max_edges
        )
        self.edges_mesh = self._edge_mesh()
        self.edges_actor = None
        if self.edges_mesh is not None:
            self.edges_actor = plotter.add_mesh(
                self.edges_mesh,
                scalars="rgba",
                rgba=True,
                lighting=False,
                line_width=self.style.line_width,
                show_scalar_bar=False,
                name=f"{uid}-edges",
                reset_camera=False,
            )

        # thumbnails: one atlas + quad mesh per layer
        self.thumb_actors: dict[str, object] = {}
        self.thumb_meshes: dict[str, pv.PolyData] = {}
        self._tc_base: dict[str, np.ndarray] = {}
        self._atlas_cols: dict[str, int] = {}
        self._thumb_base: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        thumbnails = dict(thumbnails or {})
        if input_image is not None and INPUT in layout.planes:
            thumbnails[INPUT] = channel_tiles(input_image)
        if self.style.missing_thumbnail not in ("grey", "none"):
            raise ValueError(f"missing_thumbnail must be 'grey' or 'none', got {self.style.missing_thumbnail!r}")
        for name, p in layout.planes.items():
            tiles = thumbnails.get(name)
            if tiles is not None and len(tiles) != p.n:
                tiles = None  # results for another version of the layer: treat as missing
            if tiles is None and name != INPUT and self.style.missing_thumbnail == "grey":
                tiles = np.broadcast_to(np.asarray(self.style.missing_color, np.uint8), (p.n, 4, 4, 3))
            if tiles is not None:
                self._add_thumbnails(name, np.asarray(tiles))

        # labels (one small actor per layer, hidden with its layer when clipped) and texts
        self.label_actors: dict[str, object] = {}
        if self.style.show_labels:
            for i, p in enumerate(layout.planes.values()):
                side = 1.0 if i % 2 == 0 else -1.0  # alternate above / below: neighbours do not collide
                pt = p.center + side * V_AXIS * (p.height / 2 + 0.6 * p.cell + 0.02 * layout.layer_gap)
                self.label_actors[p.name] = plotter.add_point_labels(
                    pt[None],
                    [f"{p.name} ({p.n})"],
                    font_size=font(self.style.label_size),
                    text_color=self.style.text_color,
                    shape=None,
                    show_points=False,
                    always_visible=True,
                    bold=False,
                    name=f"{uid}-layername:{p.name}",
                    reset_camera=False,
                )
        self.title_text, self.label_text = str(title), ""
        self.title_actor = plotter.add_text(
            self.title_text, position="upper_left", font_size=font(11), color=self.style.text_color, name=f"{uid}-title"
        )
        self.label_actor = plotter.add_text(
            "", position="lower_right", font_size=font(10), color=self.style.text_color, name=f"{uid}-caption"
        )
        k = graph.graph.get("k")
        legend = (
            f"edges: weight after ReLU, cold -> hot (strongest {k} in per unit)\n"
            "nodes: response to the image, dark -> bright; grey: not firing"
        )
        self.legend_actor = plotter.add_text(
            legend, position="lower_left", font_size=font(8), color="#9aa0a6", name=f"{uid}-legend"
        )
        self._clip_planes = None
        self.clip: tuple[float | None, float | None] = (None, None)
        self.update_activations({})
        self.set_pose(overview_pose(layout, aspect=self.aspect))

    # ------------------------------------------------------------------ building blocks
    @property
    def aspect(self) -> float:
        w, h = self.plotter.window_size
        return w / max(h, 1)

    def _edge_mesh(self) -> pv.PolyData | None:
        n = len(self.edge_src)
        if n == 0:
            return None
        pts = np.empty((2 * n, 3))
        pts[0::2] = self.positions[self.edge_src]
        pts[1::2] = self.positions[self.edge_dst]
        lines = np.column_stack([np.full(n, 2), np.arange(0, 2 * n, 2), np.arange(1, 2 * n, 2)]).ravel()
        mesh = pv.PolyData(pts, lines=lines)
        t = np.clip(self.edge_t, 0, 1) ** self.style.edge_gamma
        rgb = np.asarray(get_cmap(self.style.edge_cmap)(t))[:, :3]
        a0, a1 = self.style.edge_alpha
        dense = min(1.0, math.sqrt(3000.0 / n))  # many overlapping lines: each more transparent
        rgba = np.column_stack([rgb, (a0 + (a1 - a0) * t) * (0.35 + 0.65 * dense)])
        mesh.cell_data["rgba"] = np.round(rgba * 255).astype(np.uint8)
        return mesh

    def _add_thumbnails(self, name: str, tiles: np.ndarray) -> None:
        p = self.layout.planes[name]
        atlas, rows, cols, t = make_atlas(tiles, self.style.thumbnail_px, self.style.grey, self.style.atlas_max_px)
        shift = -DEPTH_AXIS * 0.02 * p.cell  # a hair in front of the node squares
        mesh = _quads(p.positions, p.cell * self.style.thumb_fill / 2, shift)
        j = np.arange(p.n)
        r, c = j // cols, j % cols
        width, height = 2 * cols * t, rows * t
        eps_u, eps_v = 0.5 / width, 0.5 / height  # half a texel inside: no bleeding
        u0, u1 = c * t / width + eps_u, (c + 1) * t / width - eps_u
        v_top, v_bot = 1 - r * t / height - eps_v, 1 - (r + 1) * t / height + eps_v
        tc = np.stack(
            [
                np.column_stack([u0, v_bot]),
                np.column_stack([u1, v_bot]),
                np.column_stack([u1, v_top]),
                np.column_stack([u0, v_top]),
            ],
            axis=1,
        ).reshape(-1, 2)
        mesh.active_texture_coordinates = tc.astype(np.float32)
        tex = pv.Texture(atlas)
        tex.interpolate = True
        tex.mipmap = True
        actor = self.plotter.add_mesh(
            mesh,
            texture=tex,
            lighting=False,
            name=f"{self._uid}-thumbs-{name}",
            reset_camera=False,
            show_scalar_bar=False,
        )
        self.thumb_meshes[name] = mesh
        self.thumb_actors[name] = actor
        for plane in getattr(self, "_clip_planes", None) or ():
            actor.mapper.AddClippingPlane(plane)
        self._tc_base[name] = tc[:, 0].astype(np.float32).copy()
        self._atlas_cols[name] = cols
        self._thumb_base[name] = (np.array(mesh.points, copy=True), np.repeat(p.positions + shift, 4, axis=0))
        if name in self.offsets and not np.all(self.unit_scale == 1):
            self._scale_mesh(mesh, *self._thumb_base[name], self._unit_factors(name))

    def _set_grey(self, name: str, grey: np.ndarray) -> None:
        mesh = self.thumb_meshes.get(name)
        if mesh is None:
            return
        tc = mesh.active_texture_coordinates
        shift = np.repeat(np.asarray(grey, bool), 4) * 0.5  # the grey copy: right half of the atlas
        tc[:, 0] = self._tc_base[name] + shift
        mesh.GetPointData().GetTCoords().Modified()

    # ------------------------------------------------------------------ public API
    def set_scales(self, scales: dict[str, float]) -> None:
        """Per-layer response that maps to the brightest colour (e.g. the largest response over
        the whole series, so that magnitudes compare across images)."""
        self.scales = {k: float(v) for k, v in scales.items()}

    def update_activations(self, values: dict[str, np.ndarray]) -> None:
        """Colour every unit by its response (``{layer: (n,)}``; layers left out show the
        neutral colour) and grey out the thumbnails of units that do not fire. Arrays are
        changed in place; nothing is rebuilt."""
        st = self.style
        cmap = get_cmap(st.node_cmap)
        rgb = self._node_rgb
        self.values, self.firing = {}, {}
        for name, p in self.layout.planes.items():
            sl = slice(self.offsets[name], self.offsets[name] + p.n)
            v = values.get(name)
            if v is None:
                rgb[sl] = st.input_color if name == INPUT else st.nodata_color
                if name != INPUT:
                    self._set_grey(name, np.zeros(p.n, bool))
                continue
            v = np.nan_to_num(np.asarray(v, np.float32).ravel())
            if v.size != p.n:
                raise ValueError(f"layer {name!r}: {v.size} values for {p.n} units")
            scale = self.scales.get(name) or float(v.max())
            scale = scale if scale > 0 else 1.0
            t = np.clip(v / scale, 0, 1)
            fires = v > st.fire_threshold * scale
            col = np.round(np.asarray(cmap(0.25 + 0.75 * t))[:, :3] * 255).astype(np.uint8)
            col[~fires] = st.grey
            rgb[sl] = col
            self._set_grey(name, ~fires)
            self.values[name], self.firing[name] = v, fires
        self.nodes_mesh.cell_data["rgb"][:] = rgb
        self.nodes_mesh.GetCellData().GetArray("rgb").Modified()

    def _unit_factors(self, name: str) -> np.ndarray:
        o, n = self.offsets[name], self.layout.planes[name].n
        return self.unit_scale[o : o + n]

    @staticmethod
    def _scale_mesh(mesh: pv.PolyData, base: np.ndarray, centres: np.ndarray, factors: np.ndarray) -> None:
        pts = mesh.points
        pts[:] = centres + (base - centres) * np.repeat(factors, 4)[:, None]
        mesh.GetPoints().Modified()

    def set_unit_scale(self, scales: dict[str, np.ndarray] | None = None) -> None:
        """Shrink units (node square and thumbnail together) to ``scales[layer]`` (``(n,)``
        factors in ``(0, 1]``; e.g. from filter importance); layers left out, and ``None`` for
        all, get full size. The point arrays change in place; nothing is rebuilt."""
        f = np.ones(len(self.positions), np.float32)
        for name, v in (scales or {}).items():
            if name not in self.offsets:
                continue
            v = np.nan_to_num(np.asarray(v, np.float32).ravel(), nan=1.0)
            n = self.layout.planes[name].n
            if v.size != n:
                raise ValueError(f"layer {name!r}: {v.size} sizes for {n} units")
            f[self.offsets[name] : self.offsets[name] + n] = np.clip(v, 0.05, 1.0)
        self.unit_scale = f
        self._scale_mesh(self.nodes_mesh, self._node_base, np.repeat(self.positions, 4, axis=0), f)
        for name, mesh in self.thumb_meshes.items():
            self._scale_mesh(mesh, *self._thumb_base[name], self._unit_factors(name))

    def set_legend(self, text: str) -> None:
        """Text in the lower left corner (what the edges and nodes mean)."""
        self.legend_actor.set_text("lower_left", str(text))

    def set_input_image(self, image: np.ndarray) -> None:
        """Show ``(C, H, W)`` (values in ``[0, 1]``) on the input layer's nodes."""
        if INPUT not in self.layout.planes:
            return
        tiles = channel_tiles(image)
        if INPUT not in self.thumb_actors:
            self._add_thumbnails(INPUT, tiles)
            return
        atlas, *_ = make_atlas(tiles, self.style.thumbnail_px, self.style.grey, self.style.atlas_max_px)
        tex = pv.Texture(atlas)
        tex.interpolate = True
        self.thumb_actors[INPUT].texture = tex

    def set_title(self, text: str) -> None:
        self.title_text = str(text)
        self.title_actor.set_text("upper_left", self.title_text)

    def set_label(self, text: str) -> None:
        """Text in the lower right corner (the current image)."""
        self.label_text = str(text)
        self.label_actor.set_text("lower_right", self.label_text)

    def set_pose(self, pose: CameraPose) -> None:
        """Move the camera; ``pose.clip`` / ``pose.clip_far`` hide every layer upstream /
        downstream of those depths (and the parts of edges there), so that a close view of a
        layer is not hidden by the layers in front of it, nor cluttered by those behind it."""
        pose.apply(self.plotter.camera, self.plotter.renderer)
        self.set_clip(pose.clip, pose.clip_far)

    def set_clip(self, near: float | None, far: float | None = None) -> None:
        """Show only the part of the graph with ``near <= depth <= far`` (``None``: open)."""
        from vtkmodules.vtkCommonDataModel import vtkPlane

        if self._clip_planes is None:
            self._clip_planes = (vtkPlane(), vtkPlane())
            self._clip_planes[0].SetNormal(*DEPTH_AXIS)
            self._clip_planes[1].SetNormal(*(-DEPTH_AXIS))
            for actor in [self.nodes_actor, self.edges_actor, *self.thumb_actors.values()]:
                if actor is not None:
                    for plane in self._clip_planes:
                        actor.mapper.AddClippingPlane(plane)
        lo_b, hi_b = (float(b @ DEPTH_AXIS) for b in self.layout.bounds())
        lo, hi = lo_b - self.layout.layer_gap, hi_b + self.layout.layer_gap
        n = lo if near is None else min(max(float(near), lo), hi)
        f = hi if far is None else min(max(float(far), lo), hi)
        self._clip_planes[0].SetOrigin(*(DEPTH_AXIS * n))
        self._clip_planes[1].SetOrigin(*(DEPTH_AXIS * f))
        self.clip = (None if near is None else n, None if far is None else f)
        for name, actor in self.label_actors.items():
            x = float(self.layout.planes[name].center @ DEPTH_AXIS)
            actor.SetVisibility(bool(n <= x <= f))

    def view_overview(self, **kw) -> CameraPose:
        pose = overview_pose(self.layout, aspect=self.aspect, **kw)
        self.set_pose(pose)
        return pose

    def view_layer(self, layer: str, **kw) -> CameraPose:
        pose = layer_pose(self.layout, layer, aspect=self.aspect, **kw)
        self.set_pose(pose)
        return pose

    def screenshot(self, path=None) -> np.ndarray:
        """Render and return ``uint8 (height, width, 3)``; also write it to ``path``."""
        self.plotter.renderer.ResetCameraClippingRange()
        self.plotter.render()
        img = np.ascontiguousarray(self.plotter.screenshot(return_img=True)[..., :3])
        if path is not None:
            import imageio.v3 as iio

            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            iio.imwrite(p, img, extension=p.suffix or ".png")
        return img

    @property
    def n_actors(self) -> int:
        return len(self.plotter.renderer.actors)

    def set_visible(self, visible: bool) -> None:
        """Show or hide every actor of the scene (a level-of-detail switch in a shared plotter);
        hidden layer labels stay hidden by the clip window when shown again."""
        for actor in [
            self.nodes_actor,
            self.edges_actor,
            *self.thumb_actors.values(),
            self.title_actor,
            self.label_actor,
            self.legend_actor,
        ]:
            if actor is not None:
                actor.SetVisibility(bool(visible))
        if visible:
            self.set_clip(*self.clip)
        else:
            for actor in self.label_actors.values():
                actor.SetVisibility(False)

    def close(self) -> None:
        """Close the plotter if the scene made it, else take the scene's actors out of it."""
        if self._owns_plotter:
            self.plotter.close()
            return
        for actor in [
            self.nodes_actor,
            self.edges_actor,
            *self.thumb_actors.values(),
            *self.label_actors.values(),
            self.title_actor,
            self.label_actor,
            self.legend_actor,
        ]:
            if actor is not None:
                self.plotter.remove_actor(actor, render=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
