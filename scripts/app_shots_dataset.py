"""Screenshots of the explorer's dataset views in a real browser (Debian's chromium driven by
Playwright, as tests/test_browser.py does) for docs/img/app/: the Embedding tab (and a click on a
thumbnail moving the time slider), the Dataset examples panel, the Graph tab with top-example
thumbnails, and a torchvision model's graph overview (level of detail).

    python scripts/app_shots_dataset.py DIGITS_STORE [TORCHVISION_STORE] --out docs/img/app

DIGITS_STORE: the default digits capture (`volviz capture --out stores/digits`) with an fc1 map
(`volviz embed stores/digits --layer fc1 --method tsne --dims 3`). Prints what it checked.
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import re
import subprocess
import sys
import threading
import time

import numpy as np

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def serve(store: pathlib.Path, rec: pathlib.Path, *extra: str):
    rec.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "volviz", "serve", str(store), "--port", "0", "--record-dir", str(rec), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    found: list[str] = []

    def read():
        for line in proc.stdout:
            m = re.search(r"(http://127\.0\.0\.1:\d+/\?token=[\w-]+)", line)
            if m:
                found.append(m.group(1))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.time() + 180
    while not found:
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit("volviz serve did not start")
        time.sleep(0.2)
    return proc, found[0]


def shot(locator) -> np.ndarray:
    import imageio.v3 as iio

    return iio.imread(io.BytesIO(locator.screenshot()))[..., :3]


def pick(pg, select_id: str, option: str) -> None:
    pg.locator(f".v-select:has(#{select_id}) .v-field").click()
    pg.locator(".v-overlay-container .v-list-item", has_text=option).first.click()


def settle(pg, sel: str, seconds: float = 2.0) -> None:
    """Wait until the view's picture stops changing (the server pushes a fast image, then the final one)."""
    last, t0 = None, time.time()
    while time.time() - t0 < 30:
        img = shot(pg.locator(sel))
        if last is not None and img.shape == last.shape and np.abs(img.astype(int) - last).mean() < 0.05:
            return
        last = img
        time.sleep(seconds / 4)


def _nothing_cut() -> str:
    """tests/test_browser.py's check that no label, select or button is cut (the same script)."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
    from test_browser import NOTHING_CUT

    return NOTHING_CUT


def digits_shots(pg, out: pathlib.Path) -> None:
    pg.locator("#tab-embedding").click()
    pg.wait_for_function("(document.querySelector('#embedding-view') || {dataset: {}}).dataset.shown", timeout=90_000)
    settle(pg, "#embedding-view")
    label = pg.locator("#time-label").inner_text()
    pg.screenshot(path=str(out / "embedding.png"))
    # a click on a thumbnail: the time slider moves to that image
    view = pg.locator("#embedding-view")
    box = view.bounding_box()
    img = shot(view)
    bright = np.argwhere(np.abs(img.astype(int) - [0x0D, 0x0F, 0x14]).max(2) > 80)
    centre = np.array(img.shape[:2]) / 2
    y, x = bright[np.argmin(np.abs(bright - centre * [0.6, 1.4]).sum(1))]
    pg.mouse.click(box["x"] + float(x), box["y"] + float(y))
    try:
        pg.wait_for_function(f"document.querySelector('#time-label').innerText !== {label!r}", timeout=15_000)
        print("click on a thumbnail moved the slider:", label, "->", pg.locator("#time-label").inner_text())
    except Exception:  # noqa: BLE001 - a click between thumbnails picks nothing
        print("click at", x, y, "picked nothing")
    settle(pg, "#embedding-view")
    pg.screenshot(path=str(out / "embedding-picked.png"))
    for w, h in ((1280, 720), (1920, 1080)):  # nothing cut at the smallest and a large window
        pg.set_viewport_size({"width": w, "height": h})
        time.sleep(1.0)
        problems = pg.evaluate(_nothing_cut())
        print(f"embedding tab at {w}x{h}: {'nothing cut' if not problems else problems}")
        pg.screenshot(path=str(out / f"tab-embedding-{w}x{h}.png"))
    pg.set_viewport_size({"width": 1400, "height": 900})
    pick(pg, "embedding-color", "top probability")
    pg.wait_for_function("document.querySelector('#embedding-view').dataset.shown.includes('prob')", timeout=30_000)
    settle(pg, "#embedding-view")
    pg.screenshot(path=str(out / "embedding-prob.png"))

    pg.locator("#tab-volume").click()
    pg.wait_for_selector("#view-0", timeout=30_000)
    pick(pg, "layer-select-0", "conv2")
    pg.locator("#panel-tabs-0 .panel-tab", has_text="Dataset examples").click()
    pg.wait_for_function("document.querySelector('#pane-0').innerText.includes('top 9 of')", timeout=120_000)
    time.sleep(1.0)
    pg.set_viewport_size({"width": 1400, "height": 1100})
    time.sleep(1.0)
    pg.screenshot(path=str(out / "dataset-examples.png"))
    pg.set_viewport_size({"width": 1400, "height": 900})

    pg.locator("#tab-graph").click()
    pg.wait_for_function("(document.querySelector('#graph-view') || {dataset: {}}).dataset.shown", timeout=90_000)
    pick(pg, "graph-thumbs", "top dataset examples")
    pg.wait_for_function(
        "document.querySelector('#graph-note').innerText.includes('top dataset example')", timeout=120_000
    )
    pick(pg, "graph-focus", "conv2")
    pg.wait_for_function("document.querySelector('#graph-view').dataset.shown.includes('conv2')", timeout=30_000)
    settle(pg, "#graph-view")
    pg.screenshot(path=str(out / "graph-top-examples.png"))


def torchvision_shots(pg, out: pathlib.Path) -> None:
    pg.locator("#tab-graph").click()
    pg.wait_for_function("(document.querySelector('#graph-view') || {dataset: {}}).dataset.shown", timeout=240_000)
    settle(pg, "#graph-view")
    pg.screenshot(path=str(out / "graph-torchvision-lod.png"))
    print("torchvision graph note:", pg.locator("#graph-note").inner_text()[:200])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("digits", type=pathlib.Path)
    ap.add_argument("torchvision", type=pathlib.Path, nargs="?")
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/img/app"))
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    a.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        for store, fn in ((a.digits, digits_shots), (a.torchvision, torchvision_shots)):
            if store is None:
                continue
            proc, url = serve(store, a.out.parent / ".shots-rec")
            try:
                pg = b.new_context(viewport={"width": 1400, "height": 900}).new_page()
                pg.goto(url)
                pg.wait_for_selector("#volviz-ready", state="attached", timeout=120_000)
                fn(pg, a.out)
            finally:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        b.close()


if __name__ == "__main__":
    main()
