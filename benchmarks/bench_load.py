"""A bounded load test of ``volviz serve``: headless browsers scrubbing their own sessions.

    python benchmarks/bench_load.py                    # 10 browsers, 20 s of scrubbing each
    python benchmarks/bench_load.py --clients 4 --seconds 10

Not part of the test suite (it takes the machine for a minute or two). It starts ``volviz serve``
on the 40 test digits (and a synthetic 64 x 112 x 112 layer on 40 images, for a slow order fit), with the
websocket heartbeat at 4 s (``TRAME_WS_HEART_BEAT``: a browser that gets no pong within 2 s is
dropped; the default is 30 s), and drives Debian's chromium with Playwright:

1. **idle**: one browser alone; each probe presses ArrowRight on the time slider and waits until
   the view says it shows the new image (``data-shown``): the step's latency as a user sees it.
2. **fit**: the same probes while another browser switches its store to the synthetic layer and
   asks for a k-means order fitted over its 40 images (~20 s, in a background job): the
   probes must stay under 2x the idle latency (the fit must not freeze the other sessions).
3. **load**: ``--clients`` browsers, each in its own session, scrub back and forth for
   ``--seconds`` s each at once (closed loop: the next step when the last one is shown). No
   websocket may drop, and each browser's last view must be its own last slider position.

Prints a Markdown table and writes ``benchmarks/results/load-cpu.json`` (latencies, the server's
memory before and after, drops).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-renderer-backgrounding",
    "--disable-background-timer-throttling",
]
HEARTBEAT_S = 4


def _stores(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_app import synthetic_store

    from volviz.cli import main

    imgs = root / "digits-imgs"
    for cls in sorted((ROOT / "data" / "digits" / "test").iterdir()):
        (imgs / cls.name).mkdir(parents=True)
        for f in sorted(cls.glob("*.png"))[:4]:
            shutil.copy(f, imgs / cls.name / f.name)
    stores = root / "stores"
    assert main(["capture", "--out", str(stores / "digits"), "--images", str(imgs)]) == 0
    synth = synthetic_store(root / "synth", 40)  # a k-means order over its 40 images: ~20 s on one core
    shutil.move(str(synth), stores / "synthetic")
    return stores / "digits", stores / "synthetic"


class Served:
    def __init__(self, stores: pathlib.Path, first: pathlib.Path, cwd: pathlib.Path):
        env = dict(
            os.environ,
            VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow",
            TRAME_WS_HEART_BEAT=str(HEARTBEAT_S),
            PYTHONPATH=os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "volviz",
                "serve",
                str(first),
                "--root",
                str(stores),
                "--port",
                "0",
                "--trust-factory",
                "--max-sessions",
                "24",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=cwd,
        )
        self.lines, self.url = [], None
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.time() + 180
        while self.url is None:
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit("volviz serve did not start:\n" + "".join(self.lines))
            time.sleep(0.1)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.search(r"(http://127\.0\.0\.1:\d+/\?token=[\w-]+)", line)
            if m:
                self.url = m.group(1)

    def rss_mb(self) -> float:
        for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Tab:
    """One browser (its own context, so its own session) and its probes."""

    def __init__(self, browser, url: str, n_images: int):
        self.browser, self.url, self.n = browser, url, n_images
        self.latencies: list[float] = []
        self.when: list[float] = []  # when each probe started (perf_counter)
        self.timeouts = 0
        self.drops = 0
        self.closing = False
        self.position = 0
        self.direction = 1

    async def open(self):
        self.ctx = await self.browser.new_context(viewport={"width": 1280, "height": 720})
        self.page = await self.ctx.new_page()

        def on_ws(ws):
            ws.on("close", lambda _ws: None if self.closing else setattr(self, "drops", self.drops + 1))

        self.page.on("websocket", on_ws)
        await self.page.goto(self.url)
        await self.page.wait_for_selector("#volviz-ready", state="attached", timeout=120_000)
        await self.page.wait_for_function(
            "(document.querySelector('#view-0') || {dataset: {}}).dataset.shown", timeout=120_000
        )
        self.thumb = self.page.locator(".v-slider:has(#time-slider) [role=slider]")
        await self.thumb.focus()

    async def probe(self, timeout_s: float = 20.0) -> float | None:
        """One slider step; seconds until the view shows the new image (None: not within the timeout)."""
        if not 0 <= self.position + self.direction < self.n:
            self.direction = -self.direction
        self.position += self.direction
        key = "ArrowRight" if self.direction > 0 else "ArrowLeft"
        t0 = time.perf_counter()
        await self.thumb.press(key)
        try:
            await self.page.wait_for_function(
                f"document.querySelector('#view-0').dataset.shown.endsWith('image {self.position}')",
                timeout=timeout_s * 1000,
                polling="raf",
            )
        except Exception:  # noqa: BLE001 - a timeout: counted
            self.timeouts += 1
            return None
        dt = time.perf_counter() - t0
        self.latencies.append(dt)
        self.when.append(t0)
        return dt

    async def scrub(self, seconds: float):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            await self.probe()

    async def last_view_ok(self) -> bool:
        await asyncio.sleep(1.0)
        label = (await self.page.inner_text("#time-label")).replace(" ", "")
        shown = await self.page.get_attribute("#view-0", "data-shown")
        pos = int(label.split("/")[0]) - 1
        return pos == self.position and shown.endswith(f"image {pos}")

    async def close(self):
        self.closing = True
        await self.ctx.close()


def _stats(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]
    return {
        "n": len(xs),
        "median_ms": round(1e3 * statistics.median(xs), 1),
        "p95_ms": round(1e3 * p95, 1),
        "max_ms": round(1e3 * xs[-1], 1),
    }


async def run(a) -> dict:
    from playwright.async_api import async_playwright

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="volviz-load-"))
    try:
        digits, synth = _stores(tmp)
        srv = Served(tmp / "stores", digits, tmp)
        out: dict = {
            "clients": a.clients,
            "seconds": a.seconds,
            "heartbeat_s": HEARTBEAT_S,
            "rss_mb_started": round(srv.rss_mb()),
        }
        try:
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                # 1. idle: one browser alone
                probe = Tab(browser, srv.url, 40)
                await probe.open()
                for _ in range(a.probes):
                    await probe.probe()
                out["idle"] = _stats(probe.latencies)
                # 2. the same probes while another session fits a slow order in the background
                fitter = Tab(browser, srv.url, 40)
                await fitter.open()
                page = fitter.page
                await page.locator(".v-select:has(#store-select-0) .v-field").click()
                await page.locator(".v-overlay-container .v-list-item", has_text="synthetic").first.click()
                await page.wait_for_function(
                    "document.querySelector('#view-0').dataset.shown.startsWith('0 ')", timeout=180_000
                )
                await page.locator(".v-select:has(#order-select) .v-field").click()
                await page.locator(".v-overlay-container .v-list-item", has_text=a.fit_order).first.click()
                t_fit = time.perf_counter()
                probe.latencies = []
                await page.wait_for_selector("#pane-busy-0", timeout=30_000)
                while await page.locator("#pane-busy-0").count():
                    await probe.probe()
                fit_s = time.perf_counter() - t_fit
                slow = [
                    (round(w - t_fit, 1), round(x, 2))
                    for w, x in zip(probe.when[-len(probe.latencies) :], probe.latencies)
                    if x > 0.5
                ]
                out["during_fit"] = _stats(probe.latencies) | {
                    "fit_s": round(fit_s, 1),
                    "order": a.fit_order,
                    "dropped_websockets": probe.drops + fitter.drops,
                    "slow_probes_s_after_the_order_was_asked": slow,
                }
                out["fit_ok"] = bool(probe.latencies) and out["during_fit"]["median_ms"] < 2 * out["idle"]["median_ms"]
                shown = await page.get_attribute("#view-0", "data-shown")
                out["fit_shown"] = shown
                await fitter.close()
                await probe.close()
                await asyncio.sleep(2)
                # 3. load: N browsers scrubbing at once, each in its own session
                rss0 = srv.rss_mb()
                tabs = [Tab(browser, srv.url, 40) for _ in range(a.clients)]
                for t in tabs:  # opened one after another (a session is made per tab)
                    await t.open()
                rss_open = srv.rss_mb()
                t0 = time.perf_counter()
                await asyncio.gather(*[t.scrub(a.seconds) for t in tabs])
                wall = time.perf_counter() - t0
                ok = await asyncio.gather(*[t.last_view_ok() for t in tabs])
                rss1 = srv.rss_mb()
                lat = [x for t in tabs for x in t.latencies]
                out["load"] = _stats(lat) | {
                    "steps": len(lat),
                    "steps_per_s": round(len(lat) / wall, 1),
                    "timeouts": sum(t.timeouts for t in tabs),
                    "dropped_websockets": sum(t.drops for t in tabs),
                    "last_view_matches": f"{sum(ok)}/{len(ok)}",
                    "rss_mb_before": round(rss0),
                    "rss_mb_sessions_open": round(rss_open),
                    "rss_mb_after": round(rss1),
                }
                for t in tabs:
                    await t.close()
                await browser.close()
        finally:
            log = "".join(srv.lines)
            srv.stop()
        out["server_log_warnings"] = [ln for ln in log.splitlines() if "WARNING" in ln or "Error" in ln][:20]
        if a.log:
            pathlib.Path(a.log).write_text(log)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=20.0, help="scrubbing per browser (at most 20 s: 2 cores)")
    ap.add_argument("--probes", type=int, default=15, help="idle probes")
    ap.add_argument("--fit-order", default="k-means, separators", help="the slow order (its title in the select)")
    ap.add_argument("--out", default=str(RESULTS / "load-cpu.json"))
    ap.add_argument("--log", help="write the server's log here")
    a = ap.parse_args()
    a.seconds = min(a.seconds, 20.0)
    out = asyncio.run(run(a))
    pathlib.Path(a.out).write_text(json.dumps(out, indent=1))
    i, f, ld = out["idle"], out["during_fit"], out["load"]
    print("| phase | steps | median | p95 | notes |\n|---|---|---|---|---|")
    print(f"| idle (1 browser) | {i['n']} | {i['median_ms']} ms | {i['p95_ms']} ms | |")
    print(
        f"| 1 browser while another fits {f['order']} ({f['fit_s']} s) | {f['n']} | {f['median_ms']} ms | "
        f"{f['p95_ms']} ms | < 2x idle: {out['fit_ok']} |"
    )
    print(
        f"| {a.clients} browsers scrubbing {a.seconds:g} s | {ld['steps']} | {ld['median_ms']} ms | "
        f"{ld['p95_ms']} ms | "
        f"{ld['steps_per_s']} steps/s in all; dropped websockets {ld['dropped_websockets']}; timeouts "
        f"{ld['timeouts']}; last view = own slider {ld['last_view_matches']}; server RSS at start "
        f"{out['rss_mb_started']}, then {ld['rss_mb_before']} -> "
        f"{ld['rss_mb_sessions_open']} (sessions open) -> {ld['rss_mb_after']} MB |"
    )
    print("\n".join(out["server_log_warnings"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
