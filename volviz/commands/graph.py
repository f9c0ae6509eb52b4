"""``volviz graph``: the model of a store as a 3-D node-edge graph, rendered to a PNG."""

from __future__ import annotations

import argparse

from volviz.errors import UserError

EPILOG = """\
examples:
  volviz graph stores/digits --out graph.png                   # overview, image 0's responses
  volviz graph stores/faces --out g.png --image 12 --k 4       # 4 strongest incoming edges per unit
  volviz graph stores/faces --out conv2.png --layer conv2      # zoomed into one layer
  volviz graph stores/faces --out u.png --layer fc3 --unit 0   # one unit and its neighbours
  volviz graph stores/digits --out g.png --export graph.graphml   # also save the networkx graph
  volviz graph stores/mnv2 --out overview.png                  # a big model: one tile per layer
  volviz graph stores/mnv2 --out units.png --lod units         # every unit even so

Level of detail (--lod): auto draws one tile per layer above 3,000 units (MobileNetV2: 54 tiles
instead of 18,059 units), every unit below; --layer always opens the layer's units.

Edges: weight strength after ReLU thresholding (positive weights only; --mode abs for |W|), hot =
strong, cold = weak, relative to the strongest edge into the same layer. Nodes: the unit's
response to the image (ReLU, spatial mean for conv channels); grey = the unit does not fire.
Thumbnails: preferred inputs from `volviz optimize STORE` (neutral slate tiles for layers without them).
"""


def register(sub) -> None:
    p = sub.add_parser(
        "graph",
        help="the network as a 3-D node-edge graph with thumbnails, as a PNG",
        description="Build the unit graph of the store's model from its dataflow (torch.fx) "
        "and render it off screen: one plane of units per layer, edges from the weights, "
        "nodes coloured by their response to one image.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("store", help="a store made by `volviz capture`")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--image", type=int, default=0, help="image whose responses colour the nodes (default 0)")
    p.add_argument("--k", type=int, default=8, help="strongest incoming edges kept per unit (default 8; 0: all)")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.0,
        help="also drop edges below this fraction of the strongest edge into the layer (0..1)",
    )
    p.add_argument(
        "--mode",
        choices=["relu", "abs"],
        default="relu",
        help="edge strength from positive weights only (relu, [PreferredInputs2016]) or |W| (abs)",
    )
    p.add_argument("--edges-per-node", type=int, help="draw only this many of each unit's edges")
    p.add_argument("--layer", help="zoom into this layer")
    p.add_argument("--unit", type=int, help="with --layer: zoom onto this unit")
    p.add_argument("--azimuth", type=float, help="camera azimuth in degrees (0: from the input side)")
    p.add_argument("--elevation", type=float, help="camera elevation in degrees")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=768)
    p.add_argument("--no-thumbnails", action="store_true", help="plain coloured squares, no preferred inputs")
    p.add_argument(
        "--lod",
        choices=["auto", "layers", "units"],
        default="auto",
        help="overview level of detail: one tile per layer, or every unit (default auto: layers above 3,000 units)",
    )
    p.add_argument("--export", help="also write the graph: .graphml or .json (node-link)")
    from volviz.commands.common import add_trust_args

    add_trust_args(p)
    p.set_defaults(func=cmd_graph)


def export_graph(G, path: str) -> None:
    """Write ``G`` as GraphML or node-link JSON (node ids become ``layer:index``)."""
    import json
    import pathlib

    import networkx as nx

    path = pathlib.Path(path)
    H = nx.relabel_nodes(G, {n: f"{n[0]}:{n[1]}" for n in G.nodes})
    H.graph = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in G.graph.items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".graphml":
        nx.write_graphml(H, path)
    elif path.suffix == ".json":
        path.write_text(json.dumps(nx.node_link_data(H, edges="edges")))
    else:
        raise UserError(f"--export: unknown format {path.suffix!r}; use .graphml or .json")


def cmd_graph(a) -> int:
    from volviz.analysis.network_graph import graph_for_store
    from volviz.analysis.unit_responses import unit_responses
    from volviz.cli import setup_torch_threads
    from volviz.commands.common import trust
    from volviz.scene import load_thumbnails
    from volviz.store.store import Store
    from volviz.views.graph_lod import GraphLODScene
    from volviz.views.graph_scene import GraphStyle

    setup_torch_threads()
    if a.unit is not None and not a.layer:
        raise UserError("--unit needs --layer")
    if not 0.0 <= a.threshold <= 1.0:
        raise UserError(f"--threshold is a fraction in [0, 1], got {a.threshold}")
    store = Store.open(a.store)
    if not 0 <= a.image < store.n_images or not store.done[a.image]:
        raise UserError(f"image {a.image} is not in the store ({int(store.done.sum())} captured images)")
    G = graph_for_store(store, k=a.k or None, threshold=a.threshold, mode=a.mode, **trust(a))
    if a.export:
        export_graph(G, a.export)
    names = [d["name"] for d in G.graph["layers"]]
    if a.layer and a.layer not in names:
        raise UserError(f"no layer {a.layer!r} in the graph; layers: {', '.join(names)}")
    units = [d["name"] for d in G.graph["layers"] if d["kind"] != "input"]
    thumbs = {} if a.no_thumbnails else load_thumbnails(store, units, progress=False)
    style = GraphStyle(edges_per_node=a.edges_per_node, missing_thumbnail="none" if a.no_thumbnails else "grey")
    n_units = sum(d["n_units"] for d in G.graph["layers"] if d["kind"] != "input")
    title = f"{store.plan.model.spec}: {len(units)} layers, {n_units:,} units, {G.number_of_edges():,} edges (k={a.k})"
    scene = GraphLODScene(
        G,
        None,
        thumbs,
        input_image=store.read_input(a.image),
        style=style,
        title=title,
        window_size=(a.width, a.height),
        lod="units" if a.layer else a.lod,
    )
    try:
        scene.update_activations(unit_responses(store, a.image, units))
        names = store.class_names or []
        pred = int(store.column("pred")[a.image])
        scene.set_label(
            f"image {a.image} [{store.images[a.image].id}]\npredicted {names[pred] if pred < len(names) else pred}"
        )
        angles = {k: v for k, v in (("azimuth", a.azimuth), ("elevation", a.elevation)) if v is not None}
        if a.layer and a.unit is not None:
            scene.view_unit(a.layer, a.unit, **angles)
        elif a.layer:
            scene.view_layer(a.layer, **angles)
        else:
            scene.view_overview(**angles)
        scene.screenshot(a.out)
    finally:
        scene.close()
    lod = "one tile per layer" if scene.mode == "layers" else "units"
    print(
        f"wrote {a.out}  ({G.number_of_nodes()} nodes, {G.number_of_edges()} edges, {lod}, "
        f"{len(thumbs)} layers with thumbnails, traced by {G.graph['tracer']} in {G.graph['seconds']:.2f} s)"
    )
    return 0
