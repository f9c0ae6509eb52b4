"""Issue 11's findings replayed against ``volviz serve`` on 127.0.0.1, each refused.

One server (a subprocess, as a user starts it, without any --trust flag) serves a crafted store
whose model spec is a ``module:callable`` that writes a marker file when imported or called, a
folder of good stores (``--root``), scene files (one naming the marker model, one whose store
lies outside its folder) and an ``out/prune`` folder whose ``table.md`` is a link to a secret
file. The tests talk to it as browsers and scripts do: HTTP with aiohttp, the websocket with
trame's own ``trame_server.client.Client`` (wslink hello, ``trame.state.update`` / ``get`` and
triggers), raw wslink frames where a client would misbehave on purpose.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import time

import msgpack
import pytest
from helpers import write_image_folder

from volviz.cli import main

pytest.importorskip("trame")
aiohttp = pytest.importorskip("aiohttp")

from trame_server.client import Client  # noqa: E402
from wslink.chunking import generate_chunks  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--size", "12", "12", "--channels", "1"]
SECRET = "the contents of a file the page must never show"
MARKER_MODULE = """
import pathlib

MARKER = pathlib.Path({marker!r})
with open(MARKER, "a") as f:
    f.write("imported\\n")


def net():
    with open(MARKER, "a") as f:
        f.write("factory called\\n")
    from helpers import tiny_cnn
    return tiny_cnn()
"""


# ----------------------------------------------------------------------------- the served app
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The folder ``volviz serve`` runs in: stores, scenes, out/prune, the marker module."""
    root = tmp_path_factory.mktemp("security")
    marker = root / "marker.txt"
    code = root / "code"
    code.mkdir()
    (code / "marker_mod.py").write_text(MARKER_MODULE.format(marker=str(marker)))
    sys.path.insert(0, str(code))
    try:
        imgs = write_image_folder(root / "imgs", n_per_class=3)
        # the capture's own command line names the factory: it runs (once, here, not in the server)
        assert (
            main(
                [
                    "capture",
                    "--out",
                    str(root / "stores" / "crafted"),
                    "--images",
                    str(imgs),
                    "--model",
                    "marker_mod:net",
                    *TINY,
                ]
            )
            == 0
        )
        for k in (1, 2):
            assert (
                main(
                    [
                        "capture",
                        "--out",
                        str(root / "good" / f"tiny{k}"),
                        "--images",
                        str(imgs),
                        "--model",
                        "helpers:tiny_cnn",
                        *TINY,
                    ]
                )
                == 0
            )
    finally:
        sys.path.remove(str(code))
        sys.modules.pop("marker_mod", None)
    marker.unlink()
    scenes = root / "scenes"
    scenes.mkdir()
    (scenes / "crafted.toml").write_text(
        '[store]\npath = "gone"\nmodel = "marker_mod:net"\n[[keyframes]]\nview = "overview"\n'
    )
    (scenes / "outside.toml").write_text('[store]\npath = "../stores/crafted"\n[[keyframes]]\nview = "overview"\n')
    shutil.copytree(root / "stores" / "crafted", scenes / "inside")
    (scenes / "inside.toml").write_text('[store]\npath = "inside"\n[[keyframes]]\nview = "overview"\n')
    evil = root / "out" / "prune" / "evil"
    evil.mkdir(parents=True)
    (root / "secret.txt").write_text(SECRET)
    for name in ("table.md", "table.csv", "sweep_conv1.csv", "sweep_conv1.png"):
        (evil / name).symlink_to(root / "secret.txt")
    return {"root": root, "marker": marker, "code": code, "crafted": root / "stores" / "crafted"}


class Served:
    """``volviz serve`` in a subprocess; its URL (with the token) read from what it prints."""

    def __init__(self, world, *args):
        env = dict(
            os.environ,
            VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow",
            PYTHONPATH=os.pathsep.join(
                [str(world["code"]), str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]
            ),
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "volviz", "serve", *map(str, args), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=world["root"],
        )
        self.lines: list[str] = []
        self.url = None
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.time() + 120
        while self.url is None:
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                pytest.fail("volviz serve did not start:\n" + self.log)
            time.sleep(0.1)
        self.base, self.token = self.url.split("/?token=")
        self.port = int(self.base.rsplit(":", 1)[1])
        self.ws = self.base.replace("http://", "ws://") + "/ws"

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.search(r"(http://[\w.\-\[\]:]+:\d+/\?token=[\w-]+)", line)
            if m:
                self.url = m.group(1)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def rss_mb(self) -> float:
        for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def served(world, can_render):
    s = Served(world, world["crafted"], "--root", world["root"] / "good")  # no --trust-* flag
    yield s
    s.stop()


