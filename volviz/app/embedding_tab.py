"""The explorer's Embedding tab: the store's images as a 3-D cloud of thumbnails at their
coordinates in one layer's descriptor space ([Hong-L4]'s t-SNE of CNN codes), linked to the time
slider both ways: the current image is drawn large with its nearest neighbours (in the layer's
descriptor space, cosine) joined to it; clicking a thumbnail makes it the current image.

Coordinates are the ones ``volviz embed STORE --layer L`` kept in the store. A layer without a
stored embedding gets an exact 3-D PCA of its descriptors, computed here in a background job
(streamed: one batch of descriptors at a time) and not stored; the note says which command makes
a t-SNE / UMAP map instead. At most :data:`~volviz.views.embedding_scene.MAX_POINTS` images are
drawn (evenly subsampled beyond), each a 16-pixel thumbnail of one atlas; the descriptors of the
drawn images are kept for the neighbour search when they fit :data:`MAX_DESCRIPTOR_FLOATS`
(beyond, the neighbours are taken in the map's own coordinates, and the note says so). Colour by
a unit that never fires on the dataset (:func:`dead_units`) is grey, as in every view of the app.
"""

from __future__ import annotations

import logging

import numpy as np

from volviz.analysis.dataset.neighbours import NeighbourIndex
from volviz.app import state as S
from volviz.app.wiring import bind, change, controller

log = logging.getLogger("volviz.app")

__all__ = ["EmbeddingTab", "dead_units", "gather_embedding", "MAX_DESCRIPTOR_FLOATS"]

WINDOW = (800, 560)
MAX_DESCRIPTOR_FLOATS = 1 << 25  # 128 MiB of float32 descriptors at most
CLICK_PX = 4  # a press and release closer than this is a click (farther: a rotation)
READ_ROWS = 256  # thumbnails are read and shrunk this many images at a time


def _layer_items(store) -> list[dict]:
    """Layers with a stored embedding first (titled with their method), then the others."""
    from volviz.analysis.dataset.embedding import load_embedding

    stored, rest = [], []
    for name in store.layers:
        emb = load_embedding(store, name)
        if emb is not None:
            s = emb.settings
            stored.append({"title": f"{name} ({s.get('method', '?')} {s.get('dims', '?')}-D, stored)", "value": name})
        elif store.has("activation", name) or store.has("descriptor", name):
            rest.append({"title": f"{name} (PCA here)", "value": name})
    return stored + rest


def _thumbnails(store, rows: np.ndarray, px: int) -> np.ndarray:
    """``uint8 (n, px, px, 3)`` thumbnails of images ``rows``, read :data:`READ_ROWS` at a time."""
    from volviz.app.panels import input_rgb
    from volviz.views.graph_atlas import fit_tile

    out = np.empty((len(rows), px, px, 3), np.uint8)
    for s in range(0, len(rows), READ_ROWS):
        for j, x in enumerate(store.read_inputs(rows[s : s + READ_ROWS])):
            out[s + j] = fit_tile(input_rgb(x), px)
    return out


def gather_embedding(store, layer: str, max_points: int | None = None, report=None) -> dict:
    """Everything the tab draws for ``layer`` (VTK-free; the background half of a build):
    coordinates (stored, or a PCA made here), the drawn rows, thumbnails, the image table and the
    descriptors for the neighbour search."""
    from volviz.analysis.dataset.descriptors import descriptors, image_table
    from volviz.analysis.dataset.embedding import embed_store, load_embedding
    from volviz.views.embedding_scene import MAX_POINTS, THUMB_PX

    max_points = MAX_POINTS if max_points is None else int(max_points)
    emb = load_embedding(store, layer)
    made_here = emb is None
    if made_here:
        emb = embed_store(store, layer, "pca", 3)
    keep = np.arange(len(emb.rows))
    if len(keep) > max_points:
        keep = np.linspace(0, len(keep) - 1, max_points).astype(np.int64)
    rows, coords = emb.rows[keep], emb.coords[keep]
    if report:
        report(1, 4)
    thumbs = _thumbnails(store, rows, THUMB_PX)
    if report:
        report(2, 4)
    pool = emb.settings.get("pool", "mean")
    x = descriptors(store, layer, rows, pool) if len(rows) * _dim(store, layer, pool) <= MAX_DESCRIPTOR_FLOATS else None
    if report:
        report(3, 4)
    return {
        "layer": layer,
        "dead": dead_units(store, layer),
        "rows": rows,
        "coords": coords,
        "thumbs": thumbs,
        "table": image_table(store, rows),
        "desc": x,
        "index": NeighbourIndex(x) if x is not None else None,  # prepared once per build
        "settings": dict(emb.settings),
        "made_here": made_here,
        "n_total": len(emb.rows),
    }


