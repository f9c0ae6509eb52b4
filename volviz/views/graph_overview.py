"""The zoomed-out level of detail of a big network: one tile per layer.

MobileNetV2 has 18,059 units and ~94k kept edges in 54 layers: drawn unit by unit (``GraphScene``)
the overview is a thin streak of overlapping labels. Here every layer is ONE tile on a serpentine
grid that fits the view (:func:`~volviz.views.graph_layout.layer_tiles`):

* the tile is a mosaic of the layer's preferred inputs (its units that respond most to the image,
  or its first units; grey for units that do not fire), or a neutral slate mosaic without them;
  the input layer shows the image;
* the frame around it is coloured by the share of the layer's units that fire (dark -> bright);
* lines join consecutive layers, orange arcs the skip / residual connections (from the graph's
  dataflow, weighted by the share of the kept edges into the layer they carry);
* labels sit under their tiles in screen space, measured and shortened to their column
  (``...17.conv.1.0``) and never overlapping each other or the corner texts (``text_layout``).

Actors: one frame mesh, one textured tile mesh (one atlas), two edge meshes, one text actor per
label, three corner texts. ``update_activations`` rewrites colours and the atlas in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyvista as pv

from . import text_layout as T
from .camera_path import CameraPose, tiles_pose
from .colors import get_cmap
from .graph_atlas import arc, channel_tiles, fit_tile, layer_edges, layer_mosaic, polylines, quads
from .graph_layout import DEPTH_AXIS, U_AXIS, V_AXIS, LayerTiles, layer_tiles

__all__ = ["OverviewStyle", "LayerOverviewScene", "layer_edges", "layer_mosaic"]

INPUT = "input"


@dataclass
class OverviewStyle:
    background: str = "#0d0f14"
    tile_px: int = 96  # atlas pixels per tile
    mosaic: int = 9  # units shown per tile (a near-square grid)
    frame_pad: float = 0.045  # frame width around a tile (world units; pitch = 1)
    seq_color: tuple = (150, 160, 178)
    skip_color: tuple = (255, 159, 67)
    line_width: float = 2.0
    label_size: int = 11
    text_size: int = 13
    text_color: str = "#e8eaed"
    muted_color: str = "#9aa0a6"
    missing_color: tuple = (74, 79, 90)
    nodata_color: tuple = (58, 63, 75)
    input_color: tuple = (150, 160, 175)
    grey: tuple = (128, 128, 128)
    node_cmap: str = "inferno"
    fire_threshold: float = 0.05
    view_angle: float = 20.0


class LayerOverviewScene:
    """One tile per layer of ``graph`` (see the module docstring), in a pyvista ``Plotter``.

    ``thumbnails``: ``{layer: uint8 (n, H, W, 3)}`` preferred inputs (missing layers: slate
    tiles). ``input_image``: ``(C, H, W)`` in ``[0, 1]`` for the input tile. The rest as in
    :class:`~volviz.views.graph_scene.GraphScene`.
    """

    def __init__(
        self,
        graph,
        thumbnails=None,
        *,
        input_image=None,
        style: OverviewStyle | None = None,
        title: str = "",
        window_size=(1024, 768),
        plotter: pv.Plotter | None = None,
        tiles: LayerTiles | None = None,
    ):
        self.style = style or OverviewStyle()
        self.graph = graph
        self.layers = list(graph.graph["layers"])
        self._owns_plotter = plotter is None
        self.plotter = plotter or pv.Plotter(off_screen=True, window_size=list(window_size))
        self.plotter.set_background(self.style.background)
        self.plotter.disable_anti_aliasing()
        self.tiles = tiles or layer_tiles(self.layers, aspect=self.aspect)
        self.names = self.tiles.names
        self.thumbs = {k: np.asarray(v) for k, v in (thumbnails or {}).items()}
        self._has_thumb: dict[str, np.ndarray] = {}
        self.input_image = input_image
        self.scales: dict[str, float] = {}
        self.values: dict[str, np.ndarray] = {}
        self.firing: dict[str, np.ndarray] = {}
        st, tl = self.style, self.tiles
        uid = f"volviz-overview-{id(self):x}"
        # frames (behind) and tiles (in front), one quad each per layer
        self.frame_mesh = quads(tl.positions + DEPTH_AXIS * 0.01, tl.sizes / 2 + st.frame_pad)
        self._frame_rgb = np.zeros((len(self.names), 3), np.uint8)
        self.frame_mesh.cell_data["rgb"] = self._frame_rgb
        self.frame_actor = self.plotter.add_mesh(
            self.frame_mesh,
            scalars="rgb",
            rgb=True,
            lighting=False,
            show_scalar_bar=False,
            name=f"{uid}-frames",
            reset_camera=False,
        )
        self.tile_mesh = quads(tl.positions, tl.sizes / 2)
        self._atlas_cols = max(1, math.ceil(math.sqrt(len(self.names))))
        self._set_tcoords()
        self.tile_actor = None
        # edges between layers: consecutive (straight), skip connections (arcs)
        self.edges = layer_edges(graph, self.names)
        polys, rgba = [], []
        for a, b, share in sorted(self.edges, key=lambda e: e[1] - e[0] != 1):  # skip arcs on top
            pa, pb = tl.positions[a] + DEPTH_AXIS * 0.05, tl.positions[b] + DEPTH_AXIS * 0.05
            seq = b == a + 1
            polys.append(np.stack([pa, pb]) if seq else arc(pa, pb, 0.42 * tl.pitch_v))
            alpha = 0.9 if seq else 0.25 + 0.7 * math.sqrt(min(1.0, share))
            rgba.append((*(st.seq_color if seq else st.skip_color), round(255 * alpha)))
        self.edges_mesh = polylines(polys)
        self.edge_actors = []
        if self.edges_mesh is not None:
            self.edges_mesh.cell_data["rgba"] = np.asarray(rgba, np.uint8)
            self.edge_actors.append(
                self.plotter.add_mesh(
                    self.edges_mesh,
                    scalars="rgba",
                    rgba=True,
                    line_width=st.line_width,
                    lighting=False,
                    show_scalar_bar=False,
                    name=f"{uid}-edges",
                    reset_camera=False,
                )
            )
        # texts: labels under the tiles, title top left, caption top right, legend bottom left
        r = self.plotter.renderer
        text = pv.Color(st.text_color).float_rgb
        self.label_blocks = [
            T.TextBlock(r, size=self._font(st.label_size), color=text, h="center", v="top") for _ in self.names
        ]
        self._label_text = [self._label(d) for d in self.layers]
        self.title_block = T.TextBlock(r, size=self._font(st.text_size), color=text, bold=True)
        self.caption_block = T.TextBlock(r, size=self._font(st.text_size - 1), color=text, h="right")
        self.legend_block = T.TextBlock(
            r, size=self._font(st.text_size - 3), color=pv.Color(st.muted_color).float_rgb, v="bottom"
        )
        self.title_text, self.label_text = str(title), ""
        n_skip = sum(1 for a, b, _ in self.edges if b != a + 1)
        self.legend_text = (
            "one tile per layer, in forward order along the rows; tile: preferred inputs of the "
            "units that respond most; frame: share of the layer's units that fire\n"
            f"grey lines: layer -> next layer; orange arcs: {n_skip} skip / residual connections; "
            "open a layer (--layer NAME) to see its units"
        )
        self.shown_labels: list[str] = []
        self._visible = True
        self._placed_for = None
        self.update_activations({})
        self.view_overview()
        # an interactive view moves the camera itself: labels follow before the next render
        self._tag = r.AddObserver("StartEvent", self._before_render)

    # ------------------------------------------------------------------ building blocks
    @property
    def aspect(self) -> float:
        w, h = self.plotter.window_size
        return w / max(h, 1)

    def _font(self, size: int) -> int:
        return max(7, int(round(size * min(1.6, max(0.6, self.plotter.window_size[1] / 768)))))

    def _label(self, d: dict) -> str:
        shape = d.get("shape") or []
        what = f"{d['n_units']} ch {shape[1]}x{shape[2]}" if len(shape) == 3 else f"{d['n_units']} units"
        return f"{d['name']}\n{what}"

    def _set_tcoords(self) -> None:
        n, cols = len(self.names), self._atlas_cols
        rows = -(-n // cols)
        j = np.arange(n)
        r, c = j // cols, j % cols
        eu, ev = 0.5 / (cols * self.style.tile_px), 0.5 / (rows * self.style.tile_px)
        u0, u1 = c / cols + eu, (c + 1) / cols - eu
        vt, vb = 1 - r / rows - ev, 1 - (r + 1) / rows + ev
        tc = np.stack(
            [
                np.column_stack([u0, vb]),
                np.column_stack([u1, vb]),
                np.column_stack([u1, vt]),
                np.column_stack([u0, vt]),
            ],
            axis=1,
        ).reshape(-1, 2)
        self.tile_mesh.active_texture_coordinates = tc.astype(np.float32)

    def _tile(self, name: str) -> np.ndarray:
        st = self.style
        if name == INPUT and self.input_image is not None:
            x = np.asarray(self.input_image, np.float32)
            rgb = x[:3].transpose(1, 2, 0) if x.shape[0] >= 3 else np.repeat(x[:1].transpose(1, 2, 0), 3, 2)
            return fit_tile(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8), st.tile_px)
        n = self.tiles.n_units[self.names.index(name)]
        thumbs = self.thumbs.get(name)
        if thumbs is not None and len(thumbs) != n:
            thumbs = None
        v, fires = self.values.get(name), self.firing.get(name)
        strength = -v if v is not None else np.arange(n, dtype=np.float32)
        if thumbs is not None:  # units with preferred inputs first (a --units run leaves the rest grey)
            if name not in self._has_thumb:
                self._has_thumb[name] = ~(thumbs == 128).all(axis=(1, 2, 3))
            units = np.lexsort((strength, ~self._has_thumb[name]))[: st.mosaic]
        else:
            units = np.argsort(strength, kind="stable")[: st.mosaic]
        if name == INPUT:
            return layer_mosaic(channel_tiles(np.full((n, 4, 4), 0.6, np.float32)), range(n), st.tile_px)
        return layer_mosaic(thumbs, units, st.tile_px, fires, st.missing_color, st.grey)

    def _rebuild_atlas(self) -> None:
        px, cols = self.style.tile_px, self._atlas_cols
        rows = -(-len(self.names) // cols)
        atlas = np.zeros((rows * px, cols * px, 3), np.uint8)
        for i, name in enumerate(self.names):
            r, c = divmod(i, cols)
            atlas[r * px : (r + 1) * px, c * px : (c + 1) * px] = self._tile(name)
        tex = pv.Texture(atlas)
        tex.interpolate = True
        if self.tile_actor is None:
            self.tile_actor = self.plotter.add_mesh(
                self.tile_mesh,
                texture=tex,
                lighting=False,
                reset_camera=False,
                name=f"volviz-overview-{id(self):x}-tiles",
                show_scalar_bar=False,
            )
        else:
            self.tile_actor.texture = tex

    def _project(self, p: np.ndarray) -> tuple[float, float]:
        r = self.plotter.renderer
        r.SetWorldPoint(float(p[0]), float(p[1]), float(p[2]), 1.0)
        r.WorldToDisplay()
        x, y, _ = r.GetDisplayPoint()
        return x, y

    # ------------------------------------------------------------------ public API
    def set_scales(self, scales: dict[str, float]) -> None:
        self.scales = {k: float(v) for k, v in scales.items()}

    def update_activations(self, values: dict[str, np.ndarray]) -> None:
        """Frames by the share of firing units, tiles by the units responding most (``{layer: (n,)}``)."""
        st = self.style
        cmap = get_cmap(st.node_cmap)
        self.values, self.firing = {}, {}
        for i, name in enumerate(self.names):
            v = values.get(name)
            if v is None:
                self._frame_rgb[i] = st.input_color if name == INPUT else st.nodata_color
                continue
            v = np.nan_to_num(np.asarray(v, np.float32).ravel())
            if v.size != self.tiles.n_units[i]:
                raise ValueError(f"layer {name!r}: {v.size} values for {self.tiles.n_units[i]} units")
            scale = self.scales.get(name) or float(v.max())
            fires = v > st.fire_threshold * (scale if scale > 0 else 1.0)
            self.values[name], self.firing[name] = v, fires
            frac = float(fires.mean())
            self._frame_rgb[i] = (
                st.grey
                if not fires.any()
                else np.round(np.asarray(cmap(0.25 + 0.75 * frac))[:3] * 255).astype(np.uint8)
            )
        self.frame_mesh.cell_data["rgb"][:] = self._frame_rgb
        self.frame_mesh.GetCellData().GetArray("rgb").Modified()
        self._rebuild_atlas()

    def set_input_image(self, image) -> None:
        self.input_image = image
        self._rebuild_atlas()

    def set_title(self, text: str) -> None:
        self.title_text = str(text)
        self.place_texts()

    def set_label(self, text: str) -> None:
        """The caption (the current image), upper right."""
        self.label_text = str(text)
        self.place_texts()

    def set_legend(self, text: str) -> None:
        self.legend_text = str(text)
        self.place_texts()

    def reserved(self) -> tuple[float, float]:
        """Fractions of the window height the corner texts take at the top and the bottom."""
        h = self.plotter.window_size[1]
        line = 1.35 * self._font(self.style.text_size)
        top = (max(1, self.label_text.count("\n") + 1, self.title_text.count("\n") + 1)) * line + 10
        bottom = (self.legend_text.count("\n") + 1) * 1.35 * self._font(self.style.text_size - 3) + 10
        return top / h, bottom / h

    def view_overview(self, azimuth: float = 0.0, elevation: float = 0.0, zoom: float = 1.0) -> CameraPose:
        """Every tile in view, face on (the corner texts' room kept free)."""
        top, bottom = self.reserved()
        pose = tiles_pose(
            self.tiles,
            aspect=self.aspect,
            azimuth=azimuth,
            elevation=elevation,
            view_angle=self.style.view_angle,
            top=top,
            bottom=bottom,
            zoom=zoom,
        )
        self.set_pose(pose)
        return pose

    def set_pose(self, pose: CameraPose) -> None:
        pose.apply(self.plotter.camera, self.plotter.renderer)
        self.place_texts()

    def _view_key(self):
        cam = self.plotter.camera
        return (
            tuple(self.plotter.window_size),
            tuple(cam.position),
            tuple(cam.focal_point),
            tuple(cam.up),
            float(cam.view_angle),
        )

    def _before_render(self, *_):
        if self._visible and self._placed_for != self._view_key():
            self.place_texts()

    def place_texts(self) -> None:
        """Corner texts fitted to their corners, then every label under its tile, shortened to its
        column; a label that would still touch another text is hidden (``shown_labels``)."""
        w, h = self.plotter.window_size
        m = 8
        self.title_block.set(self.title_text, m, h - m, 0.62 * w - m)
        title_w = self.title_block.box().width
        self.caption_block.set(self.label_text, w - m, h - m, max(40.0, w - 3 * m - title_w))
        self.legend_block.set(self.legend_text, m, m, w - 2 * m)
        placed = [b.box() for b in (self.title_block, self.caption_block, self.legend_block) if b.text]
        tl = self.tiles
        self.shown_labels = []
        for i, block in enumerate(self.label_blocks):
            c = tl.positions[i]
            x, y = self._project(c - V_AXIS * (tl.sizes[i] / 2 + self.style.frame_pad))
            xl, _ = self._project(c - U_AXIS * tl.pitch_u / 2)
            xr, _ = self._project(c + U_AXIS * tl.pitch_u / 2)
            block.set(self._label_text[i], x, y - 3, 0.94 * abs(xr - xl), keep="end")
            box = block.box()
            ok = (
                box.x0 >= 0
                and box.x1 <= w
                and box.y0 >= 0
                and box.y1 <= h
                and not any(T.overlaps(box, b) for b in placed)
            )
            block.set_visible(ok and self._visible)
            if ok:
                placed.append(box)
                self.shown_labels.append(self.names[i])
        self._placed_for = self._view_key()

    def label_boxes(self) -> dict[str, T.Box]:
        """Display boxes of the labels shown (for tests and the app)."""
        return {n: b.box() for n, b in zip(self.names, self.label_blocks) if n in self.shown_labels}

    def text_boxes(self) -> list[T.Box]:
        """Boxes of every text shown: labels and corner texts."""
        return list(self.label_boxes().values()) + [
            b.box() for b in (self.title_block, self.caption_block, self.legend_block) if b.text
        ]

    def set_visible(self, visible: bool) -> None:
        self._visible = bool(visible)
        for a in [self.frame_actor, self.tile_actor, *self.edge_actors]:
            a.SetVisibility(self._visible)
        for b in (self.title_block, self.caption_block, self.legend_block):
            b.set_visible(self._visible)
        for name, b in zip(self.names, self.label_blocks):
            b.set_visible(self._visible and name in self.shown_labels)

    def screenshot(self, path=None) -> np.ndarray:
        self.plotter.renderer.ResetCameraClippingRange()
        self.plotter.render()
        img = np.ascontiguousarray(self.plotter.screenshot(return_img=True)[..., :3])
        if path is not None:
            from pathlib import Path

            import imageio.v3 as iio

            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            iio.imwrite(p, img, extension=p.suffix or ".png")
        return img

    def close(self) -> None:
        self.plotter.renderer.RemoveObserver(self._tag)
        if self._owns_plotter:
            self.plotter.close()
            return
        for a in [self.frame_actor, self.tile_actor, *self.edge_actors]:
            self.plotter.remove_actor(a, render=False)
        for b in [*self.label_blocks, self.title_block, self.caption_block, self.legend_block]:
            b.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