# ----------------------------------------------------------------------------- clients
class Page:
    """A trame client of one session (``/ws``: a session of its own), with awaited RPCs."""

    def __init__(self, served, url=None, secret=None):
        self.client = Client(url=url or served.ws)
        self.secret = served.token if secret is None else secret
        self.task = None
        self.seen: list[dict] = []

    async def __aenter__(self):
        self.client._session = None
        self.task = asyncio.ensure_future(self.client.connect(secret=self.secret))
        for _ in range(300):
            await asyncio.sleep(0.05)
            if self.client.connected == 2:
                break
            if self.task.done():
                self.task.result()  # raises the refusal
        assert self.client.connected == 2, "no connection"
        self.client._session.register_subscription("trame.state.topic", self.seen.append)
        self.client.state._push_state_fn = None  # trame's Client echoes the server's pushes: not this one
        return self

    async def __aexit__(self, *exc):
        await self.client.disconnect()
        await asyncio.wait([self.task], timeout=5)

    async def call(self, method, *args):
        return await (await self.client._session.call(method, list(args)))

    async def state(self) -> dict:
        return (await self.call("trame.state.get"))["state"]

    async def set(self, **changes):
        await self.call("trame.state.update", [{"key": k, "value": v} for k, v in changes.items()])

    async def trigger(self, name, *args):
        return await self.call("trame.trigger", name, list(args), {})

    async def wait_for(self, ok, timeout=30.0, what="the server"):
        deadline = time.time() + timeout
        while True:
            st = await self.state()
            if ok(st):
                return st
            if time.time() > deadline:
                raise AssertionError(
                    f"{what} did not get there: "
                    + json.dumps(
                        {
                            k: v
                            for k, v in st.items()
                            if isinstance(v, (str, bool, int))
                            and not k.startswith("trame")
                            and not str(v).startswith("data:")
                        }
                    )[:3000]
                )
            await asyncio.sleep(0.2)


def run(coro):
    return asyncio.run(coro)


def http(served, path="/", token=None, cookie=None, headers=None, method="GET", **kw):
    async def go():
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as s:
            h = dict(headers or {})
            if cookie:
                h["Cookie"] = f"volviz-token-{served.port}={cookie}"
            url = served.base + path + (f"?token={token}" if token is not None else "")
            async with s.request(method, url, headers=h, allow_redirects=False, **kw) as r:
                return r.status, dict(r.headers), await r.read()

    return run(go())


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


# ----------------------------------------------------------------------------- 1. who may connect
def test_no_token_or_a_wrong_one_is_refused(served):
    assert http(served, "/")[0] == 403
    assert http(served, "/", token="wrong")[0] == 403
    assert http(served, "/", token="")[0] == 403
    for path in ("/index.html?session=" + "0" * 32, "/assets/", "/recordings/x/y.mp4"):
        assert http(served, path)[0] in (403, 404) and http(served, path)[0] != 200
        assert http(served, path, cookie="wrong")[0] == 403
    assert http(served, "/paraview/", method="POST", json={})[0] == 403  # the launcher hands out the secret
    status, headers, _ = http(served, "/", token=served.token)
    assert status == 302 and "session=" in headers["Location"] and "token" not in headers["Location"]
    assert f"volviz-token-{served.port}=" in headers["Set-Cookie"] and "HttpOnly" in headers["Set-Cookie"]
    assert "SameSite=Strict" in headers["Set-Cookie"]
    status, _, body = http(served, "/paraview/", method="POST", cookie=served.token, json={})
    assert status == 200 and json.loads(body)["secret"] == served.token

    async def hello(secret):
        async with Page(served, secret=secret):
            pass

    for wrong in ("wslink-secret", "wrong", ""):  # wslink's public default among them
        with pytest.raises(Exception, match="Authentication failed"):
            run(hello(wrong))
    run(hello(served.token))


