"""Start the explorer: ``serve(stores, host, port, timeout)``, headless, printing the URL.

Binds 127.0.0.1 unless ``host`` says otherwise (then a warning is printed: the app reads any
store it was given and writes movies, with no authentication). ``timeout=0``: the server never
exits on its own (wslink's default stops it 5 minutes after the last browser left).
"""
from __future__ import annotations

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
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


def serve(stores: list[str], host: str = "127.0.0.1", port: int = 8080, timeout: int = 0,
          record_dir: str | os.PathLike = "out/recordings", trust: dict | None = None,
          allow_outside: bool = False) -> int:
    """Serve the explorer on ``host:port`` until Ctrl-C; returns an exit status. ``trust``: the
    command line's ``--trust-pickle`` / ``--trust-factory`` (how the stores' models may be
    loaded); ``allow_outside``: scene files may name a store outside their folder."""
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import torch
    torch.set_num_threads(1)  # leave the other core(s) to rendering and the server
    stores = [str(s) for s in stores] or [str(ensure_default_store())]
    if not is_loopback(host):
        print(f"WARNING: serving on {host}: anyone who can reach this address can use the app "
              "(read the stores given, write movies). There is no authentication; prefer "
              "127.0.0.1 and an SSH tunnel.", file=sys.stderr, flush=True)
    if not _port_free(host, port):
        print(f"volviz serve: error: port {port} on {host} is in use; choose another with --port",
              file=sys.stderr)
        return 2

    from trame.app import get_server

    from volviz.app.explorer import Explorer
    from volviz.app.state import pane_key
    from volviz.views.volume import rendering_available
    ok, msg = rendering_available()
    if not ok:
        print(f"volviz serve: error: {msg}", file=sys.stderr)
        return 2
    server = get_server("volviz", client_type="vue3")
    app = Explorer(stores, server=server, record_dir=record_dir, trust=trust, allow_outside=allow_outside)
    for pane in app.panes:
        err = app.state[pane_key(pane.index, "error")]
        if err:
            print(f"volviz serve: {err} (the page shows it; pick another store there)", file=sys.stderr)
    shown = "[" + host + "]" if ":" in host else host

    def announce(**_):
        print(f"volviz explorer: http://{shown}:{server.port}/  (Ctrl-C to stop)", flush=True)

    server.controller.on_server_ready.add(announce)
    argv, sys.argv = sys.argv, sys.argv[:1]  # trame parses sys.argv: give it only our settings
    try:
        server.start(host=host, port=port, timeout=timeout, open_browser=False,
                     show_connection_info=False)
    except KeyboardInterrupt:
        pass
    finally:
        sys.argv = argv
        app.close()
    return 0
