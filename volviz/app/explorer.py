"""The explorer app: the trame server, its state and controller, and the parts that each own a
piece of the page:

* :class:`~volviz.app.pane.Pane` (one or two): a store in a column, its controls, caption, input
  image and 2-D panel;
* :class:`~volviz.app.volume_view.VolumeView`: the panes' 3-D scenes and the drawer's look;
* :class:`~volviz.app.timeline.Timeline`: the time slider, playback, the image order;
* :class:`~volviz.app.recorder.Recorder`: recording MP4s;
* the main tabs of :mod:`volviz.app.tabs` (Graph, Scene preview, Pruning), which see the app only
  through a :class:`~volviz.app.focus.Focus` (the analysed pane's store, image, caption, model).

Each part declares its own handlers (:mod:`volviz.app.wiring`). Every handler catches its errors
and shows them in the page (the pane's alert, or a status line) and in the log: a bad store, a
vanished layer or a failed recording never stops the server.
"""

from __future__ import annotations

import copy
import logging
import pathlib

from volviz.app import state as S
from volviz.app.catalog import Catalog
from volviz.app.focus import Focus
from volviz.app.pane import Pane, discover_stores
from volviz.app.panels import PANELS
from volviz.app.recorder import Recorder
from volviz.app.rules import client_rules
from volviz.app.tabs import TabContext, load_panels, main_tabs
from volviz.app.timeline import Timeline
from volviz.app.volume_view import VolumeView
from volviz.app.wiring import bind, change

log = logging.getLogger("volviz.app")

__all__ = ["Explorer", "discover_stores"]

#: what the page shows while its websocket is down: it reconnects by itself (``reconnect=auto``)
RECONNECT_TEMPLATE = (
    '<trame-reconnect message="connection lost: reconnecting ..." :max-retry="600" '
    ':delay="1000" give-up-message="the server is gone; reload the page" />'
)


