"""The whole model as a networkx graph of units, built from its real dataflow.

Nodes are ``(layer, index)`` tuples: one per input channel (``("input", c)``, labelled R, G, B,
grey or ``in<c>``), one per conv output channel and one per linear neuron. Edges go from a unit
to a unit of a later conv / linear layer and carry ``weight``, the strength of the connection:

* conv -> conv: the norm of the kernel ``W[o, i]`` (over its kH x kW taps),
* conv -> linear: the norm of the linear weights that read channel ``i``, over all spatial
  positions of ``i`` in the flattened tensor (flatten-aware, also after adaptive pooling),
* linear -> linear: ``|W[o, i]|``,

after ReLU thresholding ([PreferredInputs2016]): with ``mode="relu"`` (default) only the excitatory, positive
weights count, ``||max(W, 0)||``, so a unit that prefers pure red has its strongest edge to the
R channel even when it inhibits G and B just as strongly; ``mode="abs"`` uses ``||W||``.

Which unit feeds which is traced, not guessed from module order
(:mod:`volviz.analysis.dataflow_trace`, with the channel bookkeeping of
:mod:`volviz.analysis.channel_map`); this module keeps the strongest edges and builds the graph.
To keep large models legible, each node keeps its ``k`` strongest incoming edges and/or those
whose weight is at least ``threshold`` times the strongest edge into its layer. A VGG16-sized
model (13k units) with ``k = 8`` builds in seconds (see ``docs/graph.md``).

This module imports torch (it reads the model) but no VTK; the views draw the graph.
"""

from __future__ import annotations

import time

import networkx as nx
import numpy as np
from torch import nn

from volviz.analysis.channel_map import INPUT, UnitLayer
from volviz.analysis.dataflow_trace import trace_dataflow
from volviz.analysis.unit_responses import unit_responses  # noqa: F401  (old path: volviz/app/graph_tab.py)
from volviz.errors import GraphBuildError  # noqa: F401  (re-exported: the graph's error)

__all__ = [
    "GraphBuildError",
    "build_network_graph",
    "graph_for_store",
    "input_channel_names",
]


def input_channel_names(c: int) -> list[str]:
    """``["grey"]``, ``["R", "G", "B"]`` or ``["in0", "in1", ...]``."""
    if c == 1:
        return ["grey"]
    if c == 3:
        return ["R", "G", "B"]
    return [f"in{i}" for i in range(c)]


def _top_edges(layer: UnitLayer, k: int | None, threshold: float):
    """(src ids, dst ids, weights) of the kept edges into ``layer``."""
    s = layer.strength
    sources = layer.in_sources
    if s is None or not sources or s.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    flat = [u for src in sources for u in src]
    if not flat:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    single = all(len(src) == 1 for src in sources)
    if single and len(set(flat)) == len(flat):
        uid = np.asarray(flat, np.int64)
        strength = s
    else:  # a channel fed by several units (residual sums) or a unit feeding several channels
        uid = np.unique(np.asarray(flat, np.int64))
        col = {u: j for j, u in enumerate(uid)}
        m = np.zeros((len(sources), len(uid)), np.float32)
        for c, src in enumerate(sources):
            for u in src:
                m[c, col[u]] = 1.0
        strength = np.sqrt((s.astype(np.float32) ** 2) @ m)
    top = float(strength.max()) if strength.size else 0.0
    if not top > 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    n_cols = strength.shape[1]
    if k is not None and k < n_cols:
        idx = np.argpartition(-strength, k - 1, axis=1)[:, :k]
    else:
        idx = np.broadcast_to(np.arange(n_cols), strength.shape)
    w = np.take_along_axis(strength, idx, axis=1)
    keep = (w > 0) & (w >= threshold * top)
    rows, cols = np.nonzero(keep)
    return uid[idx[rows, cols]], layer.first_id + rows.astype(np.int64), w[rows, cols].astype(np.float32)


def _levels(layers: list[UnitLayer]) -> dict[str, int]:
    """Longest path from the input, per layer (parallel branches share a level)."""
    level: dict[str, int] = {}
    for layer in layers:
        level[layer.name] = 1 + max((level[n] for n in layer.feeds_from if n in level), default=-1)
    return level


