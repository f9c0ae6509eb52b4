"""Live input in a real browser: headless chromium's fake camera plays a Y4M video made here from
the digits test images; the page reads it with ``getUserMedia``, sends small JPEG frames and
the Dashboard tab's class bars follow the digit shown. Uploads (file picker, drag-and-drop), bad
files, and a camera the browser refuses each give one line on the page, and the session goes on.

Screenshots go to ``out_dir`` (``VOLVIZ_TEST_OUT=folder`` keeps them; ``docs/img/app/dashboard*.png``
come from here).
"""

from __future__ import annotations

import base64
import pathlib
import shutil
import time

import numpy as np
import pytest
from PIL import Image
from test_browser import ARGS, CHROMIUM, Server, _need_chromium

from volviz.cli import main

pytestmark = pytest.mark.browser

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIGITS = ROOT / "data" / "digits" / "test"
SHOWN = (1, 7, 3)  # the digits the fake camera shows, in turn
SECONDS_EACH = 3


def digit(cls: int, k: int = 0) -> pathlib.Path:
    return sorted((DIGITS / str(cls)).glob("*.png"))[k]


def write_y4m(path: pathlib.Path, digits=SHOWN, fps: int = 10, seconds: int = SECONDS_EACH, scale: int = 4) -> None:
    """A YUV4MPEG2 file (a text header, then ``FRAME`` + raw I420 planes per frame): each digit
    upscaled ``scale`` times, shown ``seconds`` long."""
    side = 28 * scale
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{side} H{side} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        chroma = np.full((side // 2, side // 2), 128, np.uint8).tobytes() * 2  # grey: U = V = 128
        for d in digits:
            grey = np.asarray(Image.open(digit(d)).convert("L"))
            y = np.kron(grey, np.ones((scale, scale), np.uint8))
            luma = (16 + y.astype(np.float32) * 219 / 255).round().astype(np.uint8).tobytes()  # studio range
            for _ in range(fps * seconds):
                f.write(b"FRAME\n" + luma + chroma)


@pytest.fixture(scope="module")
def live(tmp_path_factory, can_render):
    _need_chromium()
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("livebrowser")
    imgs = root / "imgs"
    for c in range(10):
        (imgs / str(c)).mkdir(parents=True)
        for f in sorted((DIGITS / str(c)).glob("*.png"))[:2]:
            shutil.copy(f, imgs / str(c) / f.name)
    assert main(["capture", "--out", str(root / "digits"), "--images", str(imgs)]) == 0
    y4m = root / "digits.y4m"
    write_y4m(y4m)
    server = Server([root / "digits"], root / "rec")
    camera = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, args=[*ARGS, *camera, f"--use-file-for-fake-video-capture={y4m}"]
        )
        ctx = b.new_context(viewport={"width": 1500, "height": 1000})
        page = ctx.new_page()
        page.goto(server.url)
        page.wait_for_selector("#volviz-ready", state="attached", timeout=60_000)
        page.locator("#tab-dashboard").click()
        page.wait_for_selector("#dashboard-image", timeout=30_000)
        yield {"page": page, "server": server, "root": root, "playwright": p}
        b.close()
    server.stop()


def _pred(page) -> str:
    return page.inner_text("#db-pred")


def _wait_pred(page, cls: int, timeout=30_000):
    page.wait_for_function(
        f"(document.querySelector('#db-pred') || {{}}).innerText.startsWith('predicted {cls} (')", timeout=timeout
    )


def _error(page, text: str, timeout=20_000):
    page.wait_for_function(
        f"(document.querySelector('#db-error') || {{}}).innerText?.includes({text!r})", timeout=timeout
    )


def test_webcam_frames_reach_the_model_and_the_bars_follow_the_digit(live, out_dir):
    page = live["page"]
    page.locator("#db-src-camera").click()
    seen, deadline = [], time.time() + 60
    while time.time() < deadline and not set(SHOWN) <= {int(s) for s in seen}:
        words = _pred(page).split()  # "predicted 7 (99.9%)"
        if len(words) > 1 and words[1].isdigit() and (not seen or seen[-1] != words[1]):
            seen.append(words[1])
        time.sleep(0.1)
    assert set(SHOWN) <= {int(s) for s in seen}, f"predictions seen: {seen}"
    # in the order the camera shows them (cyclically), each digit for seconds at a time
    order = [int(s) for s in seen if int(s) in SHOWN]
    k = SHOWN.index(order[0])
    assert order[:3] == [SHOWN[(k + j) % 3] for j in range(3)], order
    stats = page.inner_text("#lv-stats")
    assert "frames/s" in stats and float(stats.split()[0]) > 0.5, stats
    page.screenshot(path=str(out_dir / "dashboard.png"))
    page.locator(".v-select:has(#db-view) .v-field").click()
    page.locator(".v-overlay-container .v-list-item", has_text="FC only").first.click()
    page.wait_for_function("document.querySelector('#db-view') && true")
    time.sleep(1.5)
    page.screenshot(path=str(out_dir / "dashboard-fc.png"))
    page.locator(".v-select:has(#db-view) .v-field").click()
    page.locator(".v-overlay-container .v-list-item", has_text="generic").first.click()
    page.locator("#db-camera-stop").click()


def _png_file(path: pathlib.Path, img: Image.Image, fmt="PNG") -> pathlib.Path:
    img.save(path, format=fmt)
    return path


def test_uploads_drops_and_bad_files_in_the_page(live, tmp_path):
    page = live["page"]
    page.locator("#db-camera-stop").click()
    time.sleep(0.5)
    page.set_input_files("#lv-file", str(digit(3, 1)))
    _wait_pred(page, 3)
    # drag and drop a 4 onto the picture
    b64 = base64.b64encode(digit(4, 1).read_bytes()).decode()
    page.evaluate(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'four.png', {type: 'image/png'}));
            document.querySelector('#db-drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
        }""",
        b64,
    )
    _wait_pred(page, 4)
    text = tmp_path / "notes.txt"
    text.write_text("not an image at all")
    page.set_input_files("#lv-file", str(text))
    _error(page, "is not an image")
    page.set_input_files("#lv-file", str(_png_file(tmp_path / "huge.png", Image.new("1", (7100, 7100)))))
    _error(page, "50.4 megapixels")
    page.set_input_files("#lv-file", str(_png_file(tmp_path / "cmyk.jpg", Image.new("CMYK", (64, 64)), "JPEG")))
    _error(page, "4 channels (CMYK)")
    page.set_input_files("#lv-file", str(digit(9, 1)))  # the session goes on
    _wait_pred(page, 9)
    assert not page.locator("#db-error").count()


def test_a_refused_camera_is_one_line_and_the_session_goes_on(live):
    p, server = live["playwright"], live["server"]
    b = p.chromium.launch(
        executable_path=CHROMIUM, args=[*ARGS, "--use-fake-device-for-media-stream", "--deny-permission-prompts"]
    )
    try:
        page = b.new_context(viewport={"width": 1400, "height": 900}).new_page()
        page.goto(server.url)
        page.wait_for_selector("#volviz-ready", state="attached", timeout=60_000)
        page.locator("#tab-dashboard").click()
        page.wait_for_selector("#dashboard-image", timeout=30_000)
        page.locator("#db-src-camera").click()
        _error(page, "camera refused")
        page.set_input_files("#lv-file", str(digit(2, 1)))
        _wait_pred(page, 2)
    finally:
        b.close()


@pytest.mark.parametrize("size", [(1280, 720), (1920, 1080)], ids=["1280x720", "1920x1080"])
def test_the_dashboard_fits_the_window(live, out_dir, size):
    """No label, select or button cut and no sideways scrolling at either size (as every tab)."""
    from test_browser import NOTHING_CUT

    w, h = size
    page = live["page"].context.browser.new_context(viewport={"width": w, "height": h}).new_page()
    try:
        page.goto(live["server"].url)
        page.wait_for_selector("#volviz-ready", state="attached", timeout=60_000)
        page.locator("#tab-dashboard").click()
        page.wait_for_selector("#dashboard-image", timeout=30_000)
        time.sleep(0.5)
        problems = page.evaluate(NOTHING_CUT)
        page.screenshot(path=str(out_dir / f"tab-dashboard-{w}x{h}.png"))
        assert not problems, problems
    finally:
        page.context.close()