class Explorer:
    """The app. ``Explorer(["stores/digits"])``; ``serve()`` in :mod:`volviz.app.server` starts it.

    Parameters
    ----------
    stores : store folders; the first two are shown side by side, all are in the store picker.
    server : a trame server (default: ``get_server("volviz", client_type="vue3")``); tests pass a
        fresh one per test.
    record_dir : where recorded movies go (served under ``/recordings/`` for download).
    catalog : the server's lists (stores, scenes, report folders: what a browser may choose, by
        id); made from ``stores``, ``roots`` (``--root``), ``scene_dirs`` and ``prune_dir`` when
        not given. ``stores`` then only says which stores the panes open first.
    cache : a :class:`~volviz.app.prefetch.ChunkCache` shared by the sessions of one server.
    session, shared : the session id of this app (its download links), and whether every
        browser shares it (``--shared``).
    trust : the command line's ``{"trust_pickle": ..., "trust_factory": ...}``: whether a store's
        model may be a pickled full model / a ``pkg.mod:factory`` or TorchScript file. A store
        never switches these on by itself.
    allow_outside : scene files (Scene preview) may name a store outside their own folder.
    """

    def __init__(
        self,
        stores: list[str],
        server=None,
        record_dir: str | pathlib.Path = "out/recordings",
        window_size: tuple[int, int] = (800, 600),
        build_ui: bool = True,
        scene_dirs=None,
        prune_dir: str | pathlib.Path | None = None,
        trust: dict | None = None,
        allow_outside: bool = False,
        roots=(),
        catalog: Catalog | None = None,
        cache=None,
        session: str | None = None,
        shared: bool = False,
    ):
        if server is None:
            from trame.app import get_server

            server = get_server("volviz", client_type="vue3")
        self.server = server
        self.state, self.ctrl = server.state, server.controller
        self.trust = {"trust_pickle": False, "trust_factory": False, **(trust or {})}
        self.record_dir = pathlib.Path(record_dir).resolve()
        self.record_dir.mkdir(parents=True, exist_ok=True)
        self.server.serve["recordings"] = str(self.record_dir)  # download links: recordings/NAME
        self.session, self.shared = session, shared
        # download links: recordings/NAME (one app), recordings/SESSION/NAME (the session server's)
        self.record_url = "recordings/" + (f"{session}/" if session else "")
        self.window_size = tuple(window_size)
        self.clients: set[str] = set()
        load_panels()
        prune_dir = pathlib.Path(prune_dir or self.record_dir.parent / "prune")
        from volviz.app.scene_tab import default_scene_dirs

        scene_dirs = list(scene_dirs) if scene_dirs is not None else default_scene_dirs()
        if catalog is None:  # one app on its own (tests, scripts): its lists made here
            catalog = Catalog.build(stores, roots=roots, scene_dirs=scene_dirs, prune_dir=prune_dir)
            first = list(catalog.first)
        else:
            first = [catalog.store_id(s) or catalog.add_store(s).id for s in stores] if stores else list(catalog.first)
        self.catalog = catalog
        self.redact = catalog.redact

        self.state.update(copy.deepcopy(S.DEFAULTS))
        n = min(2, max(1, len(first)))
        self.state[S.APP_N_PANES] = n
        self.state[S.APP_STORES] = catalog.store_items()
        self.state[S.APP_SESSION] = (
            "shared session: every browser sees and moves the same view"
            if shared
            else "your own session"
            if session
            else ""
        )
        self.state["trame__template_error_reconnect"] = RECONNECT_TEMPLATE
        self.focus = Focus(self)
        self.volume = VolumeView(self, cache=cache)
        self.time = Timeline(self)
        self.panes: list[Pane] = [Pane(self, i, self._make_plotter()) for i in range(n)]
        self.recorder = Recorder(self)
        self.tab_specs = main_tabs()
        self.context = TabContext(
            server,
            self.focus,
            self.trust,
            n,
            prune_dir,
            scene_dirs=scene_dirs,
            allow_outside=allow_outside,
            catalog=catalog,
            notify=self.notify,
            recorder=self.recorder,
        )
        self.tabs = {spec.key: spec.make(self.context) for spec in self.tab_specs if spec.make is not None}
        self.rules = client_rules(n, [spec.key for spec in self.tab_specs], list(PANELS))
        bind(self, server)
        server.add_protocol_to_configure(self._watch_connections)
        if build_ui:
            from volviz.app.ui import build_ui

            self.ui = build_ui(self)
        for pane, sid in zip(self.panes, first):
            self.state[S.pane_key(pane.index, "store")] = sid
            pane.open(sid)
        self.time.refresh()
        self.focus.refresh_items()
        self.tabs_call("refresh")
        self.state[S.APP_READY] = True

    def notify(self, text: str) -> None:
        """One line for the whole page (the footer): refusals, recording errors."""
        self.state[S.APP_MESSAGE] = self.redact(text)

    @property
    def busy(self) -> bool:
        """A background job of this app is running (a recording, a pruning run, a scene)."""
        return self.recorder.job.running or any(job.running for job in self.context.jobs)

    def _make_plotter(self):
        import pyvista as pv

        return pv.Plotter(off_screen=True, window_size=list(self.window_size))

    # ------------------------------------------------------------------ the main tabs
    def tabs_call(self, hook: str) -> None:
        """Call ``hook()`` on every main tab that has it (see :mod:`volviz.app.tabs`)."""
        for tab in self.tabs.values():
            fn = getattr(tab, hook, None)
            if fn is not None:
                fn()

    def tabs_follow(self) -> None:
        """A pane's image or scene changed: the tabs that follow the slider catch up (a hidden
        one only notes that it must)."""
        self.tabs_call("follow")

    @change(S.APP_TAB)
    def _on_app_tab(self, **_) -> None:
        shown = self.state[S.APP_TAB]
        for key, tab in self.tabs.items():
            fn = getattr(tab, "shown" if key == shown else "hidden", None)
            if fn is not None:
                fn()
        if shown == "volume":
            self.volume.show_volume_tab()

    # ------------------------------------------------------------------ connections
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
                app.recorder.client_left()

        root_protocol.registerLinkProtocol(ConnectionWatch())

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        self.time.close()
        self.volume.close()
        self.recorder.close()
        for job in self.context.jobs:
            job.close()
        self.tabs_call("close")
        for pane in self.panes:
            pane.close()
