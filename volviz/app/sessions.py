"""The web server of ``volviz serve``: a session (its own trame server and app) per browser tab.

trame's state belongs to one trame server and every client of that server shares it; trame's own
answer for independent users is one server instance per session (``trame.tools.serve``'s
``MultiClientServer``: an app per websocket, on wslink's ``generic`` backend, behind one aiohttp
server). This is that, with what a served app needs on top:

* **A session per tab.** Opening ``/?token=...`` makes a session id and sends the tab to
  ``index.html?session=ID``; trame's client asks for its connection the way it asks a wslink
  launcher (``POST /paraview/``) and gets ``ws://HOST/ws/ID`` and the secret back. The session
  (an :class:`~volviz.app.explorer.Explorer` on its own trame server) lives on while its tab is
  away (a dropped websocket, a reload: ``reconnect=auto`` brings the page back to it) and is
  closed after ``idle_s`` without a connection (never while it records or computes). ``--shared``
  gives every tab one session (a teacher's view that the class follows).
* **Who may connect.** Every HTTP request needs the launch token (``?token=`` once, then a
  cookie for this port) and a ``Host`` and ``Origin`` of this server
  (:class:`~volviz.app.security.Origins`); the websocket's ``wslink.hello`` must carry the token
  (checked by the session's wslink). Downloads are a session's own recordings only.
* **Bounded requests.** A browser's websocket message (all its chunks) is at most
  :data:`~volviz.app.security.MAX_MESSAGE_BYTES`: the header of its first chunk says the total,
  and a larger one closes the socket (1009) before anything is assembled. What arrives is checked
  by the session's :class:`~volviz.app.security.ClientGuard`.
* **No frozen clients.** This server only passes bytes: the sessions' heavy work runs in
  background jobs (:mod:`volviz.app.jobs`), so pings are answered; a dropped page reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pathlib
import re
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from volviz.app.security import MAX_MESSAGE_BYTES, ClientGuard, Origins, client_text, token_ok

log = logging.getLogger("volviz.app")

__all__ = ["SessionHub", "Session", "SHARED"]

SHARED = "shared"  # the one session id with --shared
SID = re.compile(r"^[0-9a-f]{32}$")
MAX_FRAME_BYTES = (4 << 20) + 4096  # one websocket frame (wslink chunks messages to 4 MiB)
CHUNK_HEADER = 12  # wslink chunk: id, offset, total size (uint32 each)
FORBIDDEN_PAGE = """<!doctype html><meta charset="utf-8"><title>volviz: token needed</title>
<body style="font-family: sans-serif; background: #15171c; color: #ddd; padding: 2em">
<h2>volviz explorer: open the URL with its token</h2>
<p>{why}</p><p>The address with <code>?token=...</code> is printed by <code>volviz serve</code> when it starts.</p>
</body>"""


@dataclass
class Session:
    sid: str
    app: object  # volviz.app.explorer.Explorer
    guard: ClientGuard
    task: object  # the trame server's task
    ephemeral: bool = False  # a script's /ws connection: closed when it leaves
    connections: int = 0
    left_at: float = field(default_factory=time.monotonic)
    created_at: float = field(default_factory=time.monotonic)

    @property
    def server(self):
        return self.app.server

    @property
    def idle(self) -> float:
        return 0.0 if self.connections else time.monotonic() - self.left_at


@contextlib.contextmanager
def _plain_argv():
    """trame parses ``sys.argv`` in ``Server.start``: give it only its own (none)."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        yield
    finally:
        sys.argv = argv


