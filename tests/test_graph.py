"""The network graph: dataflow (branches, residual adds, flatten), edge weights, the seed-000
sanity check, layout, camera paths, the pyvista scene, scene files, movies and the command."""

import imageio.v3 as iio
import networkx as nx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import capture_tiny_store
from torch import nn

from volviz.analysis.dataflow_trace import trace_dataflow
from volviz.analysis.network_graph import GraphBuildError, build_network_graph
from volviz.views.camera_path import CameraPath, layer_pose, orbit_poses, overview_pose, unit_pose
from volviz.views.graph_layout import DEPTH_AXIS, layered_layout


# ------------------------------------------------------------------------------ tiny models
class RGBNet(nn.Module):
    """conv1 3->4 (3x3) with planted weights, conv2, pool, linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(6 * 4, 3)
        with torch.no_grad():
            w = torch.zeros(4, 3, 3, 3)
            w[0, 0], w[0, 1], w[0, 2] = 1.0, -1.0, -1.0  # red: excited by R, inhibited by G and B
            w[1, 0], w[1, 1], w[1, 2] = -1.0, 0.8, -1.0  # green
            w[2, 0], w[2, 1], w[2, 2] = 0.9, -1.0, 0.7  # purple: R and B ([PreferredInputs2016])
            w[3] = torch.randn(3, 3, 3, generator=torch.Generator().manual_seed(1)) * 0.3
            self.conv1.weight.copy_(w)
            self.conv1.bias.zero_()

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = self.pool(F.relu(self.conv2(h)))
        return self.fc(torch.flatten(h, 1))


class ResNetlet(nn.Module):
    """A residual add, a branch (two convs reading the same tensor), flatten into a linear."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.c3 = nn.Conv2d(4, 5, 3, padding=1)
        self.side = nn.Conv2d(4, 5, 1)
        self.fc = nn.Linear(5 * 2 * 2, 3)
        with torch.no_grad():
            for m in (self.c1, self.c2, self.c3, self.side, self.fc):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))

    def forward(self, x):
        h = torch.relu(self.c1(x))
        r = h + self.c2(h)  # residual add: channel i = c1[i] + c2[i]
        y = self.c3(r) + self.side(r)  # two branches merge again
        return self.fc(F.adaptive_avg_pool2d(y, 2).flatten(1))


class DataDependent(ResNetlet):
    def forward(self, x):
        h = torch.relu(self.c1(x))
        if h.mean() > -1:  # control flow on data: torch.fx cannot trace this
            h = h + self.c2(h)
        y = self.c3(h) + self.side(h)
        return self.fc(F.adaptive_avg_pool2d(y, 2).flatten(1))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 1)
        self.b = nn.Conv2d(1, 3, 1)
        self.c = nn.Conv2d(5, 4, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], dim=1))


class Permute(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 1)
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(self.a(x).permute(0, 2, 3, 1)).mean()


class PixelShuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 1)
        self.b = nn.Conv2d(1, 2, 1)

    def forward(self, x):
        return self.b(F.pixel_shuffle(self.a(x), 2))


class Shuffle(nn.Module):
    """conv a (6 ch) -> chunk in two along channels -> one half through b -> cat -> channel
    shuffle (view, transpose, view) -> conv c; then channels-last: permute, per-position Linear,
    permute back, conv d; then flatten of a channels-last map into fc."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 6, 1)
        self.b = nn.Conv2d(3, 3, 1)
        self.c = nn.Conv2d(6, 4, 1)
        self.lin = nn.Linear(4, 5)
        self.d = nn.Conv2d(5, 2, 1)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        x1, x2 = self.a(x).chunk(2, dim=1)
        y = torch.cat([x1, self.b(x2)], 1)
        n, ch, h, w = y.shape
        y = y.view(n, 2, ch // 2, h, w).transpose(1, 2).contiguous().view(n, ch, h, w)
        z = self.lin(self.c(y).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.fc(self.d(z).permute(0, 2, 3, 1).flatten(1))


def _relu_norm(w: torch.Tensor) -> float:
    return float(w.detach().clamp_min(0).pow(2).sum().sqrt())


def _weight(G, u, v) -> float:
    """An edge's weight; 0 for an edge that is absent (all weights <= 0 after ReLU)."""
    return G.edges[u, v]["weight"] if G.has_edge(u, v) else 0.0


