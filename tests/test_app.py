"""The explorer app driven in-process, as trame drives it: ``state.ready()``, set state keys,
``state.flush()`` (change handlers run synchronously), then look at the VTK scene."""

from __future__ import annotations

import asyncio
import json
import pathlib
import shutil
import sys
import threading
import uuid

import imageio.v3 as iio
import numpy as np
import pytest
from helpers import write_image_folder

from volviz.cli import main

pytest.importorskip("trame")

from trame.app import get_server  # noqa: E402

from volviz.app import state as S  # noqa: E402
from volviz.app.explorer import Explorer  # noqa: E402
from volviz.app.panels import class_weights, relu_follows, sorted_neurons  # noqa: E402
from volviz.app.prefetch import ChunkCache, Coalescer  # noqa: E402
from volviz.store.store import Store  # noqa: E402

TINY = ["--model", "helpers:tiny_cnn", "--size", "12", "12", "--channels", "1"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two tiny stores (TinyCNN, 9 images of 3 classes; the second with other images)."""
    root = tmp_path_factory.mktemp("app")
    out = []
    for k in range(2):
        imgs = write_image_folder(root / f"imgs{k}", n_per_class=3, seed=k)
        assert main(["capture", "--out", str(root / f"s{k}"), "--images", str(imgs), *TINY]) == 0
        out.append(root / f"s{k}")
    return out


@pytest.fixture
def make_app(tmp_path, can_render):
    apps = []

    def make(paths, **kw):
        # the tiny stores are captured from `helpers:tiny_cnn`: like `volviz serve --trust-factory`
        kw.setdefault("trust", {"trust_factory": True})
        server = get_server(f"test-{uuid.uuid4().hex[:8]}", client_type="vue3")
        app = Explorer(
            [str(p) for p in paths], server=server, record_dir=tmp_path / "rec", window_size=(320, 240), **kw
        )
        app.state.ready()
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def _store_id(app, path) -> str:
    """The store picker's id of the store at ``path`` (the page never sees paths)."""
    return app.catalog.store_id(path)


def _set(app, **changes):
    for k, v in changes.items():
        app.state[k] = v
    app.state.flush()


def test_opens_on_first_conv_layer_with_image_info(make_app, stores):
    app = make_app([stores[0]])
    st, pane = app.state, app.panes[0]
    assert st[S.APP_READY] and not st["p0_error"]
    assert pane.layer == "conv1" and st["p0_layer"] == "conv1"
    assert pane.scene.shape == (4, 12, 12)
    assert st[S.T_MAX] == 8 and st[S.T_INDEX] == 0
    assert st["p0_input"].startswith("data:image/png;base64,")
    assert len(st["p0_probs"]) == 3 and sum(r["true"] for r in st["p0_probs"]) == 1
    assert "1/9 · image 0" in st["p0_caption"]
    assert st["p0_panel"].startswith("data:image/png") and "conv1: 4 feature maps" in st["p0_panel_note"]
    assert [it["value"] for it in st["p0_layers"]] == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    img = pane.scene.screenshot()
    assert img.std() > 5, "the volume is not visible"


def test_slider_updates_scalars_in_place_reading_one_chunk(make_app, stores):
    app = make_app([stores[0]])
    pane = app.panes[0]
    scene, actor, grid = pane.scene, pane.scene.volume_actor, pane.scene.grid
    n_actors = len(pane.plotter.renderer.actors)
    before_vals = scene._values.copy()
    before_img = scene.screenshot()
    reads = []  # store reads in the foreground (the prefetcher reads in its own thread)
    real_read = pane.store.read
    main_thread = threading.current_thread()
    pane.store.read = lambda *a: (threading.current_thread() is main_thread and reads.append(a)) or real_read(*a)
    app.volume.prefetcher.wait()
    app.volume.cache.clear()  # nothing prefetched yet: the step itself must read its chunk

    _set(app, **{S.T_INDEX: 4})
    image = pane.image_at(4)
    assert pane.image == image
    assert pane.scene is scene and scene.volume_actor is actor and scene.grid is grid
    assert len(pane.plotter.renderer.actors) == n_actors, "a slider step added actors"
    assert not np.array_equal(scene._values, before_vals)
    np.testing.assert_allclose(scene.displayed, real_read("activation", "conv1", image))
    assert reads == [("activation", "conv1", image)], "a step must read exactly its one chunk"
    assert np.abs(scene.screenshot().astype(int) - before_img).mean() > 0.2
    assert f"image {image}" in app.state["p0_caption"]

    # the prefetcher has read the next chunks: the next step reads nothing from the store
    app.volume.prefetcher.wait()
    reads.clear()
    hits = app.volume.cache.hits
    _set(app, **{S.T_INDEX: 5})
    assert reads == [] and app.volume.cache.hits > hits
    assert app.volume.stats["steps"] >= 2


def test_layer_quantity_and_order_change_the_scene(make_app, stores):
    app = make_app([stores[0]])
    pane = app.panes[0]
    store = Store.open(stores[0])
    _set(app, p0_layer="conv3")
    assert pane.layer == "conv3" and pane.scene.shape == (6, 6, 6)
    np.testing.assert_allclose(pane.scene.displayed, store.read("activation", "conv3", 0))

    _set(app, **{S.V_ORDER: "pca", S.V_FIT: "image"})
    from volviz.views.source import LayerVolumeSource

    expect = LayerVolumeSource(store).get("conv3", "activation", 0, "pca", "image")
    np.testing.assert_array_equal(pane.scene.order, expect.order)
    assert "pca (per image)" in pane.scene.title_text

    _set(app, **{S.V_ORDER: "kmeans", S.V_CLUSTERS: 2})
    assert len(pane.scene.boundaries) == 1 and pane.scene.separators_actor.GetVisibility()

    _set(app, **{S.V_QUANTITY: "grad_weight", S.V_ORDER: "natural"})
    assert pane.quantity == "grad_weight"
    assert pane.scene.shape[0] == 6  # one slice per output filter
    assert pane.scene.clim[0] == -pane.scene.clim[1]  # signed: symmetric, diverging
    assert pane.scene.style.opacity == "diverging"


def test_look_changes_in_place(make_app, stores):
    app = make_app([stores[0]])
    scene = app.panes[0].scene
    lo, hi = scene.clim
    _set(app, **{S.V_CMAP: "viridis", S.V_OPACITY: "linear", S.V_RANGE: [0, 50]})
    assert app.panes[0].scene is scene
    assert scene.style.cmap == "viridis" and scene.style.opacity == "linear"
    assert scene.clim[1] == pytest.approx(lo + 0.5 * (hi - lo))
    assert not scene.slices_actor.GetVisibility()
    _set(app, **{S.V_SLICES: True, S.V_SLICE_Z: 0.0})
    assert scene.slices_actor.GetVisibility() and scene.style.slice_positions[2] == 0.0
    _set(app, **{S.V_OUTLINE: False})
    assert not scene.outline_actor.GetVisibility()
    cam = scene.plotter.camera
    cam.azimuth = 80
    pos = cam.position
    app.volume.reset_camera()
    assert cam.position != pos


def test_time_controls_loop_and_image_order(make_app, stores):
    app = make_app([stores[0]])
    st = app.state
    _set(app, **{S.T_INDEX: 8})
    assert app.time.step(1) == 0  # loops
    st.flush()
    _set(app, **{S.T_LOOP: False, S.T_INDEX: 8, S.T_PLAYING: True})
    assert app.time.step(1) == 8 and st[S.T_PLAYING] is False  # stops at the end
    st.flush()
    pane = app.panes[0]
    _set(app, **{S.T_SORT: "probability"})
    probs, pred = pane.columns["probs"], pane.columns["pred"]
    p = probs[pane.sequence, pred[pane.sequence]]
    assert np.all(np.diff(p) <= 1e-6) and st[S.T_INDEX] == 0
    assert pane.image == pane.sequence[0]


def test_neuron_panels_and_sorted_neurons(make_app, stores):
    app = make_app([stores[0]])
    _set(app, **{S.PANEL_TAB: "neurons"})
    assert app.state["p0_panel"] and "fc1: 8 neurons" in app.state["p0_panel_note"]
    _set(app, **{S.PANEL_TAB: "sorted", "p0_sort_class": 2})
    note = app.state["p0_panel_note"]
    assert "fc1 after ReLU, sorted by weight to class c" in note, note  # TinyCNN: fc1 -> relu2 -> fc2
    # the sort itself: fc2's weights to class 2 order fc1's neurons, largest first
    pane = app.panes[0]
    w, _ = class_weights(pane.model(), pane.store.layers, "fc1", 3)
    assert w.shape == (3, 8)
    act = pane.store.read("activation", "fc1", pane.image)
    img, order, means = sorted_neurons(act, w[2])
    assert np.all(np.diff(w[2][order]) <= 0)
    rows, cols = 2, 4  # near_square_grid(8)
    assert img.shape == (rows, cols + 1 + 3)
    np.testing.assert_allclose(means, act[order].reshape(rows, cols).mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(img[:, -1], means, rtol=1e-5)


def test_sorted_neurons_on_a_chain_and_on_a_missing_path():
    import torch

    model = torch.nn.Sequential()
    model.add_module("a", torch.nn.Linear(5, 4))
    model.add_module("b", torch.nn.Linear(4, 3))
    model.add_module("c", torch.nn.Linear(3, 2))
    from volviz.store.store import LayerInfo

    layers = {
        n: LayerInfo(n, "linear", "Linear", (m.out_features,), tuple(m.weight.shape)) for n, m in model.named_children()
    }
    w, note = class_weights(model, layers, "a", 2)
    np.testing.assert_allclose(w, (model.c.weight @ model.b.weight).detach().numpy(), rtol=1e-5)
    assert "linear approximation" in note
    with pytest.raises(ValueError, match="no chain"):
        class_weights(model, layers, "c", 7)
    assert not relu_follows(model, "a")
    relu_net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert relu_follows(relu_net, "0") and not relu_follows(relu_net, "2")


def test_record_writes_a_playable_movie(make_app, stores):
    app = make_app([stores[0]])
    _set(app, **{S.R_MAX_IMAGES: 4, S.T_INDEX: 7})
    path = app.recorder.record("images")
    assert path.exists() and path.suffix == ".mp4" and path.parent == app.record_dir
    frames = iio.imread(path, index=None)
    assert frames.shape == (4, 608, 800, 3)
    assert np.abs(frames[0].astype(int) - frames[1]).mean() > 0.1  # the images step
    assert app.state[S.R_URL] == f"recordings/{path.name}"
    assert app.server.serve["recordings"] == str(app.record_dir)
    _set(app, **{S.R_FRAMES: 3})
    rot = iio.imread(app.recorder.record("rotate"), index=None)
    assert len(rot) == 3 and np.abs(rot[0].astype(int) - rot[1]).mean() > 0.1
    # the live view is untouched by recording
    assert app.panes[0].image == app.panes[0].image_at(7)


def test_recording_goes_on_when_the_browser_leaves_and_can_be_cancelled(make_app, stores, caplog):
    app = make_app([stores[0]])
    _set(app, **{S.R_MAX_IMAGES: 5})

    async def run(cancel: bool):
        app.recorder.start()
        await asyncio.sleep(0.05)
        assert app.state[S.R_BUSY]
        if cancel:
            app.recorder.cancel()
        else:
            app.ctrl.on_client_exited()  # the browser closed mid-recording
        await app.recorder.job.wait()

    asyncio.run(run(cancel=False))
    assert "writing goes on" in caplog.text
    assert app.state[S.R_STATUS].startswith("wrote") and not app.state[S.R_BUSY]
    assert len(iio.imread(app.recorder.last_file, index=None)) == 5
    before = sorted(app.record_dir.iterdir())
    asyncio.run(run(cancel=True))
    assert app.state[S.R_STATUS] == "recording stopped: recording cancelled"
    assert sorted(app.record_dir.iterdir()) == before, "a cancelled recording left a file"


def test_a_recording_is_bounded_in_frames_and_length(make_app, stores):
    from volviz.app.rules import MAX_RECORD_FRAMES

    app = make_app([stores[0]])
    before = sorted(app.record_dir.iterdir())
    _set(app, **{S.R_MODE: "rotate", S.R_FRAMES: 100_000})  # in-process: no client guard in the way
    app.recorder.start()
    assert f"at most {MAX_RECORD_FRAMES} frames" in app.state[S.R_STATUS] and not app.recorder.job.running
    with pytest.raises(ValueError, match="at most"):
        app.recorder.record("rotate")
    assert sorted(app.record_dir.iterdir()) == before


@pytest.mark.parametrize("case", ["missing", "empty", "newer", "nothing-captured"])
def test_bad_stores_are_shown_in_the_page_and_the_app_goes_on(make_app, stores, tmp_path, case):
    bad = tmp_path / case
    if case == "empty":
        bad.mkdir()
    elif case in ("newer", "nothing-captured"):
        shutil.copytree(stores[0], bad)
        if case == "newer":
            m = json.loads((bad / "manifest.json").read_text())
            (bad / "manifest.json").write_text(json.dumps(dict(m, format_version=99)))
        else:
            import zarr

            zarr.open_group(str(bad), mode="r+")["done"][:] = False
    app = make_app([bad], roots=[stores[0].parent])  # the good stores are offered by --root
    err = app.state["p0_error"]
    expect = {
        "missing": "no store at",
        "empty": "not a volviz store",
        "newer": "newer volviz",
        "nothing-captured": "holds no captured image yet",
    }[case]
    assert expect in err and bad.name in err and str(bad) not in err  # named, never its server path
    assert app.panes[0].scene is None and app.state[S.APP_READY]
    _set(app, **{S.T_INDEX: 3, S.V_ORDER: "pca"})  # nothing to show: no crash
    # pick a good store: the error goes, the volume comes
    _set(app, p0_store=_store_id(app, stores[0]))
    assert app.state["p0_error"] == "" and app.panes[0].scene is not None
    assert app.panes[0].layer == "conv1"


def test_a_vanished_layer_keeps_the_last_good_view(make_app, stores, tmp_path):
    s = tmp_path / "s"
    shutil.copytree(stores[0], s)
    app = make_app([s])
    shutil.rmtree(s / "act" / "conv2")  # deleted while the app runs
    _set(app, p0_layer="conv2")
    assert "conv2" in app.state["p0_error"]
    assert app.panes[0].layer == "conv1" and app.state["p0_layer"] == "conv1"
    _set(app, **{S.T_INDEX: 2})  # still works
    assert app.panes[0].image == app.panes[0].image_at(2)


def test_two_stores_side_by_side_move_together(make_app, stores):
    app = make_app(stores)
    assert len(app.panes) == 2 and app.state[S.APP_N_PANES] == 2
    a, b = app.panes
    assert a.scene is not None and b.scene is not None and a.plotter is not b.plotter
    va, vb = a.scene._values.copy(), b.scene._values.copy()
    _set(app, **{S.T_INDEX: 6})
    assert a.image == a.image_at(6) and b.image == b.image_at(6)
    assert not np.array_equal(va, a.scene._values) and not np.array_equal(vb, b.scene._values)
    _set(app, p1_layer="conv2")  # each pane has its own layer
    assert a.layer == "conv1" and b.layer == "conv2"
    picker = {it["title"]: it["value"] for it in app.state[S.APP_STORES]}  # names and ids, no paths
    assert set(picker) == {stores[0].name, stores[1].name} and [a.store_id, b.store_id] == list(picker.values())


def test_coalescer_draws_only_the_latest_position():
    drawn = []

    async def run():
        c = Coalescer(drawn.append, delay=0.01)
        for v in range(10):
            c.request(v)
        await asyncio.sleep(0.05)
        c.request(42)
        await asyncio.sleep(0.05)
        return c

    c = asyncio.run(run())
    assert drawn == [9, 42] and c.skipped == 9
    Coalescer(drawn.append).request(7)  # no event loop: at once
    assert drawn[-1] == 7


def test_background_job_reports_progress_stops_and_delivers_on_the_main_loop():
    import time

    from volviz.app.jobs import BackgroundJob

    state = get_server(f"job-{uuid.uuid4().hex[:8]}", client_type="vue3").state
    state.update({"busy": False, "progress": 0, "status": ""})
    state.ready()
    job = BackgroundJob(state, "work", busy="busy", progress="progress", status="status", poll=0.01)
    main_thread, seen = threading.current_thread(), []

    def work(report):
        for k in range(1, 6):
            time.sleep(0.02)
            report(k, 5)  # raises once stop was pressed
        return threading.current_thread() is not main_thread

    async def run(stop: bool):
        assert job.start(
            work,
            done=lambda r: seen.append((r, threading.current_thread() is main_thread)),
            describe=lambda k, n: f"{k}/{n}",
        )
        assert state["busy"] and not job.start(work, done=seen.append)  # one run at a time
        if stop:
            await asyncio.sleep(0.03)
            job.cancel()
        await job.wait()

    asyncio.run(run(stop=False))
    assert seen == [(True, True)] and state["progress"] == 100 and not state["busy"]
    asyncio.run(run(stop=True))
    assert state["status"] == "work stopped" and len(seen) == 1 and not state["busy"]
    job.start(lambda report: 1 / 0, done=seen.append)  # no event loop: at once, the error shown
    assert state["status"] == "work failed: division by zero" and len(seen) == 1
    job.close()


def test_chunk_cache_is_bounded_lru():
    cache = ChunkCache(max_bytes=3 * 800)
    for k in range(5):
        cache.put(k, np.zeros(100))  # 800 bytes each
    assert len(cache) == 3 and 0 not in cache and 4 in cache
    assert cache.get_or_load(4, lambda: 1 / 0) is not None and cache.hits == 1


def test_serve_command_line(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--host" in out and "--port" in out and "side by side" in out
    assert "--trust-pickle" in out and "--trust-factory" in out and "--allow-outside" in out
    from volviz.app.server import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


# ----------------------------------------------------------------------------- issues 4 and 5 in the app
def _png(url: str) -> np.ndarray:
    import base64

    return iio.imread(base64.b64decode(url.split(",", 1)[1]), extension=".png")


def test_importance_panel_matches_importance_from_store(make_app, stores, monkeypatch):
    import volviz.analysis.importance as imp

    app = make_app([stores[0]])
    pane, st = app.panes[0], app.state
    calls = []
    real = imp.importance_from_store
    monkeypatch.setattr(imp, "importance_from_store", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    _set(app, **{S.PANEL_TAB: "importance", "p0_sort_class": 1})
    res = real(pane.store, ["conv1"], progress=False)
    rows = list(np.flatnonzero(pane.store.done))
    d = pane.panel_data
    mean, n = res.mean("conv1", 1)
    np.testing.assert_allclose(d["class_mean"], mean, rtol=1e-6)
    assert d["n"] == n == 3 and d["cls"] == 1
    np.testing.assert_allclose(d["per_image"], res.per_image["conv1"][rows.index(pane.image)])
    assert d["target"] == res.target[rows.index(pane.image)]
    assert _png(st["p0_panel"]).shape == (270, 360, 3)
    assert "conv1: importance ||dS/dW_j|| of its 4 filters" in st["p0_panel_note"]
    # the slider: the image's bars follow, the class mean stays, nothing is recomputed
    _set(app, **{S.T_INDEX: 4})
    np.testing.assert_allclose(pane.panel_data["per_image"], res.per_image["conv1"][rows.index(pane.image)])
    np.testing.assert_allclose(pane.panel_data["class_mean"], mean, rtol=1e-6)
    assert calls == [["conv1"]], "the importance of a layer is computed once"
    # a linear layer (stored as factors) and the default class: the predicted one
    _set(app, **{"p0_layer": "fc1", "p0_sort_class": -1})
    res = real(pane.store, ["fc1"], progress=False)
    pred = int(pane.columns["pred"][pane.image])
    np.testing.assert_allclose(pane.panel_data["class_mean"], res.mean("fc1", pred)[0], rtol=1e-6)
    np.testing.assert_allclose(pane.panel_data["per_image"], res.per_image["fc1"][rows.index(pane.image)], rtol=1e-6)


def test_saliency_switch_overlays_the_map_of_the_predicted_class(make_app, stores):
    import torch

    from volviz.analysis.saliency import overlay

    app = make_app([stores[0]])
    pane, st = app.panes[0], app.state
    _set(app, **{S.T_INDEX: 2})
    plain = _png(st["p0_input"])
    _set(app, **{S.SAL_ON: True})
    i = pane.image
    # direct autograd on the model input, as in [Hong-L4] / [Tang]: max over channels of |dS_pred / dI|
    x = torch.from_numpy(pane.store.read_input(i))[None].requires_grad_(True)  # mean 0 / std 1 here
    pred = int(pane.columns["pred"][i])
    pane.model()(x)[0, pred].backward()
    expect = overlay(pane.store.read_input(i), x.grad.abs().amax(1)[0].numpy())
    got = _png(st["p0_input"])
    assert np.abs(got.astype(int) - expect).max() <= 1 and np.abs(got.astype(int) - plain).mean() > 1
    assert "predicted class" in st["p0_sal_note"]
    _set(app, **{S.SAL_METHOD: "integrated-gradients"})
    assert np.abs(_png(st["p0_input"]).astype(int) - got).mean() > 0.1
    _set(app, **{S.SAL_ON: False})
    np.testing.assert_array_equal(_png(st["p0_input"]), plain)
    assert st["p0_sal_note"] == ""


def test_preferred_inputs_panel(make_app, stores, tmp_path):
    from volviz.analysis.actmax.results import thumbnails

    s = tmp_path / "s"
    shutil.copytree(stores[0], s)
    app = make_app([s])
    pane, st = app.panes[0], app.state
    _set(app, **{S.PANEL_TAB: "preferred"})
    assert st["p0_panel"] == "" and f"volviz optimize {s.name}" in st["p0_panel_note"]  # by name, not path
    assert str(s) not in st["p0_panel_note"]
    assert (
        main(
            [
                "optimize",
                "--trust-factory",
                str(s),
                "--layers",
                "conv1",
                "--seeds",
                "1",
                "--steps",
                "6",
                "--search",
                "0",
                "--quiet",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    _set(app, **{S.PANEL_TAB: "maps"})
    _set(app, **{S.PANEL_TAB: "preferred"})  # the results appear without restarting the app
    tiles = thumbnails(pane.store, "conv1", size=None)
    np.testing.assert_array_equal(pane.panel_data["tiles"], tiles)
    np.testing.assert_array_equal(pane.panel_data["order"], pane.shown.order)
    assert _png(st["p0_panel"]).shape[:2] == (2 * 12 + 1, 2 * 12 + 1)  # 4 tiles of 12 x 12, 1 px gap
    assert "preferred input of each of its 4 units" in st["p0_panel_note"]


def test_graph_tab_follows_the_slider_in_place(make_app, stores):
    from volviz.analysis.importance import importance_from_store
    from volviz.analysis.network_graph import unit_responses
    from volviz.app.graph_tab import importance_sizes

    app = make_app([stores[0]])
    pane, st, tab = app.panes[0], app.state, app.tabs["graph"]
    _set(app, **{S.T_INDEX: 1})
    assert tab.scene is None, "a hidden graph is not built"
    _set(app, **{S.APP_TAB: "graph"})
    sc = tab.scene
    assert sc is not None and tab.units == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    nodes, edges, thumbs, n_actors = sc.nodes_mesh, sc.edges_mesh, dict(sc.thumb_meshes), sc.n_actors
    for k, v in unit_responses(pane.store, pane.image, tab.units).items():
        np.testing.assert_allclose(sc.values[k], v)
    rgb, img = sc.nodes_mesh.cell_data["rgb"].copy(), sc.screenshot()
    assert st[S.G_SHOWN].endswith(f"image {pane.image}")
    _set(app, **{S.T_INDEX: 5})
    assert tab.scene is sc and sc.nodes_mesh is nodes and sc.edges_mesh is edges and sc.n_actors == n_actors
    assert all(sc.thumb_meshes[k] is m for k, m in thumbs.items()), "a step rebuilt the graph"
    for k, v in unit_responses(pane.store, pane.image, tab.units).items():
        np.testing.assert_allclose(sc.values[k], v)
    assert not np.array_equal(sc.nodes_mesh.cell_data["rgb"], rgb)
    assert np.abs(sc.screenshot().astype(int) - img).mean() > 0.05
    assert st[S.G_SHOWN].endswith(f"image {pane.image}")
    # importance (issue 5) as node colour and size: same meshes, values of the analysis
    pts = np.array(nodes.points)
    _set(app, **{S.G_COLOR: "importance-class", S.G_SIZE: True})
    cls = int(pane.columns["pred"][pane.image])
    res = importance_from_store(pane.store, tab.units, progress=False)
    want = {k: res.mean(k, cls)[0] for k in tab.units}
    for k in tab.units:
        np.testing.assert_allclose(sc.values[k], want[k], rtol=1e-6)
    off = sc.offsets["conv1"]
    np.testing.assert_allclose(sc.unit_scale[off : off + 4], importance_sizes(want)["conv1"], rtol=1e-6)
    assert sc.nodes_mesh is nodes and not np.allclose(np.array(nodes.points), pts)
    _set(app, **{S.G_SIZE: False, S.G_COLOR: "response"})
    np.testing.assert_allclose(np.array(nodes.points), pts)
    # hidden again: slider steps leave the graph alone; it catches up when shown
    shown = tab.image
    _set(app, **{S.APP_TAB: "volume", S.T_INDEX: 7})
    assert tab.image == shown and tab.dirty
    _set(app, **{S.APP_TAB: "graph"})
    assert tab.image == pane.image == pane.image_at(7) and tab.scene is sc


def test_class_groups_order_plays_the_groups_with_one_colour_scale(make_app, stores):
    import torch

    from volviz.analysis.class_groups import class_groups_from_store, group_gradients
    from volviz.app.analysis_panels import model_input
    from volviz.views.volume import weight_volume

    app = make_app([stores[0]])
    pane, st = app.panes[0], app.state
    _set(app, **{S.T_SORT: S.GROUPS, S.T_GROUP_CLASS: 0, S.T_GROUP_N: 1})
    groups = class_groups_from_store(pane.store, 0, per_group=1)
    seq = groups.sequence()
    assert len(seq) >= 3 and [i for i, _ in seq] == list(pane.sequence) and st[S.T_MAX] == len(seq) - 1
    assert "reference a" in st["p0_group_note"] and "computed from the model" in st["p0_group_note"]
    for pos, (i, label) in enumerate(seq):
        _set(app, **{S.T_INDEX: pos})
        assert pane.image == i and st["p0_group"] == label and label in st["p0_caption"]
        assert label in pane.scene.label_text
    # the weight gradients of the REFERENCE neuron for every image (the store holds each image's own
    # class), all on one colour scale: the largest |gradient| over the sequence
    _set(app, **{S.T_INDEX: 0, S.V_QUANTITY: "grad_weight"})
    assert not groups.store_has_reference_gradients
    x = torch.cat([model_input(pane.store, i)[0] for i, _ in seq])
    gg = group_gradients(pane.model(), x, 0, "conv1", quantity="grad_weight")
    assert pane.scene.clim == pytest.approx((-gg.clim, gg.clim), rel=1e-5)
    for pos, (i, _) in enumerate(seq):
        _set(app, **{S.T_INDEX: pos})
        np.testing.assert_allclose(pane.scene.displayed, weight_volume(gg.arrays[pos]), rtol=1e-5, atol=1e-7)
        assert pane.scene.clim == pytest.approx((-gg.clim, gg.clim), rel=1e-5)
        if groups.items[pos].class_index == 0:  # the store's own gradient is the reference one here
            np.testing.assert_allclose(pane.store.read("grad_weight", "conv1", i), gg.arrays[pos], rtol=1e-4, atol=1e-6)
    # another reference: another sequence; back to the captured order: the stored gradients again
    _set(app, **{S.T_GROUP_CLASS: 2})
    assert list(pane.sequence) == [i for i, _ in class_groups_from_store(pane.store, 2, per_group=1).sequence()]
    _set(app, **{S.T_SORT: "captured"})
    assert pane.play is None and st["p0_group"] == "" and list(pane.sequence) == list(range(9))
    np.testing.assert_allclose(
        pane.scene.displayed, weight_volume(pane.store.read("grad_weight", "conv1", pane.image)), rtol=1e-6
    )


def test_pruning_tab_computes_and_shows_a_result_folder(make_app, stores, tmp_path):
    from volviz.analysis.importance import importance_from_store, inputs_from_store
    from volviz.analysis.pruning import least_most_table, table_markdown
    from volviz.app.prune_tab import markdown_table

    app = make_app([stores[0]])
    st, store = app.state, app.panes[0].store
    assert st[S.PR_LAYER] == "conv1" and [it["value"] for it in st[S.PR_LAYERS]] == [
        "conv1",
        "conv2",
        "conv3",
        "fc1",
        "fc2",
    ]
    _set(app, **{S.PR_LAYER: "conv2", S.PR_K: 1, S.PR_STEPS: 3})
    app.tabs["prune"].start()  # no server loop: at once
    folder = app.tabs["prune"].shown_folder
    assert folder.parent == app.tabs["prune"].out_dir and st[S.PR_STATUS] == f"showing {folder.name}"
    assert st[S.PR_SHOWN] == folder.name and st[S.PR_FOLDERS][0] == {"title": folder.name, "value": st[S.PR_FOLDER]}
    assert {p.name for p in folder.iterdir()} == {"table.csv", "table.md", "sweep_conv2.csv", "sweep_conv2.png"}
    rel = importance_from_store(store, ["conv2"], progress=False).class_relevance("conv2")[0]
    rows = least_most_table(
        store.model(trust_factory=True).module,
        inputs_from_store(store)[0],
        {"conv2": rel},
        [0, 1, 2],
        k=1,
        class_names=store.class_names,
        progress=False,
    )
    head, want = markdown_table(table_markdown(rows))[1:]
    assert st[S.PR_HEAD] == head and st[S.PR_ROWS] == want
    assert len(st[S.PR_IMAGES]) == 1 and st[S.PR_IMAGES][0]["src"].startswith("data:image/png;base64,")
    # a folder written by `volviz prune --out` shows the same way
    out = tmp_path / "cli"
    assert (
        main(["prune", "--trust-factory", str(stores[0]), "--out", str(out), "--layers", "conv1", "--steps", "3"]) == 0
    )
    # (listed when the app starts: the server's own folders, chosen by id)
    listed = make_app([stores[0]], prune_dir=tmp_path)
    st = listed.state
    ids = {it["title"]: it["value"] for it in st[S.PR_FOLDERS]}
    assert {"cli", "rec"} <= set(ids)  # the folders of prune_dir (rec: the recordings, not a result)
    _set(listed, **{S.PR_FOLDER: ids["cli"]})
    listed.tabs["prune"].load_from_state()
    assert st[S.PR_SHOWN] == "cli" and len(st[S.PR_ROWS]) == 3 and st[S.PR_HEAD][0] == "class"
    assert "Error rate" in st[S.PR_TEXT] and st[S.PR_IMAGES][0]["title"] == "sweep of conv1"
    _set(listed, **{S.PR_FOLDER: ids["rec"]})
    listed.tabs["prune"].load_from_state()
    assert "not a `volviz prune --out` folder" in st[S.PR_STATUS] and st[S.PR_SHOWN] == "cli"
    assert str(tmp_path) not in st[S.PR_STATUS]


def test_scene_preview_scrubs_camera_and_images(make_app, stores, tmp_path):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    (scenes / "tiny.toml").write_text(f"""
title = "tiny"
[store]
path = "{stores[0]}"
[series]
order = "captured"
first = 0.5
last = 0.5
[[keyframes]]
view = "overview"
hold = 1.0
[[keyframes]]
view = "layer"
layer = "conv2"
duration = 2.0
""")
    (scenes / "broken.toml").write_text("title = 'no key frames'\n[store]\nmodel = 'digits'\n")
    app = make_app([stores[0]], scene_dirs=[scenes], allow_outside=True)  # the store lies outside scenes/
    st, tab = app.state, app.tabs["scene"]
    assert [it["title"] for it in st[S.SC_FILES]] == ["scenes/broken.toml", "scenes/tiny.toml"]
    scene_id = {it["title"]: it["value"] for it in st[S.SC_FILES]}  # ids, never paths
    _set(app, **{S.APP_TAB: "scene", S.SC_FILE: scene_id["scenes/broken.toml"]})
    assert "needs at least one [[keyframes]]" in st[S.SC_STATUS] and tab.prepared is None
    _set(app, **{S.SC_FILE: scene_id["scenes/tiny.toml"]})  # no server loop: at once
    p = tab.prepared
    assert p is not None and st[S.SC_DURATION] == pytest.approx(4.5) and "9 images" in st[S.SC_STATUS]
    gs, cam = p.graph_scene, tab.plotter.camera
    nodes, before = gs.nodes_mesh, cam.position
    _set(app, **{S.SC_T: 2.6})
    assert p.graph_scene is gs and gs.nodes_mesh is nodes and gs.plotter is tab.plotter
    assert cam.position != before, "the camera did not move along its path"
    assert p.step_at(2.6) == 5 and st[S.SC_CAPTION].startswith("image 6/9")
    np.testing.assert_allclose(gs.values["conv1"], p.responses["conv1"][5])
    assert st[S.SC_SHOWN] == "tiny.toml · t=2.60"


# ----------------------------------------------------------------------------- trust: a store is data
def _digits_images(root: pathlib.Path, classes=3, per_class=2) -> pathlib.Path:
    from volviz.sources.demo import demo_images_dir

    for cls in sorted(demo_images_dir("digits").iterdir())[:classes]:
        (root / cls.name).mkdir(parents=True)
        for f in sorted(cls.glob("*.png"))[:per_class]:
            shutil.copy(f, root / cls.name / f.name)
    return root


def test_a_trust_pickle_store_opens_and_its_model_features_work(make_app, tmp_path):
    import torch

    from volviz.sources.demo import load_demo_model

    full = tmp_path / "full-model.pt"
    torch.save(load_demo_model("digits"), full)  # a pickled nn.Module, not a state_dict
    s = tmp_path / "pickled"
    assert (
        main(
            [
                "capture",
                "--out",
                str(s),
                "--model",
                "digits",
                "--weights",
                str(full),
                "--trust-pickle",
                "--images",
                str(_digits_images(tmp_path / "imgs")),
            ]
        )
        == 0
    )
    app = make_app([s], trust={"trust_pickle": True})  # volviz serve --trust-pickle
    st, pane = app.state, app.panes[0]
    assert not st["p0_error"] and pane.layer == "conv1" and pane.scene.screenshot().std() > 5
    _set(app, **{S.PANEL_TAB: "sorted", S.SAL_ON: True, S.T_INDEX: 3})
    assert "sorted by weight to class" in st["p0_panel_note"] and st["p0_panel"]
    assert "predicted class" in st["p0_sal_note"]
    _set(app, **{S.APP_TAB: "graph"})
    assert app.tabs["graph"].scene is not None and not st[S.G_NOTE].startswith("graph:")
    _set(app, **{S.APP_TAB: "prune", S.PR_STEPS: 2})
    app.tabs["prune"].start()
    assert st[S.PR_STATUS].startswith("showing") and st[S.PR_ROWS]

    # the same store without the flag: it opens, the model's features say why, nothing crashes
    bare = make_app([s], trust={})
    st = bare.state
    assert not st["p0_error"] and bare.panes[0].scene is not None
    _set(bare, **{S.PANEL_TAB: "sorted", S.SAL_ON: True, S.T_INDEX: 3})
    assert "--trust-pickle" in st["p0_panel_note"] and "--trust-pickle" in st["p0_sal_note"]
    assert "volviz serve" in st["p0_sal_note"] and st["p0_input"].startswith("data:image/png")
    _set(bare, **{S.APP_TAB: "graph"})
    assert "--trust-pickle" in st[S.G_NOTE]
    _set(bare, **{S.APP_TAB: "prune"})
    bare.tabs["prune"].start()
    assert "pruning failed" in st[S.PR_STATUS] and "--trust-pickle" in st[S.PR_STATUS]
    _set(bare, **{S.APP_TAB: "volume", S.T_INDEX: 4})
    assert bare.panes[0].image == bare.panes[0].image_at(4) and not st["p0_error"]


def test_a_factory_store_is_never_imported_without_trust_factory(make_app, tmp_path, monkeypatch):
    marker = tmp_path / "imported.txt"
    (tmp_path / "marker_model.py").write_text(f"""
import pathlib

with open({str(marker)!r}, "a") as f:
    f.write("imported\\n")


def net():
    with open({str(marker)!r}, "a") as f:
        f.write("factory called\\n")
    from helpers import tiny_cnn
    return tiny_cnn()
""")
    monkeypatch.syspath_prepend(str(tmp_path))
    s = tmp_path / "factory-store"
    imgs = write_image_folder(tmp_path / "imgs", n_per_class=2)
    assert (
        main(
            [
                "capture",
                "--out",
                str(s),
                "--images",
                str(imgs),
                "--model",
                "marker_model:net",
                "--size",
                "12",
                "12",
                "--channels",
                "1",
            ]
        )
        == 0
    )
    assert marker.exists()  # the capture's own command line named the factory: it ran
    marker.unlink()
    sys.modules.pop("marker_model", None)
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    (scenes / "outside.toml").write_text(f'[store]\npath = "{s}"\n[[keyframes]]\nview = "overview"\n')

    app = make_app([s], trust={}, scene_dirs=[scenes])  # volviz serve STORE, no --trust-factory
    st = app.state
    assert not st["p0_error"] and app.panes[0].scene is not None  # the store itself is data: it opens
    _set(app, **{S.PANEL_TAB: "sorted", S.SAL_ON: True, S.T_INDEX: 1})
    assert "--trust-factory" in st["p0_panel_note"] and "--trust-factory" in st["p0_sal_note"]
    _set(app, **{S.V_QUANTITY: "grad_weight"})
    _set(app, **{S.T_SORT: S.GROUPS})  # the reference neuron's gradients need the model
    assert "--trust-factory" in st["p0_error"] and app.panes[0].scene is not None
    _set(app, **{S.T_SORT: "captured", S.V_QUANTITY: "activation"})
    _set(app, **{S.APP_TAB: "graph"})
    assert "--trust-factory" in st[S.G_NOTE]
    _set(app, **{S.APP_TAB: "prune"})
    app.tabs["prune"].start()
    assert "--trust-factory" in st[S.PR_STATUS]
    _set(app, **{S.APP_TAB: "scene", S.SC_FILE: st[S.SC_FILES][0]["value"]})
    assert "leaves the scene's folder" in st[S.SC_STATUS]
    assert not marker.exists(), "the store's model factory was imported without --trust-factory"

    trusted = make_app([s], trust={"trust_factory": True})  # volviz serve --trust-factory STORE
    _set(trusted, **{S.PANEL_TAB: "sorted"})
    assert "sorted by weight to class" in trusted.state["p0_panel_note"]
    assert "factory called" in marker.read_text()


def test_a_gradient_volume_given_up_for_the_image_budget_says_so(make_app, tmp_path):
    imgs = write_image_folder(tmp_path / "imgs", n_per_class=2)
    out = tmp_path / "s"
    assert main(["capture", "--out", str(out), "--images", str(imgs), *TINY, "--image-budget-mb", "0.004"]) == 0
    store = Store.open(out)
    assert not store.layers["conv1"].gradient and store.plan.dtype == "float16"
    app = make_app([out])
    pane = app.panes[0]
    _set(app, p0_layer="conv1", **{S.V_QUANTITY: "grad_activation"})
    assert "--image-budget-mb 0" in app.state["p0_error"]
    _set(app, **{S.V_QUANTITY: "activation"})
    assert not app.state["p0_error"] and pane.scene is not None and pane.scene.shape == (4, 12, 12)
