"""One pane: one store in one column and what its view shows now (layer, quantity, image, the
image sequence of the time slider), with the state keys ``p{i}_*`` and the handlers of its own
controls (store picker, layer, the neuron panels' selects) and of what sits beside its 3-D view
(caption, input image with the saliency overlay, class probabilities, the 2-D panel).

The scene itself is drawn by :class:`~volviz.app.volume_view.VolumeView`; the store's model is
loaded here, once, with the trust flags of the ``volviz serve`` command line (a store alone can
never make the app unpickle or import code).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import pathlib

import numpy as np

from volviz.analysis.saliency import SALIENCY_METHODS
from volviz.analysis.sequence import store_sequence
from volviz.app import state as S
from volviz.app.groups import OverrideStore, make_group_play
from volviz.app.jobs import BackgroundJob
from volviz.app.panels import PANELS, PanelContext, PanelImage, PanelPending, input_rgb, png_data_url, prob_rows
from volviz.app.wiring import bind, change, pane
from volviz.errors import ModelLoadError, StoreError, VolvizError
from volviz.store.store import Store

log = logging.getLogger("volviz.app")
pk = S.pane_key

__all__ = ["Pane", "discover_stores"]


def discover_stores(paths: list[str], extra_dirs: tuple[str, ...] = ("stores",)) -> list[dict]:
    """Store picker items: the stores given, then other stores next to them and under ``stores/``."""
    seen: dict[str, str] = {}
    for p in paths:
        seen.setdefault(str(pathlib.Path(p).resolve()), pathlib.Path(p).name or str(p))
    folders = {pathlib.Path(p).resolve().parent for p in paths} | {pathlib.Path(d).resolve() for d in extra_dirs}
    for folder in sorted(folders):
        try:
            children = sorted(folder.iterdir())
        except OSError:
            continue
        for child in children:
            if (child / "plan.json").is_file():  # a capture started there (Store.open says more)
                seen.setdefault(str(child), child.name)
    return [{"title": name, "value": path} for path, name in seen.items()]


class _Failed:
    """A background computation that raised: kept in the memo in place of its result."""

    def __init__(self, exc: BaseException):
        self.exc = exc


class Pane:
    """One store in one column. ``app.panes[i]``; the app makes one or two."""

    def __init__(self, app, index: int, plotter):
        self.app, self.state, self.index, self.plotter = app, app.state, index, plotter
        self.view = None  # the VtkRemoteView (set by the layout)
        self.scene = None  # LayerVolumeScene
        self._forget(None)
        # the slow part of a 2-D panel (ctx.background): one run at a time, the newest wish after it
        self.panel_job = BackgroundJob(app.state, f"panel of pane {index + 1}", busy=pk(index, "panel_busy"))
        self.state.update({pk(index, f): copy.deepcopy(v) for f, v in S.PANE_DEFAULTS.items()})
        bind(self, app.server)

    def _forget(self, path: str | None) -> None:
        """Everything that belongs to the store shown (cleared when another one opens)."""
        self.path, self.store, self.source = path, None, None
        self.store_id = None
        self.want = None  # (layer, quantity) of a rebuild under way
        self.shown = None  # LayerVolume drawn now
        self.layer = self.quantity = self.image = None
        self.sequence = np.zeros(0, np.intp)
        self.clims: dict[tuple, tuple[float, float]] = {}
        self.columns: dict[str, np.ndarray] = {}
        self._model, self._model_error = None, None
        self.memo: dict = {}  # importance, preferred inputs (see remember)
        self.play = None  # GroupPlay while the image order is "class groups"
        self.variant = None  # what the volumes come from beyond the store (cache keys)
        self.panel_data: dict | None = None  # the numbers of the 2-D panel shown (tests read them)

    # ------------------------------------------------------------------ the store
    def open(self, store_id: str) -> bool:
        """Show the catalog's store ``store_id`` (first conv layer, current slider position); False
        (and the message in the pane) when it cannot be opened."""
        st, i = self.state, self.index
        choice = self.app.catalog.store(store_id)
        if choice is None:  # never a path: only what the server listed
            self.error(f"no store {str(store_id)[:40]!r} is offered by this server")
            return False
        path = str(choice.path)
        self.close_scene()
        self._forget(path)
        self.store_id = choice.id
        for f in ("layers", "fc_layers", "classes", "probs"):
            st[pk(i, f)] = []
        for f in ("caption", "input", "panel", "panel_note", "title", "group", "group_note", "sal_note"):
            st[pk(i, f)] = ""
        st[pk(i, "title")] = choice.title
        try:
            store = Store.open(path)
            if not store.done.any():
                raise StoreError(
                    f"{path} holds no captured image yet; run `volviz capture --resume "
                    f"--out {path}` (or wait for the running capture)"
                )
        except Exception as exc:  # noqa: BLE001 - missing, empty, newer, corrupt: all shown
            self.error(f"cannot open store {path}: {exc}")
            self.app.time.refresh()
            self.app.volume.push(self)
            return False
        self.store = store
        self.columns = {c: store.column(c) for c in ("probs", "label", "pred")}
        self.set_sequence(st[S.T_SORT])
        layers = store.layers
        spec = store.plan.model.spec
        shown_spec = pathlib.Path(spec).name if ("/" in spec or "\\" in spec) else spec
        st[pk(i, "title")] = f"{choice.title} · {shown_spec} · {int(store.done.sum())} images"
        st[pk(i, "layers")] = [
            {"title": f"{n}  ({info.kind} {'x'.join(map(str, info.act_shape))})", "value": n}
            for n, info in layers.items()
        ]
        linear = [n for n, info in layers.items() if len(info.act_shape) == 1]
        st[pk(i, "fc_layers")] = [{"title": n, "value": n} for n in linear]
        names = self.class_names()
        st[pk(i, "classes")] = [{"title": "predicted class", "value": -1}] + [
            {"title": f"class {nm}", "value": k} for k, nm in enumerate(names)
        ]
        st[pk(i, "sort_class")] = -1
        # neuron panels: the linear layer feeding the class layer ([Tamari2017]'s fc layer)
        st[pk(i, "fc_layer")] = linear[-2] if len(linear) > 1 else (linear[0] if linear else None)
        convs = [n for n, info in layers.items() if info.kind == "conv"]
        layer = convs[0] if convs else next(iter(layers))
        st[pk(i, "layer")] = layer
        if i == 0:
            st[S.ITEMS_GROUP_CLASSES] = [{"title": f"class {nm}", "value": k} for k, nm in enumerate(names)]
        self.clear_error()
        self.app.time.refresh()
        self.app.focus.store_opened(self)
        return self.app.volume.rebuild(self, layer, st[S.V_QUANTITY])

    def set_sequence(self, by: str) -> bool:
        """The image order ``by``; for "class groups" also its labels and where its gradients come
        from. Returns True when the volumes' source changed (the scene must be rebuilt)."""
        st, i = self.state, self.index
        old = self.variant
        self.play, self.variant = None, None
        st[pk(i, "group")] = st[pk(i, "group_note")] = ""
        if by == S.GROUPS:
            ref, n = int(st[S.T_GROUP_CLASS] or 0), int(st[S.T_GROUP_N] or 1)
            try:
                self.play = make_group_play(self.store, ref, n)
                self.variant = ("groups", ref, n)
                st[pk(i, "group_note")] = self.play.note()
            except Exception as exc:  # noqa: BLE001 - no such class, nothing to compare with
                log.warning("pane %d: class groups: %s", i, exc)
                st[pk(i, "group_note")] = self.app.redact(f"class groups: {exc}; playing the images as captured")
        self.sequence = (
            self.play.sequence
            if self.play is not None
            else self.app.time.filtered(self, store_sequence(self.store, by if by != S.GROUPS else "captured"))
        )
        if self.source is None or old != self.variant:
            from volviz.views.source import LayerVolumeSource

            self.source = LayerVolumeSource(OverrideStore(self.store) if self.play is not None else self.store)
            return True
        return False

    def model(self):
        """The store's model (``nn.Module``), loaded on first use with the command line's trust
        flags; a refusal or a failure is remembered and raised as a one-line ``ModelLoadError``."""
        if self._model is None:
            if self._model_error is not None:
                raise self._model_error
            try:
                self._model = self.store.model(**self.app.trust).module
            except Exception as exc:  # noqa: BLE001 - refused (trust), weights gone, import error
                how = " (start `volviz serve` with that flag)" if "--trust-" in str(exc) else ""
                self._model_error = ModelLoadError(f"cannot load the model {self.store.plan.model.spec!r}: {exc}{how}")
                log.warning("pane %d: %s", self.index, self._model_error)
                raise self._model_error from None
        return self._model

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

    def class_names(self) -> list[str]:
        return self.store.class_names or [str(k) for k in range(self.columns["probs"].shape[1])]

    def class_name(self, c: int) -> str:
        names = self.store.class_names
        return names[c] if names and 0 <= c < len(names) else str(c)

    def truth_text(self, image: int, predicted: str = "predicted") -> str:
        """``image 3  true 7  predicted 7``: the label of a rendered frame."""
        lab, pred = int(self.columns["label"][image]), int(self.columns["pred"][image])
        return f"image {image}  true {self.class_name(lab) if lab >= 0 else '?'}  {predicted} {self.class_name(pred)}"

    def group_label(self, image: int) -> str:
        return self.play.label_at(image) if self.play is not None else ""

    # ------------------------------------------------------------------ messages
    def error(self, exc: BaseException | str) -> None:
        """Show what went wrong in the pane (without server paths) and log it (with them)."""
        msg = str(exc)
        if isinstance(exc, BaseException) and not isinstance(exc, (VolvizError, ValueError, KeyError, OSError)):
            log.exception("pane %d: %s", self.index, msg)
            msg = f"{type(exc).__name__}: {msg}"
        else:
            log.warning("pane %d: %s", self.index, msg)
        self.state[pk(self.index, "error")] = self.app.redact(msg)

    def clear_error(self) -> None:
        self.state[pk(self.index, "error")] = ""

    # ------------------------------------------------------------------ handlers
    @change(pane("store"))
    def _on_store(self, **_) -> None:
        sid = self.state[pk(self.index, "store")]
        if sid and sid != self.store_id:
            self.open(sid)

    @change(pane("layer"))
    def _on_layer(self, **_) -> None:
        layer = self.state[pk(self.index, "layer")]
        shown = self.app.volume.target(self)[0]
        if (
            self.store is None
            or not layer
            or (layer == shown and (self.scene is not None or self.app.volume.preparing(self)))
        ):
            return
        self.app.volume.rebuild(self, layer, self.state[S.V_QUANTITY])

    @change(pane("fc_layer"), pane("sort_class"), S.PANEL_TAB)
    def _on_panel_settings(self, **_) -> None:
        if self.scene is not None:
            self.update_panel()

    @change(S.SAL_ON, S.SAL_METHOD)
    def _on_saliency(self, **_) -> None:
        if self.scene is not None and self.image is not None:
            self.state[pk(self.index, "input")] = self.input_image(self.image)

    # ------------------------------------------------------------------ beside the 3-D view
    def update_info(self) -> None:
        """Caption, class probabilities, input image and the scene's label for the image shown."""
        i, st = self.image, self.state
        probs, labels, preds = self.columns["probs"], self.columns["label"], self.columns["pred"]
        lab, pred = int(labels[i]), int(preds[i])
        true = self.class_name(lab) if lab >= 0 else "?"
        group = self.group_label(i)
        st[pk(self.index, "caption")] = (
            f"{self.position_of(i) + 1}/{len(self.sequence)} · {group + ' · ' if group else ''}image {i} "
            f"({self.store.images[i].id}) · true {true} · predicted {self.class_name(pred)} ({probs[i, pred]:.2f})"
        )
        st[pk(self.index, "group")] = group
        st[pk(self.index, "correct")] = None if lab < 0 else bool(lab == pred)
        st[pk(self.index, "probs")] = prob_rows(probs[i], lab, pred, self.store.class_names)
        st[pk(self.index, "input")] = self.input_image(i)
        self.scene.set_label(f"image {i}" + (f"\n{group}" if group else ""))

    def input_image(self, i: int) -> str:
        """The input image as a PNG data URL; with the saliency switch on, the map of the
        predicted class over it (captum; cached per image and method)."""
        st, note = self.state, pk(self.index, "sal_note")
        plain = input_rgb(self.store.read_input(i))
        if not st[S.SAL_ON]:
            st[note] = ""
            return png_data_url(plain)
        method = st[S.SAL_METHOD] or "saliency"
        try:
            from volviz.app.analysis_panels import saliency_overlay

            rgb = self.app.volume.cache.get_or_load(
                ("saliency", self.path, int(i), method),
                lambda: saliency_overlay(self.model(), self.store, i, method)[0],
            )
        except Exception as exc:  # noqa: BLE001 - model refused or missing, not differentiable
            log.warning("saliency: %s", exc)
            st[note] = self.app.redact(f"saliency unavailable: {exc}")
            return png_data_url(plain)
        how = SALIENCY_METHODS[method].short if method in SALIENCY_METHODS else method
        st[note] = (
            f"saliency map ({how}): max over channels of |dS/dI| for the predicted class "
            f"{self.class_name(int(self.columns['pred'][i]))}; bright = large"
        )
        return png_data_url(rgb)

    def update_panel(self) -> None:
        """The visible 2-D panel; nothing while the Volume tab is hidden (done when it shows)."""
        st = self.state
        if st[S.APP_TAB] != "volume":
            return
        tab = st[S.PANEL_TAB]
        panel = PANELS.get(tab)
        if panel is None or self.shown is None:
            out = PanelImage(None, f"no panel {tab!r}" if panel is None else "")
        else:
            sort_class = st[pk(self.index, "sort_class")]
            ctx = PanelContext(
                store=self.store,
                image=self.image,
                layer=self.layer,
                quantity=self.quantity,
                volume=self.shown,
                fc_layer=st[pk(self.index, "fc_layer")],
                sort_class=-1 if sort_class is None else int(sort_class),
                read=functools.partial(self.app.volume.read, self),
                model=self.model,
                memo=self.remember,
                background=self._background,
                slice_row=int(st[S.V_SLICE_ROW] or 0),
            )
            try:
                out = panel.render(ctx)
            except PanelPending as wait:
                self._compute_later(wait)
                out = PanelImage(None, f"{panel.title}: {wait.what} ...")
            except Exception as exc:  # noqa: BLE001
                log.warning("panel %s failed: %s", tab, exc)
                out = PanelImage(None, f"{panel.title}: {exc}")
        self.panel_data = out.data
        st[pk(self.index, "panel")] = png_data_url(out.rgb) if out.rgb is not None else ""
        st[pk(self.index, "panel_note")] = self.app.redact(out.note)
        st[pk(self.index, "panel_for")] = tab

    def _background(self, key, compute, what: str):
        """``ctx.background``: the memo's value; under the server a miss raises
        :class:`PanelPending` (the pane computes it in :attr:`panel_job`); without a loop, at once.
        A failure is remembered like a result (raised again, never retried on every slider step)."""
        if key in self.memo:
            value = self.memo[key]
            if isinstance(value, _Failed):
                raise value.exc
            return value
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self.remember(key, compute)
        raise PanelPending(key, compute, what)

    def _compute_later(self, wait: PanelPending) -> None:
        """Run ``wait.compute`` in the panel job, unless a run is going: then the panel is rendered
        again when it ends, and asks for what it still lacks (so any number of requests while
        one runs cost nothing, and at most one computation runs per pane)."""
        if self.panel_job.running:
            return
        memo, key, loop = self.memo, wait.key, asyncio.get_running_loop()

        def keep(value):
            memo[key] = value
            loop.call_soon(self._panel_ready)  # after the job's end, so that a next run may start

        def failed(exc: BaseException) -> str:
            keep(_Failed(exc))
            return f"{wait.what}: {exc}"

        self.panel_job.start(lambda report: wait.compute(), done=keep, failed=failed)

    def _panel_ready(self) -> None:
        """A run ended: the panel shown now (maybe of another layer or store meanwhile) again."""
        if self.scene is not None:
            with self.state:
                self.update_panel()

    # ------------------------------------------------------------------ teardown
    def close_scene(self) -> None:
        if self.scene is not None:
            self.scene.close()
        self.scene = self.shown = None
        self.layer = self.quantity = self.image = None

    def close(self) -> None:
        self.panel_job.close()
        self.close_scene()
        self.plotter.close()
