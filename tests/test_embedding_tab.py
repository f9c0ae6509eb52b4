"""The Embedding tab, the Dataset examples panel and the Graph tab's top-example thumbnails,
driven in-process on a real store (the digits LeNet on 4 test digits per class) as trame drives
them: ``state.ready()``, set keys, ``state.flush()``, then look at the scene."""

from __future__ import annotations

import shutil
import uuid

import numpy as np
import pytest

pytest.importorskip("trame")

from trame.app import get_server  # noqa: E402

from volviz.analysis.dataset.descriptors import descriptors  # noqa: E402
from volviz.analysis.dataset.embedding import embed_store, save_embedding  # noqa: E402
from volviz.analysis.dataset.neighbours import brute_neighbours  # noqa: E402
from volviz.analysis.dataset.topk import top_examples  # noqa: E402
from volviz.app import state as S  # noqa: E402
from volviz.app.dataset_panels import examples_mosaic  # noqa: E402
from volviz.app.explorer import Explorer  # noqa: E402
from volviz.app.rules import client_rules  # noqa: E402
from volviz.app.security import Refused  # noqa: E402
from volviz.sources.demo import demo_images_dir, demo_weights_path  # noqa: E402
from volviz.store.capture import CaptureSettings, run_capture  # noqa: E402
from volviz.store.store import Store  # noqa: E402

pytestmark = pytest.mark.skipif(not demo_weights_path("digits").exists(), reason="digits weights not trained")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("embtab")
    for c in range(10):
        (root / "imgs" / str(c)).mkdir(parents=True)
        for f in sorted((demo_images_dir("digits") / str(c)).glob("*.png"))[:4]:
            shutil.copy(f, root / "imgs" / str(c) / f.name)
    return run_capture(root / "s", CaptureSettings(images=[str(root / "imgs")]), progress=False).path


@pytest.fixture
def app(digits, tmp_path, can_render):
    a = Explorer(
        [str(digits)],
        server=get_server(f"emb-{uuid.uuid4().hex[:8]}", client_type="vue3"),
        record_dir=tmp_path / "rec",
        window_size=(320, 240),
    )
    a.state.ready()
    yield a
    a.close()


def _set(app, **kw):
    for k, v in kw.items():
        app.state[k] = v
    app.state.flush()


def test_without_a_stored_map_a_pca_is_made_and_the_command_named(app):
    _set(app, **{S.APP_TAB: "embedding", S.E_LAYER: "fc1"})
    tab, st = app.tabs["embedding"], app.state
    assert tab.scene is not None and tab.data["made_here"] and tab.scene.n == 40
    assert "volviz embed" in st[S.E_NOTE] and "--layer fc1" in st[S.E_NOTE]
    img = tab.scene.screenshot()
    assert img.std() > 10, "the cloud is blank"
    # one atlas, one textured actor for every thumbnail (the frames painted into the atlas)
    assert tab.scene.thumbs.n_cells == 40 and tab.scene.atlas.ndim == 3


def test_slider_highlights_the_image_and_its_descriptor_neighbours(app, digits):
    _set(app, **{S.APP_TAB: "embedding", S.E_LAYER: "fc1", S.E_K: 5})
    tab = app.tabs["embedding"]
    before = tab.scene.screenshot()
    _set(app, **{S.T_INDEX: 17})
    image = app.panes[0].image
    rows = tab.data["rows"]
    p = int(np.flatnonzero(rows == image)[0])
    assert tab.scene.current == p
    x = descriptors(Store.open(digits), "fc1", rows)
    want = brute_neighbours(x, 5, queries=[p], metric="cosine")[0][0]
    np.testing.assert_array_equal(tab.scene.neighbours, want)
    assert f"image {image}" in app.state[S.E_SHOWN]
    assert np.abs(tab.scene.screenshot().astype(int) - before).mean() > 0.1, "the highlight did not move"