def build_network_graph(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    k: int | None = 8,
    threshold: float = 0.0,
    mode: str = "relu",
    tracer: str = "auto",
    input_names: list[str] | None = None,
) -> nx.DiGraph:
    """The unit graph of ``model`` for inputs of ``input_shape = (C, H, W)``.

    Parameters
    ----------
    k : keep the ``k`` strongest incoming edges of every unit (``None``: all).
    threshold : also drop edges weaker than ``threshold`` times the strongest edge into the
        same layer (``0``: keep all that ``k`` keeps). Zero-weight edges are always dropped.
    mode : ``"relu"`` (positive weights only, [PreferredInputs2016]'s ReLU thresholding) or ``"abs"``.
    tracer : ``"auto"`` (fx, then the dispatch tracer), ``"fx"`` or ``"dispatch"``.
    input_names : labels of the input channels (default R, G, B / grey / in<c>).

    Returns
    -------
    networkx.DiGraph
        Nodes ``(layer, index)`` with ``layer``, ``index``, ``kind`` (input/conv/linear),
        ``order`` (layer's position in the forward pass) and ``label``; edges with ``weight``.
        ``G.graph`` holds ``layers`` (a list of dicts: name, kind, module_type, n_units,
        order, level, shape, feeds_from, max_weight), ``k``, ``threshold``, ``mode``,
        ``tracer``, ``input_shape`` and ``seconds``.

    Examples
    --------
    >>> G = build_network_graph(torchvision.models.vgg16(), (3, 224, 224), k=8)  # doctest: +SKIP
    >>> max(G.in_edges(("features.0", 5), data="weight"), key=lambda e: e[2])     # doctest: +SKIP
    """
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1 or None, got {k}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a fraction of the strongest edge per layer, in [0, 1]; got {threshold}")
    t0 = time.perf_counter()
    flow = trace_dataflow(model, tuple(input_shape), tracer=tracer, mode=mode)
    levels = _levels(flow.layers)
    names = input_names or input_channel_names(flow.layers[0].n_units)
    G = nx.DiGraph()
    ids = []
    for layer in flow.layers:
        for j in range(layer.n_units):
            ids.append((layer.name, j))
        labels = names if layer.kind == INPUT else None
        G.add_nodes_from(
            (
                (layer.name, j),
                {
                    "layer": layer.name,
                    "index": j,
                    "kind": layer.kind,
                    "order": layer.order,
                    "label": labels[j] if labels else f"{layer.name}[{j}]",
                },
            )
            for j in range(layer.n_units)
        )
    layer_meta = []
    n_candidates = 0
    for layer in flow.layers:
        src, dst, w = _top_edges(layer, k, threshold)
        if layer.strength is not None:
            n_candidates += layer.strength.size
        G.add_edges_from(
            (ids[a], ids[b], {"weight": float(c)}) for a, b, c in zip(src.tolist(), dst.tolist(), w.tolist())
        )
        layer_meta.append(
            {
                "name": layer.name,
                "kind": layer.kind,
                "module_type": layer.module_type,
                "n_units": layer.n_units,
                "order": layer.order,
                "level": levels[layer.name],
                "shape": list(layer.out_shape),
                "feeds_from": sorted(layer.feeds_from),
                "max_weight": float(w.max()) if w.size else 0.0,
                "n_edges": int(w.size),
            }
        )
        layer.strength = None  # free the dense matrices
    G.graph.update(
        layers=layer_meta,
        k=k,
        threshold=threshold,
        mode=mode,
        tracer=flow.tracer,
        input_shape=list(input_shape),
        input_names=list(names),
        seconds=round(time.perf_counter() - t0, 3),
        n_candidate_edges=int(n_candidates),
    )
    return G


def graph_for_store(
    store, *, k: int | None = 8, threshold: float = 0.0, mode: str = "relu", tracer: str = "auto", model=None, **trust
) -> nx.DiGraph:
    """The unit graph of the model a store was captured from (its spec and weights, its input
    size); ``trust`` holds the command's --trust-* flags, ``model`` an already loaded one."""
    module = model if model is not None else store.model(**trust).module
    return build_network_graph(module, store.input_shape, k=k, threshold=threshold, mode=mode, tracer=tracer)
