"""The explorer's Graph tab: the network of the current store as a node-edge graph that follows
the explorer's time slider, with a level of detail (:class:`~volviz.views.graph_lod.GraphLODScene`):
a big network's overview (over 3,000 units: a torchvision model) is one tile per layer, and a
layer chosen in the camera select opens as its units (:class:`~volviz.views.graph_scene.GraphScene`).

Built once per store when the tab is first shown (graph from the dataflow of the store's model,
layered layout, unit thumbnails: preferred inputs where the store has them, or each unit's top
dataset example, dead units grey: the thumbnails switch). A slider step only rewrites
the node colours and the input tiles (``update_activations``: arrays in place, nothing rebuilt).
While the tab is hidden nothing is computed or rendered; the graph catches up when it shows.

Node colour: the unit's response to the image ([PreferredInputs2016]), or a filter's importance ([Jain2016]:
class-averaged for the pane's chosen class, or of the current image); node size: importance.
"""

from __future__ import annotations

import logging

import numpy as np

from volviz.app import state as S
from volviz.app.wiring import bind, change, controller

log = logging.getLogger("volviz.app")

WINDOW = (800, 520)  # small: the software renderer draws every edge
SCALE_SAMPLES = 12  # images sampled for each layer's response scale
OVERVIEW_ZOOM = 1.1  # the whole graph fills the (small) view
MAX_TOP_UNITS = 2048  # top-example thumbnails for this many units in all (a crop per unit: model gradients)
LEGEND_RESPONSE = (
    "edges: weight after ReLU, cold -> hot (strongest 4 in per unit)\n"
    "nodes: response to the image, dark -> bright; grey: not firing"
)


def importance_sizes(values: dict[str, np.ndarray], smallest: float = 0.3) -> dict[str, np.ndarray]:
    """Unit size factors from importance: area grows with importance, ``smallest`` at 0, 1 at
    the layer's maximum."""
    out = {}
    for name, v in values.items():
        v = np.nan_to_num(np.asarray(v, np.float64))
        top = float(v.max()) if v.size else 0.0
        out[name] = smallest + (1 - smallest) * np.sqrt(np.clip(v / top, 0, 1)) if top > 0 else np.ones_like(v)
    return out