# ------------------------------------------------------------------------------ graph
def test_red_unit_has_its_strongest_edge_to_the_red_channel():
    """[PreferredInputs2016]'s sanity check: a unit that prefers pure red is wired most strongly to R."""
    model = RGBNet().eval()
    # which uniform colour chip excites each conv1 unit most (the preferred input, by brute force)
    levels = torch.linspace(0, 1, 5)
    chips = torch.cartesian_prod(levels, levels, levels)
    with torch.no_grad():
        act = model.conv1(chips[:, :, None, None].expand(-1, 3, 8, 8))[:, :, 4, 4]
    best = chips[act.argmax(0)]
    assert best[0].tolist() == [1.0, 0.0, 0.0]  # unit 0 prefers pure red
    assert best[2].tolist() == [1.0, 0.0, 1.0]  # unit 2 prefers purple

    G = build_network_graph(model, (3, 8, 8), k=8)
    assert [G.nodes[("input", c)]["label"] for c in range(3)] == ["R", "G", "B"]
    strongest = max(G.in_edges(("conv1", 0), data="weight"), key=lambda e: e[2])
    assert strongest[0] == ("input", 0) and G.nodes[strongest[0]]["label"] == "R"
    green = max(G.in_edges(("conv1", 1), data="weight"), key=lambda e: e[2])
    assert G.nodes[green[0]]["label"] == "G"
    purple = {u for u, _ in G.in_edges(("conv1", 2))}
    assert purple == {("input", 0), ("input", 2)}  # strong edges to R and B, none to G
    assert G.edges[("input", 0), ("conv1", 0)]["weight"] == pytest.approx(3.0)  # ||relu(W[0, R])||

    # without ReLU thresholding the red unit's edges to R, G and B are equally strong
    A = build_network_graph(model, (3, 8, 8), k=8, mode="abs")
    w = [A.edges[("input", c), ("conv1", 0)]["weight"] for c in range(3)]
    assert w == pytest.approx([3.0, 3.0, 3.0])


@pytest.mark.parametrize("tracer", ["fx", "dispatch"])
def test_residual_add_branches_and_flatten_are_followed(tracer):
    model = ResNetlet().eval()
    G = build_network_graph(model, (3, 6, 6), k=None, tracer=tracer)
    assert G.graph["tracer"] == tracer
    names = [d["name"] for d in G.graph["layers"]]
    assert names == ["input", "c1", "c2", "c3", "side", "fc"]
    assert G.number_of_nodes() == 3 + 4 + 4 + 5 + 5 + 3
    feeds = {d["name"]: d["feeds_from"] for d in G.graph["layers"]}
    assert feeds["c3"] == feeds["side"] == ["c1", "c2"]  # the sum h + c2(h)
    assert feeds["fc"] == ["c3", "side"]
    for o in range(5):  # channel i of the sum reads from c1[i] and c2[i] with the same weight
        for i in range(4):
            w = _relu_norm(model.c3.weight[o, i])
            assert _weight(G, ("c1", i), ("c3", o)) == pytest.approx(w, rel=1e-5)
            assert _weight(G, ("c2", i), ("c3", o)) == pytest.approx(w, rel=1e-5)
    fcw = model.fc.weight.detach()
    for n in range(3):  # flatten-aware: feature block c*4 .. c*4+3 belongs to channel c
        for c in range(5):
            w = _relu_norm(fcw[n, c * 4 : (c + 1) * 4])
            assert _weight(G, ("c3", c), ("fc", n)) == pytest.approx(w, rel=1e-5)
            assert _weight(G, ("side", c), ("fc", n)) == pytest.approx(w, rel=1e-5)
    levels = {d["name"]: d["level"] for d in G.graph["layers"]}
    assert levels["c3"] == levels["side"]  # parallel branches share a level


