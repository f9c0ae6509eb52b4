"""The explorer app: one class holding the trame server, its state and controller, the panes
(one store each, side by side) and the handlers that keep the VTK pipeline in step with the state.

Flow of one slider move: ``t_index`` changes -> :meth:`Explorer._on_index` -> the
:class:`~volviz.app.prefetch.Coalescer` (drops positions overtaken while a frame renders) ->
:meth:`Explorer.show_position`: per pane, one cached chunk (``ChunkCache``), ``scene.update()``
in place (same ImageData, same actors), captions and the visible 2-D panel, then one image push;
then the :class:`~volviz.app.prefetch.Prefetcher` reads the next chunks in a background thread.
A new layer, quantity or store rebuilds that pane's scene; order and look change in place.

The main tabs (Volume, Graph, Scene preview, Pruning) are views of their own
(:mod:`~volviz.app.graph_tab`, :mod:`~volviz.app.scene_tab`, :mod:`~volviz.app.prune_tab`);
a hidden tab's view is not in the page, so it is never rendered, and the Graph tab catches up
with the slider when it shows. The image order "class groups" (:mod:`~volviz.app.groups`) plays
seed 004's reference / similar / dissimilar sequence with one colour scale.

Every handler catches its errors and shows them in the page (the pane's alert, or the app
message) and in the log: a bad store, a vanished layer or a failed recording never stops the
server.
"""
from __future__ import annotations

import asyncio
import copy
import functools
import logging
import pathlib
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from volviz.analysis.sequence import store_sequence
from volviz.app import analysis_panels  # noqa: F401 - registers the Importance and Preferred panels
from volviz.app import state as S
from volviz.app.groups import OverrideStore, make_group_play
from volviz.app.panels import PANELS, PanelContext, PanelImage, input_rgb, png_data_url, prob_rows
from volviz.app.prefetch import ChunkCache, Coalescer, Prefetcher
from volviz.app.recording import FrameQueue, RecordingCancelled, composite, movie_path
from volviz.store.store import Store, StoreError

log = logging.getLogger("volviz.app")

QUANTITY_LABEL = {"activation": "activation", "grad_activation": "dS/da", "grad_weight": "dS/dW"}
RECORD_SIZE = (800, 608)          # multiples of 16: no padding in the MP4
PREFETCH_AHEAD = 6
CLIM_SAMPLES = 12                 # images sampled for a layer's colour range (fixed while stepping)
STEP_SAMPLE_DISTANCE = 2.0        # ray-cast image sample distance while the slider moves: 1/4 of
REFINE_AFTER_S = 0.3              # the rays; full quality again this long after the last step
pk = S.pane_key


def discover_stores(paths: list[str], extra_dirs: tuple[str, ...] = ("stores",)) -> list[dict]:
    """Store picker items: the stores given, then other stores next to them and under ``stores/``."""
    seen: dict[str, str] = {}
    for p in paths:
        seen.setdefault(str(pathlib.Path(p).resolve()), pathlib.Path(p).name or str(p))
    folders = {pathlib.Path(p).resolve().parent for p in paths} | \
        {pathlib.Path(d).resolve() for d in extra_dirs}
    for folder in sorted(folders):
        try:
            children = sorted(folder.iterdir())
        except OSError:
            continue
        for child in children:
            if (child / "plan.json").is_file():
                seen.setdefault(str(child), child.name)
    return [{"title": name, "value": path} for path, name in seen.items()]


class Pane:
    """One store in one column: the store, its volume source, scene, image sequence and view."""

    def __init__(self, index: int, plotter):
        self.index = index
        self.plotter = plotter
        self.view = None                 # the VtkRemoteView (set by the layout)
        self.path: str | None = None
        self.store: Store | None = None
        self.source = None
        self.scene = None
        self.shown = None                # LayerVolume drawn now
        self.layer: str | None = None
        self.quantity: str | None = None
        self.image: int | None = None    # store index of the image drawn now
        self.sequence = np.zeros(0, np.intp)
        self.clims: dict[tuple[str, str], tuple[float, float]] = {}
        self.columns: dict[str, np.ndarray] = {}
        self._model = None
        self.memo: dict = {}             # per store: importance, preferred inputs (see remember)
        self.play = None                 # GroupPlay while the image order is "class groups"
        self.variant = None              # what the volumes come from beyond the store (cache keys)
        self.panel_data: dict | None = None  # the numbers of the 2-D panel shown (tests read them)

    def remember(self, key, compute):
        """``compute()`` once per store (cleared when the pane opens another store)."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    def image_at(self, position: int) -> int | None:
        if not len(self.sequence):
            return None
        return int(self.sequence[min(max(int(position), 0), len(self.sequence) - 1)])

    def position_of(self, image: int) -> int:
        hits = np.flatnonzero(self.sequence == image)
        return int(hits[0]) if len(hits) else 0

    def model(self):
        """The store's model (for weights), loaded on first use."""
        if self._model is None:
            from volviz.sources.models import load_model
            spec = self.store.plan["model"]
            try:
                self._model = load_model(spec["spec"], spec.get("weights")).module
            except Exception as exc:  # noqa: BLE001
                raise RuntimeError(f"cannot load the model {spec['spec']!r}: {exc}") from None
        return self._model

    def close_scene(self) -> None:
        if self.scene is not None:
            self.scene.close()
        self.scene = self.shown = None
        self.layer = self.quantity = self.image = None