def test_foreign_origin_and_host_are_refused(served):
    evil = {"Origin": "http://attacker.example"}
    assert http(served, "/", token=served.token, headers=evil)[0] == 403
    assert http(served, "/", token=served.token, headers={"Host": "attacker.example"})[0] == 403
    assert http(served, "/", token=served.token, headers={"Host": f"attacker.example:{served.port}"})[0] == 403
    assert http(served, "/", token=served.token, headers={"Origin": "null"})[0] == 403
    assert http(served, "/", token=served.token, headers={"Origin": f"http://127.0.0.1:{served.port}"})[0] == 302

    async def upgrade(headers):
        async with aiohttp.ClientSession() as s:
            try:
                async with s.ws_connect(served.ws, headers=headers):
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    assert run(upgrade(evil)) == 403  # a page of another site
    assert run(upgrade({"Host": "attacker.example"})) == 403  # DNS rebinding
    assert run(upgrade({"Origin": f"http://localhost:{served.port}"})) == 101


# ----------------------------------------------------------------------------- sessions
def test_one_sessions_changes_are_invisible_to_another(served):
    async def go():
        async with Page(served) as a, Page(served) as b:
            await a.wait_for(lambda st: st["p0_shown"], what="a's first view")
            st_b = await b.wait_for(lambda st: st["p0_shown"], what="b's first view")
            layers = [it["value"] for it in st_b["p0_layers"]]
            await a.set(t_index=5, p0_layer=layers[1], v_order="pca")
            await a.wait_for(lambda st: st["p0_shown"].endswith("image 5") and st["p0_layer"] == layers[1])
            await asyncio.sleep(0.5)
            after = await b.state()
            for k in ("t_index", "p0_layer", "v_order", "p0_caption", "p0_input", "p0_shown"):
                assert after[k] == st_b[k], f"{k} of one session changed another's"
            assert not any(k in msg for msg in b.seen for k in ("t_index", "p0_layer", "v_order"))
            await a.set(r_max_images=3)
            await a.trigger("record")  # a's recording: b cannot see it, nor stop it
            assert not (await b.state())["r_busy"]
            await b.trigger("cancel_record")
            st_a = await a.wait_for(lambda st: st["r_url"] or "recording" in st["r_status"], what="a's recording")
            await a.wait_for(lambda st: st["r_url"], timeout=90, what="a's movie")
            assert not (await b.state())["r_url"]
            return st_a

    run(go())


# ----------------------------------------------------------------------------- 2, 3. no code from data
def test_a_crafted_store_and_scene_never_import_or_call_code(served, world):
    async def go():
        async with Page(served) as p:
            st = await p.state()
            assert not st["p0_error"] and st["p0_title"].startswith("crafted")
            await p.set(panel_tab="sorted", sal_on=True, t_index=1)
            st = await p.wait_for(lambda st: "--trust-factory" in st["p0_panel_note"], what="the sorted panel")
            assert "--trust-factory" in st["p0_sal_note"]
            await p.set(v_quantity="grad_weight")
            await p.set(t_sort="groups")
            await p.wait_for(lambda st: "--trust-factory" in st["p0_error"], what="class groups")
            await p.set(t_sort="captured", v_quantity="activation")
            await p.set(app_tab="graph")
            await p.wait_for(lambda st: "--trust-factory" in st["g_note"], what="the graph")
            await p.set(app_tab="prune")
            await p.trigger("prune_compute")
            await p.wait_for(lambda st: "--trust-factory" in st["pr_status"], what="pruning")
            await p.set(app_tab="scene")
            scenes = {it["title"]: it["value"] for it in (await p.state())["sc_files"]}
            assert {"scenes/crafted.toml", "scenes/inside.toml", "scenes/outside.toml"} <= set(scenes)
            await p.set(sc_file=scenes["scenes/crafted.toml"])
            st = await p.wait_for(lambda st: "cannot" in st["sc_status"], what="the crafted scene")
            assert "marker_mod" not in st["sc_status"] and "keyframes" not in st["sc_status"]
            await p.set(sc_file=scenes["scenes/outside.toml"])
            await p.wait_for(lambda st: "leaves the scene's folder" in st["sc_status"], what="the outside scene")
            await p.set(sc_file=scenes["scenes/inside.toml"])
            await p.wait_for(
                lambda st: "cannot prepare" in st["sc_status"] and not st["sc_busy"], what="the inside scene"
            )

    run(go())
    assert not world["marker"].exists(), "the crafted store's model module was imported or called"
    assert served.proc.poll() is None