def test_fx_failure_falls_back_to_tracing_a_forward_pass():
    ref = build_network_graph(ResNetlet().eval(), (3, 6, 6), k=3)
    G = build_network_graph(DataDependent().eval(), (3, 6, 6), k=3)
    assert G.graph["tracer"] == "dispatch"
    assert set(G.edges) == set(ref.edges)
    with pytest.raises(GraphBuildError, match="torch.fx cannot trace"):
        build_network_graph(DataDependent().eval(), (3, 6, 6), tracer="fx")


def test_resnet18_builds_with_expected_nodes_and_residual_sources():
    import torchvision

    torch.manual_seed(0)
    G = build_network_graph(torchvision.models.resnet18(), (3, 64, 64), k=8)
    assert G.graph["tracer"] == "fx"
    convs = 64 + 4 * 64 + (4 * 128 + 128) + (4 * 256 + 256) + (4 * 512 + 512)
    assert G.number_of_nodes() == 3 + convs + 1000
    assert all(d <= 8 for _, d in G.in_degree())
    feeds = {d["name"]: set(d["feeds_from"]) for d in G.graph["layers"]}
    assert feeds["layer1.1.conv1"] == {"conv1", "layer1.0.conv2"}  # the identity shortcut
    assert feeds["layer2.0.downsample.0"] == feeds["layer2.0.conv1"] == {"conv1", "layer1.0.conv2", "layer1.1.conv2"}
    assert feeds["layer3.0.conv1"] == {"layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"}
    assert feeds["fc"] == {"layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv2"}
    assert {u[0] for u, _ in G.in_edges(("fc", 7))} <= feeds["fc"]


def test_k_threshold_concat_and_unsupported_ops():
    model = ResNetlet().eval()
    G = build_network_graph(model, (3, 6, 6), k=2)
    assert max(d for _, d in G.in_degree()) == 2
    T = build_network_graph(model, (3, 6, 6), k=None, threshold=0.5)
    for d in T.graph["layers"][1:]:
        ws = [w for _, v, w in T.edges(data="weight") if v[0] == d["name"]]
        assert min(ws) >= 0.5 * d["max_weight"] - 1e-9
    flow = trace_dataflow(Concat().eval(), (1, 4, 4))  # units: input 0, a 1-2, b 3-5
    assert [layer.name for layer in flow.layers] == ["input", "a", "b", "c"]
    assert flow.layers[3].in_sources == [(1,), (2,), (3,), (4,), (5,)]  # cat: a0 a1 b0 b1 b2
    assert trace_dataflow(Permute().eval(), (1, 4, 4)).layers[2].in_sources == [(1,), (2,)]  # per position
    with pytest.raises(GraphBuildError, match="pixel_shuffle"):
        build_network_graph(PixelShuffle().eval(), (1, 4, 4))


@pytest.mark.parametrize("tracer", ["fx", "dispatch"])
def test_chunk_channel_shuffle_channels_last_and_flatten_are_followed(tracer):
    """A channel shuffle is a permutation of channels, a permute to channels-last and back the
    identity on them, a Linear on channels-last maps a per-position layer (units: input 0, a 1-6,
    b 7-9, c 10-13, lin 14-18, d 19-20)."""
    model = Shuffle().eval()
    flow = trace_dataflow(model, (1, 4, 4), tracer=tracer)
    layers = {layer.name: layer for layer in flow.layers}
    assert list(layers) == ["input", "a", "b", "c", "lin", "d", "fc"]
    assert layers["b"].in_sources == [(4,), (5,), (6,)]  # the second half of a's channels
    # cat: a0 a1 a2 b0 b1 b2; shuffle with 2 groups of 3 interleaves them: a0 b0 a1 b1 a2 b2
    assert layers["c"].in_sources == [(1,), (7,), (2,), (8,), (3,), (9,)]
    assert layers["lin"].in_sources == [(10,), (11,), (12,), (13,)]
    np.testing.assert_allclose(layers["lin"].strength, model.lin.weight.detach().clamp_min(0).numpy())
    assert layers["d"].in_sources == [(14,), (15,), (16,), (17,), (18,)]
    # fc reads (h, w, channel)-ordered features: d0, d1, d0, d1, ... one feature each
    assert layers["fc"].in_sources == [(19,), (20,)] * 16
    shuffled = nn.Sequential(nn.Conv2d(1, 6, 1), nn.ChannelShuffle(3), nn.Conv2d(6, 2, 1)).eval()
    c = trace_dataflow(shuffled, (1, 4, 4), tracer=tracer).layers[2]  # 3 groups of 2: 0 2 4 1 3 5
    assert c.in_sources == [(1,), (3,), (5,), (2,), (4,), (6,)]
    G = build_network_graph(model, (1, 4, 4), k=None, tracer=tracer)
    fcw = model.fc.weight.detach()
    for c in range(2):  # the strength of d[c] -> fc[n]: the norm over d[c]'s 16 strided features
        assert _weight(G, ("d", c), ("fc", 0)) == pytest.approx(_relu_norm(fcw[0, c::2]), rel=1e-5)