class Explorer:
    """The app. ``Explorer(["stores/digits"])``; ``serve()`` in :mod:`volviz.app.server` starts it.

    Parameters
    ----------
    stores : store folders; the first two are shown side by side, all are in the store picker.
    server : a trame server (default: ``get_server("volviz", client_type="vue3")``); tests pass a
        fresh one per test.
    record_dir : where recorded movies go (served under ``/recordings/`` for download).
    """

    def __init__(self, stores: list[str], server=None, record_dir: str | pathlib.Path = "out/recordings",
                 window_size: tuple[int, int] = (800, 600), build_ui: bool = True, scene_dirs=None,
                 prune_dir: str | pathlib.Path | None = None):
        if server is None:
            from trame.app import get_server
            server = get_server("volviz", client_type="vue3")
        self.server = server
        self.state, self.ctrl = server.state, server.controller
        self.record_dir = pathlib.Path(record_dir).resolve()
        self.record_dir.mkdir(parents=True, exist_ok=True)
        self.server.serve["recordings"] = str(self.record_dir)  # download links: recordings/NAME
        self.window_size = tuple(window_size)
        self.cache = ChunkCache()
        self.prefetcher = Prefetcher(self.cache)
        self.coalescer = Coalescer(self._show_position_guarded)
        self.stats = {"steps": 0, "rebuilds": 0, "step_ms": [], "rebuild_ms": []}
        self._play_task = None
        self._refine_handle = None
        self.fast_steps = True  # coarser renders while the slider moves (see set_step_quality)
        self._record_task = None
        self._record_cancel = False
        self._record_left_logged = False
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="volviz-writer")

        stores = [str(pathlib.Path(s).resolve()) for s in stores]  # = the store picker's values
        n = min(2, max(1, len(stores)))
        self.panes = [Pane(i, self._make_plotter()) for i in range(n)]
        self.state.update(copy.deepcopy(S.DEFAULTS))
        self._shown_sort = (S.DEFAULTS[S.T_SORT],)
        for pane in self.panes:
            self.state.update({pk(pane.index, f): copy.deepcopy(v) for f, v in S.PANE_DEFAULTS.items()})
        self.state[S.APP_N_PANES] = n
        self.state[S.APP_STORES] = discover_stores(stores)
        self._register()
        from volviz.app.graph_tab import GraphTab
        from volviz.app.prune_tab import PruneTab
        from volviz.app.scene_tab import SceneTab
        self.graph_tab = GraphTab(self)
        self.scene_tab = SceneTab(self, scene_dirs)
        self.prune_tab = PruneTab(self, prune_dir or self.record_dir.parent / "prune")
        if build_ui:
            self._build_ui()
        for pane, path in zip(self.panes, stores):
            self.state[pk(pane.index, "store")] = path
            self._open_store(pane, path)
        self._refresh_time()
        self._refresh_x_panes()
        self.prune_tab.refresh()
        self.state[S.APP_READY] = True

    # ------------------------------------------------------------------ setup
    def _make_plotter(self):
        import pyvista as pv
        return pv.Plotter(off_screen=True, window_size=list(self.window_size))

    def _build_ui(self) -> None:
        from volviz.app.ui import build_ui
        self.ui = build_ui(self)

    def _register(self) -> None:
        st, ctrl = self.state, self.ctrl
        st.change(S.V_QUANTITY)(self._on_quantity)
        st.change(S.V_ORDER, S.V_FIT, S.V_CLUSTERS)(self._on_order)
        st.change(S.V_CMAP, S.V_OPACITY, S.V_RANGE, S.V_DENSITY, S.V_SLICES, S.V_SLICE_X,
                  S.V_SLICE_Y, S.V_SLICE_Z, S.V_OUTLINE)(self._on_style)
        st.change(S.T_INDEX)(self._on_index)
        st.change(S.T_SORT, S.T_GROUP_CLASS, S.T_GROUP_N)(self._on_sort)
        st.change(S.SAL_ON, S.SAL_METHOD)(self._on_saliency)
        st.change(S.APP_TAB)(self._on_app_tab)
        st.change(S.T_PLAYING)(self._on_playing)
        st.change(S.PANEL_TAB)(self._on_panel_tab)
        for pane in self.panes:
            i = pane.index
            st.change(pk(i, "store"))(functools.partial(self._on_store, i))
            st.change(pk(i, "layer"))(functools.partial(self._on_layer, i))
            st.change(pk(i, "fc_layer"), pk(i, "sort_class"))(functools.partial(self._on_panel_pane, i))
        ctrl.view_update = self.push
        ctrl.reset_camera = self.reset_camera
        ctrl.graph_reset_camera = lambda: self.graph_tab.reset_camera()
        ctrl.toggle_play = self.toggle_play
        ctrl.step_forward = functools.partial(self.step, 1)
        ctrl.step_back = functools.partial(self.step, -1)
        ctrl.record = self.start_recording
        ctrl.cancel_record = self.cancel_recording
        ctrl.on_client_exited.add(self._on_client_exited)
        self.clients: set[str] = set()
        self.server.add_protocol_to_configure(self._watch_connections)

    def _watch_connections(self, root_protocol) -> None:
        """Count websocket connections (a browser that crashes or loses the network sends no
        'client exited' message: the socket closing is the reliable signal)."""
        from wslink.websocket import LinkProtocol

        app = self

        class ConnectionWatch(LinkProtocol):
            def onConnect(self, request, client_id):
                app.clients.add(client_id)

            def onClose(self, client_id):
                app.clients.discard(client_id)
                app._on_client_exited()

        root_protocol.registerLinkProtocol(ConnectionWatch())

    # ------------------------------------------------------------------ errors
    def _pane_error(self, pane: Pane, exc: BaseException | str) -> None:
        msg = str(exc)
        if isinstance(exc, BaseException) and not isinstance(exc, (StoreError, ValueError, KeyError, OSError)):
            log.exception("pane %d: %s", pane.index, msg)
            msg = f"{type(exc).__name__}: {msg}"
        else:
            log.warning("pane %d: %s", pane.index, msg)
        self.state[pk(pane.index, "error")] = msg

    def _clear_error(self, pane: Pane) -> None:
        self.state[pk(pane.index, "error")] = ""

    # ------------------------------------------------------------------ pipeline: stores
    def _open_store(self, pane: Pane, path: str) -> bool:
        """Show store ``path`` in ``pane`` (first conv layer, current slider position)."""
        pane.close_scene()
        pane.path, pane.store, pane.source = path, None, None
        pane.sequence, pane.clims, pane.columns, pane._model = np.zeros(0, np.intp), {}, {}, None
        pane.memo, pane.play, pane.variant, pane.panel_data = {}, None, None, None
        i = pane.index
        for f in ("layers", "fc_layers", "classes", "probs"):
            self.state[pk(i, f)] = []
        for f in ("caption", "input", "panel", "panel_note", "title", "group", "group_note", "sal_note"):
            self.state[pk(i, f)] = ""
        self.state[pk(i, "title")] = pathlib.Path(path).name
        try:
            store = Store.open(path)
            if not store.done.any():
                raise StoreError(f"{path} holds no captured image yet; run `volviz capture --resume "
                                 f"--out {path}` (or wait for the running capture)")
        except Exception as exc:  # noqa: BLE001 - missing, empty, newer, corrupt: all shown
            self._pane_error(pane, f"cannot open store {path}: {exc}")
            self._refresh_time()
            self._push(pane)
            return False
        pane.store = store
        pane.columns = {c: store.column(c) for c in ("probs", "label", "pred")}
        self._set_sequence(pane, self.state[S.T_SORT])
        layers = store.layers
        model = store.plan.get("model", {}).get("spec", "?")
        self.state[pk(i, "title")] = f"{pathlib.Path(path).name} · {model} · {int(store.done.sum())} images"
        self.state[pk(i, "layers")] = [
            {"title": f"{n}  ({info.kind} {'x'.join(map(str, info.act_shape))})", "value": n}
            for n, info in layers.items()]
        linear = [n for n, info in layers.items() if len(info.act_shape) == 1]
        self.state[pk(i, "fc_layers")] = [{"title": n, "value": n} for n in linear]
        names = store.class_names or [str(k) for k in range(pane.columns["probs"].shape[1])]
        self.state[pk(i, "classes")] = [{"title": "predicted class", "value": -1}] + \
            [{"title": f"class {nm}", "value": k} for k, nm in enumerate(names)]
        self.state[pk(i, "sort_class")] = -1
        # neuron panels: the linear layer feeding the class layer (seed 003's fc layer)
        self.state[pk(i, "fc_layer")] = linear[-2] if len(linear) > 1 else (linear[0] if linear else None)
        convs = [n for n, info in layers.items() if info.kind == "conv"]
        layer = convs[0] if convs else next(iter(layers))
        self.state[pk(i, "layer")] = layer
        if i == 0:
            self.state[S.ITEMS_GROUP_CLASSES] = [{"title": f"class {nm}", "value": k} for k, nm in enumerate(names)]
        self._clear_error(pane)
        self._refresh_time()
        self._refresh_x_panes()
        if i == int(self.state[S.X_PANE] or 0):
            self.prune_tab.refresh()
        return self._rebuild(pane, layer, self.state[S.V_QUANTITY])

    def _refresh_x_panes(self) -> None:
        """Items of the analysis tabs' store select (one per pane)."""
        self.state[S.X_PANES] = [{"title": self.state[pk(p.index, "title")] or f"pane {p.index + 1}",
                                  "value": p.index} for p in self.panes]

    def _set_sequence(self, pane: Pane, by: str) -> bool:
        """The pane's image order ``by``; for "class groups" also its labels and where its
        gradients come from. Returns True when the volumes' source changed (rebuild needed)."""
        old = pane.variant
        pane.play, pane.variant = None, None
        i = pane.index
        self.state[pk(i, "group")] = self.state[pk(i, "group_note")] = ""
        if by == S.GROUPS:
            ref, n = int(self.state[S.T_GROUP_CLASS] or 0), int(self.state[S.T_GROUP_N] or 1)
            try:
                pane.play = make_group_play(pane.store, ref, n)
                pane.variant = ("groups", ref, n)
                self.state[pk(i, "group_note")] = pane.play.note()
            except Exception as exc:  # noqa: BLE001 - no such class, nothing to compare with
                log.warning("pane %d: class groups: %s", i, exc)
                self.state[pk(i, "group_note")] = f"class groups: {exc}; playing the images as captured"
        pane.sequence = pane.play.sequence if pane.play is not None else \
            store_sequence(pane.store, by if by != S.GROUPS else "captured")
        if pane.source is None or old != pane.variant:
            from volviz.views.source import LayerVolumeSource
            pane.source = LayerVolumeSource(OverrideStore(pane.store) if pane.play is not None else pane.store)
            return True
        return False

    def _refresh_time(self) -> None:
        lengths = [len(p.sequence) for p in self.panes if p.store is not None]
        tmax = max(lengths) - 1 if lengths else 0
        self.state[S.T_MAX] = max(tmax, 0)
        if self.state[S.T_INDEX] > tmax:
            self.state[S.T_INDEX] = max(tmax, 0)

    # ------------------------------------------------------------------ pipeline: volumes
    def _order_params(self) -> tuple[str, str, int | None]:
        clusters = int(self.state[S.V_CLUSTERS] or 0)
        return self.state[S.V_ORDER], self.state[S.V_FIT], (clusters if clusters > 0 else None)

    def _lv_key(self, pane: Pane, image: int, layer: str, quantity: str):
        return ("lv", pane.path, pane.variant, layer, quantity, int(image), *self._order_params())

    def _loader(self, pane: Pane, image: int, layer: str, quantity: str):
        order, fit, clusters = self._order_params()
        source = pane.source
        return functools.partial(source.get, layer, quantity, int(image), order, fit, n_clusters=clusters)

    def load(self, pane: Pane, image: int, layer: str | None = None, quantity: str | None = None):
        """The LayerVolume of one image (cached; one store chunk)."""
        layer = layer or pane.layer
        quantity = quantity or pane.quantity
        return self.cache.get_or_load(self._lv_key(pane, image, layer, quantity),
                                      self._loader(pane, image, layer, quantity))

    def read(self, pane: Pane, quantity: str, layer: str, image: int) -> np.ndarray:
        """A raw store array (cached): the 2-D panels use it."""
        return self.cache.get_or_load(("raw", pane.path, quantity, layer, int(image)),
                                      functools.partial(pane.store.read, quantity, layer, int(image)))

    def _clim(self, pane: Pane, layer: str, quantity: str) -> tuple[float, float]:
        """Colour range of a layer over a sample of the images: fixed while the slider moves."""
        key = (pane.variant, layer, quantity)
        if key not in pane.clims and pane.play is not None:
            # class groups: ONE scale over the whole sequence (seed 004: magnitudes compare);
            # gradients: the largest |value| of the sequence, symmetric
            from volviz.views.colors import auto_clim
            from volviz.views.source import to_volume
            vols = [to_volume(pane.source.store.read(quantity, layer, int(k)), quantity)[0] for k in pane.sequence]
            grad = quantity != "activation"
            pane.clims[key] = auto_clim(vols, symmetric=True if grad else None, percentile=100 if grad else 99.5)
        if key not in pane.clims:
            from volviz.views.colors import auto_clim
            from volviz.views.source import to_volume
            done = np.flatnonzero(pane.store.done)
            pick = done[np.linspace(0, len(done) - 1, min(len(done), CLIM_SAMPLES)).astype(int)]
            vols = [to_volume(self.read(pane, quantity, layer, int(k)), quantity)[0] for k in pick]
            # gradients: symmetric around 0; activations: symmetric only when signed (pre-ReLU)
            pane.clims[key] = auto_clim(vols, symmetric=None if quantity == "activation" else True)
        return pane.clims[key]

    def _style(self, quantity: str, clim: tuple[float, float]):
        from volviz.views.volume import VolumeStyle
        st = self.state
        signed = clim[0] < 0 < clim[1]  # gradients, pre-ReLU responses: zero is transparent
        opacity = st[S.V_OPACITY] if st[S.V_OPACITY] != "auto" else ("diverging" if signed else "sigmoid")
        cmap = st[S.V_CMAP] if st[S.V_CMAP] != "auto" else ("RdBu_r" if signed else "inferno")
        lo, hi = clim
        a, b = sorted(float(x) for x in st[S.V_RANGE])
        a, b = min(max(a, 0.0), 100.0) / 100.0, min(max(b, 0.0), 100.0) / 100.0
        win = (lo + a * (hi - lo), lo + b * (hi - lo))
        if not win[1] > win[0]:
            eps = 1e-3 * (hi - lo) or 1e-6
            win = (win[0] - eps, win[0] + eps)
        return VolumeStyle(cmap=cmap, opacity=opacity, clim=win, density=float(st[S.V_DENSITY]),
                           show_slices=bool(st[S.V_SLICES]),
                           slice_positions=(float(st[S.V_SLICE_X]), float(st[S.V_SLICE_Y]),
                                            float(st[S.V_SLICE_Z])),
                           show_outline=bool(st[S.V_OUTLINE]),
                           scalar_bar_title=QUANTITY_LABEL.get(quantity, quantity))

    def _title(self, pane: Pane, layer: str, quantity: str) -> str:
        """Short (two panes share the width): the page shows the model and the image."""
        order, fit, _ = self._order_params()
        o = order if order == "natural" else f"{order} ({'per image' if fit == 'image' else 'set'})"
        return f"{layer} · {QUANTITY_LABEL.get(quantity, quantity)} · {o}"

    def _rebuild(self, pane: Pane, layer: str, quantity: str) -> bool:
        """A new scene for ``layer`` / ``quantity`` (shape changes); False (and the pane's error
        set, the old scene kept) when it cannot be shown."""
        from volviz.views.volume import LayerVolumeScene
        if pane.store is None:
            return False
        t0 = time.perf_counter()
        image = pane.image_at(self.state[S.T_INDEX])
        try:
            if pane.play is not None:  # class groups: the reference neuron's gradients, if computed
                pane.source.store.overrides.update(pane.play.overrides(pane.model, pane.store, layer, quantity))
            lv = self.load(pane, image, layer, quantity)
            clim = self._clim(pane, layer, quantity)
        except Exception as exc:  # noqa: BLE001 - vanished layer, missing gradients, ...
            self._pane_error(pane, exc)
            if pane.layer is not None:  # keep showing what works; the selects follow it
                self.state[pk(pane.index, "layer")] = pane.layer
            return False
        if pane.scene is not None:
            pane.scene.close()
        pane.scene = LayerVolumeScene(lv.volume, lv.order, lv.boundaries, self._style(quantity, clim),
                                      self._title(pane, layer, quantity), plotter=pane.plotter)
        pane.layer, pane.quantity, pane.shown, pane.image = layer, quantity, lv, image
        self._clear_error(pane)
        self._update_info(pane)
        self._update_panel(pane)
        self._push(pane)
        self.graph_tab.sync()
        self.stats["rebuilds"] += 1
        self.stats["rebuild_ms"].append((time.perf_counter() - t0) * 1e3)
        return True

    def _show_order(self, pane: Pane) -> None:
        lv = self.load(pane, pane.image)
        pane.scene.set_order(lv.order, lv.boundaries)
        pane.scene.set_title(self._title(pane, pane.layer, pane.quantity))
        pane.shown = lv
        self._update_panel(pane)
        self._push(pane)

    def set_step_quality(self, pane: Pane, fast: bool) -> bool:
        """Fast (coarser) ray casting while the slider moves or plays, full quality at rest.
        Returns True when the quality changed (the view then needs a new image)."""
        mapper = pane.scene.volume_actor.mapper if pane.scene is not None else None
        if mapper is None or not hasattr(mapper, "SetImageSampleDistance"):
            return False
        want = STEP_SAMPLE_DISTANCE if fast else 1.0
        if mapper.GetImageSampleDistance() == want:
            return False
        mapper.SetImageSampleDistance(want)
        return True

    def _refine(self) -> None:
        self._refine_handle = None
        if self.coalescer.busy:
            return
        with self.state:
            for pane in self.panes:
                if self.set_step_quality(pane, False):
                    self._push(pane)

    def show_position(self, position: int, fast: bool = False) -> None:
        """Every pane to slider position ``position``: scalars updated in place, no new actors.
        ``fast``: render this step coarser (the server does while the slider moves, then refines)."""
        t0 = time.perf_counter()
        for pane in self.panes:
            if pane.scene is None:
                continue
            self.set_step_quality(pane, fast)
            image = pane.image_at(position)
            if image is None or image == pane.image:
                continue
            try:
                lv = self.load(pane, image)
            except Exception as exc:  # noqa: BLE001
                self._pane_error(pane, exc)
                continue
            pane.scene.update(lv.volume)
            if not (np.array_equal(lv.order, pane.scene.order)
                    and np.array_equal(np.asarray(lv.boundaries), pane.scene.boundaries)):
                pane.scene.set_order(lv.order, lv.boundaries)
            pane.shown, pane.image = lv, image
            self._update_info(pane)
            self._update_panel(pane)
            self._push(pane)
        self.graph_tab.sync()
        self.stats["steps"] += 1
        self.stats["step_ms"].append((time.perf_counter() - t0) * 1e3)
        self._prefetch(position)

    def _show_position_guarded(self, position) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None  # in-process use: full quality at once
        with self.state:  # flush captions / images to the browsers after an async drain
            try:
                self.show_position(int(position), fast=loop is not None and self.fast_steps)
            except Exception as exc:  # noqa: BLE001
                log.exception("slider step failed")
                self.state[S.APP_MESSAGE] = f"slider step failed: {exc}"
        if loop is not None and self.fast_steps:
            if self._refine_handle is not None:
                self._refine_handle.cancel()
            self._refine_handle = loop.call_later(REFINE_AFTER_S, self._refine)

    def _prefetch(self, position: int) -> None:
        tmax, loop = int(self.state[S.T_MAX]), bool(self.state[S.T_LOOP])
        jobs = []
        for k in range(1, PREFETCH_AHEAD + 1):
            pos = position + k
            if pos > tmax:
                if not loop:
                    break
                pos %= tmax + 1
            for pane in self.panes:
                if pane.scene is None:
                    continue
                image = pane.image_at(pos)
                if image is None:
                    continue
                jobs.append((self._lv_key(pane, image, pane.layer, pane.quantity),
                             self._loader(pane, image, pane.layer, pane.quantity)))
        self.prefetcher.schedule(jobs)

    # ------------------------------------------------------------------ image info + 2-D panels
    def _update_info(self, pane: Pane) -> None:
        i, store, st = pane.image, pane.store, self.state
        probs, labels, preds = pane.columns["probs"], pane.columns["label"], pane.columns["pred"]
        names = store.class_names
        name = (lambda c: names[c] if names and 0 <= c < len(names) else str(c))
        lab, pred = int(labels[i]), int(preds[i])
        true = name(lab) if lab >= 0 else "?"
        pos = pane.position_of(i)
        group = pane.play.label_at(i) if pane.play is not None else ""
        st[pk(pane.index, "caption")] = (
            f"{pos + 1}/{len(pane.sequence)} · {group + ' · ' if group else ''}image {i} ({store.images[i]['id']}) · "
            f"true {true} · predicted {name(pred)} ({probs[i, pred]:.2f})")
        st[pk(pane.index, "group")] = group
        st[pk(pane.index, "correct")] = None if lab < 0 else bool(lab == pred)
        st[pk(pane.index, "probs")] = prob_rows(probs[i], lab, pred, names)
        st[pk(pane.index, "input")] = self._input_image(pane, i)
        pane.scene.set_label(f"image {i}" + (f"\n{group}" if group else ""))

    def _input_image(self, pane: Pane, i: int) -> str:
        """The input image as a PNG data URL; with the saliency switch on, the map of the
        predicted class over it (captum; cached per image and method)."""
        st, note = self.state, pk(pane.index, "sal_note")
        plain = input_rgb(pane.store.read_input(i))
        if not st[S.SAL_ON]:
            st[note] = ""
            return png_data_url(plain)
        method = st[S.SAL_METHOD] or "saliency"
        try:
            from volviz.app.analysis_panels import saliency_overlay
            rgb = self.cache.get_or_load(("saliency", pane.path, int(i), method),
                                         lambda: saliency_overlay(pane.model(), pane.store, i, method)[0])
        except Exception as exc:  # noqa: BLE001 - model missing, not differentiable
            log.warning("saliency: %s", exc)
            st[note] = f"saliency unavailable: {exc}"
            return png_data_url(plain)
        names = pane.store.class_names
        t = int(pane.columns["pred"][i])
        how = {"saliency": "gradient", "integrated-gradients": "integrated gradients",
               "guided-backprop": "guided backprop"}.get(method, method)
        st[note] = (f"saliency map ({how}): max over channels of |dS/dI| for the predicted class "
                    f"{names[t] if names and t < len(names) else t}; bright = large")
        return png_data_url(rgb)

    def _update_panel(self, pane: Pane) -> None:
        if self.state[S.APP_TAB] != "volume":
            return  # not in the page: computed when the Volume tab shows again
        tab = self.state[S.PANEL_TAB]
        panel = PANELS.get(tab)
        if panel is None or pane.shown is None:
            out = PanelImage(None, f"no panel {tab!r}" if panel is None else "")
        else:
            sort_class = self.state[pk(pane.index, "sort_class")]
            ctx = PanelContext(
                store=pane.store, image=pane.image, layer=pane.layer, quantity=pane.quantity,
                volume=pane.shown, fc_layer=self.state[pk(pane.index, "fc_layer")],
                sort_class=-1 if sort_class is None else int(sort_class),
                read=functools.partial(self.read, pane), model=pane.model, memo=pane.remember)
            try:
                out = panel.render(ctx)
            except Exception as exc:  # noqa: BLE001
                log.warning("panel %s failed: %s", tab, exc)
                out = PanelImage(None, f"{panel.title}: {exc}")
        pane.panel_data = out.data
        self.state[pk(pane.index, "panel")] = png_data_url(out.rgb) if out.rgb is not None else ""
        self.state[pk(pane.index, "panel_note")] = out.note

    # ------------------------------------------------------------------ view
    def _push(self, pane: Pane) -> None:
        """Send the pane's new image; ``p{i}_shown`` names what it shows (the page marks the
        view with it, tests wait for it)."""
        shown = "" if pane.scene is None else f"{pane.scene.title_text} · image {pane.image}"
        self.state[pk(pane.index, "shown")] = shown
        if pane.view is not None:
            pane.view.update()

    def push(self, index: int | None = None) -> None:
        """Send new images of every view (or of pane ``index``) to the browsers."""
        for pane in self.panes:
            if index is None or pane.index == index:
                self._push(pane)

    def reset_camera(self) -> None:
        for pane in self.panes:
            if pane.scene is not None:
                pane.scene.reset_camera()
        self.ctrl.view_update()

    # ------------------------------------------------------------------ handlers
    def _on_store(self, i: int, **_) -> None:
        pane = self.panes[i]
        path = self.state[pk(i, "store")]
        if not path or path == pane.path:
            return
        self._open_store(pane, path)

    def _on_layer(self, i: int, **_) -> None:
        pane = self.panes[i]
        layer = self.state[pk(i, "layer")]
        if pane.store is None or not layer or (layer == pane.layer and pane.scene is not None):
            return
        self._rebuild(pane, layer, self.state[S.V_QUANTITY])

    def _on_quantity(self, **_) -> None:
        q = self.state[S.V_QUANTITY]
        for pane in self.panes:
            if pane.store is not None and pane.layer and q != pane.quantity:
                self._rebuild(pane, pane.layer, q)

    def _on_order(self, **_) -> None:
        for pane in self.panes:
            if pane.scene is None:
                continue
            try:
                self._show_order(pane)
                self._clear_error(pane)
            except Exception as exc:  # noqa: BLE001
                self._pane_error(pane, exc)

    def _on_style(self, **_) -> None:
        for pane in self.panes:
            if pane.scene is None:
                continue
            try:
                clim = self._clim(pane, pane.layer, pane.quantity)
                pane.scene.set_style(self._style(pane.quantity, clim))
            except Exception as exc:  # noqa: BLE001
                self._pane_error(pane, exc)
            self._push(pane)

    def _on_index(self, **_) -> None:
        self.coalescer.request(int(self.state[S.T_INDEX]))

    def _sort_key(self) -> tuple:
        st = self.state
        return (st[S.T_SORT], st[S.T_GROUP_CLASS], st[S.T_GROUP_N]) if st[S.T_SORT] == S.GROUPS else (st[S.T_SORT],)

    def _on_sort(self, **_) -> None:
        """A new image order (or another reference class / group size for "class groups")."""
        if self._sort_key() == self._shown_sort:
            return  # only the class-groups settings changed, and another order plays
        self._shown_sort = self._sort_key()
        changed = {}
        for pane in self.panes:
            if pane.store is not None:
                changed[pane.index] = self._set_sequence(pane, self.state[S.T_SORT])
                pane.image = None  # redraw even when the first image is the same
        self._refresh_time()
        self.state[S.T_INDEX] = 0  # its handler finds everything drawn
        for pane in self.panes:
            if changed.get(pane.index) and pane.scene is not None:
                self._rebuild(pane, pane.layer, pane.quantity)  # other volumes, one colour scale
        self.show_position(0)

    def _on_saliency(self, **_) -> None:
        for pane in self.panes:
            if pane.scene is not None and pane.image is not None:
                self.state[pk(pane.index, "input")] = self._input_image(pane, pane.image)

    def _on_app_tab(self, **_) -> None:
        tab = self.state[S.APP_TAB]
        if tab != "scene":
            self.state[S.SC_PLAYING] = False
        if tab == "volume":  # panels were left alone while hidden; the views remount
            for pane in self.panes:
                if pane.scene is not None:
                    self._update_panel(pane)
                    self._push(pane)
        elif tab == "graph":
            self.graph_tab.sync()

    def _on_panel_tab(self, **_) -> None:
        for pane in self.panes:
            if pane.scene is not None:
                self._update_panel(pane)

    def _on_panel_pane(self, i: int, **_) -> None:
        pane = self.panes[i]
        if pane.scene is not None:
            self._update_panel(pane)

    # ------------------------------------------------------------------ time
    def step(self, delta: int = 1) -> int:
        """Move the slider by ``delta`` (wrapping when looping, else stopping playback at the end)."""
        st = self.state
        tmax, pos = int(st[S.T_MAX]), int(st[S.T_INDEX]) + int(delta)
        if pos > tmax or pos < 0:
            if st[S.T_LOOP]:
                pos %= tmax + 1
            else:
                pos = min(max(pos, 0), tmax)
                st[S.T_PLAYING] = False
        st[S.T_INDEX] = pos
        return pos

    def toggle_play(self) -> None:
        self.state[S.T_PLAYING] = not self.state[S.T_PLAYING]

    def _on_playing(self, **_) -> None:
        if not self.state[S.T_PLAYING]:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no server loop (in-process use): call step() yourself
            return
        if self._play_task is None or self._play_task.done():
            self._play_task = loop.create_task(self._play())

    async def _play(self) -> None:
        """Advance one image per 1/speed s; waits for each frame, so no image is skipped."""
        while self.state[S.T_PLAYING]:
            t0 = time.perf_counter()
            with self.state:
                self.step(1)
            await asyncio.sleep(0)
            while self.coalescer.busy:
                await asyncio.sleep(0.005)
            period = 1.0 / max(float(self.state[S.T_SPEED] or 1), 0.1)
            await asyncio.sleep(max(0.0, period - (time.perf_counter() - t0)))

    # ------------------------------------------------------------------ recording
    def _record_plan(self, mode: str):
        """(frames iterator, total, path) for the current view of every pane."""
        from volviz.record import orbit_frames
        from volviz.views.volume import LayerVolumeScene
        panes = [p for p in self.panes if p.scene is not None]
        if not panes:
            raise RuntimeError("nothing to record: no store is shown")
        if mode not in ("images", "rotate"):
            raise ValueError(f"unknown recording mode {mode!r}; use images or rotate")
        st = self.state
        tmax = int(st[S.T_MAX])
        if mode == "images":
            n = max(1, min(int(st[S.R_MAX_IMAGES] or 1), tmax + 1))
            start = int(st[S.T_INDEX])
            positions = [(start + k) % (tmax + 1) for k in range(n)]
            total = n
        else:
            total = max(2, int(st[S.R_FRAMES] or 2))
        first = panes[0]
        path = movie_path(self.record_dir, pathlib.Path(first.path).name, first.layer, first.quantity,
                          st[S.V_ORDER], mode)

        def frames():
            scenes = []
            try:
                for p in panes:
                    sc = LayerVolumeScene(p.shown.volume, p.shown.order, p.shown.boundaries, p.scene.style,
                                          p.scene.title_text, window_size=RECORD_SIZE)
                    sc.set_label(p.scene.label_text)
                    cam, live = sc.plotter.camera, p.plotter.camera
                    cam.position, cam.focal_point, cam.up = live.position, live.focal_point, live.up
                    cam.view_angle = live.view_angle
                    sc.plotter.renderer.ResetCameraClippingRange()
                    scenes.append((p, sc))
                if mode == "rotate":
                    orbits = [orbit_frames(sc, total) for _, sc in scenes]
                    for shots in zip(*orbits):
                        yield composite(list(shots))
                    return
                for pos in positions:
                    shots = []
                    for p, sc in scenes:
                        image = p.image_at(pos)
                        lv = self.load(p, image)
                        sc.update(lv.volume)
                        if not np.array_equal(lv.order, sc.order):
                            sc.set_order(lv.order, lv.boundaries)
                        names = p.store.class_names
                        lab, pred = int(p.columns["label"][image]), int(p.columns["pred"][image])
                        nm = (lambda c: names[c] if names and 0 <= c < len(names) else str(c))
                        sc.set_label(f"image {image}  true {nm(lab) if lab >= 0 else '?'}  pred {nm(pred)}")
                        shots.append(sc.screenshot())
                    yield composite(shots)
            finally:
                for _, sc in scenes:
                    sc.close()

        return frames(), total, path

    def record(self, mode: str | None = None) -> pathlib.Path:
        """Write a movie of the current view now (blocking): stepping through the images from the
        slider position on, or one turn around the volume. Returns the MP4's path."""
        from volviz.record import write_movie
        mode = mode or self.state[S.R_MODE]
        frames, total, path = self._record_plan(mode)
        done = write_movie(path, frames, fps=float(self.state[S.R_FPS]), total=total, progress=False)
        self._record_finished(done)
        return done

    def _record_finished(self, path: pathlib.Path) -> None:
        st = self.state
        st[S.R_FILE] = str(path)
        st[S.R_URL] = f"recordings/{path.name}"
        st[S.R_PROGRESS] = 100
        st[S.R_STATUS] = f"wrote {path}"
        log.info("recording written: %s", path)

    def start_recording(self) -> None:
        """The record button: a background job in the server loop (progress in the page)."""
        if self._record_task is not None and not self._record_task.done():
            self.state[S.R_STATUS] = "a recording is already running"
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.record()
            return
        self._record_cancel = False
        self._record_left_logged = False
        self._record_task = loop.create_task(self._record_async(self.state[S.R_MODE]))

    def cancel_recording(self) -> None:
        self._record_cancel = True

    async def _record_async(self, mode: str) -> None:
        from volviz.record import write_movie
        st = self.state
        loop = asyncio.get_running_loop()
        try:
            frames, total, path = self._record_plan(mode)
        except Exception as exc:  # noqa: BLE001
            with st:
                st[S.R_STATUS] = f"cannot record: {exc}"
            return
        queue = FrameQueue()
        with st:
            st[S.R_BUSY], st[S.R_PROGRESS], st[S.R_URL] = True, 0, ""
            st[S.R_STATUS] = f"recording {mode}: 0/{total} frames"
        writer = loop.run_in_executor(self._writer, functools.partial(
            write_movie, path, queue, fps=float(st[S.R_FPS]), total=total, progress=False))
        try:
            for k, frame in enumerate(frames, 1):
                while not queue.offer(frame):
                    await asyncio.sleep(0.01)
                    if writer.done():  # writer died: its error surfaces below
                        break
                if self._record_cancel:
                    raise RecordingCancelled("recording cancelled")
                with st:
                    st[S.R_PROGRESS] = round(100 * k / total)
                    st[S.R_STATUS] = f"recording {mode}: {k}/{total} frames"
                await asyncio.sleep(0)  # the page, the slider and other clients go on meanwhile
            queue.close()
            done = await writer
            with st:
                self._record_finished(done)
        except Exception as exc:  # noqa: BLE001 - cancelled, ffmpeg failed, disk full, ...
            queue.fail(exc if isinstance(exc, Exception) else RecordingCancelled(str(exc)))
            try:
                await writer
            except Exception:  # noqa: BLE001 - the same error, already reported
                pass
            frames.close()
            if not isinstance(exc, RecordingCancelled):
                log.exception("recording failed")
            with st:
                st[S.R_STATUS] = f"recording stopped: {exc}" if isinstance(exc, RecordingCancelled) \
                    else f"recording failed: {exc}"
        finally:
            with st:
                st[S.R_BUSY] = False

    def _on_client_exited(self, **_) -> None:
        if self._record_task is not None and not self._record_task.done():
            if not self._record_left_logged:
                self._record_left_logged = True
                log.warning("a browser left while a movie is being written; writing goes on, the "
                            "file will be offered for download on the next visit (folder %s)",
                            self.record_dir)
        else:
            log.info("a browser left (%d connected)", len(getattr(self, "clients", ())))

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        self.state[S.T_PLAYING] = False
        self.prefetcher.shutdown()
        self._writer.shutdown(wait=False, cancel_futures=True)
        for tab in (self.graph_tab, self.scene_tab, self.prune_tab):
            tab.close()
        for pane in self.panes:
            pane.close_scene()
            pane.plotter.close()
