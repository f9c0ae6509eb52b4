"""The Volume tab's 3-D views: one :class:`~volviz.views.volume.LayerVolumeScene` per pane, kept
in step with the drawer (quantity, filter order, look) and the time slider.

A slider step never rebuilds anything: per pane it takes one cached chunk
(:class:`~volviz.app.prefetch.ChunkCache`), writes it into the scene's scalars in place (same
ImageData, same actors), updates what sits beside the view, and pushes one image; the
:class:`~volviz.app.prefetch.Prefetcher` then reads the next chunks in a background thread. A new
layer, quantity or store rebuilds that pane's scene; order and look change in place. The colour
range of a layer is fixed while the slider moves (sampled over the store), so magnitudes compare.

Under the server, the slow part of a rebuild or an order change (reading the layer, its colour
range over 12 images, fitting a k-means order over 64 images: up to tens of seconds for a large
layer) runs as a :class:`~volviz.app.jobs.BackgroundJob`, one per pane, the newest request
winning; only the VTK part runs on the event loop, so the page (and every other session of the
server) keeps answering meanwhile. Without a loop (tests, scripts) everything happens at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time

import numpy as np

from volviz.app import state as S
from volviz.app.jobs import BackgroundJob
from volviz.app.prefetch import ChunkCache, Prefetcher
from volviz.app.wiring import bind, change, controller

log = logging.getLogger("volviz.app")

__all__ = ["VolumeView", "QUANTITY_LABEL"]

QUANTITY_LABEL = {"activation": "activation", "grad_activation": "dS/da", "grad_weight": "dS/dW"}
PREFETCH_AHEAD = 6
CLIM_SAMPLES = 12  # images sampled for a layer's colour range (fixed while stepping)
STEP_SAMPLE_DISTANCE = 2.0  # ray-cast image sample distance while the slider moves: 1/4 of
REFINE_AFTER_S = 0.3  # the rays; full quality again this long after the last step
pk = S.pane_key


#: an order fitted over the image set from more than this many bytes of activations is fitted in
#: a separate process (a k-means fit of a large layer holds the GIL for seconds at a time, which
#: would slow every session's steps); smaller ones in the background thread
FIT_IN_PROCESS_BYTES = 32 << 20
_FIT_POOL = None


def _fit_pool():
    global _FIT_POOL
    if _FIT_POOL is None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        _FIT_POOL = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_nice_process
        )
    return _FIT_POOL


def _nice_process() -> None:
    import os

    try:
        os.nice(10)
    except (AttributeError, OSError):
        pass


def fit_set_order(path: str, layer: str, quantity: str, order: str, kw: dict, max_fit_images: int, random_state):
    """``LayerVolumeSource.set_order`` of a store on disk (runs in the fitting process)."""
    from volviz.store.store import Store
    from volviz.views.source import LayerVolumeSource

    src = LayerVolumeSource(Store.open(path), max_fit_images=max_fit_images, random_state=random_state)
    return src.set_order(layer, quantity, order, **kw)


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _one_thread():
    """Numerical libraries on one thread in a background job: the other core renders."""
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1)
    except Exception:  # noqa: BLE001 - threadpoolctl missing: go on
        return contextlib.nullcontext()


class Preparer:
    """Background preparations of one pane, one at a time, in order. Requests have a kind
    ("rebuild": a layer / quantity / store; "order"): a newer request of a kind replaces the
    pending one of that kind, a rebuild also the pending order change (it loads with the order
    asked by then), and the result of a running job is dropped when a newer one of its kind came."""

    def __init__(self, state, pane):
        self.state = state
        self.job = BackgroundJob(state, f"preparing pane {pane.index + 1}", busy=pk(pane.index, "busy"))
        self.latest: dict[str, int] = {}
        self.pending: dict[str, tuple] = {}
        self._seq = 0

    @property
    def running(self) -> bool:
        return self.job.running or bool(self.pending)

    def request(self, kind: str, work, apply, fail) -> None:
        """``work()`` in a worker thread, then ``apply(result)`` (or ``fail(exc)``) on the loop."""
        self._seq += 1
        self.latest[kind] = self._seq
        if kind == "rebuild":
            self.pending.pop("order", None)
        req = (kind, self._seq, work, apply, fail)
        if self.job.running:
            self.pending[kind] = req
            return
        self._start(req)

    def _start(self, req) -> None:
        kind, seq, work, apply, fail = req

        def run(_report):
            with _one_thread():
                try:
                    return True, work()
                except Exception as exc:  # noqa: BLE001 - handed to fail() on the loop
                    return False, exc

        def done(result):
            ok, value = result
            if seq == self.latest.get(kind):  # not superseded by a newer request of its kind
                (apply if ok else fail)(value)

        self.job.start(run, done=done)
        if self.job.task is not None:
            self.job.task.add_done_callback(lambda _t: self._continue())

    def _continue(self) -> None:
        if self.job.running:
            return
        for kind in ("rebuild", "order"):
            if kind in self.pending:
                req = self.pending.pop(kind)
                with self.state:
                    self._start(req)
                return

    def close(self) -> None:
        self.pending.clear()
        self.job.close()


class VolumeView:
    """The panes' scenes: build, update in place, restyle, reorder, push to the browsers."""

    def __init__(self, app, cache: ChunkCache | None = None):
        self.app, self.state = app, app.state
        self.cache = cache if cache is not None else ChunkCache()
        self.prefetcher = Prefetcher(self.cache)
        self.preparers: dict[int, Preparer] = {}
        self.stats = {"steps": 0, "rebuilds": 0, "step_ms": [], "rebuild_ms": []}
        bind(self, app.server)

    def preparer(self, pane) -> Preparer:
        if pane.index not in self.preparers:
            self.preparers[pane.index] = Preparer(self.state, pane)
        return self.preparers[pane.index]

    def target(self, pane) -> tuple[str | None, str | None]:
        """The layer and quantity the pane shows, or will show once its pending rebuild is done."""
        want = getattr(pane, "want", None)
        return want if want is not None and self.preparing(pane) else (pane.layer, pane.quantity)

    def preparing(self, pane) -> bool:
        p = self.preparers.get(pane.index)
        return p is not None and p.running

    @property
    def panes(self):
        return self.app.panes

    # ------------------------------------------------------------------ volumes and their cache
    def _order_params(self) -> tuple[str, str, int | None, int | None]:
        clusters = int(self.state[S.V_CLUSTERS] or 0)
        order = self.state[S.V_ORDER]
        row = int(self.state[S.V_SLICE_ROW] or 0) if str(order).startswith("slice") else None
        return order, self.state[S.V_FIT], (clusters if clusters > 0 else None), row

    @staticmethod
    def _order_kw(pane, layer: str, clusters, row) -> dict:
        """The source's keywords: the clusters, and for the slice orders the slider's row clamped
        to this layer's height (two panes may show layers of different heights)."""
        kw = {"n_clusters": clusters}
        shape = tuple(getattr(pane.store.layers.get(layer), "act_shape", ()) or ())
        if row is not None and len(shape) == 3:
            kw["index"] = min(max(int(row), 0), shape[1] - 1)
        return kw

    def _slice_row_max(self) -> int:
        """The slice row slider's bound: the tallest layer of maps the panes show, minus one."""
        heights = [
            tuple(p.store.layers[p.layer].act_shape)[1]
            for p in self.panes
            if p.store is not None and p.layer in p.store.layers and len(p.store.layers[p.layer].act_shape) == 3
        ]
        return max(heights, default=1) - 1

    def _key(self, pane, image: int, layer: str, quantity: str, params=None):
        return ("lv", pane.path, pane.variant, layer, quantity, int(image), *(params or self._order_params()))

    def _loader(self, pane, image: int, layer: str, quantity: str, params=None):
        order, fit, clusters, row = params or self._order_params()
        kw = self._order_kw(pane, layer, clusters, row)
        return functools.partial(pane.source.get, layer, quantity, int(image), order, fit, **kw)

    def fit_order_apart(self, pane, layer: str, quantity: str, params) -> None:
        """Fit a large set order in the fitting process and hand it to the pane's source (a
        background job calls this before ``load``; nothing happens for small or per-image fits,
        for orders already fitted, or for the class-groups source, which holds computed arrays)."""
        order, fit, clusters, row = params
        src = pane.source
        order = str(order).lower().replace("_", "-")
        if fit != "set" or order == "natural" or pane.play is not None or src is None:
            return
        kw = self._order_kw(pane, layer, clusters, row)
        key = (layer, quantity, order, tuple(sorted(kw.items())))
        info = pane.store.layers.get(layer)
        if key in src._set_orders or info is None or len(info.act_shape) < 2:
            return
        n = min(int(pane.store.done.sum()), src.max_fit_images)
        if n * int(np.prod(info.act_shape)) * 4 < FIT_IN_PROCESS_BYTES:
            return
        src._set_orders[key] = (
            _fit_pool()
            .submit(fit_set_order, str(pane.path), layer, quantity, order, kw, src.max_fit_images, src.random_state)
            .result()
        )

    def load(self, pane, image: int, layer: str | None = None, quantity: str | None = None, params=None):
        """The LayerVolume of one image (cached; one store chunk). ``params``: (order, fit,
        clusters), default the drawer's now."""
        layer, quantity = layer or pane.layer, quantity or pane.quantity
        return self.cache.get_or_load(
            self._key(pane, image, layer, quantity, params), self._loader(pane, image, layer, quantity, params)
        )

    def read(self, pane, quantity: str, layer: str, image: int) -> np.ndarray:
        """A raw store array (cached): the 2-D panels use it."""
        return self.cache.get_or_load(
            ("raw", pane.path, quantity, layer, int(image)),
            functools.partial(pane.store.read, quantity, layer, int(image)),
        )

    def clim(self, pane, layer: str, quantity: str) -> tuple[float, float]:
        """Colour range of a layer over a sample of the images: fixed while the slider moves."""
        from volviz.views.colors import auto_clim
        from volviz.views.source import to_volume

        key = (pane.variant, layer, quantity)
        if key not in pane.clims and pane.play is not None:
            # class groups: ONE scale over the whole sequence ([Jain2016]: magnitudes compare);
            # gradients: the largest |value| of the sequence, symmetric
            vols = [to_volume(pane.source.store.read(quantity, layer, int(k)), quantity)[0] for k in pane.sequence]
            grad = quantity != "activation"
            pane.clims[key] = auto_clim(vols, symmetric=True if grad else None, percentile=100 if grad else 99.5)
        if key not in pane.clims:
            done = np.flatnonzero(pane.store.done)
            pick = done[np.linspace(0, len(done) - 1, min(len(done), CLIM_SAMPLES)).astype(int)]
            vols = [to_volume(self.read(pane, quantity, layer, int(k)), quantity)[0] for k in pick]
            # gradients: symmetric around 0; activations: symmetric only when signed (pre-ReLU)
            pane.clims[key] = auto_clim(vols, symmetric=None if quantity == "activation" else True)
        return pane.clims[key]

    def style(self, quantity: str, clim: tuple[float, float]):
        """The drawer's look for one quantity and colour range ("auto": by the sign of the data)."""
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
        return VolumeStyle(
            cmap=cmap,
            opacity=opacity,
            clim=win,
            density=float(st[S.V_DENSITY]),
            show_slices=bool(st[S.V_SLICES]),
            slice_positions=(float(st[S.V_SLICE_X]), float(st[S.V_SLICE_Y]), float(st[S.V_SLICE_Z])),
            show_outline=bool(st[S.V_OUTLINE]),
            scalar_bar_title=QUANTITY_LABEL.get(quantity, quantity),
        )

    def _title(self, layer: str, quantity: str) -> str:
        """Short (two panes share the width): the page shows the model and the image."""
        order, fit, *_ = self._order_params()
        o = order if order == "natural" else f"{order} ({'per image' if fit == 'image' else 'set'})"
        return f"{layer} · {QUANTITY_LABEL.get(quantity, quantity)} · {o}"

    # ------------------------------------------------------------------ building and stepping
    def rebuild(self, pane, layer: str, quantity: str) -> bool:
        """A new scene for ``layer`` / ``quantity`` (shape changes); False (and the pane's error
        set, the old scene kept) when it cannot be shown. Under the server the reading runs in
        the background (True: started) and the scene is built on the loop when it is done."""
        if pane.store is None:
            return False
        t0 = time.perf_counter()
        image = pane.image_at(self.state[S.T_INDEX])
        pane.want = (layer, quantity)

        def work():
            params = self._order_params()  # as asked when the work starts
            if pane.play is not None:  # class groups: the reference neuron's gradients, if computed
                pane.source.store.overrides.update(pane.play.overrides(pane.model, pane.store, layer, quantity))
            elif _running_loop() is None and threading.current_thread() is not threading.main_thread():
                self.fit_order_apart(pane, layer, quantity, params)
            return self.load(pane, image, layer, quantity, params), self.clim(pane, layer, quantity)

        def fail(exc):
            pane.error(exc)
            if pane.layer is not None:  # keep showing what works; the selects follow it
                self.state[pk(pane.index, "layer")] = pane.layer
            return False

        if _running_loop() is None:
            try:
                lv, clim = work()
            except Exception as exc:  # noqa: BLE001 - vanished layer, missing gradients, model refused
                return fail(exc)
            return self._build(pane, layer, quantity, lv, clim, t0)
        store = pane.store
        self.preparer(pane).request(
            "rebuild", work, lambda r: pane.store is store and self._build(pane, layer, quantity, *r, t0), fail
        )
        return True

    def _build(self, pane, layer: str, quantity: str, lv, clim, t0: float) -> bool:
        from volviz.views.volume import LayerVolumeScene

        if pane.scene is not None:
            pane.scene.close()
        pane.scene = LayerVolumeScene(
            lv.volume,
            lv.order,
            lv.boundaries,
            self.style(quantity, clim),
            self._title(layer, quantity),
            plotter=pane.plotter,
        )
        pane.layer, pane.quantity, pane.shown, pane.image = layer, quantity, lv, lv.image
        self.state[S.V_SLICE_ROW_MAX] = self._slice_row_max()
        pane.clear_error()
        pane.update_info()
        pane.update_panel()
        self.push(pane)
        self.app.tabs_follow()
        self.stats["rebuilds"] += 1
        self.stats["rebuild_ms"].append((time.perf_counter() - t0) * 1e3)
        self._catch_up(pane)
        return True

    def _catch_up(self, pane) -> None:
        """The slider moved while the pane was being prepared: show where it is now."""
        if _running_loop() is None or pane.scene is None:
            return
        if pane.image_at(self.state[S.T_INDEX]) != pane.image:
            self.app.time.coalescer.request(int(self.state[S.T_INDEX]))

    def preload(self, position: int) -> None:
        """Read (and order) the volumes of ``position`` into the cache: the slider runs this in a
        worker thread before drawing the step on the loop."""
        for pane in self.panes:
            if pane.scene is None or self.preparing(pane):
                continue
            image = pane.image_at(position)
            if image is None or image == pane.image:
                continue
            try:
                self.load(pane, image)
            except Exception:  # noqa: BLE001 - the step itself reports it
                pass

    def show_position(self, position: int, fast: bool = False) -> None:
        """Every pane to slider position ``position``: scalars updated in place, no new actors.
        ``fast``: render this step coarser (the server does while the slider moves, then refines)."""
        t0 = time.perf_counter()
        for pane in self.panes:
            if pane.scene is None or self.preparing(pane):  # it catches up when prepared
                continue
            self.set_step_quality(pane, fast)
            image = pane.image_at(position)
            if image is None or image == pane.image:
                continue
            try:
                lv = self.load(pane, image)
            except Exception as exc:  # noqa: BLE001
                pane.error(exc)
                continue
            pane.scene.update(lv.volume)
            if not (
                np.array_equal(lv.order, pane.scene.order)
                and np.array_equal(np.asarray(lv.boundaries), pane.scene.boundaries)
            ):
                pane.scene.set_order(lv.order, lv.boundaries)
            pane.shown, pane.image = lv, image
            pane.update_info()
            pane.update_panel()
            self.push(pane)
        self.app.tabs_follow()
        self.stats["steps"] += 1
        self.stats["step_ms"].append((time.perf_counter() - t0) * 1e3)
        self.prefetch(position)

    def prefetch(self, position: int) -> None:
        """Read the chunks of the next positions (every pane) in the background."""
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
                if image is not None:
                    jobs.append(
                        (
                            self._key(pane, image, pane.layer, pane.quantity),
                            self._loader(pane, image, pane.layer, pane.quantity),
                        )
                    )
        self.prefetcher.schedule(jobs)

    def set_step_quality(self, pane, fast: bool) -> bool:
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

    def refine(self) -> None:
        """Full quality again after the slider stopped (the server calls this a little later)."""
        with self.state:
            for pane in self.panes:
                if self.set_step_quality(pane, False):
                    self.push(pane)

    # ------------------------------------------------------------------ handlers
    @change(S.V_QUANTITY)
    def _on_quantity(self, **_) -> None:
        q = self.state[S.V_QUANTITY]
        for pane in self.panes:
            layer, quantity = self.target(pane)
            if pane.store is not None and layer and q != quantity:
                self.rebuild(pane, layer, q)
            elif pane.scene is not None and q == quantity:  # back to what is shown: its error is gone
                pane.clear_error()

    @change(S.V_ORDER, S.V_FIT, S.V_CLUSTERS, S.V_SLICE_ROW)
    def _on_order(self, **_) -> None:
        params = self._order_params()
        for pane in self.panes:
            if pane.scene is None and not self.preparing(pane):
                continue

            def work(pane=pane):  # the pane's scene and image when it runs (after a pending rebuild)
                if _running_loop() is None and threading.current_thread() is not threading.main_thread():
                    self.fit_order_apart(pane, pane.layer, pane.quantity, params)
                return pane.scene, self.load(pane, pane.image, params=params)

            def apply(result, pane=pane):
                scene, lv = result
                if pane.scene is None or pane.scene is not scene:
                    return
                pane.scene.set_order(lv.order, lv.boundaries)
                pane.scene.set_title(self._title(pane.layer, pane.quantity))
                pane.shown = lv
                pane.update_panel()
                self.push(pane)
                pane.clear_error()
                self._catch_up(pane)

            if _running_loop() is None:
                try:
                    apply(work())
                except Exception as exc:  # noqa: BLE001
                    pane.error(exc)
                continue
            self.preparer(pane).request("order", work, apply, pane.error)

    @change(
        S.V_CMAP, S.V_OPACITY, S.V_RANGE, S.V_DENSITY, S.V_SLICES, S.V_SLICE_X, S.V_SLICE_Y, S.V_SLICE_Z, S.V_OUTLINE
    )
    def _on_style(self, **_) -> None:
        for pane in self.panes:
            if pane.scene is None:
                continue
            try:
                pane.scene.set_style(self.style(pane.quantity, self.clim(pane, pane.layer, pane.quantity)))
            except Exception as exc:  # noqa: BLE001
                pane.error(exc)
            self.push(pane)

    # ------------------------------------------------------------------ view
    def push(self, pane) -> None:
        """Send the pane's new image; ``p{i}_shown`` names what it shows (the page marks the
        view with it, tests wait for it)."""
        shown = "" if pane.scene is None else f"{pane.scene.title_text} · image {pane.image}"
        self.state[pk(pane.index, "shown")] = shown
        if pane.view is not None:
            pane.view.update()

    @controller("view_update")
    def push_all(self, index: int | None = None) -> None:
        """Send new images of every view (or of pane ``index``) to the browsers."""
        for pane in self.panes:
            if index is None or pane.index == index:
                self.push(pane)

    @controller("reset_camera")
    def reset_camera(self) -> None:
        for pane in self.panes:
            if pane.scene is not None:
                pane.scene.reset_camera()
        self.push_all()

    def show_volume_tab(self) -> None:
        """The Volume tab shows again: its panels were left alone while hidden; the views remount."""
        for pane in self.panes:
            if pane.scene is not None:
                pane.update_panel()
                self.push(pane)

    def close(self) -> None:
        for p in self.preparers.values():
            p.close()
        self.prefetcher.shutdown()
