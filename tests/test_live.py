"""Live input and the dashboard in-process: frames decoded and checked, run through the store's
own preprocessing and model without a store write, dropped (not queued) while the model is busy;
the dashboard following the slider; the dashboard movie from the command line.

The store is the embedded digits LeNet on 30 of its test digits (``data/digits.pt``, in the repo).
"""

from __future__ import annotations

import asyncio
import base64
import io
import pathlib
import shutil
import time
import uuid

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from volviz.cli import main

pytest.importorskip("trame")

from trame.app import get_server  # noqa: E402

from volviz.app import dashboard_keys as K  # noqa: E402
from volviz.app import state as S  # noqa: E402
from volviz.app.explorer import Explorer  # noqa: E402
from volviz.app.live import LiveError, crop_box, decode_frame  # noqa: E402
from volviz.store.store import Store  # noqa: E402
from volviz.views.dashboard import DashboardError, parse_selection  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIGITS = ROOT / "data" / "digits" / "test"


def digit(cls: int, k: int = 0) -> pathlib.Path:
    return sorted((DIGITS / str(cls)).glob("*.png"))[k]


def data_url(img: Image.Image, fmt: str = "PNG", **kw) -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    mime = {"PNG": "image/png", "JPEG": "image/jpeg"}[fmt]
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    imgs = root / "imgs"
    for c in range(10):
        (imgs / str(c)).mkdir(parents=True)
        for f in sorted((DIGITS / str(c)).glob("*.png"))[:3]:
            shutil.copy(f, imgs / str(c) / f.name)
    assert main(["capture", "--out", str(root / "digits"), "--images", str(imgs)]) == 0
    return root / "digits"


@pytest.fixture
def app(store, tmp_path, can_render):
    server = get_server(f"live-{uuid.uuid4().hex[:8]}", client_type="vue3")
    a = Explorer([str(store)], server=server, record_dir=tmp_path / "rec", window_size=(320, 240))
    a.state.ready()
    _set(a, **{S.APP_TAB: "dashboard"})
    yield a
    a.close()


def _set(app, **changes):
    for k, v in changes.items():
        app.state[k] = v
    app.state.flush()