def test_clicking_a_thumbnail_makes_it_the_current_image(app):
    _set(app, **{S.APP_TAB: "embedding", S.E_LAYER: "fc1"})
    tab = app.tabs["embedding"]
    tab.scene.rotate(40)
    tab.scene.screenshot()  # the squares face the turned camera
    xy = tab.scene.display_xy()
    # a point with no other point within the pick radius, so the click is unambiguous
    d = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1)) + np.eye(len(xy)) * 1e9
    j = int(np.argmax(d.min(1)))
    tab.press({"position": {"x": float(xy[j, 0]), "y": float(xy[j, 1])}})
    tab.release({"position": {"x": float(xy[j, 0]) + 1, "y": float(xy[j, 1])}})
    app.state.flush()
    image = int(tab.data["rows"][j])
    assert app.panes[0].image == image and app.state[S.T_INDEX] == app.panes[0].position_of(image)
    assert tab.scene.current == j
    # a drag (press and release far apart) rotates and picks nothing; junk from a browser is ignored
    tab.press({"position": {"x": 5.0, "y": 5.0}})
    tab.release({"position": {"x": 80.0, "y": 60.0}})
    tab.release({"position": {"x": float("nan"), "y": "x"}})
    tab.release(None)
    app.state.flush()
    assert app.panes[0].image == image


def test_billboards_face_the_camera_after_a_rotation(app):
    _set(app, **{S.APP_TAB: "embedding", S.E_LAYER: "fc1"})
    sc = app.tabs["embedding"].scene
    for turn in (0, 70):
        sc.rotate(turn)
        sc.screenshot()
        q = np.asarray(sc.thumbs.points).reshape(-1, 4, 3)
        normal = np.cross(q[:, 1] - q[:, 0], q[:, 3] - q[:, 0])
        normal /= np.linalg.norm(normal, axis=1, keepdims=True)
        view = np.subtract(sc.plotter.camera.focal_point, sc.plotter.camera.position)
        view /= np.linalg.norm(view)
        np.testing.assert_allclose(np.abs(normal @ view), 1.0, atol=1e-6)


def test_a_stored_map_is_used_and_the_colours_follow_the_choice(app, digits):
    store = Store.open(digits, "r+")
    emb = embed_store(store, "conv2", "pca", 3)
    save_embedding(store, emb)
    app.tabs["embedding"].refresh()
    items = {it["value"]: it["title"] for it in app.state[S.E_LAYERS]}
    assert "stored" in items["conv2"] and "PCA here" in items["fc1"]
    _set(app, **{S.APP_TAB: "embedding", S.E_LAYER: "conv2", S.E_COLOR: "true"})
    tab = app.tabs["embedding"]
    assert not tab.data["made_here"]
    np.testing.assert_allclose(tab.scene.centres, _cube(emb.coords), atol=1e-6)
    frames = {}
    for mode in ("true", "pred", "prob", "unit"):
        _set(app, **{S.E_COLOR: mode, S.E_UNIT: 7})
        frames[mode] = tab.scene.colours.copy()
    labels = tab.data["table"]["label"]
    for c in range(10):  # one colour per class
        assert len(np.unique(frames["true"][labels == c], axis=0)) == 1
    assert not np.array_equal(frames["prob"], frames["true"])
    v = descriptors(store, "conv2", tab.data["rows"])[:, 7]  # unit 7's mean activation: brightest = largest
    lum = frames["unit"].astype(float).sum(1)
    assert lum[np.argmax(v)] > lum[np.argmin(v)]
    assert "unit 7 (mean over positions)" in app.state[S.E_NOTE]  # conv2: a map, pooled
    _set(app, **{S.E_LAYER: "fc1"})
    assert "unit 7" in app.state[S.E_NOTE] and "over positions" not in app.state[S.E_NOTE]  # a vector
    _set(app, **{S.E_LAYER: "conv2"})
    # the frame colours are painted into the atlas around each thumbnail (one actor, one texture)
    sc, cell = tab.scene, tab.scene.cell
    cols = sc.atlas.shape[1] // cell
    for j in (0, 13, 39):
        r, c = divmod(j, cols)
        np.testing.assert_array_equal(sc.atlas[r * cell, c * cell + cell // 2], frames["unit"][j])


def test_prepared_neighbour_query_equals_a_float64_sort():
    """The index the tab queries (prepared once) against a plain float64 sort of every distance;
    ties (identical rows) by index. Float32 products differ in the last bits between kernels, so the
    data has no near-ties other than the planted exact ones."""
    from volviz.analysis.dataset.neighbours import NeighbourIndex

    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 20)).astype(np.float32)
    x[[5, 9]] = x[7]  # ties: by index
    index = NeighbourIndex(x)
    x64 = x.astype(np.float64)
    x64 /= np.linalg.norm(x64, axis=1, keepdims=True)
    for p in (0, 7, 299):
        d = 1 - x64 @ x64[p]
        d[p] = np.inf
        want = np.lexsort((np.arange(len(d)), d))[:12]
        got, dist = index.query([p], 12)
        np.testing.assert_array_equal(got[0], want)
        np.testing.assert_allclose(dist[0], d[want], atol=1e-6)