class SessionHub:
    """Sessions behind one aiohttp server.

    Parameters
    ----------
    make_app : ``make_app(server, sid) -> Explorer`` for a new trame server.
    token : the launch token.
    origins : the names the server answers to.
    shared : one session for every tab (``--shared``).
    max_sessions : sessions at most (the least recently used idle one goes first).
    idle_s : an idle session (no tab connected, no job running) is closed after this long.
    record_dir : where the sessions' recordings are (their downloads are served from there).
    """

    def __init__(
        self,
        make_app: Callable,
        *,
        token: str,
        origins: Origins,
        shared: bool = False,
        max_sessions: int = 16,
        idle_s: float = 900.0,
        record_dir=None,
        heartbeat: float | None = None,
        spare: bool = True,
    ):
        self.make_app, self.token, self.origins = make_app, token, origins
        self.shared, self.max_sessions, self.idle_s = shared, max(1, int(max_sessions)), float(idle_s)
        self.record_dir = pathlib.Path(record_dir) if record_dir is not None else None
        # ping every browser this often (trame's TRAME_WS_HEART_BEAT); no pong within half of it: dropped
        self.heartbeat = float(heartbeat if heartbeat is not None else os.environ.get("TRAME_WS_HEART_BEAT") or 30)
        self.want_spare = spare and not shared
        self.sessions: dict[str, Session] = {}
        self._spare: Session | None = None
        self._creating: dict[str, asyncio.Future] = {}
        self._runner = None
        self._open_ws: set = set()
        self._reaper = None
        self._stopped = None
        self.port = None
        self.cookie = "volviz-token"
        self.stats = {"sessions_made": 0, "sessions_closed": 0, "refused_messages": 0, "ws_opened": 0, "ws_closed": 0}

    # ------------------------------------------------------------------ sessions
    def _new_sid(self) -> str:
        return SHARED if self.shared else secrets.token_hex(16)

    async def _make(self, sid: str, ephemeral: bool = False) -> Session:
        from trame.app import get_server

        server = get_server(f"volviz-{sid[:16]}-{secrets.token_hex(4)}", client_type="vue3")
        app = self.make_app(server, sid)
        guard = ClientGuard(
            app.rules, token=self.token, notify=app.notify, redact=app.redact, name=f"session {sid[:8]}"
        )
        guard.install(server)
        server.cli.set_defaults(authKey=self.token)  # wslink's secret: the hello must carry the token
        with _plain_argv():
            task = server.start(
                backend="generic",
                exec_mode="task",
                timeout=0,
                open_browser=False,
                show_connection_info=False,
                disable_logging=True,
            )
        await server.ready
        self.stats["sessions_made"] += 1
        return Session(sid, app, guard, task, ephemeral=ephemeral)

    async def session(self, sid: str | None = None, ephemeral: bool = False) -> Session:
        """The session ``sid`` (made when missing: a reload after it was closed), or a new one.
        Raises ``RuntimeError`` when ``max_sessions`` are busy."""
        if self.shared:
            sid = SHARED
        if sid and sid in self.sessions:
            return self.sessions[sid]
        if sid and sid in self._creating:
            return await asyncio.shield(self._creating[sid])
        sid = sid or self._new_sid()
        self._make_room()
        fut = asyncio.get_running_loop().create_future()
        self._creating[sid] = fut
        try:
            if self._spare is not None and not ephemeral:
                s, self._spare = self._spare, None
                self._rename(s, sid)
            else:
                s = await self._make(sid, ephemeral)
            self.sessions[sid] = s
            fut.set_result(s)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody else waits
            raise
        finally:
            self._creating.pop(sid, None)
        if self.want_spare:
            asyncio.get_running_loop().call_later(1.0, self._refill)
        log.info("session %s opened (%d open)", sid[:8], len(self.sessions))
        return s

    def _rename(self, s: Session, sid: str) -> None:
        s.sid = sid
        s.app.session = sid
        s.app.record_url = f"recordings/{sid}/"
        s.guard.name = f"session {sid[:8]}"
        s.left_at = time.monotonic()

    def _refill(self) -> None:
        if self._spare is None and len(self.sessions) + 1 < self.max_sessions and self._runner is not None:
            asyncio.ensure_future(self._make_spare())

    async def _make_spare(self) -> None:
        if self._spare is not None:
            return
        try:
            self._spare = await self._make("spare" + secrets.token_hex(11))
        except Exception:  # noqa: BLE001 - a spare is an optimisation
            log.exception("cannot prepare a spare session")

    def _make_room(self) -> None:
        if len(self.sessions) < self.max_sessions:
            return
        idle = sorted(
            (s for s in self.sessions.values() if not s.connections and not s.app.busy), key=lambda s: s.left_at
        )
        if not idle:
            raise RuntimeError(
                f"{len(self.sessions)} sessions are open, the most this server keeps "
                "(volviz serve --max-sessions); close a tab and try again"
            )
        asyncio.ensure_future(self.close_session(idle[0]))
        self.sessions.pop(idle[0].sid, None)

    async def close_session(self, s: Session) -> None:
        from trame.app.core import AVAILABLE_SERVERS

        self.sessions.pop(s.sid, None)
        name = s.server.name
        try:
            await s.server.stop()
        except Exception:  # noqa: BLE001
            log.debug("stopping session %s", s.sid, exc_info=True)
        try:
            s.app.close()
        except Exception:  # noqa: BLE001
            log.exception("closing session %s", s.sid)
        AVAILABLE_SERVERS.pop(name, None)
        with contextlib.suppress(Exception):
            from trame_vtk.modules.vtk import HELPERS_PER_SERVER

            HELPERS_PER_SERVER.pop(name, None)
        self.stats["sessions_closed"] += 1
        log.info("session %s closed (%d open)", s.sid[:8], len(self.sessions))

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(10.0, max(0.5, self.idle_s / 4)))
            for s in list(self.sessions.values()):
                if s.sid == SHARED or s.connections or s.app.busy:
                    continue
                if s.ephemeral or s.idle > self.idle_s:
                    await self.close_session(s)

    # ------------------------------------------------------------------ HTTP
    def _refuse(self, why: str, status: int = 403) -> web.Response:
        return web.Response(status=status, text=FORBIDDEN_PAGE.format(why=why), content_type="text/html")

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        if not self.origins.host_ok(request.headers.get("Host")):
            log.warning("refused a request for host %s", client_text(request.headers.get("Host"), 80))
            return self._refuse("This server does not answer to that host name.")
        origin = request.headers.get("Origin")
        if not self.origins.origin_ok(origin):
            log.warning("refused a request from origin %s", client_text(origin, 80))
            return self._refuse("Pages of other sites may not use this server.")
        if request.path == "/ws" or request.path.startswith("/ws/"):
            return await handler(request)  # the token goes in the websocket's hello
        given = request.query.get("token")
        if not (token_ok(given, self.token) or token_ok(request.cookies.get(self.cookie), self.token)):
            return self._refuse("No token, or a wrong one." if given is None or given else "No token.", 403)
        resp = await handler(request)
        if token_ok(given, self.token):
            resp.set_cookie(self.cookie, self.token, httponly=True, samesite="Strict", path="/")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        return resp

    async def _index(self, request: web.Request):
        sid = request.query.get("session")
        if request.path == "/" or not sid:
            sid = self._new_sid()
            return web.Response(
                status=302,
                headers={"Location": f"index.html?session={sid}&reconnect=auto", "Cache-Control": "no-store"},
            )
        return web.FileResponse(pathlib.Path(self.www) / "index.html", headers={"Cache-Control": "no-store"})

    async def _launch(self, request: web.Request):
        """trame's client asks here (as it asks a wslink launcher) where its session is."""
        try:
            body = await request.json() if request.can_read_body else {}
        except (ValueError, UnicodeDecodeError):
            body = {}
        sid = body.get("session") if isinstance(body, dict) else None
        sid = str(sid) if isinstance(sid, str) and (SID.match(sid) or sid == SHARED) else None
        try:
            s = await self.session(sid)
        except RuntimeError as exc:
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response(
            {"sessionURL": f"ws://USE_HOST/ws/{s.sid}", "secret": self.token, "id": s.sid},
            headers={"Cache-Control": "no-store"},
        )

    async def _recording(self, request: web.Request):
        s = self.sessions.get(request.match_info["sid"])
        name = request.match_info["name"]
        if s is None or self.record_dir is None or name not in s.app.recorder.files or "/" in name:
            return web.Response(status=404, text="no such recording in this session")
        path = self.record_dir / name
        if not path.is_file() or path.is_symlink():
            return web.Response(status=404, text="no such recording in this session")
        return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{name}"'})

    # ------------------------------------------------------------------ websocket
    async def _ws(self, request: web.Request):
        sid = request.match_info.get("sid")
        if sid is None:  # a script: a session of its own for as long as it stays
            try:
                s = await self.session(None if not self.shared else SHARED, ephemeral=not self.shared)
            except RuntimeError as exc:
                return web.Response(status=503, text=str(exc))
        else:
            s = self.sessions.get(sid)
            if s is None:
                return web.Response(status=404, text="no such session; reload the page")
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, heartbeat=self.heartbeat, compress=True)
        await ws.prepare(request)
        self._open_ws.add(ws)
        endpoint = s.server._server.ws
        conn = await endpoint.connect()
        self.stats["ws_opened"] += 1

        async def to_browser(binary, content):
            if not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await (ws.send_bytes(content) if binary else ws.send_str(content))

        conn.on_message(to_browser)
        s.connections += 1
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    data = msg.data
                    total = int.from_bytes(data[8:CHUNK_HEADER], "little") if len(data) >= CHUNK_HEADER else 0
                    if total > MAX_MESSAGE_BYTES:
                        self.stats["refused_messages"] += 1
                        log.warning(
                            "session %s: refused a %d-byte message from a browser (at most %d)",
                            s.sid[:8],
                            total,
                            MAX_MESSAGE_BYTES,
                        )
                        await ws.close(code=1009, message=b"message too big")
                        break
                    try:
                        await conn.send(True, msg)
                    except Exception as exc:  # noqa: BLE001 - malformed chunks, too big before the hello
                        log.warning("session %s: dropped a browser connection: %s", s.sid[:8], client_text(exc, 120))
                        await ws.close(code=1008, message=b"bad message")
                        break
                elif msg.type == WSMsgType.TEXT:
                    log.warning("session %s: ignored a text message from a browser", s.sid[:8])
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            self._open_ws.discard(ws)
            s.connections -= 1
            s.left_at = time.monotonic()
            self.stats["ws_closed"] += 1
            with contextlib.suppress(Exception):
                await endpoint.onClose(conn.client_id)  # the app's close hooks (the generic backend skips them)
            endpoint.authentified_client_ids.discard(conn.client_id)
            with contextlib.suppress(Exception):
                await conn.close()
            if s.ephemeral and not s.connections and not s.app.busy:
                await self.close_session(s)
        return ws

    async def drop_connections(self) -> int:
        """Close every browser websocket (tests: the pages must reconnect by themselves)."""
        sockets = list(self._open_ws)
        for ws in sockets:
            await ws.close(code=1012, message=b"dropped")
        return len(sockets)

    # ------------------------------------------------------------------ life
    def web_app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_MESSAGE_BYTES)
        app.router.add_get("/", self._index)
        app.router.add_get("/index.html", self._index)
        app.router.add_post("/paraview/", self._launch)
        app.router.add_post("/paraview", self._launch)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/ws/{sid}", self._ws)
        app.router.add_get("/recordings/{sid}/{name}", self._recording)
        for route in sorted(self.statics, key=len, reverse=True):
            app.router.add_static(f"/{route}", self.statics[route], follow_symlinks=False)
        app.router.add_static("/", self.www, follow_symlinks=False)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Make the first session (its trame server knows the page's files), then listen."""
        first = await self._make(self._new_sid() if self.shared else "spare" + secrets.token_hex(11))
        if self.shared:
            self.sessions[SHARED] = first
        else:
            self._spare = first
        server = first.server
        self.www = server._www
        self.statics = {k: v for k, v in server.serve.items() if k != "recordings"}
        self._runner = web.AppRunner(self.web_app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.cookie = f"volviz-token-{self.port}"
        self.origins.port = self.port
        self.origins.pairs |= {(h, self.port) for h, p in list(self.origins.pairs) if p == 0}
        self._reaper = asyncio.ensure_future(self._reap())
        return self.port

    @property
    def first_app(self):
        s = self.sessions.get(SHARED) or self._spare or next(iter(self.sessions.values()), None)
        return s.app if s is not None else None

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for s in list(self.sessions.values()) + ([self._spare] if self._spare else []):
            await self.close_session(s)
        self._spare = None

    def describe(self) -> str:
        return json.dumps({"sessions": len(self.sessions), **self.stats})
