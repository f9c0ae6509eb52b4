"""[Jain2016]'s slice figures: orders of one slice of a layer volume, the white bars between
clusters, the agreement of slices' orders, `volviz render --slice-row`, and the app's Slice panel
with its row slider."""

from __future__ import annotations

import uuid

import imageio.v3 as iio
import numpy as np
import pytest

from volviz.analysis.reorder import make_orderer
from volviz.analysis.slice_orders import SliceError, order_agreement, slice_orders, take_slice, with_bars
from volviz.cli import main

C, H, W, K = 28, 6, 10, 7  # filters, rows, columns, planted clusters


def planted(seed: int = 0):
    """A volume whose filters form K clusters on every row: filter c's row h is its cluster's
    pattern for that row plus a small offset along one direction (so every row orders the
    filters the same way) plus noise; filters shuffled. Returns (volume, cluster of each filter)."""
    rng = np.random.default_rng(seed)
    cluster = rng.permutation(np.repeat(np.arange(K), C // K))
    t = cluster * 1.0 + rng.uniform(-0.15, 0.15, C)  # a 1-D latent: the clusters lie on a line
    u = rng.normal(size=(H, W))
    proto = rng.normal(size=(K, H, W)) * 0.2
    vol = t[:, None, None] * u[None] + proto[cluster] + rng.normal(scale=0.01, size=(C, H, W))
    return vol.astype(np.float32), cluster


def test_white_bars_fall_between_the_planted_clusters(out_dir):
    vol, cluster = planted()
    so = slice_orders(vol, "row", 3)
    k7 = next(p for p in so.panels if p.key == "kmeans7")
    assert k7.bars and k7.n_clusters == K
    seq = cluster[k7.order]  # planted cluster of each position, top to bottom
    changes = np.flatnonzero(np.diff(seq)) + 1
    np.testing.assert_array_equal(k7.boundaries, changes)  # a bar exactly where a planted cluster ends
    assert len(np.unique(seq[np.r_[0, changes]])) == K  # each planted cluster is one contiguous block
    img, where = with_bars(so.reordered(k7), k7.boundaries)
    bars = np.flatnonzero(where < 0)
    assert len(bars) == K - 1 and np.isnan(img[bars]).all() and np.isfinite(img[where >= 0]).all()
    for b in bars:  # the rows either side of each bar belong to different planted clusters
        assert cluster[k7.order[where[b - 1]]] != cluster[k7.order[where[b + 1]]]
    # the same numbers as the volume's slice-k-means order (the registry, not a copy of it)
    ref = make_orderer("slice-kmeans", index=3, n_clusters=7, random_state=0).fit(vol)
    np.testing.assert_array_equal(k7.order, ref.order_)
    pca = make_orderer("slice-pca", index=3, random_state=0).fit(vol)
    np.testing.assert_array_equal(next(p for p in so.panels if p.key == "pca").order, pca.order_)
    raw = next(p for p in so.panels if p.key == "raw")
    np.testing.assert_array_equal(raw.order, np.arange(C))


def test_the_figure_shows_bars_and_titles_that_do_not_overlap(out_dir):
    from volviz.views.slice_figures import slice_figure

    vol, cluster = planted(1)
    so = slice_orders(vol, "row", 2)
    fig = slice_figure(out_dir / "planted.png", so, title="planted", caption="7 clusters", as_rgb=True)
    png = iio.imread(out_dir / "planted.png")[..., :3]
    assert png.shape == fig.rgb.shape and png.std() > 20
    boxes = fig.title_boxes
    assert len(boxes) == 5
    for (a0, _, a1, _), (b0, _, b1, _) in zip(boxes, boxes[1:]):
        assert a1 <= b0, boxes  # side by side, never into the next panel's title
    # white (255) pixel rows: in the 7-means panel only (the colour map has no white in it)
    white = (png == 255).all(axis=2)
    k7 = next(i for i, p in enumerate(so.panels) if p.key == "kmeans7")
    mid = lambda i: int((boxes[i][0] + boxes[i][2]) / 2)
    col = white[:, mid(k7)]
    runs = np.flatnonzero(np.diff(col.astype(int)) == 1)
    assert len(runs) == K - 1, runs  # six bars between seven clusters
    assert not white[:, mid(0)].any()


def test_agreement_of_a_slice_with_itself_is_one_and_with_a_shuffled_volume_low():
    vol, _ = planted(2)
    ag = order_agreement(vol, "row", 3)
    assert set(ag.values) == {"kmeans10", "kmeans7", "kmeans20x5", "pca"}
    for key, v in ag.values.items():
        assert v.shape == (H,) and v[3] == 1.0
    assert ag.mean_except_self("pca") > 0.97  # every row orders the filters along the same line
    assert ag.mean_except_self("kmeans7") > 0.9
    rng = np.random.default_rng(5)
    shuffled = vol.copy()
    for h in range(H):  # every other row's filters shuffled: no order in common with row 3
        if h != 3:
            shuffled[:, h] = shuffled[rng.permutation(C), h]
    sh = order_agreement(shuffled, "row", 3, stat="kendall")
    assert sh.values["pca"][3] == 1.0
    for key in sh.values:
        assert sh.mean_except_self(key) < 0.35, (key, sh.values[key])
    col = order_agreement(vol, "col", 0, methods=("pca",))
    assert col.values["pca"].shape == (W,)


def test_bad_slices_say_the_valid_range():
    vol, _ = planted()
    with pytest.raises(SliceError, match=r"row 6 is out of range: this layer has 6 rows, valid 0\.\.5"):
        take_slice(vol, "row", 6)
    with pytest.raises(SliceError, match=r"column -1 .* valid 0\.\.9"):
        slice_orders(vol, "col", -1)
    with pytest.raises(SliceError, match="pick a conv layer"):
        take_slice(np.zeros(10), "row", 0)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The embedded digits LeNet on 12 of its test images (conv1 20 x 24 x 24, conv2 50 x 8 x 8)."""
    root = tmp_path_factory.mktemp("slices")
    assert main(["capture", "--out", str(root / "digits"), "--max-images", "12"]) == 0
    return root / "digits"


def test_render_slice_row_writes_the_figure_and_the_agreement_plot(digits, out_dir, capsys):
    out = out_dir / "row15.png"
    assert main(["render", str(digits), "--layer", "conv1", "--slice-row", "15", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    second = out_dir / "row15_agreement.png"
    assert f"wrote {out}" in said and f"wrote {second}" in said
    for path in (out, second):
        img = iio.imread(path)[..., :3]
        assert img.shape[0] > 400 and img.shape[1] > 800 and img.std() > 20
    out = out_dir / "col3.png"
    args = ["render", str(digits), "--layer", "conv2", "--slice-col", "3", "--image", "2", "--out", str(out)]
    assert main([*args, "--slice-agreement", "kendall"]) == 0
    assert (out_dir / "col3_agreement.png").is_file()


@pytest.mark.parametrize(
    "args, says",
    [
        (["--layer", "conv1", "--slice-row", "24"], "row 24 is out of range: this layer has 24 rows, valid 0..23"),
        (["--layer", "conv2", "--slice-col", "-1"], "column -1 is out of range: this layer has 8 columns, valid 0..7"),
        (["--layer", "fc1", "--slice-row", "0"], "layer 'fc1' has shape (500,)"),
    ],
)
def test_render_slice_bad_input_is_one_line(digits, tmp_path, capsys, args, says):
    assert main(["render", str(digits), *args, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.png").exists()


def test_app_slice_panel_follows_the_row_slider(digits, tmp_path, can_render):
    pytest.importorskip("trame")
    from trame.app import get_server

    from volviz.app import state as S
    from volviz.app.explorer import Explorer
    from volviz.app.security import Refused

    server = get_server(f"test-{uuid.uuid4().hex[:8]}", client_type="vue3")
    app = Explorer([str(digits)], server=server, record_dir=tmp_path / "rec", window_size=(320, 240))
    try:
        app.state.ready()
        st = app.state
        assert st[S.V_SLICE_ROW_MAX] == 23  # conv1: 24 rows
        st[S.PANEL_TAB] = "slice"
        st.flush()
        pane = app.panes[0]
        assert pane.panel_data["row"] == 0 and "conv1 row 0" in st["p0_panel_note"]
        st[S.V_SLICE_ROW] = 15
        st.flush()
        data = pane.panel_data
        assert data["row"] == 15 and "7-means with white bars between its 7 clusters" in st["p0_panel_note"]
        vol = pane.store.read("activation", "conv1", pane.image)
        ref = make_orderer("slice-kmeans", index=15, n_clusters=7, random_state=0).fit(vol)
        assert data["orders"]["kmeans7"] == ref.order_.tolist()
        rgb = iio.imread(_png(st["p0_panel"]))[..., :3]
        assert rgb.std() > 20  # not blank
        spans = dict((key, (x0, x1)) for key, x0, x1 in data["spans"])
        white = (rgb == 255).all(axis=2)
        for key, (x0, x1) in spans.items():  # white bars: between the 7 clusters, and only there
            mid = white[:, (x0 + x1) // 2]
            bars = np.flatnonzero(np.diff(mid.astype(int)) == 1)
            assert len(bars) == (6 if key == "kmeans7" else 0), (key, bars)
        # the slider also picks the row of the 3-D view's slice orders
        st[S.V_ORDER], st[S.V_FIT] = "slice-pca", "image"
        st.flush()
        want = make_orderer("slice-pca", index=15, random_state=0).fit(vol).order_
        np.testing.assert_array_equal(pane.shown.order, want)
        np.testing.assert_array_equal(pane.scene.order, want)
        # the bound comes from the state: the layer's height
        check = app.rules[S.V_SLICE_ROW]
        assert check(23, st) == 23
        with pytest.raises(Refused, match="out of range 0..23"):
            check(24, st)
        with pytest.raises(Refused):
            check("3; rm", st)
        st["p0_layer"] = "conv2"
        st.flush()
        assert st[S.V_SLICE_ROW_MAX] == 7
        assert pane.panel_data["row"] == 7 and "slider at 15" in st["p0_panel_note"]  # clamped, said
        st["p0_layer"] = "fc1"
        st.flush()
        assert st["p0_panel"] == "" and "pick a conv layer" in st["p0_panel_note"]
    finally:
        app.close()


def _png(url: str) -> bytes:
    import base64

    return base64.b64decode(url.split(",", 1)[1])


def test_docstring_examples():
    import doctest

    import volviz.analysis.slice_orders as mod

    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
