"""The images of a store as a 3-D point cloud of their thumbnails (an embedding of one layer's
descriptors: ``volviz embed``), for the app's Embedding tab and the benchmarks.

Every image is a small textured square that always faces the camera (a billboard), cut from ONE
texture atlas and drawn by ONE actor, as the graph draws its preferred inputs
(:mod:`volviz.views.graph_atlas`). Each atlas tile is the thumbnail inside a 2-pixel frame in the
image's colour (class, prediction, probability, a unit's activation): a new colouring rewrites the
frames in the atlas, never the geometry. (A second mesh of coloured squares behind the thumbnails
halved the frame rate of 20k images on the software renderer.) The squares are turned towards the
camera before each render (numpy over the corner points: ~8 ms for 20k images), so a rotation
never shows them edge-on. The current image is drawn large with a white frame on top of everything
(an overlay renderer) and its neighbours with orange frames, joined to it by lines.

Numpy in, pyvista out; the app's picking is :meth:`EmbeddingScene.pick` (display pixels -> the
nearest drawn image).
"""

from __future__ import annotations

import math

import numpy as np
import pyvista as pv

from .graph_atlas import fit_tile

__all__ = ["EmbeddingScene", "MAX_POINTS", "THUMB_PX", "thumb_atlas", "paint_frames", "class_colours", "value_colours"]

#: at most this many images are drawn (the tab subsamples evenly beyond it)
MAX_POINTS = 20000
#: thumbnail side in the atlas (px); the atlas stays within 4096 px a side
THUMB_PX = 16
BORDER_PX = 2  # the colour frame around each thumbnail (atlas pixels)
MAX_ATLAS_PX = 4096
BACKGROUND = "#0d0f14"
CURRENT_RGB = (255, 255, 255)
NEIGHBOUR_RGB = (255, 150, 40)
LEGEND_BOX = (0.05, 0.06, 0.08)


