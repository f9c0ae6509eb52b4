"""Level of detail of the network graph: one tile per layer for big models (a 54-layer,
MobileNetV2-sized chain with residual adds fits the view, labels never overlap), units when a
layer is opened, and `volviz graph --lod`."""

import imageio.v3 as iio
import networkx as nx
import numpy as np
import pytest
from helpers import capture_tiny_store

from volviz.views.graph_layout import U_AXIS, V_AXIS, layer_tiles
from volviz.views.text_layout import overlaps


def mobilenet_like(n_blocks: int = 17) -> nx.DiGraph:
    """A layer-level stand-in for MobileNetV2's graph: long dotted names, a residual add every few
    layers (the next block reads from two earlier layers), a few units per layer."""
    layers = [{"name": "input", "kind": "input", "n_units": 3, "shape": [3, 224, 224], "feeds_from": []}]
    G = nx.DiGraph()
    for c in range(3):
        G.add_node(("input", c))
    outs: list[str] = []
    for b in range(n_blocks):
        for j, (part, n) in enumerate((("conv.0.0", 6), ("conv.1.0", 6), ("conv.2", 4))):
            name = f"features.{b + 1}.{part}"
            feeds = [layers[-1]["name"]]
            if j == 0 and len(outs) >= 2 and b % 2:
                feeds.append(outs[-2])  # the residual add's other term: the block before the last
            layers.append({"name": name, "kind": "conv", "n_units": n, "shape": [n, 14, 14], "feeds_from": feeds})
            for u in range(n):
                G.add_node((name, u))
                for src in feeds:
                    G.add_edge((src, u % 3), (name, u), weight=1.0 + u)
        outs.append(layers[-1]["name"])
    layers.append(
        {"name": "classifier.1", "kind": "linear", "n_units": 10, "shape": [10], "feeds_from": [layers[-1]["name"]]}
    )
    for u in range(10):
        G.add_edge((layers[-2]["name"], u % 4), ("classifier.1", u), weight=1.0)
    for i, d in enumerate(layers):
        d.update(order=i, level=i, module_type="Conv2d")
    G.graph.update(layers=layers, k=8)
    return G


def test_layer_tiles_fit_the_view_and_keep_consecutive_layers_adjacent():
    layers = mobilenet_like().graph["layers"]
    assert len(layers) == 53
    t = layer_tiles(layers, aspect=4 / 3)
    assert t.rows * t.cols >= 53 and t.cols == 10 and t.rows == 6
    step = np.linalg.norm(np.diff(t.positions, axis=0), axis=1)
    assert (np.isclose(step, t.pitch_u) | np.isclose(step, t.pitch_v)).all()  # serpentine: always neighbours
    lo, hi = t.bounds()
    width, height = (hi - lo) @ np.abs(U_AXIS), (hi - lo) @ np.abs(V_AXIS)
    assert 0.9 < width / height < 1.8
    assert t.sizes.min() >= 0.42 - 1e-9 and t.sizes.max() <= 0.72 + 1e-9


def test_layer_edges_are_the_dataflow_with_skip_connections():
    from volviz.views.graph_overview import layer_edges

    G = mobilenet_like(4)
    names = [d["name"] for d in G.graph["layers"]]
    edges = layer_edges(G, names)
    skips = [(a, b) for a, b, _ in edges if b != a + 1]
    assert skips and all(names[b].endswith("conv.0.0") for _, b in skips)
    shares = {(a, b): s for a, b, s in edges}
    into = [s for (a, b), s in shares.items() if b == skips[0][1]]
    assert abs(sum(into) - 1.0) < 1e-9  # the shares of the edges into a layer add up to 1


def test_choose_lod_switches_above_the_threshold():
    from volviz.views.graph_lod import choose_lod

    G = mobilenet_like()
    assert choose_lod(G) == "units"  # 270 units: every unit is readable
    assert choose_lod(G, max_units=100) == "layers" and choose_lod(G, "layers") == "layers"
    with pytest.raises(ValueError):
        choose_lod(G, "tiles")