@pytest.mark.slow
def test_vgg16_sized_graph_builds_in_under_a_minute():
    import time

    import torchvision

    t0 = time.perf_counter()
    G = build_network_graph(torchvision.models.vgg16(), (3, 224, 224), k=8)
    assert time.perf_counter() - t0 < 60
    assert G.number_of_nodes() == 3 + 4224 + 4096 + 4096 + 1000
    assert G.number_of_edges() <= 8 * G.number_of_nodes()


# ------------------------------------------------------------------------------ layout, camera
def _layers():
    return [
        {"name": "input", "n_units": 3, "level": 0},
        {"name": "a", "n_units": 20, "level": 1},
        {"name": "b", "n_units": 500, "level": 2},
        {"name": "side", "n_units": 10, "level": 2},
        {"name": "c", "n_units": 10, "level": 3},
    ]


def test_layered_layout_puts_each_layer_on_a_plane_along_depth():
    L = layered_layout(_layers())
    xs = [float(p.center @ DEPTH_AXIS) for p in L.planes.values()]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    for p in L.planes.values():
        assert np.allclose(p.positions[:, 0], p.center[0])  # on its plane
        d = np.linalg.norm(p.positions[:, None] - p.positions[None], axis=-1) + np.eye(p.n) * 1e9
        assert d.min() >= p.cell - 1e-9  # no overlaps
        assert p.positions[0, 2] >= p.positions[-1, 2]  # first unit top (rows go down)
    assert L.planes["b"].width > L.planes["a"].width > L.planes["a"].cell
    lv = layered_layout(_layers(), stack="level")
    assert lv.planes["b"].center[0] == lv.planes["side"].center[0]
    assert abs(lv.planes["b"].center[1] - lv.planes["side"].center[1]) > 0


def test_camera_path_is_smooth_passes_keys_and_holds_still():
    L = layered_layout(_layers())
    over, lay = overview_pose(L), layer_pose(L, "b")
    unit = unit_pose(L, "c", 3)
    orbit = orbit_poses(lay, degrees=90)
    keys = [(0, over), (1, over), (3, lay)] + [(3 + 3 * i / (len(orbit) - 1), p) for i, p in enumerate(orbit)][1:]
    keys += [(8, unit), (9, unit)]
    path = CameraPath(keys)
    assert path.duration == 9
    for t, p in keys:
        assert np.allclose(path.pose_at(t).position, p.position)
    assert np.allclose(path.pose_at(0.5).position, over.position)  # a hold does not drift
    poses = path.sample(fps=60)
    pos = np.array([p.position for p in poses])
    step = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    span = np.linalg.norm(pos.max(0) - pos.min(0))
    assert step.max() < 0.05 * span  # no jumps at 60 fps
    acc = np.linalg.norm(np.diff(pos, 2, axis=0), axis=1)
    assert acc.max() < 0.01 * span  # continuous velocity (no kinks)
    # the orbit keeps its distance to the layer centre (within 1 % once under way)
    c = L.planes["b"].center
    r = [np.linalg.norm(path.pose_at(t).position - c) for t in np.linspace(3, 6, 61)]
    assert max(r) / min(r) < 1.03
    r = [np.linalg.norm(path.pose_at(t).position - c) for t in np.linspace(3.5, 5.5, 41)]
    assert max(r) / min(r) < 1.01
    # clip window: flying from one layer to another both stay visible half way
    mid = path.pose_at(2.0)
    assert mid.clip <= over.clip + 1e-9 or mid.clip <= lay.clip
    half = CameraPath([(0, layer_pose(L, "a")), (2, layer_pose(L, "b"))]).pose_at(1.0)
    assert half.clip <= float(L.planes["a"].center[0]) <= half.clip_far
    assert half.clip <= float(L.planes["b"].center[0]) <= half.clip_far
    with pytest.raises(ValueError):
        CameraPath([(0, over), (0, lay)])