def _png(url: str) -> np.ndarray:
    return iio.imread(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def _snapshot(folder: pathlib.Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- decoding
def test_decode_frame_takes_images_and_refuses_the_rest_in_one_line():
    a = decode_frame(data_url(Image.open(digit(3))))
    assert a.shape == (28, 28, 1) and a.dtype == np.uint8
    rgba = decode_frame(data_url(Image.new("RGBA", (5, 4), (1, 2, 3, 4))))
    assert rgba.shape == (4, 5, 4)
    cases = {
        "not-a-url": "data URL",
        "data:text/plain;base64,aGVsbG8=": "text/plain is not an image",
        "data:image/png;base64,@@@@": "not valid base64",
        "data:image/png;base64," + base64.b64encode(b"\x89PNG but not really").decode(): "not an image volviz",
        # a 50-megapixel 1-bit PNG is only a few KiB: refused from its header, never decoded
        data_url(Image.new("1", (7100, 7100))): "50.4 megapixels",
        data_url(Image.new("CMYK", (8, 8)), "JPEG"): "4 channels (CMYK)",
        "data:image/png;base64," + "A" * 70_000: "at most 58 KiB",
    }
    for url, why in cases.items():
        with pytest.raises(LiveError, match=why.replace("(", r"\(").replace(")", r"\)")):
            decode_frame(url)


def test_crop_box_is_the_centre_crop_of_the_crop_modes():
    from volviz.sources.preprocess import Preprocess

    assert crop_box(Preprocess((28, 28), 1), 120, 160) == (0, 0, 120, 160)  # resize: all of it
    # the crop as the preprocessing rounds it (scaled 120x160 -> 112x149, left (149-112)//2 = 18):
    # within a source pixel of the geometric centre crop
    for pre, h, w, want in (
        (Preprocess((112, 112), 3, mode="scale_crop"), 120, 160, (0, 20, 120, 120)),
        (Preprocess((224, 224), 3, mode="resize_crop"), 256, 512, (16, 144, 224, 224)),
    ):
        assert np.abs(np.subtract(crop_box(pre, h, w), want)).max() <= 1


def test_selection_ranges_lists_and_bounds():
    assert parse_selection("", 4).tolist() == [0, 1, 2, 3]
    assert parse_selection(" 2, 0-1 ", 4).tolist() == [2, 0, 1]
    for bad, why in (("0-99", "out of range"), ("x", "not an index"), ("0-600", "out of range")):
        with pytest.raises(DashboardError, match=why):
            parse_selection(bad, 50)
    with pytest.raises(DashboardError, match="at most 8"):
        parse_selection("0-9", 50, limit=8)


# ----------------------------------------------------------------------------- the tab
def test_an_upload_reaches_the_model_without_a_store_write(app, store):
    """An uploaded digit runs through the store's preprocessing and model: the same
    probabilities as its capture (float32, batch of 1 vs the capture's batch: 1e-5), and the
    store is not touched."""
    before = _snapshot(store)
    st = Store.open(store)
    i = next(k for k, r in enumerate(st.images) if r.id.endswith(digit(7).name))
    _set(app, **{K.LV_UPLOAD: data_url(Image.open(digit(7)))})
    tab = app.tabs["dashboard"]
    assert app.state[K.DB_SOURCE] == "upload" and app.state[K.DB_PRED].startswith("7 (")
    assert tab.frames.ran >= 1 and not app.state[K.DB_ERROR]
    img = _png(app.state[K.DB_IMAGE])
    assert img.shape[:2] == (720, 960) and img.std() > 20
    res = tab.board.from_frame(decode_frame(data_url(Image.open(digit(7)))), tab.choices(), "x")
    np.testing.assert_allclose(res.probs, st.column("probs")[i], atol=1e-5)
    assert _snapshot(store) == before


def test_bad_uploads_show_one_line_and_the_session_goes_on(app):
    for url, why in (
        ("data:text/plain;base64,aGVsbG8=", "text/plain is not an image"),
        (data_url(Image.new("1", (7100, 7100))), "megapixels"),
        (data_url(Image.new("CMYK", (8, 8)), "JPEG"), "4 channels"),
    ):
        _set(app, **{K.LV_UPLOAD: url})
        assert why in app.state[K.DB_ERROR]
    _set(app, **{K.LV_CLIENT_ERROR: "camera refused: NotAllowedError [1]"})
    assert "camera refused" in app.state[K.DB_ERROR]
    _set(app, **{K.LV_UPLOAD: data_url(Image.open(digit(4)))})
    assert app.state[K.DB_PRED].startswith("4 (") and not app.state[K.DB_ERROR]
    guard = app.rules
    for key, value in ((K.LV_FRAME, "x" * 10), (K.DB_SEL_A, "import os"), (K.DB_ROWS_A, 1000)):
        with pytest.raises(ValueError):
            guard[key](value, app.state)


def test_frames_faster_than_the_model_are_dropped_not_queued(app):
    """30 webcam frames arrive at once: the first runs, each later one replaces the one
    waiting; two are drawn (the first and the newest), 28 dropped, the last is a 7."""
    tab = app.tabs["dashboard"]
    one, seven = data_url(Image.open(digit(1))), data_url(Image.open(digit(7)))

    async def run():
        for k in range(30):
            _set(app, **{K.LV_FRAME: (seven if k == 29 else one).replace(";base64", f";n={k};base64")})
        assert tab.frames.busy and tab.frames.arrived >= 30
        for _ in range(400):
            await asyncio.sleep(0.01)
            if not tab.frames.busy and tab.frames._waiting is None:
                break

    shown = app.state[K.DB_SHOWN]
    asyncio.run(run())
    assert app.state[K.DB_SHOWN] - shown == 2
    assert tab.frames.dropped == 28
    assert app.state[K.DB_PRED].startswith("7 (") and "28 dropped" in app.state[K.LV_STATS]


def test_the_dashboard_follows_the_slider_and_its_choices(app, store):
    st = Store.open(store)
    first = app.state[K.DB_IMAGE]
    assert first and app.state[K.DB_SOURCE] == "slider"
    for t in (5, 17):
        _set(app, **{S.T_INDEX: t})
        i = app.focus.image
        assert app.state[K.DB_PRED].startswith(f"{int(st.column('pred')[i])} (")
    pics = {app.state[K.DB_IMAGE]}
    for change in (
        {K.DB_SEL_A: "0-3"},
        {K.DB_ROWS_B: 2},
        {K.DB_CMAP_FC: "gray"},
        {K.DB_CONV_B: "conv1"},
        {K.DB_VIEW: "fc"},
        {K.DB_CLASS: 3},
    ):
        _set(app, **change)
        assert not app.state[K.DB_ERROR]
        pics.add(app.state[K.DB_IMAGE])
    assert len(pics) == 7  # every choice redrew the picture
    _set(app, **{K.DB_VIEW: "generic", K.DB_SEL_A: "0-99"})  # conv1 has 20 maps: shown in its panel
    img = _png(app.state[K.DB_IMAGE])
    assert img.shape == (720, 960, 3)


def test_dashboard_movie_from_the_command_line_and_the_page(app, store, tmp_path):
    """The most probable 7s as a movie: the dashboard with conv1's volume beside it (CLI), or
    the dashboard alone (--no-volume, and the page's record button)."""
    out = tmp_path / "sevens.mp4"
    sevens = ["--mode", "dashboard", "--class", "7", "--sort", "probability", "--out", str(out)]
    assert main(["movie", str(store), *sevens]) == 0
    frames = np.stack(list(iio.imiter(out)))
    assert frames.shape[0] == 3 and frames.shape[1:3] == (720, 960 + 16 + 720)  # dashboard | volume
    assert frames[0, 100:620, 1076:1596].std() > 10  # the volume is drawn, not a blank panel
    assert main(["movie", str(store), *sevens, "--no-volume", "--view", "fc", "--max-images", "2"]) == 0
    assert np.stack(list(iio.imiter(out))).shape[:3] == (2, 720, 960)
    assert main(["movie", str(store), "--mode", "dashboard", "--class", "11", "--out", str(out)]) == 2
    _set(app, **{K.DB_R_IMAGES: 4})
    app.ctrl.dashboard_record()
    assert app.state[K.DB_R_URL].endswith(".mp4") and "4 images" in app.state[K.DB_R_STATUS]
    assert len(list(iio.imiter(app.recorder.last_file))) == 4


def test_a_video_of_the_store_plays_in_real_time(tmp_path, can_render):
    """A video the store was captured from plays at its own frame rate (not as fast as the model
    goes); its frames reach the dashboard and the source says so."""
    from volviz.record import write_movie

    seq = [1] * 10 + [7] * 10
    frames = [
        np.repeat(np.kron(np.asarray(Image.open(digit(d)).convert("L")), np.ones((4, 4), np.uint8))[..., None], 3, 2)
        for d in seq
    ]
    video = tmp_path / "digits.mp4"
    write_movie(video, frames, fps=10, progress=False)
    assert main(["capture", "--out", str(tmp_path / "vid"), "--images", str(video), "--max-images", "4"]) == 0
    server = get_server(f"live-{uuid.uuid4().hex[:8]}", client_type="vue3")
    app = Explorer([str(tmp_path / "vid")], server=server, record_dir=tmp_path / "rec", window_size=(320, 240))
    app.state.ready()
    try:
        _set(app, **{S.APP_TAB: "dashboard"})
        assert [v["title"] for v in app.state[K.LV_VIDEOS]] == ["digits.mp4"]
        shown = app.state[K.DB_SHOWN]

        async def run():
            t0 = time.perf_counter()
            _set(app, **{K.LV_PLAYING: True})
            while app.state[K.LV_PLAYING]:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            return time.perf_counter() - t0

        took = asyncio.run(run())
        assert app.state[K.DB_SOURCE] == "video" and not app.state[K.DB_ERROR]
        assert took >= 0.8 * len(seq) / 10  # paced at 10 frames/s
        assert app.state[K.DB_SHOWN] - shown >= 5 and app.state[K.DB_PRED].startswith("7 (")
    finally:
        app.close()