def test_overview_labels_never_overlap_and_every_tile_is_in_view(can_render, out_dir):
    from volviz.views.graph_overview import LayerOverviewScene

    G = mobilenet_like()
    sc = LayerOverviewScene(
        G,
        {},
        input_image=np.random.default_rng(0).random((3, 16, 16)),
        title="mobilenet-like: 53 layers " + "and a very long title " * 6,
        window_size=(800, 600),
    )
    try:
        sc.set_label("image 0 [photos/astronaut.png]\npredicted American Staffordshire terrier")
        vals = {d["name"]: np.linspace(0, 1, d["n_units"]) for d in G.graph["layers"][1:]}
        sc.update_activations(vals)
        img = sc.screenshot(out_dir / "lod_overview.png")
        assert img.shape == (600, 800, 3) and img.std() > 10
        for p in sc.tiles.positions:  # every tile centre projects into the window
            x, y = sc._project(p)
            assert 0 < x < 800 and 0 < y < 600
        boxes = sc.text_boxes()
        assert len(sc.shown_labels) >= 0.9 * len(sc.names)
        for i, a in enumerate(boxes):
            assert a.x0 >= 0 and a.x1 <= 800 and a.y0 >= 0 and a.y1 <= 600
            for b in boxes[i + 1 :]:
                assert not overlaps(a, b, 0), (a, b)
        assert sc.title_block.shown.endswith("...")  # the long title was shortened, not overlapping
        assert any(t.startswith("...") for t in (b.shown for b in sc.label_blocks))  # ...12.conv.1.0
        frames = sc.frame_mesh.cell_data["rgb"]
        assert tuple(frames[0]) == sc.style.input_color and frames[1:].std() > 0
    finally:
        sc.close()


def test_lod_scene_opens_a_layer_as_units_and_goes_back(can_render):
    from volviz.views.graph_lod import GraphLODScene

    G = mobilenet_like(3)
    sc = GraphLODScene(G, None, {}, window_size=(400, 300), lod="layers")
    try:
        assert sc.mode == "layers" and sc.units_scene is None  # the overview never builds units
        over = sc.screenshot()
        sc.update_activations({"features.2.conv.1.0": np.arange(6.0)})
        sc.view_layer("features.2.conv.1.0")
        assert sc.mode == "units" and sc.units_scene is not None
        assert sc.units_scene.values["features.2.conv.1.0"].tolist() == list(range(6))  # state carried over
        units = sc.screenshot()
        assert not sc.overview.frame_actor.GetVisibility()
        assert np.abs(units.astype(int) - over).mean() > 1
        sc.view_overview()
        assert sc.mode == "layers" and sc.overview.frame_actor.GetVisibility()
        assert not sc.units_scene.nodes_actor.GetVisibility()
    finally:
        sc.close()


@pytest.fixture(scope="module")
def rgb_store(tmp_path_factory):
    return capture_tiny_store(tmp_path_factory.mktemp("lod"), rgb=True, grads=False)


def test_graph_command_lod(rgb_store, tmp_path, can_render, capsys):
    from volviz.cli import main

    base = ["graph", "--trust-factory", str(rgb_store), "--width", "480", "--height", "360"]
    assert main(base + ["--out", str(tmp_path / "l.png"), "--lod", "layers"]) == 0
    assert "one tile per layer" in capsys.readouterr().out
    assert iio.imread(tmp_path / "l.png").std() > 5
    assert main(base + ["--out", str(tmp_path / "u.png")]) == 0  # a small model: units automatically
    assert "units" in capsys.readouterr().out
    assert main(base + ["--out", str(tmp_path / "c.png"), "--lod", "layers", "--layer", "conv2"]) == 0
    assert iio.imread(tmp_path / "c.png").std() > 5