class GraphTab:
    """The Graph tab (see :mod:`volviz.app.tabs`): it sees the analysed pane through ``ctx.focus``."""

    def __init__(self, ctx):
        import pyvista as pv

        self.focus, self.state, self.redact = ctx.focus, ctx.state, ctx.redact
        self.plotter = pv.Plotter(off_screen=True, window_size=list(WINDOW))
        self.plotter.set_background("#0d0f14")  # GraphStyle's, also before anything is shown
        self.view = None  # the VtkRemoteView (set by the layout)
        self.scene = None  # GraphScene
        self.path: str | None = None  # store the scene was built for
        self.units: list[str] = []
        self.thumb_layers: list[str] = []
        self.kind = "preferred"  # thumbnails of the built scene: preferred | top
        self.response_scales: dict[str, float] = {}
        self.image: int | None = None
        self.dirty = True
        self.failed: str | None = None  # store whose graph could not be built
        self._wanted: str | None = None
        self.job = ctx.job("graph", status=None)
        bind(self, ctx.server)

    # ------------------------------------------------------------------ helpers
    @property
    def active(self) -> bool:
        return self.state[S.APP_TAB] == "graph"

    def importance(self, mode: str) -> dict[str, np.ndarray]:
        """Per weighted layer of the graph: class-averaged importance of the pane's class
        (``importance-class``) or the current image's (``importance-image``)."""
        from volviz.analysis.importance import EmptyClassError
        from volviz.app.analysis_panels import importance_values

        f = self.focus
        store, cls = f.store, f.chosen_class()
        out = {}
        for name in self.units:
            info = store.layers.get(name)
            if info is None or not info.weight_shape or not store.has("grad_weight", name):
                continue
            d = importance_values(store, name, f.image, cls, f.memo)
            if mode == "importance-image":
                out[name] = d["per_image"]
            elif d["class_mean"] is not None:
                out[name] = d["class_mean"]
        if not out and mode == "importance-class":
            raise EmptyClassError(f"no layer has images of class {cls} analysed w.r.t. its neuron")
        return out

    # ------------------------------------------------------------------ building
    def _gather(self, store, model_fn, thumbs_kind: str = "preferred", memo=None) -> dict:
        """The slow, VTK-free half of a build (trace the model, lay it out, read thumbnails and
        the response scales): a background job under the server."""
        from volviz.analysis.network_graph import build_network_graph, unit_responses
        from volviz.scene import load_thumbnails
        from volviz.views.graph_layout import layered_layout

        G = build_network_graph(model_fn(), tuple(int(s) for s in store.input_shape), k=8)
        layout = layered_layout(G.graph["layers"])
        units = [d["name"] for d in G.graph["layers"] if d["kind"] != "input" and d["name"] in store.layers]
        if thumbs_kind == "top":
            thumbs = self._top_thumbnails(store, units, model_fn, memo)
        else:
            thumbs = load_thumbnails(store, units, None, progress=False)
        done = np.flatnonzero(store.done)
        pick = done[np.linspace(0, len(done) - 1, min(len(done), SCALE_SAMPLES)).astype(int)]
        resp = [unit_responses(store, int(i), units) for i in pick]
        scales = {n: float(max(r[n].max() for r in resp)) for n in units}
        return {"G": G, "layout": layout, "units": units, "thumbs": thumbs, "scales": scales, "kind": thumbs_kind}

    @staticmethod
    def _top_thumbnails(store, units, model_fn, memo) -> dict[str, np.ndarray]:
        """Each unit's best dataset example (dead units grey), layer by layer while the layers'
        units add up to at most :data:`MAX_TOP_UNITS` (one streamed top-1 pass and one crop per
        unit each); layers without stored activations, and those beyond, keep slate tiles."""
        from volviz.app.dataset_panels import top_thumbnails

        out, budget = {}, MAX_TOP_UNITS
        for name in units:
            n = int(store.layers[name].act_shape[0])
            if store.has("activation", name) and n <= budget:
                out[name] = top_thumbnails(store, name, model_fn, memo)
                budget -= n
        return out

    def _build(self, data: dict | None = None) -> None:
        from volviz.views.graph_lod import GraphLODScene, choose_lod
        from volviz.views.graph_scene import GraphScene, GraphStyle

        f = self.focus
        store = f.store
        d = data if data is not None else self._gather(store, f.model, self.state[S.G_THUMBS], f.memo)
        G, layout, thumbs = d["G"], d["layout"], d["thumbs"]
        self.units, self.thumb_layers, self.response_scales = d["units"], list(thumbs), d["scales"]
        if self.scene is not None:
            self.scene.close()
        title = f"{store.plan.model.spec}: {G.number_of_nodes()} units, {G.number_of_edges()} edges (k=8)"
        # a big network: layer tiles for the overview, units when a layer is opened; else units
        scene_class = GraphLODScene if choose_lod(G) == "layers" else GraphScene
        self.scene = scene_class(
            G,
            layout,
            thumbs,
            input_image=store.read_input(f.image),
            style=GraphStyle(edges_per_node=4, max_edges=3000, label_size=20),
            title=title,
            window_size=WINDOW,
            plotter=self.plotter,
        )
        self.path, self.image, self.dirty = f.path, None, True
        self.state[S.G_LAYERS] = [{"title": "overview", "value": ""}] + [
            {"title": n, "value": n} for n in layout.planes
        ]
        if self.state[S.G_FOCUS] not in layout.planes:
            self.state[S.G_FOCUS] = ""
        self._apply_focus()
        self.kind = d.get("kind", "preferred")
        missing = [n for n in self.units if n not in thumbs]
        if self.kind == "top":
            self._thumb_note = (
                "thumbnails: each unit's top dataset example (grey: dead on the dataset) of "
                + (", ".join(self.thumb_layers) or "no layer")
                + (f"; slate tiles: no activations kept, or past the first {MAX_TOP_UNITS} units" if missing else "")
            )
        else:
            self._thumb_note = (
                "thumbnails: preferred inputs of "
                + (", ".join(self.thumb_layers) or "no layer")
                + (f"; slate tiles: `volviz optimize {store.path}` computes them" if missing else "")
            )
        if getattr(self.scene, "lod", "units") == "layers":
            self._thumb_note += " · overview: one tile per layer; choose a layer (camera) to see its units"

    def _build_later(self) -> bool:
        """Under the server: gather the graph in a background job, then build and show it; False
        without an event loop (build at once)."""
        import asyncio

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        f = self.focus
        path, store = f.path, f.store
        if self.job.running:
            self._wanted = path
            return True
        self._wanted = path
        self.state[S.G_NOTE] = self.redact(
            f"building the graph of {path}: tracing the model, reading the responses ..."
        )

        def done(data):
            if f.path != path:  # another store meanwhile: build that one
                self.sync(force=True)
                return
            try:
                self._build(data)
                self._colour()
                self.dirty = False
            except Exception as exc:  # noqa: BLE001
                self._failed(exc, path)
                return
            self.push()

        kind = self.state[S.G_THUMBS]
        self.job.start(
            lambda report: self._gather(store, f.model, kind, f.memo),
            done=done,
            failed=lambda exc: (self._failed(exc, path), self.state[S.G_NOTE])[1],
        )
        return True

    def _failed(self, exc, path) -> None:
        log.warning("graph: %s", exc)
        self.state[S.G_NOTE] = self.redact(f"graph: {exc}")
        self.failed = path

    def _apply_focus(self) -> None:
        layer = self.state[S.G_FOCUS]
        if layer and layer in self.scene.layout.planes:
            self.scene.view_layer(layer)
        else:
            self.scene.view_overview(zoom=OVERVIEW_ZOOM)

    # ------------------------------------------------------------------ drawing
    def _colour(self) -> None:
        from volviz.analysis.network_graph import unit_responses

        f, sc, mode = self.focus, self.scene, self.state[S.G_COLOR]
        image = f.image
        notes = [self._thumb_note]
        if mode == "response":
            sc.set_scales(self.response_scales)
            sc.update_activations(unit_responses(f.store, image, self.units))
            sc.set_legend(LEGEND_RESPONSE)
        else:
            imp = self.importance(mode)
            sc.set_scales({k: float(v.max()) for k, v in imp.items()})
            sc.update_activations(imp)
            what = (
                f"class-averaged for class {f.class_name(f.chosen_class())}"
                if mode == "importance-class"
                else "of this image"
            )
            sc.set_legend(
                "edges: weight after ReLU, cold -> hot\n"
                f"nodes: filter importance (norm of dS/dW_j), {what}; grey: below 5% of the layer's max"
            )
            notes.append(f"node colour: importance {what} (class: the pane's class select, default predicted)")
        if self.state[S.G_SIZE]:
            sizes = self.importance("importance-image" if mode == "importance-image" else "importance-class")
            sc.set_unit_scale(importance_sizes(sizes))
            notes.append("node size: importance")
        else:
            sc.set_unit_scale(None)
        sc.set_input_image(f.store.read_input(image))
        sc.set_label(f.caption(image))
        self.image = image
        self.state[S.G_NOTE] = self.redact(" · ".join(notes))
        self._mark_shown()

    def _mark_shown(self) -> None:
        """``g_shown`` names what the view shows (the page marks the view with it)."""
        st = self.state
        st[S.G_SHOWN] = (
            f"{self.redact(self.path)} · {st[S.G_COLOR]}{' · sized' if st[S.G_SIZE] else ''}"
            f" · {st[S.G_FOCUS] or 'overview'} · image {self.image}"
        )

    def sync(self, force: bool = False) -> None:
        """Show the pane's current image; only while the tab is shown (else: catch up later)."""
        if not self.active:
            self.dirty = True
            return
        f = self.focus
        if f.store is None or f.image is None:
            self.state[S.G_NOTE] = "no store shown in this pane"
            return
        if not force and self.failed == f.path:
            return  # the build failed for this store: not again on every slider step
        if (self.scene is None or self.path != f.path or self.kind != self.state[S.G_THUMBS]) and self.job.running:
            return  # being built: it shows the pane's image when done
        try:
            if self.scene is None or self.path != f.path or self.kind != self.state[S.G_THUMBS]:
                self.failed = None
                if self._build_later():
                    return
                self._build()
            if force or self.dirty or f.image != self.image:
                self._colour()
                self.dirty = False
        except Exception as exc:  # noqa: BLE001 - model refused or missing, untraceable model, no gradients
            log.warning("graph: %s", exc)
            self.state[S.G_NOTE] = self.redact(f"graph: {exc}")
            if self.scene is None or self.path != f.path:
                self.failed = f.path
            return
        self.push()

    def push(self) -> None:
        if self.view is not None:
            self.view.update()

    # ------------------------------------------------------------------ tab hooks and handlers
    def shown(self) -> None:
        self.sync()

    def follow(self) -> None:
        self.sync()

    @change(S.G_COLOR, S.G_SIZE)
    def _on_look(self, **_) -> None:
        self.sync(force=True)

    @change(S.G_THUMBS)
    def _on_thumbs(self, **_) -> None:
        """Preferred inputs or top dataset examples: the scene is rebuilt with the other tiles."""
        self.failed = None
        self.sync(force=True)

    @change(S.G_FOCUS)
    def _on_focus(self, **_) -> None:
        if self.scene is not None and self.active:
            self._apply_focus()
            self._mark_shown()
            self.push()

    @change(S.X_PANE)
    def _on_pane(self, **_) -> None:
        self.sync(force=True)

    @controller("graph_reset_camera")
    def reset_camera(self) -> None:
        if self.scene is not None:
            self._apply_focus()
            self.push()

    def close(self) -> None:
        if self.scene is not None:
            self.scene.close()
        self.plotter.close()
