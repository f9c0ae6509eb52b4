"""The Volume tab's 3-D views: one :class:`~volviz.views.volume.LayerVolumeScene` per pane, kept
in step with the drawer (quantity, filter order, look) and the time slider.

A slider step never rebuilds anything: per pane it takes one cached chunk
(:class:`~volviz.app.prefetch.ChunkCache`), writes it into the scene's scalars in place (same
ImageData, same actors), updates what sits beside the view, and pushes one image; the
:class:`~volviz.app.prefetch.Prefetcher` then reads the next chunks in a background thread. A new
layer, quantity or store rebuilds that pane's scene; order and look change in place. The colour
range of a layer is fixed while the slider moves (sampled over the store), so magnitudes compare.
"""
from __future__ import annotations

import functools
import logging
import time

import numpy as np

from volviz.app import state as S
from volviz.app.prefetch import ChunkCache, Prefetcher
from volviz.app.wiring import bind, change, controller

log = logging.getLogger("volviz.app")

__all__ = ["VolumeView", "QUANTITY_LABEL"]

QUANTITY_LABEL = {"activation": "activation", "grad_activation": "dS/da", "grad_weight": "dS/dW"}
PREFETCH_AHEAD = 6
CLIM_SAMPLES = 12                 # images sampled for a layer's colour range (fixed while stepping)
STEP_SAMPLE_DISTANCE = 2.0        # ray-cast image sample distance while the slider moves: 1/4 of
REFINE_AFTER_S = 0.3              # the rays; full quality again this long after the last step
pk = S.pane_key


class VolumeView:
    """The panes' scenes: build, update in place, restyle, reorder, push to the browsers."""

    def __init__(self, app):
        self.app, self.state = app, app.state
        self.cache = ChunkCache()
        self.prefetcher = Prefetcher(self.cache)
        self.stats = {"steps": 0, "rebuilds": 0, "step_ms": [], "rebuild_ms": []}
        bind(self, app.server)

    @property
    def panes(self):
        return self.app.panes

    # ------------------------------------------------------------------ volumes and their cache
    def _order_params(self) -> tuple[str, str, int | None]:
        clusters = int(self.state[S.V_CLUSTERS] or 0)
        return self.state[S.V_ORDER], self.state[S.V_FIT], (clusters if clusters > 0 else None)

    def _key(self, pane, image: int, layer: str, quantity: str):
        return ("lv", pane.path, pane.variant, layer, quantity, int(image), *self._order_params())

    def _loader(self, pane, image: int, layer: str, quantity: str):
        order, fit, clusters = self._order_params()
        return functools.partial(pane.source.get, layer, quantity, int(image), order, fit, n_clusters=clusters)

    def load(self, pane, image: int, layer: str | None = None, quantity: str | None = None):
        """The LayerVolume of one image (cached; one store chunk)."""
        layer, quantity = layer or pane.layer, quantity or pane.quantity
        return self.cache.get_or_load(self._key(pane, image, layer, quantity),
                                      self._loader(pane, image, layer, quantity))

    def read(self, pane, quantity: str, layer: str, image: int) -> np.ndarray:
        """A raw store array (cached): the 2-D panels use it."""
        return self.cache.get_or_load(("raw", pane.path, quantity, layer, int(image)),
                                      functools.partial(pane.store.read, quantity, layer, int(image)))

    def clim(self, pane, layer: str, quantity: str) -> tuple[float, float]:
        """Colour range of a layer over a sample of the images: fixed while the slider moves."""
        from volviz.views.colors import auto_clim
        from volviz.views.source import to_volume
        key = (pane.variant, layer, quantity)
        if key not in pane.clims and pane.play is not None:
            # class groups: ONE scale over the whole sequence (seed 004: magnitudes compare);
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
        return VolumeStyle(cmap=cmap, opacity=opacity, clim=win, density=float(st[S.V_DENSITY]),
                           show_slices=bool(st[S.V_SLICES]),
                           slice_positions=(float(st[S.V_SLICE_X]), float(st[S.V_SLICE_Y]),
                                            float(st[S.V_SLICE_Z])),
                           show_outline=bool(st[S.V_OUTLINE]),
                           scalar_bar_title=QUANTITY_LABEL.get(quantity, quantity))

    def _title(self, layer: str, quantity: str) -> str:
        """Short (two panes share the width): the page shows the model and the image."""
        order, fit, _ = self._order_params()
        o = order if order == "natural" else f"{order} ({'per image' if fit == 'image' else 'set'})"
        return f"{layer} · {QUANTITY_LABEL.get(quantity, quantity)} · {o}"

    # ------------------------------------------------------------------ building and stepping
    def rebuild(self, pane, layer: str, quantity: str) -> bool:
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
            clim = self.clim(pane, layer, quantity)
        except Exception as exc:  # noqa: BLE001 - vanished layer, missing gradients, model refused
            pane.error(exc)
            if pane.layer is not None:  # keep showing what works; the selects follow it
                self.state[pk(pane.index, "layer")] = pane.layer
            return False
        if pane.scene is not None:
            pane.scene.close()
        pane.scene = LayerVolumeScene(lv.volume, lv.order, lv.boundaries, self.style(quantity, clim),
                                      self._title(layer, quantity), plotter=pane.plotter)
        pane.layer, pane.quantity, pane.shown, pane.image = layer, quantity, lv, image
        pane.clear_error()
        pane.update_info()
        pane.update_panel()
        self.push(pane)
        self.app.tabs_follow()
        self.stats["rebuilds"] += 1
        self.stats["rebuild_ms"].append((time.perf_counter() - t0) * 1e3)
        return True

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
                pane.error(exc)
                continue
            pane.scene.update(lv.volume)
            if not (np.array_equal(lv.order, pane.scene.order)
                    and np.array_equal(np.asarray(lv.boundaries), pane.scene.boundaries)):
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
                    jobs.append((self._key(pane, image, pane.layer, pane.quantity),
                                 self._loader(pane, image, pane.layer, pane.quantity)))
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
            if pane.store is not None and pane.layer and q != pane.quantity:
                self.rebuild(pane, pane.layer, q)

    @change(S.V_ORDER, S.V_FIT, S.V_CLUSTERS)
    def _on_order(self, **_) -> None:
        for pane in self.panes:
            if pane.scene is None:
                continue
            try:
                lv = self.load(pane, pane.image)
                pane.scene.set_order(lv.order, lv.boundaries)
                pane.scene.set_title(self._title(pane.layer, pane.quantity))
                pane.shown = lv
                pane.update_panel()
                self.push(pane)
                pane.clear_error()
            except Exception as exc:  # noqa: BLE001
                pane.error(exc)

    @change(S.V_CMAP, S.V_OPACITY, S.V_RANGE, S.V_DENSITY, S.V_SLICES, S.V_SLICE_X, S.V_SLICE_Y,
            S.V_SLICE_Z, S.V_OUTLINE)
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
        self.prefetcher.shutdown()