# ------------------------------------------------------------------------------ scene
def _tiny_scene(**kw):
    from volviz.views.graph_scene import GraphScene, thumbnails_to_uint8

    G = build_network_graph(RGBNet().eval(), (3, 8, 8), k=3)
    L = layered_layout(G.graph["layers"])
    rng = np.random.default_rng(0)
    thumbs = {
        "conv1": thumbnails_to_uint8(rng.random((4, 3, 8, 8))),
        "conv2": thumbnails_to_uint8(rng.normal(size=(6, 1, 8, 8))),
    }  # any range, grey
    scene = GraphScene(G, L, thumbs, input_image=rng.random((3, 8, 8)), window_size=(320, 240), **kw)
    return G, L, scene


def test_scene_renders_and_updates_activations_in_place(can_render):
    G, L, scene = _tiny_scene()
    try:
        actors = dict(scene.plotter.renderer.actors)
        assert len(scene.thumb_actors) == 4  # one atlas per layer; fc has no preferred inputs: slate tiles
        assert scene.edges_mesh.n_cells == G.number_of_edges()  # all edges in one actor
        a = scene.screenshot()
        assert a.std() > 5
        vals = {"conv1": np.array([1.0, 0.0, 0.5, 2.0]), "conv2": np.linspace(0, 1, 6), "fc": np.array([0, 3, 1.0])}
        scene.set_scales({"conv1": 2.0, "conv2": 1.0, "fc": 3.0})
        mesh_id, tc_id = id(scene.nodes_mesh), id(scene.thumb_meshes["conv1"])
        scene.update_activations(vals)
        b = scene.screenshot()
        assert np.abs(a.astype(int) - b).mean() > 0.2
        assert dict(scene.plotter.renderer.actors).keys() == actors.keys()
        assert id(scene.nodes_mesh) == mesh_id and id(scene.thumb_meshes["conv1"]) == tc_id
        assert scene.firing["conv1"].tolist() == [True, False, True, True]
        tc = scene.thumb_meshes["conv1"].active_texture_coordinates
        assert tc[4:8, 0].min() >= 0.5 and tc[:4, 0].max() <= 0.5  # unit 1: the grey copy
        rgb = scene.nodes_mesh.cell_data["rgb"]
        off = scene.offsets["conv1"]
        assert tuple(rgb[off + 1]) == scene.style.grey
        assert rgb[off + 3].sum() > rgb[off + 2].sum()  # stronger response, brighter
        scene.set_pose(layer_pose(L, "conv2", aspect=scene.aspect))
        c = scene.screenshot()
        assert c.std() > 5 and np.abs(c.astype(int) - b).mean() > 1
        assert not scene.label_actors["conv1"].GetVisibility()  # clipped away with its layer
    finally:
        scene.close()


def test_atlas_and_thumbnail_conversion():
    from volviz.views.graph_scene import channel_tiles, make_atlas, thumbnails_to_uint8

    t = thumbnails_to_uint8(np.full((5, 1, 4, 4), 0.5))
    assert t.shape == (5, 4, 4, 3) and (t == 128).all()
    atlas, rows, cols, px = make_atlas(t, 8)
    assert (rows, cols, px) == (2, 3, 8) and atlas.shape == (16, 48, 3)
    tiles = channel_tiles(np.stack([np.ones((2, 2)), np.zeros((2, 2)), np.zeros((2, 2))]))
    assert tiles[0, 0, 0].tolist() == [255, 0, 0] and tiles[1].max() == 0


# ------------------------------------------------------------------------------ scenes, movies, CLI
@pytest.fixture(scope="module")
def rgb_store(tmp_path_factory):
    return capture_tiny_store(tmp_path_factory.mktemp("graph"), rgb=True, grads=False)