def _cube(c):
    from volviz.views.embedding_scene import _unit_cube

    return _unit_cube(c)


def test_bounds_of_the_controls_a_browser_sets(app):
    rules = client_rules(1, [s.key for s in app.tab_specs], ["maps"])
    st = {S.E_UNIT_MAX: 49, S.E_LAYERS: [{"title": "fc1", "value": "fc1"}]}
    assert rules[S.E_UNIT](49, st) == 49
    for key, bad in ((S.E_UNIT, 50), (S.E_K, 33), (S.E_COLOR, "__import__"), (S.E_LAYER, "../etc"), (S.G_THUMBS, "x")):
        with pytest.raises(Refused):
            rules[key](bad, st)


def test_dataset_examples_panel_shows_each_units_top_images(app, digits):
    _set(app, **{"p0_layer": "conv2", S.PANEL_TAB: "examples"})
    st, data = app.state, app.panes[0].panel_data
    assert st["p0_panel"].startswith("data:image/png") and "top 9 of 40 images" in st["p0_panel_note"]
    assert "receptive field" in st["p0_panel_note"]
    top = top_examples(Store.open(digits), "conv2", 9, histograms=False)
    np.testing.assert_array_equal(data["rows"], top.rows)


def test_examples_mosaic_greys_dead_units():
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (9, 6, 6, 3), dtype=np.uint8) for _ in range(4)]
    dead = np.array([False, True, False, False])
    m = examples_mosaic(crops, dead, np.arange(4))
    block = 3 * 6 + 2
    live, grey = m[:6, :6].astype(int), m[:6, block + 4 : block + 10].astype(int)  # each block's first tile
    assert np.abs(live[..., 0] - live[..., 1]).max() > 50  # colours kept
    assert np.abs(grey[..., 0] - grey[..., 1]).max() == 0 and grey.std() > 0  # grey (R = G = B), a trace left


def test_graph_tab_switches_to_top_example_thumbnails(app):
    _set(app, **{S.APP_TAB: "graph"})
    g = app.tabs["graph"]
    assert g.kind == "preferred" and "preferred inputs" in app.state[S.G_NOTE]
    scene = g.scene
    _set(app, **{S.G_THUMBS: "top"})
    assert g.scene is not scene and g.kind == "top"
    assert set(g.thumb_layers) == {"conv1", "conv2", "fc1", "fc2"}
    assert "top dataset example" in app.state[S.G_NOTE]
    assert g.scene.screenshot().std() > 5


def test_too_few_images_say_the_minimum_in_the_note(tmp_path, can_render):
    from helpers import capture_tiny_store

    store = capture_tiny_store(tmp_path, n_per_class=1)  # 3 images
    a = Explorer(
        [str(store)],
        server=get_server(f"emb-{uuid.uuid4().hex[:8]}", client_type="vue3"),
        record_dir=tmp_path / "rec",
        window_size=(320, 240),
        trust={"trust_factory": True},
    )
    try:
        a.state.ready()
        _set(a, **{S.APP_TAB: "embedding"})
        note = a.state[S.E_NOTE]
        assert a.tabs["embedding"].scene is None and "3 images" in note and "5" in note, note
    finally:
        a.close()


def test_dataset_examples_are_computed_off_the_event_loop_and_requests_coalesce(app, digits, monkeypatch):
    """Under the server the panel's pass over the store runs in the pane's background job: the
    state change returns at once, the loop keeps turning meanwhile, the panel says it is computing,
    a client asking again and again starts no second pass, and the result arrives (and is kept)."""
    import asyncio
    import time

    from volviz.analysis.dataset import topk

    real, passes = topk.top_examples, []

    def slow_pass(store, layer, k=9, **kw):  # a store big enough for the pass to take a while
        passes.append((layer, k))
        time.sleep(1.0)
        return real(store, layer, k, **kw)

    monkeypatch.setattr(topk, "top_examples", slow_pass)
    _set(app, **{"p0_layer": "conv2"})  # no loop yet: the volume is rebuilt at once
    pane, st = app.panes[0], app.state

    async def run():
        t0 = time.perf_counter()
        _set(app, **{S.PANEL_TAB: "examples"})
        returned = time.perf_counter() - t0
        assert pane.panel_job.running and st["p0_panel_busy"] and st["p0_panel"] == ""
        assert "finding the top 9 of 40 images" in st["p0_panel_note"] and st["p0_panel_for"] == "examples"
        for _ in range(20):  # the tab clicked again and again, slider-driven re-renders
            _set(app, **{S.PANEL_TAB: "maps"})
            _set(app, **{S.PANEL_TAB: "examples"})
            pane.update_panel()
        gaps, deadline = [], time.perf_counter() + 60
        while not st["p0_panel"]:  # the loop turns while the pass runs: no tick waits for it
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            gaps.append(time.perf_counter() - t)
            assert t < deadline, "the panel never arrived"
        return returned, max(gaps)

    returned, worst = asyncio.run(run())
    assert returned < 0.5 and worst < 0.5, (returned, worst)
    assert passes == [("conv2", 9)], "repeated requests started more passes"
    assert "top 9 of 40 images" in st["p0_panel_note"] and not st["p0_panel_busy"]
    np.testing.assert_array_equal(pane.panel_data["rows"], real(Store.open(digits), "conv2", 9, histograms=False).rows)
    _set(app, **{S.PANEL_TAB: "maps"})
    _set(app, **{S.PANEL_TAB: "examples"})  # kept: shown at once, no new pass
    assert passes == [("conv2", 9)] and st["p0_panel"].startswith("data:image/png")