def thumb_atlas(tiles: np.ndarray, px: int = THUMB_PX, border: int = BORDER_PX) -> tuple[np.ndarray, np.ndarray, int]:
    """``uint8 (n, h, w, 3)`` tiles -> ``(atlas uint8, uv (n, 4, 2), cell)``: a near-square grid of
    cells of ``px + 2 * border`` pixels (smaller when the atlas would pass :data:`MAX_ATLAS_PX`),
    each a thumbnail inside a ``border`` frame (grey; :func:`paint_frames` colours them), and each
    cell's texture coordinates for the corners (-u-v, +u-v, +u+v, -u+v), half a texel inside."""
    n = len(tiles)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    t = int(max(2 * border + 2, min(px + 2 * border, MAX_ATLAS_PX // cols, MAX_ATLAS_PX // rows)))
    inner = t - 2 * border
    atlas = np.full((rows * t, cols * t, 3), 110, np.uint8)
    for j in range(n):
        r, c = divmod(j, cols)
        y, x = r * t + border, c * t + border
        atlas[y : y + inner, x : x + inner] = tiles[j] if tiles[j].shape[0] == inner else fit_tile(tiles[j], inner)
    j = np.arange(n)
    r, c = j // cols, j % cols
    w, h = cols * t, rows * t
    eu, ev = 0.5 / w, 0.5 / h
    u0, u1 = c * t / w + eu, (c + 1) * t / w - eu
    vt, vb = 1 - r * t / h - ev, 1 - (r + 1) * t / h + ev  # pv.Texture flips rows: row 0 is the top
    uv = np.stack([np.c_[u0, vb], np.c_[u1, vb], np.c_[u1, vt], np.c_[u0, vt]], axis=1)
    return atlas, uv.astype(np.float32), t


def paint_frames(atlas: np.ndarray, cell: int, rgb: np.ndarray, border: int = BORDER_PX) -> None:
    """Colour the frame of every cell of ``atlas`` (in place): cell ``j`` gets ``rgb[j]``."""
    rows, cols = atlas.shape[0] // cell, atlas.shape[1] // cell
    c = np.full((rows * cols, 3), 110, np.uint8)
    c[: len(rgb)] = rgb
    c = c.reshape(rows, 1, cols, 1, 3)
    a = atlas.reshape(rows, cell, cols, cell, 3)  # a view: [grid row, y, grid col, x]
    a[:, :border] = c
    a[:, cell - border :] = c
    a[:, :, :, :border] = c
    a[:, :, :, cell - border :] = c


def class_colours(classes: np.ndarray) -> np.ndarray:
    """``uint8 (n, 3)``: a categorical colour per class (tab10 up to 10 classes, tab20 up to 20,
    then a hue wheel); -1 (unlabelled) grey."""
    from matplotlib import colormaps

    c = np.asarray(classes, np.int64)
    k = int(c.max()) + 1 if c.size and c.max() >= 0 else 1
    if k <= 10:
        table = np.asarray(colormaps["tab10"].colors)[:k]
    elif k <= 20:
        table = np.asarray(colormaps["tab20"].colors)[:k]
    else:
        table = colormaps["hsv"](np.linspace(0, 1, k, endpoint=False))[:, :3]
    out = np.full((len(c), 3), 110, np.uint8)
    ok = c >= 0
    out[ok] = np.round(table[c[ok]] * 255).astype(np.uint8)
    return out


def value_colours(values: np.ndarray, cmap: str = "viridis", clim=None) -> np.ndarray:
    """``uint8 (n, 3)``: ``values`` through ``cmap`` on ``clim`` (default: their min..max)."""
    from matplotlib import colormaps

    v = np.nan_to_num(np.asarray(values, np.float64))
    lo, hi = clim if clim is not None else (float(v.min(initial=0)), float(v.max(initial=1)))
    t = np.clip((v - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(v)
    return np.round(colormaps[cmap](t)[:, :3] * 255).astype(np.uint8)


def _unit_cube(coords: np.ndarray) -> np.ndarray:
    """Coordinates centred and scaled so the largest extent is 2 (a 2-D map gets z = 0)."""
    c = np.zeros((len(coords), 3), np.float64)
    a = np.asarray(coords, np.float64)
    c[:, : min(3, a.shape[1])] = a[:, :3]
    c -= (c.max(0) + c.min(0)) / 2 if len(c) else 0
    ext = float(np.ptp(c, axis=0).max()) if len(c) else 0.0
    return c * (2.0 / ext) if ext > 0 else c


def _default_half(centres: np.ndarray) -> float:
    """Half a thumbnail's side: 0.7 of the median distance to the nearest other image (clusters
    stay readable; a zoom shows more), within 0.008..0.06 of the cube's side 2."""
    if len(centres) < 2:
        return 0.06
    from scipy.spatial import cKDTree

    d, _ = cKDTree(centres).query(centres, 2)
    return float(np.clip(0.7 * np.median(d[:, 1]), 0.008, 0.06))


def _faces(n: int, first: int = 0) -> np.ndarray:
    return np.column_stack([np.full(n, 4), first + np.arange(4 * n).reshape(n, 4)]).ravel()


class EmbeddingScene:
    """Images as camera-facing thumbnails at their embedding coordinates.

    Parameters
    ----------
    coords : ``(n, 2 | 3)`` embedding coordinates (scaled into a cube of side 2).
    tiles : ``uint8 (n, h, w, 3)`` thumbnails (see :func:`thumb_atlas`).
    colours : ``uint8 (n, 3)`` frame colour per image (default grey).
    size : half side of a thumbnail in scene units (default: from ``n``).
    """

    def __init__(
        self,
        coords: np.ndarray,
        tiles: np.ndarray,
        colours: np.ndarray | None = None,
        *,
        size: float | None = None,
        title: str = "",
        window_size=(800, 600),
        plotter: pv.Plotter | None = None,
    ):
        n = len(coords)
        if n == 0 or len(tiles) != n:
            raise ValueError(f"need one thumbnail per point, got {len(tiles)} for {n} points")
        if n > MAX_POINTS:
            raise ValueError(f"at most {MAX_POINTS} points are drawn, got {n}")
        self.n = n
        self.centres = _unit_cube(coords)
        self.flat = bool(np.ptp(self.centres[:, 2]) == 0)
        self.half = float(size if size is not None else _default_half(self.centres))
        self._owns_plotter = plotter is None
        self.plotter = plotter or pv.Plotter(off_screen=True, window_size=list(window_size))
        self.plotter.set_background(BACKGROUND)
        self.plotter.disable_anti_aliasing()  # the software renderer: MSAA costs ~4x for geometry
        pl = self.plotter
        self.atlas, uv, self.cell = thumb_atlas(tiles)
        self.colours = np.full((n, 3), 110, np.uint8) if colours is None else np.asarray(colours, np.uint8)
        paint_frames(self.atlas, self.cell, self.colours)
        self.thumbs = pv.PolyData(np.zeros((4 * n, 3)), faces=_faces(n))
        self.thumbs.active_texture_coordinates = uv.reshape(-1, 2)
        self.thumb_actor = pl.add_mesh(
            self.thumbs, texture=self._texture(), lighting=False, name="emb-thumbs", reset_camera=False
        )
        self.current: int | None = None
        self.neighbours = np.empty(0, np.int64)
        self._make_highlight()
        self._legend = None
        self._title = pl.add_text(title, position="upper_left", font_size=10, color="#d8dce3", name="emb-title")
        self._label = pl.add_text("", position="lower_left", font_size=9, color="#d8dce3", name="emb-label")
        self._view_key = None
        self._observer = pl.renderer.AddObserver("StartEvent", lambda *_: self.face_camera())
        self.view_reset()

    def _texture(self) -> pv.Texture:
        tex = pv.Texture(self.atlas)
        tex.interpolate = True
        return tex

    # ------------------------------------------------------------------ billboards
    def _axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cam = self.plotter.camera
        pos, focal, up = (np.asarray(v, np.float64) for v in (cam.position, cam.focal_point, cam.up))
        view = focal - pos
        view /= np.linalg.norm(view) or 1.0
        right = np.cross(view, up)
        right /= np.linalg.norm(right) or 1.0
        return right, np.cross(right, view), view

    def face_camera(self, force: bool = False) -> None:
        """Turn every square towards the camera (only when the camera turned since the last call)."""
        right, up, view = self._axes()
        key = (tuple(np.round(right, 6)), tuple(np.round(up, 6)))
        if key == self._view_key and not force:
            return
        self._view_key = key
        corners = np.stack([-right - up, right - up, right + up, -right + up])  # (4, 3)
        c = self.centres[:, None, :]
        self.thumbs.points = (c + self.half * corners[None]).reshape(-1, 3)
        self._place_highlight(right, up, view)
        self.plotter.renderer.ResetCameraClippingRange()  # from the squares as they are now

    # ------------------------------------------------------------------ what the tab changes
    def set_colours(self, rgb: np.ndarray, legend: list[tuple[str, tuple]] | None = None) -> None:
        """Frame colours ``uint8 (n, 3)`` (painted into the atlas: one texture upload) and an
        optional legend ``[(label, rgb 0..255)]``."""
        self.colours = np.asarray(rgb, np.uint8).copy()
        paint_frames(self.atlas, self.cell, self.colours)
        tex = self._texture()
        self.thumb_actor.texture = tex
        self._cur_actors[1].texture = tex
        if self._legend is not None:
            self.plotter.remove_legend()
            self._legend = None
        if legend:
            entries = [[str(name), np.asarray(c, float) / 255] for name, c in legend[:20]]
            if len(entries) == 1:  # VTK sizes a one-row legend's text past the window's edge: a blank row
                entries.append([" ", np.asarray(LEGEND_BOX)])
            self._legend = self.plotter.add_legend(
                entries,
                bcolor=LEGEND_BOX,
                border=False,
                size=(0.14, 0.04 * len(entries)),
                loc="upper right",
                face="rectangle",
            )

    def set_current(self, index: int | None, neighbours=()) -> None:
        """Highlight point ``index`` (drawn 3x in a white frame, on top of everything) and its
        ``neighbours`` (orange frames, lines to them)."""
        self.current = None if index is None else int(index)
        self.neighbours = np.asarray(neighbours, np.int64).reshape(-1)
        if self.current is not None:  # the big tile shows the current image's thumbnail
            uv = self.thumbs.active_texture_coordinates[4 * self.current : 4 * self.current + 4]
            self._cur_tile.active_texture_coordinates = np.asarray(uv, np.float32).copy()
        right, up, view = self._axes()
        self._place_highlight(right, up, view)

    def _make_highlight(self) -> None:
        """The highlight's actors, made once: neighbour frames and lines in the scene, the current
        image in an overlay renderer (layer 1, same camera) so no thumbnail ever hides it."""
        from vtkmodules.vtkRenderingCore import vtkRenderer

        pl = self.plotter
        quad = np.zeros((4, 3))
        self._nb_ring = pv.PolyData(quad.copy(), faces=_faces(1))
        self._nb_lines = pv.PolyData(quad[:2].copy(), lines=np.array([2, 0, 1]))
        kw = {"lighting": False, "reset_camera": False, "color": NEIGHBOUR_RGB, "show_scalar_bar": False}
        self._nb_actors = [
            pl.add_mesh(self._nb_ring, name="emb-nb-ring", **kw),
            pl.add_mesh(self._nb_lines, name="emb-nb-lines", line_width=2, **kw),
        ]
        self.overlay = vtkRenderer()
        top = pl.ren_win.GetNumberOfLayers()  # a layer of its own above pyvista's (it uses layer 1)
        pl.ren_win.SetNumberOfLayers(top + 1)
        self.overlay.SetLayer(top)
        self.overlay.InteractiveOff()
        self.overlay.SetActiveCamera(pl.renderer.GetActiveCamera())
        pl.ren_win.AddRenderer(self.overlay)
        self._cur_frame = pv.PolyData(quad.copy(), faces=_faces(1))
        self._cur_tile = pv.PolyData(quad.copy(), faces=_faces(1))
        self._cur_tile.active_texture_coordinates = np.zeros((4, 2), np.float32)
        frame = pv.Actor(mapper=pv.DataSetMapper(self._cur_frame))
        frame.prop.color = CURRENT_RGB
        frame.prop.lighting = False
        tile = pv.Actor(mapper=pv.DataSetMapper(self._cur_tile))
        tile.texture = self.thumb_actor.texture
        tile.prop.color = (1.0, 1.0, 1.0)  # the texture is multiplied by it
        tile.prop.lighting = False
        self._cur_actors = [frame, tile]
        for a in self._cur_actors:
            self.overlay.AddActor(a)

    def _place_highlight(self, right, up, view) -> None:
        cur, nb = self.current, self.neighbours
        for a in self._cur_actors:
            a.SetVisibility(cur is not None)
        for a in self._nb_actors:
            a.SetVisibility(cur is not None and len(nb) > 0)
        if cur is None:
            return
        corners = np.stack([-right - up, right - up, right + up, -right + up])
        if len(nb):
            lines = np.column_stack([np.full(len(nb), 2), np.zeros(len(nb), np.int64), 1 + np.arange(len(nb))]).ravel()
            self._nb_lines.copy_from(pv.PolyData(np.vstack([self.centres[cur], self.centres[nb]]), lines=lines))
            ring = (self.centres[nb][:, None] + 1.5 * self.half * corners[None] + view * 0.001).reshape(-1, 3)
            self._nb_ring.copy_from(pv.PolyData(ring, faces=_faces(len(nb))))  # behind its thumbnail
        big = 3.0 * self.half
        self._cur_frame.points = self.centres[cur] + 1.12 * big * corners
        self._cur_tile.points = self.centres[cur] + big * corners - view * 0.001

    def set_title(self, text: str) -> None:
        self._title.SetText(2, str(text))

    def set_label(self, text: str) -> None:
        self._label.SetText(0, str(text))

    # ------------------------------------------------------------------ camera and picking
    def view_reset(self, azimuth: float = 30.0, elevation: float = 20.0) -> None:
        """The whole cloud in view (a 2-D map straight on, a 3-D one from an angle): the camera
        backs off from 2.6 until every image lies inside the window, a margin left."""
        pl = self.plotter
        w, h = pl.renderer.GetSize()
        for dist in 2.6 * 1.08 ** np.arange(16):
            pl.camera.focal_point = (0.0, 0.0, 0.0)
            pl.camera.position = (0.0, 0.0, float(dist))
            pl.camera.up = (0.0, 1.0, 0.0)
            if not self.flat:
                pl.camera.azimuth = azimuth
                pl.camera.elevation = elevation
            xy = self.display_xy()
            pad = np.array([0.03 * w, 0.03 * h]) + 12  # + about a thumbnail
            if (xy >= pad).all() and (xy <= np.array([w, h]) - pad).all():
                break
        self.face_camera(force=True)

    def rotate(self, degrees: float) -> None:
        self.plotter.camera.azimuth = self.plotter.camera.azimuth + degrees

    def display_xy(self) -> np.ndarray:
        """``(n, 2)`` display pixels (origin bottom-left, as VTK's events) of every point."""
        ren = self.plotter.renderer
        w, h = ren.GetSize()
        m = np.array(
            [
                [
                    ren.GetActiveCamera().GetCompositeProjectionTransformMatrix(w / max(h, 1), -1, 1).GetElement(i, j)
                    for j in range(4)
                ]
                for i in range(4)
            ]
        )
        p = np.c_[self.centres, np.ones(self.n)] @ m.T
        ndc = p[:, :2] / p[:, 3:4]
        x0, y0 = ren.GetOrigin()
        return np.c_[x0 + (ndc[:, 0] + 1) * w / 2, y0 + (ndc[:, 1] + 1) * h / 2]

    def pick(self, x: float, y: float, radius: float = 12.0) -> int | None:
        """The drawn point nearest display pixel ``(x, y)`` within ``radius`` px (the nearest to
        the camera among those), or None."""
        d = np.hypot(*(self.display_xy() - np.array([x, y])).T)
        near = np.flatnonzero(d <= radius)
        if not len(near):
            return None
        pos = np.asarray(self.plotter.camera.position)
        depth = np.linalg.norm(self.centres[near] - pos, axis=1)
        return int(near[np.lexsort((depth, np.round(d[near])))[0]])

    def screenshot(self, path=None) -> np.ndarray:
        self.plotter.render()
        return self.plotter.screenshot(path, return_img=True)

    def close(self) -> None:
        self.plotter.renderer.RemoveObserver(self._observer)
        if self._owns_plotter:
            self.plotter.close()
        else:
            for name in ("emb-thumbs", "emb-title", "emb-label", "emb-nb-ring", "emb-nb-lines"):
                self.plotter.remove_actor(name, render=False)
            self.plotter.ren_win.RemoveRenderer(self.overlay)
            if self._legend is not None:
                self.plotter.remove_legend()
