"""The network graph at VGG16 scale (random weights, ~13.4k units), measured in one run.

  build    trace the dataflow (torch.fx + shape propagation at 224 x 224), weight norms, top-k
           incoming edges per unit, the networkx graph; wall time and peak memory (RSS) growth
  scene    layout + pyvista scene with thumbnails: one atlas per layer, one mesh for all node
           squares, one line mesh for all edges
  fps      frames per second while the camera orbits (render + read back, 1024 x 768), for the
           atlas scene and for the same nodes drawn as one actor per node (a textured quad each,
           the naive way), same edges; the ratio is what the atlas buys

  lod      (--lod) the level of detail for big models: one tile per layer (graph_overview.py):
           build, update, frames per second with the labels placed again each frame

    python benchmarks/bench_graph.py                        # VGG16, k = 8, 1024 x 768
    python benchmarks/bench_graph.py --k 4 --frames 10 --skip-per-node
    python benchmarks/bench_graph.py --model mobilenet_v2 --lod --skip-units --out benchmarks/results/graph-lod-cpu.json
Writes benchmarks/results/graph-cpu.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import time

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results"


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def fps(scene, poses, frames: int) -> float:
    scene.set_pose(poses[0])
    scene.screenshot()  # warm-up: first render uploads textures
    t0 = time.perf_counter()
    for i in range(frames):
        scene.set_pose(poses[i % len(poses)])
        scene.screenshot()
    return frames / (time.perf_counter() - t0)


def per_node_actors(scene, thumbs: dict[str, np.ndarray]) -> int:
    """Replace the scene's node mesh and atlases by one textured quad actor per unit (the naive
    way); the edges actor stays. Returns the number of actors added."""
    import pyvista as pv
    from vtkmodules.vtkFiltersSources import vtkPlaneSource
    from vtkmodules.vtkRenderingCore import vtkActor, vtkPolyDataMapper, vtkTexture

    from volviz.views.graph_layout import U_AXIS, V_AXIS

    ren = scene.plotter.renderer
    ren.RemoveActor(scene.nodes_actor)
    for a in scene.thumb_actors.values():
        ren.RemoveActor(a)
    n = 0
    for name, plane in scene.layout.planes.items():
        tiles = thumbs.get(name)
        h = plane.cell * scene.style.thumb_fill / 2
        for j, c in enumerate(plane.positions):
            src = vtkPlaneSource()
            src.SetOrigin(*(c - U_AXIS * h - V_AXIS * h))
            src.SetPoint1(*(c + U_AXIS * h - V_AXIS * h))
            src.SetPoint2(*(c - U_AXIS * h + V_AXIS * h))
            src.Update()
            mapper = vtkPolyDataMapper()
            mapper.SetInputData(src.GetOutput())
            actor = vtkActor()
            actor.SetMapper(mapper)
            actor.GetProperty().LightingOff()
            if tiles is not None:
                tex = vtkTexture()
                tex.SetInputData(pv.Texture(tiles[j]).to_image())
                actor.SetTexture(tex)
            ren.AddActor(actor)
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vgg16")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--edges-per-node", type=int, default=None, help="draw only this many edges per unit")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--tile", type=int, default=32, help="thumbnail pixels")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-per-node", action="store_true")
    ap.add_argument("--lod", action="store_true", help="also measure the one-tile-per-layer overview")
    ap.add_argument("--skip-units", action="store_true", help="skip the unit scene (with --lod)")
    ap.add_argument("--out", default=str(RESULTS / "graph-cpu.json"))
    ap.add_argument(
        "--img-dir",
        default=str(RESULTS.parents[1] / "docs" / "img" / "graph"),
        help="where the overview and layer screenshots go",
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from volviz.analysis.network_graph import build_network_graph
    from volviz.views.camera_path import layer_pose, orbit_poses, overview_pose
    from volviz.views.graph_layout import layered_layout
    from volviz.views.graph_scene import GraphScene, GraphStyle

    torch.manual_seed(0)
    model = torchvision.models.get_model(a.model, weights=None).eval()
    rss0, peak0 = rss_now_mb(), rss_peak_mb()
    t0 = time.perf_counter()
    G = build_network_graph(model, (3, a.size, a.size), k=a.k)
    build_s = time.perf_counter() - t0
    row = {
        "model": a.model,
        "input": [3, a.size, a.size],
        "k": a.k,
        "units": G.number_of_nodes() - 3,
        "nodes": G.number_of_nodes(),
        "edges": G.number_of_edges(),
        "layers": len(G.graph["layers"]),
        "candidate_edges": G.graph["n_candidate_edges"],
        "tracer": G.graph["tracer"],
        "build_s": round(build_s, 3),
        "build_rss_growth_mb": round(rss_now_mb() - rss0, 1),
        "build_peak_rss_growth_mb": round(max(0.0, rss_peak_mb() - max(peak0, rss0)), 1),
        "model_params_mb": round(sum(p.numel() for p in model.parameters()) * 4 / 2**20, 1),
    }
    del model

    rng = np.random.default_rng(0)
    thumbs = {
        d["name"]: rng.integers(0, 255, (d["n_units"], a.tile, a.tile, 3), dtype=np.uint8)
        for d in G.graph["layers"]
        if d["kind"] != "input"
    }
    vals = {d["name"]: np.maximum(rng.normal(size=d["n_units"]), 0) for d in G.graph["layers"][1:]}
    if a.lod:
        row.update(lod(G, thumbs, vals, a))
    if a.skip_units:
        return finish(row, a)
    t0 = time.perf_counter()
    layout = layered_layout(G.graph["layers"])
    style = GraphStyle(edges_per_node=a.edges_per_node, thumbnail_px=a.tile)
    scene = GraphScene(
        G, layout, thumbs, input_image=rng.random((3, 64, 64)), style=style, window_size=(a.width, a.height)
    )
    scene.update_activations(vals)
    row["scene_build_s"] = round(time.perf_counter() - t0, 3)
    row["scene_actors"] = scene.n_actors
    row["drawn_edges"] = int(len(scene.edge_src))
    t0 = time.perf_counter()
    for _ in range(10):
        scene.update_activations(vals)
    row["update_activations_ms"] = round((time.perf_counter() - t0) * 100, 2)

    over = overview_pose(layout, aspect=a.width / a.height)
    poses = orbit_poses(over, degrees=30, n=a.frames)
    row["fps_atlas_overview"] = round(fps(scene, poses, a.frames), 2)
    zoom = layer_pose(layout, G.graph["layers"][5]["name"], aspect=a.width / a.height)
    row["fps_atlas_layer"] = round(fps(scene, orbit_poses(zoom, degrees=20, n=a.frames), a.frames), 2)
    img = scene.screenshot(pathlib.Path(a.img_dir) / f"{a.model}_layer.png")
    scene.set_pose(over)
    scene.screenshot(pathlib.Path(a.img_dir) / f"{a.model}_overview.png")
    assert img.std() > 5

    if not a.skip_per_node:
        t0 = time.perf_counter()
        row["per_node_actors"] = per_node_actors(scene, thumbs)
        row["per_node_build_s"] = round(time.perf_counter() - t0, 3)
        frames = max(3, a.frames // 4)
        row["fps_per_node_overview"] = round(fps(scene, poses, frames), 3)
        row["fps_ratio_atlas_over_per_node"] = round(row["fps_atlas_overview"] / row["fps_per_node_overview"], 1)
    scene.close()
    finish(row, a)


def lod(G, thumbs, vals, a) -> dict:
    """The one-tile-per-layer overview: build, update, frames (labels placed again each frame)."""
    from volviz.views.camera_path import orbit_poses
    from volviz.views.graph_overview import LayerOverviewScene

    t0 = time.perf_counter()
    sc = LayerOverviewScene(
        G,
        thumbs,
        input_image=np.random.default_rng(1).random((3, 64, 64)),
        window_size=(a.width, a.height),
        title=f"{a.model}: {len(G.graph['layers'])} layers",
    )
    sc.update_activations(vals)
    out = {
        "lod_build_s": round(time.perf_counter() - t0, 3),
        "lod_layers": len(sc.names),
        "lod_grid": [sc.tiles.rows, sc.tiles.cols],
        "lod_layer_edges": len(sc.edges),
    }
    t0 = time.perf_counter()
    for _ in range(5):
        sc.update_activations(vals)
    out["lod_update_activations_ms"] = round((time.perf_counter() - t0) * 200, 2)
    base = sc.view_overview()
    poses = orbit_poses(base, degrees=8, n=a.frames)
    sc.screenshot()
    t0 = time.perf_counter()
    for p in poses:
        sc.set_pose(p)  # places every label again
        sc.screenshot()
    out["lod_fps"] = round(len(poses) / (time.perf_counter() - t0), 2)
    sc.set_pose(base)
    out["lod_labels_shown"] = len(sc.shown_labels)
    sc.close()
    return out


def finish(row: dict, a) -> None:
    row["peak_rss_mb"] = round(rss_peak_mb(), 1)

    machine = {
        "device": "cpu (llvmpipe, EGL)",
        "platform": platform.platform(),
        "threads": a.threads,
        "torch": torch.__version__,
        "window": [a.width, a.height],
        "cores": os.cpu_count(),
    }
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "rows": [row]}, indent=1))
    print("| " + " | ".join(row) + " |")
    print("|" + "---|" * len(row))
    print("| " + " | ".join(str(v) for v in row.values()) + " |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