# ----------------------------------------------------------------------------- 3, 5, 6, 7. ids, not paths
def test_paths_and_values_the_server_did_not_offer_are_refused(served, world):
    other = str(world["root"] / "good" / "tiny1")

    async def go():
        async with Page(served) as p:
            st = await p.state()
            ids = {it["title"]: it["value"] for it in st["app_stores"]}
            assert set(ids) == {"crafted", "tiny1", "tiny2"} and all(v.startswith("store-") for v in ids.values())
            before = st["p0_store"]
            for bad in ("/etc", other, "../good/tiny1", "store-99"):
                await p.set(p0_store=bad)
            await p.set(
                sc_file=str(world["root"] / "scenes" / "crafted.toml"),
                pr_folder="/etc",
                r_url="javascript:alert(document.cookie)",
                p0_input="http://attacker.example/x.png",
                trame__template_main="<div>injected</div>",
                junk="x",
            )
            await asyncio.sleep(0.3)
            st = await p.state()
            assert st["p0_store"] == before and st["sc_file"] is None and st["pr_folder"] is None
            assert st["r_url"] == "" and st["p0_input"].startswith("data:image/png;base64,")
            assert "injected" not in st["trame__template_main"] and "junk" not in st
            assert "refused" in st["app_message"]
            await p.set(p0_store=ids["tiny1"])  # an id it offered: fine
            await p.wait_for(lambda st: st["p0_title"].startswith("tiny1"), what="the tiny1 store")
            # no absolute server path anywhere in the state (ids and names only)
            st = await p.state()
            for text in _strings(st):
                if not text.startswith("data:"):
                    assert str(world["root"]) not in text and os.getcwd() not in text, text
            # a recording of this session only, by its own name
            assert await p.call("application.exit") == {"error": "application.exit is not available"}
            assert (await p.call("trame.lifecycle.update", "server_ready")) is None

    run(go())
    for path in (
        "/recordings/x/../../secret.txt",
        "/recordings/" + "0" * 32 + "/secret.txt",
        "/secret.txt",
        "/../secret.txt",
        "/out/prune/evil/table.md",
        "/recordings/x/%2e%2e%2fsecret.txt",
    ):
        assert http(served, path, cookie=served.token)[0] in (403, 404), path
    assert served.proc.poll() is None, "a client stopped the server"


def test_a_symlinked_report_file_is_not_read(served):
    async def go():
        async with Page(served) as p:
            await p.set(app_tab="prune")
            folders = {it["title"]: it["value"] for it in (await p.state())["pr_folders"]}
            assert "evil" in folders
            await p.set(pr_folder=folders["evil"])
            await p.trigger("prune_load")
            st = await p.wait_for(lambda st: "cannot show evil" in st["pr_status"], what="the evil folder")
            assert "points outside the folder" in st["pr_status"] or "not read" in st["pr_status"]
            assert not any(SECRET in t for t in _strings(st)) and st["pr_rows"] == [] and st["pr_images"] == []

    run(go())


# ----------------------------------------------------------------------------- 4, 8. bounded requests
def test_a_huge_render_is_refused_with_a_message(served):
    async def go():
        async with Page(served) as p:
            st = await p.state()
            before = served.rss_mb()
            reply = await p.call("viewport.image.push.original.size", st["view0Id"], 12000, 12000)
            assert "at most 4096" in reply["error"]
            await p.call("viewport.image.push", {"view": st["view0Id"]})
            await p.wait_for(
                lambda st: "12000 x 12000" in st["app_message"] and "4096" in st["app_message"],
                what="the page's message",
            )
            reply = await p.call("viewport.image.push.quality", st["view0Id"], 90, 20)  # 20 x the size
            assert "ratio" in reply["error"]
            await p.wait_for(lambda st: "ratio" in st["app_message"], what="the page's message")
            assert served.rss_mb() - before < 300, "the refused render still took memory"

    run(go())