def dead_units(store, layer: str) -> np.ndarray | None:
    """``bool (units,)``: never above 0 on any captured image at any position (as the Dataset
    examples panel and the Graph tab grey them); one streamed pass of max-pooled descriptors. None
    when the store keeps only mean descriptors of the layer (a maximum cannot be told from them)."""
    from volviz.analysis.dataset.descriptors import NoDescriptorsError, iter_descriptors

    hi = None
    try:
        for _, d in iter_descriptors(store, layer, pool="max"):
            hi = d.max(0) if hi is None else np.maximum(hi, d.max(0))
    except NoDescriptorsError:
        return None
    return None if hi is None else ~(hi > 0)


def _dim(store, layer: str, pool: str) -> int:
    from volviz.analysis.dataset.descriptors import descriptor_dim

    return descriptor_dim(store, layer, pool)


class EmbeddingTab:
    """The Embedding tab (see :mod:`volviz.app.tabs`): it sees the analysed pane through ``ctx.focus``."""

    def __init__(self, ctx):
        import pyvista as pv

        from volviz.views.embedding_scene import BACKGROUND

        self.focus, self.state, self.redact = ctx.focus, ctx.state, ctx.redact
        self.plotter = pv.Plotter(off_screen=True, window_size=list(WINDOW))
        self.plotter.set_background(BACKGROUND)
        self.view = None  # the VtkRemoteView (set by the layout)
        self.scene = None  # EmbeddingScene
        self.data: dict | None = None
        self.built_for: tuple | None = None  # (store path, layer) of the scene
        self.failed: tuple | None = None
        self.dirty = True
        self._press = None
        self._colour_note = ""
        self.job = ctx.job("embedding", status=None)
        bind(self, ctx.server)

    @property
    def active(self) -> bool:
        return self.state[S.APP_TAB] == "embedding"

    # ------------------------------------------------------------------ the store and layer
    def refresh(self) -> None:
        """The focused pane opened another store: offer its layers (stored embeddings first)."""
        store = self.focus.store
        items = _layer_items(store) if store is not None else []
        self.state[S.E_LAYERS] = items
        values = [it["value"] for it in items]
        if self.state[S.E_LAYER] not in values:
            self.state[S.E_LAYER] = values[0] if values else None
        self.dirty = True
        self.sync()

    def _wanted(self) -> tuple | None:
        f = self.focus
        layer = self.state[S.E_LAYER]
        return None if f.store is None or not layer else (f.path, layer)

    def sync(self, force: bool = False) -> None:
        """Build the scene for the chosen store and layer (in the background), or follow the
        slider; only while the tab is shown."""
        if not self.active:
            self.dirty = True
            return
        want = self._wanted()
        if want is None:
            self.state[S.E_NOTE] = "no store shown, or it keeps no activations to embed"
            return
        if want != self.built_for:
            if self.job.running or (self.failed == want and not force):
                return
            self._start_build(want)
            return
        if force or self.dirty:
            self._colour()
        self._highlight()
        self.dirty = False
        self.push()

    def _start_build(self, want: tuple) -> None:
        f = self.focus
        store, layer = f.store, want[1]
        self.failed = None
        self.state[S.E_NOTE] = f"reading {layer}'s embedding and {store.n_images} thumbnails ..."

        def done(data):
            if self._wanted() != want:  # another store or layer meanwhile
                self.sync(force=True)
                return
            try:
                self._build(data, want)
            except Exception as exc:  # noqa: BLE001
                self._failed(exc, want)
                return
            self.sync(force=True)

        self.job.start(
            lambda report: gather_embedding(store, layer, report=report),
            done=done,
            failed=lambda exc: self._failed(exc, want),
        )

    def _failed(self, exc, want) -> None:
        log.warning("embedding: %s", exc)
        self.state[S.E_NOTE] = self.redact(f"embedding: {exc}")
        self.failed = want

    def _build(self, data: dict, want: tuple) -> None:
        from volviz.views.embedding_scene import EmbeddingScene

        if self.scene is not None:
            self.scene.close()
        s, layer = data["settings"], data["layer"]
        how = "PCA (made here, not stored)" if data["made_here"] else f"{s.get('method', '?')} {s.get('dims', '?')}-D"
        shown = len(data["rows"])
        of = f"{shown} of {data['n_total']}" if shown < data["n_total"] else f"{shown}"
        self.scene = EmbeddingScene(
            data["coords"], data["thumbs"], title=f"{layer}: {how}, {of} images", plotter=self.plotter
        )
        self.data, self.built_for = data, want
        units = (
            int(data["desc"].shape[1])
            if data["desc"] is not None
            else _dim(self.focus.store, layer, s.get("pool", "mean"))
        )
        self.state[S.E_UNIT_MAX] = max(0, units - 1)
        if self.state[S.E_UNIT] > units - 1:
            self.state[S.E_UNIT] = 0
        self.dirty = True

    # ------------------------------------------------------------------ drawing
    def _colour(self) -> None:
        from volviz.app.dataset_panels import DEAD_GREY
        from volviz.views.embedding_scene import class_colours, value_colours

        d, f, mode = self.data, self.focus, self.state[S.E_COLOR]
        t = d["table"]
        names = f.class_names()
        legend = None
        if mode in ("true", "pred"):
            cls = t["label"] if mode == "true" else t["pred"]
            if mode == "true" and not (cls >= 0).any():
                cls, mode = t["pred"], "pred"  # unlabelled: by prediction
            rgb = class_colours(cls)
            present = np.unique(cls[cls >= 0])
            legend = [(names[c] if c < len(names) else str(c), tuple(rgb[np.argmax(cls == c)])) for c in present[:20]]
            what = "true class" if mode == "true" else "predicted class"
        elif mode == "prob":
            rgb = value_colours(t["confidence"], "viridis", (0.0, 1.0))
            legend = [
                ("p 0.0", tuple(value_colours(np.array([0.0]), "viridis", (0, 1))[0])),
                ("p 0.5", tuple(value_colours(np.array([0.5]), "viridis", (0, 1))[0])),
                ("p 1.0", tuple(value_colours(np.array([1.0]), "viridis", (0, 1))[0])),
            ]
            what = "top probability (viridis, 0..1)"
        else:
            u = int(self.state[S.E_UNIT])
            x = d["desc"] if d["desc"] is not None else None
            if x is None:
                from volviz.analysis.dataset.descriptors import descriptors

                x = descriptors(f.store, d["layer"], d["rows"], d["settings"].get("pool", "mean"))
            v = x[:, u]
            dead = d["dead"]
            if dead is not None and dead[u % len(dead)]:  # (meanmax: [means | maxima]) grey, as everywhere
                rgb = np.full((len(v), 3), DEAD_GREY, np.uint8)
                legend = [("dead", DEAD_GREY)]  # short: the legend box is narrow
                what = f"unit {u} is dead (grey): never above 0 on any image"
            else:
                rgb = value_colours(v, "inferno")
                lo, hi = float(v.min()), float(v.max())
                legend = [
                    (f"{lo:.3g}", tuple(value_colours(np.array([0.0]), "inferno", (0, 1))[0])),
                    (f"{hi:.3g}", tuple(value_colours(np.array([1.0]), "inferno", (0, 1))[0])),
                ]
                pooled = ""
                shape = f.store.layers[d["layer"]].act_shape
                if len(shape) == 3:  # a 2-D map: descriptors pool it over positions (descriptors.py)
                    pool = d["settings"].get("pool", "mean")
                    how = pool if pool != "meanmax" else ("mean" if u < shape[0] else "max")  # [means | maxima]
                    pooled = f" ({how} over positions)"
                what = f"activation of unit {u}{pooled}, inferno {lo:.3g}..{hi:.3g}"
            if dead is not None and dead.any():
                ids = np.flatnonzero(dead)
                what += f"; {len(ids)} dead units: " + ", ".join(f"#{j}" for j in ids[:12])
                what += " ..." if len(ids) > 12 else ""
        self.scene.set_colours(rgb, legend)
        self._colour_note = f"colour: {what}"

    def _highlight(self) -> None:
        d, f = self.data, self.focus
        image = f.image
        pos = np.flatnonzero(d["rows"] == image) if image is not None else []
        k = min(int(self.state[S.E_K]), len(d["rows"]) - 1)
        notes = [self._colour_note]
        if not len(pos):
            self.scene.set_current(None)
            notes.append(f"image {image} is not among the drawn images")
        else:
            p = int(pos[0])
            nb = np.empty(0, np.int64)
            if k > 0:
                index = d["index"] if d["index"] is not None else NeighbourIndex(d["coords"], "euclidean")
                nb = index.query([p], k)[0][0]
                cls = np.where(d["table"]["label"] >= 0, d["table"]["label"], d["table"]["pred"])
                share = float((cls[nb] == cls[p]).mean())
                where = (
                    f"{d['layer']}'s descriptors (cosine)" if d["desc"] is not None else "the map (descriptors too big)"
                )
                notes.append(f"{k} nearest in {where}: {share:.0%} of the current image's class")
            self.scene.set_current(p, nb)
        self.scene.set_label(f.caption(image) if image is not None else "")
        if d["made_here"]:
            notes.append(
                f"a t-SNE / UMAP map: `volviz embed {f.path} --layer {d['layer']} --method umap --dims 3` "
                "(kept in the store, shown here)"
            )
        self.state[S.E_NOTE] = self.redact(" · ".join(notes))
        st = self.state
        st[S.E_SHOWN] = f"{self.redact(f.path)} · {d['layer']} · {st[S.E_COLOR]} · image {image}"

    def push(self) -> None:
        if self.view is not None:
            self.view.update()

    # ------------------------------------------------------------------ tab hooks and handlers
    def shown(self) -> None:
        self.sync()

    def follow(self) -> None:
        if self.active and self.scene is not None and self.built_for == self._wanted():
            self._highlight()
            self.push()
        else:
            self.sync()

    @change(S.E_LAYER)
    def _on_layer(self, **_) -> None:
        self.sync(force=True)

    @change(S.X_PANE)
    def _on_pane(self, **_) -> None:
        self.refresh()  # the other pane's store: its layers

    @change(S.E_COLOR, S.E_UNIT)
    def _on_colour(self, **_) -> None:
        self.dirty = True
        self.sync()

    @change(S.E_K)
    def _on_k(self, **_) -> None:
        self.sync()

    def pick(self, x: float, y: float) -> int | None:
        """Make the image drawn nearest display pixel ``(x, y)`` the current one (the time
        slider moves to it); returns its store index, or None when no image is there."""
        if self.scene is None or not self.active:
            return None
        j = self.scene.pick(float(x), float(y))
        if j is None:
            return None
        image = int(self.data["rows"][j])
        self.state[S.T_INDEX] = self.focus.position_of(image)
        return image

    @staticmethod
    def _xy(event) -> tuple[float, float] | None:
        """A vtk.js event's ``position`` as two finite numbers inside the render window, or None
        (the event comes from the browser: anything else is ignored)."""
        import math

        pos = event.get("position") if isinstance(event, dict) else None
        if not isinstance(pos, dict):
            return None
        x, y = pos.get("x"), pos.get("y")
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (x, y))
        if not ok or not (0 <= x <= 8192 and 0 <= y <= 8192):
            return None
        return float(x), float(y)

    @controller("embedding_press")
    def press(self, event=None) -> None:
        self._press = self._xy(event)

    @controller("embedding_release")
    def release(self, event=None) -> None:
        xy, start = self._xy(event), self._press
        self._press = None
        if xy is None or start is None or max(abs(xy[0] - start[0]), abs(xy[1] - start[1])) > CLICK_PX:
            return  # a drag: the camera turned
        self.pick(*xy)

    @controller("embedding_reset_camera")
    def reset_camera(self) -> None:
        if self.scene is not None:
            self.scene.view_reset()
            self.push()

    def close(self) -> None:
        if self.scene is not None:
            self.scene.close()
        self.plotter.close()
