"""Start the explorer: ``serve(stores, host, port)``, headless, printing the URL with its token.

Binds 127.0.0.1 unless ``host`` says otherwise (then a warning says what the token protects and
what it does not). The web server and its sessions are :class:`volviz.app.sessions.SessionHub`;
what a browser may choose (stores, scenes, report folders) is the :class:`~volviz.app.catalog.Catalog`
made here from the command line (``STORE ...``, ``--root DIR``). The server runs until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import pathlib
import socket
import sys

log = logging.getLogger("volviz.app")

DEFAULT_STORE = pathlib.Path("stores") / "digits"


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposed_warning(host: str, port: int) -> str:
    """What ``--host`` other than loopback means (printed at start)."""
    return (
        f"WARNING: serving on {host}:{port}, reachable from other machines. The token in the URL is "
        "required for the page and its websocket, and pages of other sites are refused (Origin and "
        "Host checks); that keeps out whoever does not have the URL. It does not encrypt anything: "
        "there is no TLS, so the token, the images and what you do cross the network in clear text, "
        "and anyone on the path can read them and reuse the token. Prefer --host 127.0.0.1 and an SSH "
        f"tunnel (ssh -L {port}:127.0.0.1:{port} THIS-MACHINE), or a TLS proxy named with --allow-origin."
    )


def ensure_default_store(path: str | os.PathLike = DEFAULT_STORE) -> pathlib.Path:
    """The embedded default store, captured first when it does not exist yet (resumed when a
    capture was interrupted): :func:`volviz.store.capture.open_or_capture`, which never deletes
    anything. A folder that holds something else is left alone (the page then says what is wrong
    with it)."""
    from volviz.errors import VolvizError
    from volviz.store.capture import CaptureSettings, open_or_capture
    from volviz.store.store import Store

    path = pathlib.Path(path)
    if not path.exists() or not any(path.iterdir()):
        print(f"capturing the embedded digits model into {path} (once) ...", flush=True)
    else:
        try:
            if not Store.open(path).complete:
                print(f"completing the interrupted capture in {path} ...", flush=True)
        except VolvizError:
            pass  # open_or_capture says why below
    try:
        open_or_capture(path, CaptureSettings())
    except VolvizError as exc:
        log.warning("default store %s: %s", path, exc)
    return path


def _port_free(host: str, port: int) -> bool:
    if port == 0:
        return True
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def serve(
    stores: list[str],
    host: str = "127.0.0.1",
    port: int = 8080,
    timeout: int = 0,
    record_dir: str | os.PathLike = "out/recordings",
    trust: dict | None = None,
    allow_outside: bool = False,
    roots=(),
    allow_origins=(),
    shared: bool = False,
    max_sessions: int = 16,
    idle_minutes: float = 15.0,
) -> int:
    """Serve the explorer on ``host:port`` until Ctrl-C; returns an exit status. ``trust``: the
    command line's ``--trust-pickle`` / ``--trust-factory`` (how the stores' models may be
    loaded); ``allow_outside``: scene files may name a store outside their folder; ``roots``:
    folders whose stores the picker offers too; ``allow_origins``: names (of a proxy) the server
    answers to besides ``host``; ``shared``: one session for every browser."""
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import torch

    torch.set_num_threads(1)  # leave the other core(s) to rendering and the server
    stores = [str(s) for s in stores] or [str(ensure_default_store())]
    if not _port_free(host, port):
        print(f"volviz serve: error: port {port} on {host} is in use; choose another with --port", file=sys.stderr)
        return 2
    for r in roots:
        if not pathlib.Path(r).is_dir():
            print(f"volviz serve: error: --root {r} is not a folder", file=sys.stderr)
            return 2

    from volviz.views.volume import rendering_available

    ok, msg = rendering_available()
    if not ok:
        print(f"volviz serve: error: {msg}", file=sys.stderr)
        return 2
    import asyncio

    from volviz.app.catalog import Catalog
    from volviz.app.explorer import Explorer
    from volviz.app.prefetch import ChunkCache
    from volviz.app.scene_tab import default_scene_dirs
    from volviz.app.security import Origins, new_token
    from volviz.app.sessions import SessionHub
    from volviz.app.state import pane_key

    record_dir = pathlib.Path(record_dir)
    prune_dir = record_dir.parent / "prune"
    catalog = Catalog.build(stores, roots=roots, scene_dirs=default_scene_dirs(), prune_dir=prune_dir)
    cache = ChunkCache()  # one chunk cache for all the sessions (the stores are the same)
    token = new_token()

    def make_app(server, sid):
        return Explorer(
            [],
            server=server,
            record_dir=record_dir,
            trust=trust,
            allow_outside=allow_outside,
            catalog=catalog,
            cache=cache,
            session=sid,
            shared=shared,
            prune_dir=prune_dir,
        )

    hub = SessionHub(
        make_app,
        token=token,
        origins=Origins(host, port, allow_origins),
        shared=shared,
        max_sessions=max_sessions,
        idle_s=60.0 * idle_minutes,
        record_dir=record_dir.resolve(),
    )

    async def run() -> None:
        import signal

        bound = await hub.start(host, port)
        app = hub.first_app
        for pane in app.panes:
            err = app.state[pane_key(pane.index, "error")]
            if err:
                print(f"volviz serve: {err} (the page shows it; pick another store there)", file=sys.stderr)
        if not is_loopback(host):
            print(exposed_warning(host, bound), file=sys.stderr, flush=True)
        shown = host if is_loopback(host) else (socket.gethostname() if host in ("0.0.0.0", "::") else host)
        shown = f"[{shown}]" if ":" in shown else shown
        mode = "one shared session for every browser" if shared else "a session per browser tab"
        print(f"volviz explorer: http://{shown}:{bound}/?token={token}  ({mode}; Ctrl-C to stop)", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await stop.wait()
        finally:
            await hub.stop()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0