SCENE = """
title = "tiny"
[store]
path = "{store}"
[graph]
k = 3
[view]
width = 160
height = 128
fps = 4
[series]
order = "probability"
class = "a"
start = 0.5
first = 0.5
last = 0.25
[[keyframes]]
view = "overview"
hold = 0.5
[[keyframes]]
view = "layer"
layer = "conv2"
duration = 1.0
[[keyframes]]
view = "orbit"
layer = "conv2"
degrees = 60
duration = 1.0
[[keyframes]]
view = "unit"
layer = "fc1"
unit = 2
duration = 1.0
"""


def test_movie_from_scene_mp4_and_gif(rgb_store, tmp_path, can_render, capsys):
    from volviz.scene import load_scene, movie_from_scene

    scene_file = tmp_path / "tiny.toml"
    scene_file.write_text(SCENE.format(store=rgb_store))
    sc = load_scene(scene_file, allow_outside=True)  # the store lives in another tmp folder
    assert [k["view"] for k in sc.keyframes] == ["overview", "layer", "orbit", "unit"]
    gif = movie_from_scene(scene_file, tmp_path / "m.gif", trust={"trust_factory": True}, allow_outside=True)
    assert "m.gif" in capsys.readouterr().err  # the progress bar
    frames = iio.imread(gif, index=None)
    assert len(frames) >= 10  # 3.5 s at 4 fps = 15 frames; the GIF writer merges repeated ones
    assert all(f.std() > 3 for f in frames)  # none blank
    diffs = [np.abs(frames[i].astype(int) - frames[i + 1]).mean() for i in range(len(frames) - 1)]
    assert sum(d > 0.2 for d in diffs) >= len(diffs) // 2  # it moves along the path
    mp4 = movie_from_scene(
        scene_file, tmp_path / "m.mp4", width=176, height=144, fps=2, trust={"trust_factory": True}, allow_outside=True
    )
    assert mp4.stat().st_size > 1000
    meta = iio.immeta(mp4, plugin="pyav") if _has_pyav() else None
    assert meta is None or meta.get("fps") == 2


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def test_scene_file_errors_are_clear(tmp_path):
    from volviz.scene import SceneError, load_scene

    with pytest.raises(SceneError, match="unknown key"):
        load_scene(text='[store]\nmodel = "digits"\n[view]\nwidht = 3\n[[keyframes]]\nview = "overview"\n')
    with pytest.raises(SceneError, match="needs a layer"):
        load_scene(text='[store]\nmodel = "digits"\n[[keyframes]]\nview = "layer"\n')
    with pytest.raises(SceneError, match="at least one"):
        load_scene(text='[store]\nmodel = "digits"\n')
    with pytest.raises(SceneError, match="no scene file"):
        load_scene(tmp_path / "nope.toml")


def test_shipped_scenes_parse():
    from pathlib import Path

    from volviz.scene import load_scene

    scenes = sorted((Path(__file__).resolve().parents[1] / "scenes").glob("*.toml"))
    assert len(scenes) >= 2
    for p in scenes:
        sc = load_scene(p)
        assert sc.model in ("digits", "faces") and sc.keyframes


def test_graph_command(rgb_store, tmp_path, can_render, capsys):
    from volviz.cli import main

    out = tmp_path / "g.png"
    assert (
        main(
            [
                "graph",
                "--trust-factory",
                str(rgb_store),
                "--out",
                str(out),
                "--k",
                "2",
                "--width",
                "320",
                "--height",
                "240",
                "--export",
                str(tmp_path / "g.graphml"),
            ]
        )
        == 0
    )
    img = iio.imread(out)
    assert img.shape[:2] == (240, 320) and img.std() > 5
    H = nx.read_graphml(tmp_path / "g.graphml")
    assert H.number_of_nodes() == 3 + 4 + 4 + 6 + 8 + 3
    assert (
        main(
            [
                "graph",
                "--trust-factory",
                str(rgb_store),
                "--out",
                str(tmp_path / "z.png"),
                "--layer",
                "conv9",
                "--width",
                "64",
                "--height",
                "48",
            ]
        )
        == 2
    )
    assert "no layer 'conv9'" in capsys.readouterr().err