def test_a_failed_background_pass_is_shown_and_not_retried(app, monkeypatch):
    import asyncio

    from volviz.analysis.dataset import topk

    tries = []

    def broken(*a, **kw):
        tries.append(1)
        raise OSError("chunk unreadable")

    monkeypatch.setattr(topk, "top_examples", broken)
    _set(app, **{"p0_layer": "conv2"})

    async def run():
        _set(app, **{S.PANEL_TAB: "examples"})
        while app.panes[0].panel_job.running or "chunk unreadable" not in app.state["p0_panel_note"]:
            await asyncio.sleep(0.02)
        for _ in range(5):
            app.panes[0].update_panel()
            await asyncio.sleep(0.02)

    asyncio.run(asyncio.wait_for(run(), 30))
    assert tries == [1] and "chunk unreadable" in app.state["p0_panel_note"] and not app.state["p0_panel_busy"]


def test_dead_units_are_grey_in_the_embedding_and_the_examples_panel(app, digits):
    """fc1 of the digits LeNet has units that never fire on these 40 images: the Embedding tab's
    colour-by-unit greys every image for one, the Dataset examples panel greys its block and
    names it, with one definition (never above 0 on any image)."""
    from PIL import Image

    from volviz.app.dataset_panels import DEAD_GREY
    from volviz.app.embedding_tab import dead_units

    store = Store.open(digits)
    dead = dead_units(store, "fc1")
    top = top_examples(store, "fc1", 1, histograms=False)
    np.testing.assert_array_equal(dead, top.dead)
    assert 0 < dead.sum() < len(dead)
    d, a = int(np.flatnonzero(dead)[0]), int(np.flatnonzero(~dead)[0])
    _set(app, **{S.APP_TAB: "embedding", S.E_LAYER: "fc1", S.E_COLOR: "unit", S.E_UNIT: a})
    tab = app.tabs["embedding"]
    alive = tab.scene.colours.copy()
    assert len(np.unique(alive, axis=0)) > 1 and f"#{d}" in app.state[S.E_NOTE]
    _set(app, **{S.E_UNIT: d})
    assert (tab.scene.colours == DEAD_GREY).all() and f"unit {d} is dead" in app.state[S.E_NOTE]
    _set(app, **{S.APP_TAB: "volume", "p0_layer": "fc1", S.PANEL_TAB: "examples"})
    data, note = app.panes[0].panel_data, app.state["p0_panel_note"]
    np.testing.assert_array_equal(data["dead"], dead)
    assert f"{int(dead.sum())} dead" in note and f"#{d}" in note
    # in the (reduced) mosaic a dead unit's block is a faint grey trace, a live unit's block its digits
    import base64
    import io

    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(app.state["p0_panel"].split(",", 1)[1]))).convert("RGB"))
    n, cols = len(dead), int(np.ceil(np.sqrt(len(dead))))
    step = png.shape[1] / cols  # one unit's block and its gap, in the reduced picture

    def block(j):
        r, c = divmod(int(np.flatnonzero(data["order"] == j)[0]), cols)
        y, x = int(r * step), int(c * step)
        return png[y + 2 : y + int(step) - 4, x + 2 : x + int(step) - 4].astype(float)

    assert n == len(data["order"])
    assert block(d).std() < 0.5 * np.median([block(j).std() for j in np.flatnonzero(~dead)[:20]])
