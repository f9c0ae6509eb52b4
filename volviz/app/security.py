"""What a browser may do to a served explorer, and nothing more.

* **Who**: a random token made at launch (``secrets.token_urlsafe``), printed in the URL as
  ``?token=...`` (like Jupyter's); the page needs it (or the cookie it sets) and the websocket's
  ``wslink.hello`` must carry it as its secret (wslink's own authentication, the token compared
  with ``hmac.compare_digest``). :class:`Origins`: the ``Host`` of every request and the
  ``Origin`` of a browser's request must name the served host:port (or a name given with
  ``--allow-origin``): a page of another site, or a DNS-rebinding name, is refused.
* **What**: :class:`ClientGuard` sits on a session's wslink endpoint. A client may only set the
  state keys of the controls on the page, each checked (a layer of the list, an id the server
  made, a number in range, at most :data:`MAX_VALUE_BYTES`); anything else is dropped and the
  server's value is sent back. The view it may ask for is at most :data:`MAX_RENDER_SIDE` pixels
  a side; the log lines it may write (``trame.error.client``) are few, short and marked as client
  text; it may not stop the server; RPCs the page does not use are refused.
* Everything the server sends has its absolute paths replaced by display names (a safety net:
  the app itself only puts ids and names in its state).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import msgpack

from volviz.app.catalog import redact_paths

log = logging.getLogger("volviz.app")

__all__ = [
    "ClientGuard",
    "Origins",
    "MAX_MESSAGE_BYTES",
    "MAX_RENDER_SIDE",
    "MAX_VALUE_BYTES",
    "client_text",
    "new_token",
    "token_ok",
]

MAX_RENDER_SIDE = 4096  # px: a remote view asked larger is refused
MAX_VALUE_BYTES = 64 << 10  # one state value from a client (msgpack size)
MAX_MESSAGE_BYTES = 1 << 20  # one wslink message from a client (all its chunks)
CLIENT_LOG_LINES = 5  # trame.error.client lines per client and window ...
CLIENT_LOG_WINDOW_S = 60.0  # ... (the rest are counted, then summarised)
CLIENT_TEXT_CHARS = 200

#: RPCs a page of the explorer uses (trame's own and the remote views'); the rest are refused
ALLOWED_RPCS = frozenset(
    {
        "trame.state.get",
        "trame.state.update",
        "trame.trigger",
        "trame.lifecycle.update",
        "trame.error.client",
        "trame.force.push",
        "viewport.image.push",
        "viewport.image.push.observer.add",
        "viewport.image.push.observer.remove",
        "viewport.image.push.quality",
        "viewport.image.push.quality.get",
        "viewport.image.push.original.size",
        "viewport.image.push.enabled",
        "viewport.image.push.invalidate.cache",
        "viewport.image.animation.fps.max",
        "viewport.image.animation.fps.get",
        "viewport.image.animation.start",
        "viewport.image.animation.stop",
        "viewport.mouse.interaction",
        "viewport.mouse.zoom.wheel",
        "viewport.camera.reset",
    }
)
LIFECYCLE_EVENTS = frozenset({"client_connected", "client_exited", "client_unmounted"})


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_ok(given, token: str) -> bool:
    """``given`` is the launch token (constant time)."""
    if not isinstance(given, str) or not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode("utf-8"))


def client_text(text, limit: int = CLIENT_TEXT_CHARS) -> str:
    """Text from a browser, safe for one log line: control characters escaped, cut at ``limit``."""
    s = str(text)
    out = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in s[:limit])
    return out + (f"... ({len(s)} chars)" if len(s) > limit else "")


# ------------------------------------------------------------------------------ origins
def _split_host(value: str) -> tuple[str, int | None] | None:
    """``host[:port]`` (``[v6]:port``) -> (lowercase host, port or None)."""
    try:
        parts = urlsplit("//" + value.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host:
        return None
    return host.lower().rstrip("."), port


class Origins:
    """The names this server answers to: ``Host`` and ``Origin`` headers are checked against them.

    ``host``/``port``: where it is bound (0.0.0.0 / :: add this machine's names and addresses);
    ``extra``: ``--allow-origin`` values (``name``, ``name:port``, ``http[s]://name[:port]``; a
    name without a port is allowed on any port).
    """

    def __init__(self, host: str, port: int, extra=()):
        self.port = int(port)
        names = {"127.0.0.1", "localhost", "::1"}
        h = host.strip("[]").lower()
        if h in ("0.0.0.0", "::", ""):
            for n in {socket.gethostname(), socket.getfqdn()}:
                names.add(n.lower())
                try:
                    names.update(a[4][0].lower() for a in socket.getaddrinfo(n, None))
                except OSError:
                    pass
        else:
            names.add(h)
        self.pairs: set[tuple[str, int | None]] = {(n, self.port) for n in names}
        for e in extra or ():
            e = str(e).strip()
            if "://" in e:
                u = urlsplit(e)
                if u.hostname:
                    default = 443 if u.scheme == "https" else 80
                    self.pairs.add((u.hostname.lower(), u.port or default))
            else:
                hp = _split_host(e)
                if hp:
                    self.pairs.add(hp)

    def _allowed(self, host: str, port: int | None) -> bool:
        return (host, port) in self.pairs or (host, None) in self.pairs

    def host_ok(self, value: str | None) -> bool:
        """A request's ``Host`` header (required)."""
        if not value:
            return False
        hp = _split_host(value)
        if hp is None:
            return False
        host, port = hp
        return self._allowed(host, port if port is not None else 80)

    def origin_ok(self, value: str | None) -> bool:
        """A request's ``Origin`` header: absent (not a browser page) is fine; ``null`` and other
        sites are not."""
        if value is None:
            return True
        u = urlsplit(value.strip())
        if u.scheme not in ("http", "https") or not u.hostname:
            return False
        port = u.port or (443 if u.scheme == "https" else 80)
        return self._allowed(u.hostname.lower(), port)


# ------------------------------------------------------------------------------ state keys
class Refused(ValueError):
    """A client's value for a state key that the server does not take."""


def _size(value) -> int:
    try:
        return len(msgpack.packb(value, use_bin_type=True))
    except Exception:  # noqa: BLE001 - not even packable: too odd to take
        return MAX_VALUE_BYTES + 1


class ClientGuard:
    """Checks what the clients of one trame server send (install with :meth:`install`).

    ``rules``: ``{state key: check}``, ``check(value, state) -> value`` raising :class:`Refused`
    (see :mod:`volviz.app.rules`); ``notify(text)``: shows a refusal in the page; ``redact``:
    what every outgoing string goes through.
    """

    def __init__(
        self,
        rules: dict[str, Callable],
        *,
        token: str,
        notify: Callable[[str], None] | None = None,
        redact: Callable[[str], str] = redact_paths,
        name: str = "session",
    ):
        self.rules, self.token, self.notify, self.redact, self.name = rules, token, notify, redact, name
        self.refused: list[tuple[str, str]] = []  # (key or rpc, reason): tests read it
        self._log_times: dict[str, list[float]] = {}
        self._log_dropped: dict[str, int] = {}
        self._said: dict[str, float] = {}
        self.server = None
        self.handler = None

    # ------------------------------------------------------------------ installing
    def install(self, server) -> None:
        """Hook into ``server`` before it starts: the token check, the RPC wrappers, the redaction."""
        from wslink.websocket import LinkProtocol

        guard = self
        self.server = server

        class TokenCheck(LinkProtocol):
            async def validateToken(self, token, client_id):  # wslink calls this on wslink.hello
                ok = token_ok(token, guard.token)
                if not ok:
                    log.warning("%s: a client gave a wrong token; refused", guard.name)
                return ok

        server.add_protocol_to_configure(lambda root: root.registerLinkProtocol(TokenCheck()))
        server.controller.on_server_bind.add(self._bind)

    def _bind(self, web_server) -> None:
        handlers = [web_server[k] for k in getattr(web_server, "ws_endpoints", [])] or list(
            getattr(web_server, "_ws_handlers", [])
        )
        for h in handlers:
            self._wrap(h)
        protocol = self.server.protocol
        push = protocol.push_state_change

        def push_state_change(state, **kw):
            return push(self.clean(state), **kw)

        protocol.push_state_change = push_state_change  # trame's Server._push_state calls it

    def _wrap(self, handler) -> None:
        self.handler = handler
        fm = handler.functionMap
        for name in list(fm):
            if name not in ALLOWED_RPCS and not name.startswith("wslink."):
                fm[name] = (None, self._refuse_rpc(name))
        wrap = {
            "trame.state.update": self._state_update,
            "trame.state.get": self._state_get,
            "trame.error.client": self._client_error,
            "trame.lifecycle.update": self._lifecycle,
            "trame.force.push": self._force_push,
            "viewport.image.push.original.size": self._view_size,
            "viewport.image.push.quality": self._view_quality,
        }
        for name, fn in wrap.items():
            if name in fm:
                obj, orig = fm[name]
                fm[name] = (obj, self._bound(fn, orig))

    @staticmethod
    def _bound(fn, orig):
        def call(obj, *args, **kwargs):
            return fn(obj, orig, *args, **kwargs)

        return call

    def _refuse_rpc(self, name: str):
        def refused(_obj, *args, **kwargs):
            self._refused(name, "not an RPC this page uses")
            return {"error": f"{name} is not available"}

        return refused

    # ------------------------------------------------------------------ bookkeeping
    def _client(self) -> str | None:
        web = getattr(self.handler, "web_app", None)
        return getattr(web, "last_active_client_id", None)

    def _refused(self, what: str, why: str, show: bool = False) -> None:
        self.refused.append((what, why))
        del self.refused[:-200]
        now, key = time.monotonic(), client_text(what, 60)
        if now - self._said.get(key, -1e9) > CLIENT_LOG_WINDOW_S:  # one line per thing and minute
            self._said[key] = now
            log.warning("%s: refused %s from a client: %s", self.name, key, client_text(why, 160))
        if show and self.notify is not None:
            try:
                with self.server.state:
                    self.notify(f"refused: {why}")
            except Exception:  # noqa: BLE001 - a message must never break the handler
                log.exception("cannot show a refusal")

    def clean(self, value):
        """``value`` with every string's absolute paths redacted (data URLs left alone)."""
        if isinstance(value, str):
            if value.startswith("data:") or "/" not in value:
                return value
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self.clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.clean(v) for v in value]
        return value

    def check(self, key, value, state):
        """The value to take for ``key`` (raises :class:`Refused`)."""
        if not isinstance(key, str):
            raise Refused("a state key must be a string")
        rule = self.rules.get(key)
        if rule is None:
            raise Refused(f"{client_text(key, 60)} is not a control of this page")
        if _size(value) > MAX_VALUE_BYTES:
            raise Refused(f"the value for {key} is larger than {MAX_VALUE_BYTES // 1024} KiB")
        return rule(value, state)

    # ------------------------------------------------------------------ wrappers
    def _state_update(self, obj, orig, changes):
        state = self.server.state
        keep, back = [], {}
        for change in changes if isinstance(changes, list) else []:
            if not isinstance(change, dict):
                continue
            key = change.get("key")
            try:
                value = self.check(key, change.get("value"), state)
            except Refused as exc:
                known = isinstance(key, str) and key in self.rules
                if not (known and change.get("value") in ("", None)):  # an emptied field: no fuss
                    self._refused(str(key), str(exc), show=known)
                if isinstance(key, str) and key in state:
                    back[key] = state[key]
                continue
            keep.append({"key": key, "value": value})
        if back:  # the client keeps the server's value, not its own
            client = self._client()
            if client and self.handler is not None:
                self.handler.publish("trame.state.topic", self.clean(back), client_id=client)
        if keep:
            return orig(obj, keep)
        return None

    def _state_get(self, obj, orig):
        return self.clean(orig(obj))

    def _client_error(self, obj, orig, message=""):
        client = self._client() or "?"
        now = time.monotonic()
        times = [t for t in self._log_times.get(client, []) if now - t < CLIENT_LOG_WINDOW_S]
        if len(times) >= CLIENT_LOG_LINES:
            self._log_dropped[client] = self._log_dropped.get(client, 0) + 1
            self._log_times[client] = times
            return None
        times.append(now)
        self._log_times[client] = times
        dropped = self._log_dropped.pop(client, 0)
        log.warning(
            "%s: browser console (client text, not verified): %s%s",
            self.name,
            client_text(message),
            f" [{dropped} more client lines dropped]" if dropped else "",
        )
        return None

    def _force_push(self, obj, orig, *keys):
        """The client asks for keys again: its own client only, through :meth:`clean`."""
        state, client = self.server.state, self._client()
        data = {k: state[k] for k in keys if isinstance(k, str) and k in state}
        if data and client and self.handler is not None:
            self.handler.publish("trame.state.topic", self.clean(data), client_id=client)
        return None

    def _lifecycle(self, obj, orig, name=""):
        if name not in LIFECYCLE_EVENTS:
            self._refused(f"lifecycle {name}", "not a browser event")
            return None
        return orig(obj, name)

    def _view_size(self, obj, orig, view_id, width, height):
        try:
            w, h = int(width), int(height)
        except (TypeError, ValueError):
            self._refused("view size", "not a size")
            return {"error": "not a size"}
        if not (0 < w <= MAX_RENDER_SIDE and 0 < h <= MAX_RENDER_SIDE):
            why = (
                f"a view of {w} x {h} pixels was asked; at most {MAX_RENDER_SIDE} pixels a side "
                "(make the window smaller)"
            )
            self._refused("view size", why, show=True)
            return {"error": why}
        return orig(obj, view_id, w, h)

    def _view_quality(self, obj, orig, view_id, quality, ratio=1):
        try:
            q, r = int(quality), float(ratio)
        except (TypeError, ValueError):
            self._refused("view quality", "not a number")
            return {"error": "not a number"}
        if not (1 <= q <= 100 and 0 < r <= 1):
            why = f"view quality {q} / ratio {r}: quality must be 1..100 and ratio in (0, 1]"
            self._refused("view quality", why, show=True)
            return {"error": why}
        return orig(obj, view_id, q, r)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