def test_unbounded_recordings_and_sweeps_are_refused(served):
    async def go():
        async with Page(served) as p:
            await p.wait_for(lambda st: st["p0_shown"], what="the first view")
            await p.set(r_mode="rotate", r_frames=100000, r_max_images=100000, pr_steps=10**6)
            st = await p.state()
            assert st["r_frames"] == 48 and st["r_max_images"] == 40 and st["pr_steps"] == 20
            assert "out of range" in st["app_message"]
            await p.trigger("record")
            st = await p.wait_for(lambda st: "recording" in st["r_status"] or st["r_url"], what="the recording")
            await p.trigger("cancel_record")
            await p.wait_for(lambda st: not st["r_busy"], what="the stop")

    run(go())


def test_oversized_state_is_refused_and_never_reaches_another_client(served):
    async def go():
        async with Page(served) as other:
            async with Page(served) as p:
                # a value over the limit in a small-enough message: dropped, the server's kept
                await p.set(v_cmap="x" * 100_000)
                assert (await p.state())["v_cmap"] == "auto"
                # a 50 MB message: the socket is closed before it is assembled
                before = served.rss_mb()
                msg = msgpack.packb(
                    {
                        "wslink": "1.0",
                        "id": "rpc:x:99",
                        "method": "trame.state.update",
                        "args": [[{"key": "v_cmap", "value": "x" * (50 << 20)}]],
                        "kwargs": {},
                    }
                )
                ws = p.client._session.ws
                for chunk in generate_chunks(msg, 4 << 20):
                    if ws.closed:
                        break
                    try:
                        await ws.send_bytes(chunk)
                    except (ConnectionError, RuntimeError):
                        break
                    await asyncio.sleep(0)
                await asyncio.wait([p.task], timeout=10)
                assert ws.closed and ws.close_code == 1009
            assert served.rss_mb() - before < 200
            st = await other.state()
            assert st["v_cmap"] == "auto" and not any("xxxx" in json.dumps(m) for m in other.seen)

    run(go())


def test_client_log_lines_are_few_short_and_marked(served):
    n0 = served.log.count("client text")

    async def go():
        async with Page(served) as p:
            for k in range(50):
                await p.call("trame.error.client", f"forged {k}\nERROR volviz.app: server compromised " + "y" * 5000)

    run(go())
    time.sleep(0.5)
    lines = served.log.splitlines()
    forged = [ln for ln in lines if "forged" in ln]
    assert 1 <= len(forged) <= 5 and served.log.count("client text") - n0 == len(forged)
    assert not any(ln.startswith("ERROR volviz.app: server compromised") for ln in lines)
    assert all(len(ln) < 400 for ln in forged)


# ----------------------------------------------------------------------------- --host 0.0.0.0
def test_origins_and_the_exposed_warning():
    import socket

    from volviz.app.security import Origins, token_ok
    from volviz.app.server import exposed_warning

    o = Origins("127.0.0.1", 8080)
    assert o.host_ok("127.0.0.1:8080") and o.host_ok("localhost:8080") and o.host_ok("[::1]:8080")
    assert not o.host_ok("127.0.0.1:8081") and not o.host_ok("attacker.example:8080") and not o.host_ok(None)
    assert o.origin_ok(None) and o.origin_ok("http://localhost:8080")
    assert not o.origin_ok("http://attacker.example") and not o.origin_ok("null") and not o.origin_ok("file://")
    wide = Origins("0.0.0.0", 8080, ["https://proxy.example", "lab.example"])
    assert wide.host_ok(f"{socket.gethostname()}:8080") and wide.origin_ok("https://proxy.example")
    assert wide.host_ok("lab.example:9999") and not wide.host_ok("attacker.example:8080")
    assert token_ok("abc", "abc") and not token_ok("abd", "abc") and not token_ok(None, "abc")
    text = exposed_warning("0.0.0.0", 8080)
    assert "token" in text and "no TLS" in text and "ssh -L 8080:127.0.0.1:8080" in text


def test_host_0000_keeps_working_with_the_token(world, can_render):
    s = Served(world, world["crafted"], "--host", "0.0.0.0")
    try:
        assert "WARNING: serving on 0.0.0.0" in s.log and "no TLS" in s.log
        s.base = f"http://127.0.0.1:{s.port}"
        assert http(s, "/")[0] == 403
        assert http(s, "/", token=s.token)[0] == 302
        assert http(s, "/", token=s.token, headers={"Host": f"attacker.example:{s.port}"})[0] == 403
    finally:
        s.stop()
