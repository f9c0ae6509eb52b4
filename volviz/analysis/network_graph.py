"""The whole model as a networkx graph of units, built from its real dataflow.

Nodes are ``(layer, index)`` tuples: one per input channel (``("input", c)``, labelled R, G, B,
grey or ``in<c>``), one per conv output channel and one per linear neuron. Edges go from a unit
to a unit of a later conv / linear layer and carry ``weight``, the strength of the connection:

* conv -> conv: the norm of the kernel ``W[o, i]`` (over its kH x kW taps),
* conv -> linear: the norm of the linear weights that read channel ``i``, over all spatial
  positions of ``i`` in the flattened tensor (flatten-aware, also after adaptive pooling),
* linear -> linear: ``|W[o, i]|``,

after ReLU thresholding (seed 000): with ``mode="relu"`` (default) only the excitatory, positive
weights count, ``||max(W, 0)||``, so a unit that prefers pure red has its strongest edge to the
R channel even when it inhibits G and B just as strongly; ``mode="abs"`` uses ``||W||``.

The dataflow is traced, not guessed from module order: ``torch.fx`` (symbolic trace plus shape
propagation) first, and when fx cannot trace the model (data-dependent control flow...), a
function-level hook that records every torch call of one real forward pass
(``TorchFunctionMode``, the "dispatch" tracer). Between weighted layers, channels are mapped
through the rest: element-wise ops, pooling, batch norm and dropout pass channels through, a
residual ``add`` (or ``mul``) merges them (channel ``c`` of a sum reads from the units that feed
channel ``c`` of every term), ``cat`` along channels concatenates them, and ``flatten`` / ``view``
keep track of which flat features belong to which channel. Ops that scramble channels
(permute, channel shuffle, matmul...) raise :class:`GraphBuildError` naming the op.

To keep large models legible, each node keeps its ``k`` strongest incoming edges and/or those
whose weight is at least ``threshold`` times the strongest edge into its layer. A VGG16-sized
model (13k units) with ``k = 8`` builds in seconds (see ``docs/graph.md``).

This module imports torch (it reads the model) but no VTK; the views draw the graph.
"""
from __future__ import annotations

from volviz.errors import GraphBuildError  # noqa: F401  (re-exported)
import logging
import math
import time
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import torch
from torch import nn

log = logging.getLogger("volviz.graph")

INPUT = "input"
MODES = ("relu", "abs")
TRACERS = ("auto", "fx", "dispatch")

__all__ = [
    "INPUT",
    "GraphBuildError",
    "UnitLayer",
    "Dataflow",
    "trace_dataflow",
    "build_network_graph",
    "graph_for_store",
    "input_channel_names",
    "unit_responses",
    "series_responses",
]




# ------------------------------------------------------------------------------ channel maps
@dataclass
class _Value:
    """What a traced tensor holds, per sample: ``len(src)`` channels, channel ``c`` covering
    the flat (C-order, batch dim excluded) elements ``bounds[c]:bounds[c+1]`` and fed by the
    units ``src[c]`` (global unit ids)."""

    src: list[tuple[int, ...]]
    bounds: np.ndarray

    @property
    def numel(self) -> int:
        return int(self.bounds[-1])

    @classmethod
    def channels(cls, src: list[tuple[int, ...]], shape: tuple[int, ...]) -> "_Value":
        per = math.prod(shape[2:]) if len(shape) > 2 else 1
        return cls(list(src), np.arange(len(src) + 1, dtype=np.int64) * per)

    def is_channel_form(self, shape: tuple[int, ...]) -> bool:
        """Does dim 1 of ``shape`` index exactly these channels (equal-sized, in order)?"""
        if len(shape) < 2 or shape[1] != len(self.src):
            return False
        per = math.prod(shape[2:]) if len(shape) > 2 else 1
        return self.numel == per * len(self.src) and bool(
            np.array_equal(self.bounds, np.arange(len(self.src) + 1) * per))


def _union(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    if a == b or not b:
        return a
    if not a:
        return b
    return tuple(sorted(set(a) | set(b)))


def _merge(values: list[_Value]) -> _Value:
    """Union of several channel maps over the same flat elements (a residual sum)."""
    first = values[0]
    if all(np.array_equal(v.bounds, first.bounds) for v in values[1:]):
        src = list(first.src)
        for v in values[1:]:
            src = [_union(a, b) for a, b in zip(src, v.src)]
        return _Value(src, first.bounds.copy())
    bounds = np.unique(np.concatenate([v.bounds for v in values]))
    src = []
    for start in bounds[:-1]:
        s: tuple[int, ...] = ()
        for v in values:
            s = _union(s, v.src[int(np.searchsorted(v.bounds, start, side="right")) - 1])
        src.append(s)
    return _Value(src, bounds)


def _regroup(v: _Value, n: int, what: str) -> list[tuple[int, ...]]:
    """Sources of ``n`` equal consecutive groups of the flat elements (a layer's input
    channels)."""
    if n <= 0 or v.numel % n:
        raise GraphBuildError(f"{what}: cannot split {v.numel} features into {n} input channels")
    size = v.numel // n
    if len(v.src) == n and np.array_equal(v.bounds, np.arange(n + 1) * size):
        return list(v.src)
    out = []
    for g in range(n):
        lo = int(np.searchsorted(v.bounds, g * size, side="right")) - 1
        hi = int(np.searchsorted(v.bounds, (g + 1) * size, side="left"))
        s: tuple[int, ...] = ()
        for c in range(lo, hi):
            s = _union(s, v.src[c])
        out.append(s)
    return out


# ------------------------------------------------------------------------------ op classes
_CONV = {"conv1d", "conv2d", "conv3d"}
_CONV_T = {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
_LINEAR = {"linear"}
_CAT = {"cat", "concat", "concatenate"}
_CONST = {"zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
          "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor"}
# ops that move, mix or select channels in ways a per-channel map cannot follow
_UNSUPPORTED = {"permute", "transpose", "t", "movedim", "moveaxis", "swapaxes", "swapdims",
                "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle",
                "matmul", "bmm", "mm", "einsum", "baddbmm", "roll", "flip", "gather",
                "index_select", "split", "chunk", "unbind", "narrow", "select", "stack",
                "tensor_split", "split_with_sizes", "take", "masked_select", "bilinear",
                "multi_head_attention_forward", "scaled_dot_product_attention"}
# inert calls whose tensor result carries no data of the input (or is not data)
_SKIP = {"size", "dim", "numel", "shape", "get", "__get__", "device", "dtype"}


def _norm_name(name: str) -> str:
    n = name.strip("_")
    if n.startswith("i") and n[1:] in ("add", "sub", "mul", "truediv", "div", "and", "or"):
        n = n[1:]  # __iadd__ -> add
    if n.startswith("r") and n[1:] in ("add", "sub", "mul", "truediv", "div"):
        n = n[1:]
    if n.endswith("_") and n[:-1]:
        n = n[:-1]  # relu_ -> relu
    return n


def input_channel_names(c: int) -> list[str]:
    """``["grey"]``, ``["R", "G", "B"]`` or ``["in0", "in1", ...]``."""
    if c == 1:
        return ["grey"]
    if c == 3:
        return ["R", "G", "B"]
    return [f"in{i}" for i in range(c)]


# ------------------------------------------------------------------------------ tracker
@dataclass
class UnitLayer:
    """One layer of units in the traced dataflow.

    ``in_sources[c]`` are the ids of the units feeding input channel ``c`` of this layer (its
    weight's second axis, or the flat-feature channels of a linear layer's input); ``strength``
    is ``(n_units, len(in_sources))``, the thresholded weight norms.
    """

    name: str
    kind: str  # input | conv | linear
    module_type: str
    n_units: int
    first_id: int
    order: int
    out_shape: tuple[int, ...]  # per sample
    in_sources: list[tuple[int, ...]] = field(default_factory=list)
    strength: np.ndarray | None = None
    feeds_from: set[str] = field(default_factory=set)  # names of layers with units in in_sources


@dataclass
class Dataflow:
    layers: list[UnitLayer]
    tracer: str
    unit_layer: np.ndarray  # global unit id -> index into layers

    def layer_of(self, uid: int) -> UnitLayer:
        return self.layers[int(self.unit_layer[uid])]


class _Tracker:
    """Follows channel maps through the ops of one forward pass (either tracer feeds it)."""

    def __init__(self, mode: str):
        if mode not in MODES:
            raise ValueError(f"unknown edge mode {mode!r}; valid: {', '.join(MODES)}")
        self.mode = mode
        self.values: dict[object, _Value] = {}
        self.layers: list[UnitLayer] = []
        self.n_units = 0
        self._names: dict[str, int] = {}

    # ---- layers
    def _new_layer(self, name: str, kind: str, module_type: str, n: int, out_shape) -> UnitLayer:
        count = self._names.get(name, 0)
        self._names[name] = count + 1
        if count:  # a module called twice (shared weights): a second layer of units
            name = f"{name}#{count + 1}"
        layer = UnitLayer(name, kind, module_type, int(n), self.n_units, len(self.layers),
                          tuple(int(s) for s in out_shape))
        self.layers.append(layer)
        self.n_units += int(n)
        return layer

    def _layer_value(self, layer: UnitLayer, shape) -> _Value:
        src = [(layer.first_id + j,) for j in range(layer.n_units)]
        if len(shape) >= 2 and shape[1] == layer.n_units:
            return _Value.channels(src, shape)
        # linear on (B, ..., D): a feature per position; the units repeat along leading dims
        reps = math.prod(shape[1:]) // layer.n_units
        bounds = np.arange(layer.n_units * reps + 1, dtype=np.int64)
        return _Value(src * reps, bounds)

    def has(self, key) -> bool:
        return key in self.values

    def input(self, key, shape) -> None:
        if len(shape) < 2:
            raise GraphBuildError(f"the model input must be (N, C, ...), got shape {tuple(shape)}")
        layer = self._new_layer(INPUT, INPUT, "input", shape[1], shape[1:])
        self.values[key] = self._layer_value(layer, shape)

    def weighted(self, kind: str, name: str, module_type: str, key_in, in_shape, key_out,
                 out_shape, weight: torch.Tensor, transposed: bool = False) -> None:
        w = weight.detach().to("cpu", torch.float32)
        n_out = int(out_shape[1]) if kind != "linear" else int(w.shape[0])
        layer = self._new_layer(name, kind, module_type, n_out, out_shape[1:])
        v = self.values.get(key_in)
        if kind == "linear":
            self._linear_strength(layer, w, v, in_shape)
        else:
            self._conv_strength(layer, w, v, in_shape, transposed)
        layer.feeds_from = {self._layer_name_of(u) for s in layer.in_sources for u in s}
        self.values[key_out] = self._layer_value(layer, out_shape)

    def _layer_name_of(self, uid: int) -> str:
        for layer in reversed(self.layers):
            if layer.first_id <= uid < layer.first_id + layer.n_units:
                return layer.name
        raise KeyError(uid)

    def _thresh(self, w: torch.Tensor) -> torch.Tensor:
        return w.clamp_min(0) if self.mode == "relu" else w.abs()

    def _conv_strength(self, layer: UnitLayer, w: torch.Tensor, v: _Value | None, in_shape,
                       transposed: bool) -> None:
        if transposed:  # (C_in, C_out / g, *k)
            c_in = int(w.shape[0])
            groups = layer.n_units // int(w.shape[1])
            local = self._thresh(w).pow(2).flatten(2).sum(2).sqrt()  # (C_in, C_out/g)
            per_in, per_out = c_in // groups, int(w.shape[1])
            s = torch.zeros(layer.n_units, c_in)
            for g in range(groups):
                s[g * per_out:(g + 1) * per_out, g * per_in:(g + 1) * per_in] = \
                    local[g * per_in:(g + 1) * per_in].T
        else:  # (C_out, C_in / g, *k)
            c_in = int(in_shape[1])
            per_in = int(w.shape[1])
            groups = max(1, c_in // per_in)
            local = self._thresh(w).pow(2).flatten(2).sum(2).sqrt()  # (C_out, C_in/g)
            if groups == 1:
                s = local
            else:
                s = torch.zeros(layer.n_units, c_in)
                per_out = layer.n_units // groups
                for g in range(groups):
                    s[g * per_out:(g + 1) * per_out, g * per_in:(g + 1) * per_in] = \
                        local[g * per_out:(g + 1) * per_out]
        layer.strength = s.numpy().astype(np.float32, copy=False)
        if v is None:
            layer.in_sources = [()] * c_in
        else:
            layer.in_sources = _regroup(v, c_in, layer.name)

    def _linear_strength(self, layer: UnitLayer, w: torch.Tensor, v: _Value | None, in_shape) -> None:
        d = int(w.shape[1])
        if v is None:
            layer.in_sources = [()]
            layer.strength = np.zeros((layer.n_units, 1), np.float32)
            return
        if v.numel != d:
            if len(in_shape) > 2 and v.numel % d == 0:
                raise GraphBuildError(
                    f"{layer.name}: a linear layer applied along the last axis of a "
                    f"{tuple(in_shape)} tensor (per position) is not supported; flatten first")
            raise GraphBuildError(f"{layer.name}: expects {d} features, the traced input has {v.numel}")
        bounds = v.bounds
        keep = np.diff(bounds) > 0
        starts = bounds[:-1][keep]
        layer.in_sources = [s for s, k in zip(v.src, keep) if k]
        out = np.empty((layer.n_units, len(starts)), np.float32)
        rows = max(1, (1 << 24) // max(d, 1))  # ~64 MB of float32 per chunk
        for r in range(0, layer.n_units, rows):
            chunk = self._thresh(w[r:r + rows]).pow(2).numpy()
            out[r:r + rows] = np.sqrt(np.add.reduceat(chunk, starts, axis=1))
        layer.strength = out

    # ---- pass-through ops
    def passthrough(self, name: str, key_in, in_shape, key_out, out_shape) -> None:
        if len(out_shape) < 2:  # a scalar or per-sample statistic (x.mean()): no channels left
            return
        v = self.values[key_in]
        self.values[key_out] = self._map_to(v, in_shape, out_shape, name)

    def _map_to(self, v: _Value, in_shape, out_shape, name: str) -> _Value:
        in_shape, out_shape = tuple(in_shape), tuple(out_shape)
        n_in, n_out = math.prod(in_shape[1:]), math.prod(out_shape[1:])
        if n_in == n_out and v.numel == n_in:
            return v  # element-wise, or a flat-order preserving reshape (flatten, view)
        if v.is_channel_form(in_shape) and len(out_shape) >= 2 and out_shape[1] == len(v.src):
            return _Value.channels(v.src, out_shape)  # pooling, resizing, padding: per channel
        if len(in_shape) >= 2 and in_shape[1] == 1 and len(out_shape) >= 2 and len(v.src) == 1:
            # a single-channel map broadcast over all channels (spatial attention)
            return _Value.channels([v.src[0]] * out_shape[1], out_shape)
        raise GraphBuildError(
            f"cannot follow channels through {name!r}: shape {list(in_shape)} -> {list(out_shape)}")

    def elementwise(self, name: str, keys_in: list, in_shapes: list, key_out, out_shape) -> None:
        if len(out_shape) < 2:
            return
        mapped = [self._map_to(self.values[k], s, out_shape, name) for k, s in zip(keys_in, in_shapes)]
        self.values[key_out] = mapped[0] if len(mapped) == 1 else _merge(mapped)

    def cat(self, name: str, keys_in: list, in_shapes: list, dim: int, key_out, out_shape) -> None:
        nd = len(out_shape)
        dim = dim % nd
        if dim == 0:
            raise GraphBuildError(f"{name!r} along the batch axis is not supported")
        if dim == 1:
            src, bounds, offset = [], [np.zeros(1, np.int64)], 0
            for k, s in zip(keys_in, in_shapes):
                n = math.prod(s[1:])
                v = self.values.get(k) if k is not None else None
                if v is None:
                    v = _Value([()], np.array([0, n], np.int64))
                src.extend(v.src)
                bounds.append(v.bounds[1:] + offset)
                offset += n
            self.values[key_out] = _Value(src, np.concatenate(bounds))
            return
        traced = [(k, s) for k, s in zip(keys_in, in_shapes) if k is not None]
        self.elementwise(name, [k for k, _ in traced], [s for _, s in traced], key_out, out_shape)

    def getitem(self, key_in, in_shape, index, key_out, out_shape) -> None:
        v = self.values[key_in]
        idx = index if isinstance(index, tuple) else (index,)
        if len(idx) < 2 or (isinstance(idx[1], slice) and idx[1] == slice(None)):
            if len(idx) >= 1 and not (isinstance(idx[0], slice) and idx[0] == slice(None)):
                raise GraphBuildError(f"indexing the batch axis ({index!r}) is not supported")
            self.values[key_out] = self._map_to(v, in_shape, out_shape, "getitem")
            return
        if isinstance(idx[1], slice) and v.is_channel_form(in_shape):
            src = v.src[idx[1]]
            self.values[key_out] = _Value.channels(src, out_shape)
            return
        raise GraphBuildError(f"cannot follow channels through indexing {index!r} of {list(in_shape)}")

    def alias(self, key_out, key_in) -> None:
        self.values[key_out] = self.values[key_in]


# ------------------------------------------------------------------------------ fx tracer
def _shape(meta) -> tuple[int, ...] | None:
    shape = getattr(meta, "shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


def _flat_nodes(args) -> list:
    out = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out.extend(_flat_nodes(a))
        elif isinstance(a, dict):
            out.extend(_flat_nodes(list(a.values())))
        else:
            out.append(a)
    return out


def _trace_fx(model: nn.Module, x: torch.Tensor, tracker: _Tracker) -> None:
    from torch.fx import Node, symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

    import contextlib
    import io

    gm = symbolic_trace(model)
    with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints tracebacks
        ShapeProp(gm).propagate(x)
    modules = dict(gm.named_modules())
    placeholders = 0
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        out_shape = _shape(meta)
        if node.op == "placeholder":
            if placeholders == 0:
                tracker.input(node, out_shape)
            elif out_shape is not None:
                raise GraphBuildError(f"models with several tensor inputs are not supported "
                                      f"(second input {node.name!r})")
            placeholders += 1
            continue
        if node.op in ("get_attr", "output"):
            continue
        flat = _flat_nodes(list(node.args) + list(node.kwargs.values()))
        traced = [a for a in flat if isinstance(a, Node) and tracker.has(a)]
        if not traced or out_shape is None:
            continue
        shapes = [_shape(a.meta.get("tensor_meta")) for a in traced]
        if node.op == "call_module":
            mod = modules[node.target]
            _module_op(tracker, str(node.target), mod, traced[0], shapes[0], node, out_shape)
            continue
        if node.op == "call_function":
            name = getattr(node.target, "__name__", str(node.target))
        else:  # call_method
            name = str(node.target)
        op = _norm_name(name)
        if op in _CONV | _CONV_T | _LINEAR:
            wnode = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
            if not (isinstance(wnode, Node) and wnode.op == "get_attr"):
                raise GraphBuildError(f"{node.name}: functional {op} with a computed weight")
            weight = _fetch_attr(gm, str(wnode.target))
            layer = str(wnode.target).rsplit(".", 1)[0] if "." in str(wnode.target) else str(wnode.target)
            kind = "linear" if op in _LINEAR else "conv"
            tracker.weighted(kind, layer, op, traced[0], shapes[0], node, out_shape, weight,
                             transposed=op in _CONV_T)
            continue
        if op == "getitem":
            tracker.getitem(traced[0], shapes[0], node.args[1], node, out_shape)
            continue
        _generic_op(tracker, op, node, node.format_node(), node.args, node.kwargs, traced, shapes,
                    out_shape, lambda a: a if isinstance(a, Node) and tracker.has(a) else None,
                    lambda a: _shape(a.meta.get("tensor_meta")) if isinstance(a, Node) else None)


def _fetch_attr(gm, target: str) -> torch.Tensor:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _module_op(tracker: _Tracker, name: str, mod: nn.Module, key_in, in_shape, key_out, out_shape) -> None:
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        tracker.weighted("conv", name, type(mod).__name__, key_in, in_shape, key_out, out_shape, mod.weight)
    elif isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        tracker.weighted("conv", name, type(mod).__name__, key_in, in_shape, key_out, out_shape,
                         mod.weight, transposed=True)
    elif isinstance(mod, nn.Linear):
        tracker.weighted("linear", name, "Linear", key_in, in_shape, key_out, out_shape, mod.weight)
    elif isinstance(mod, (nn.ChannelShuffle, nn.PixelShuffle, nn.PixelUnshuffle, nn.MultiheadAttention,
                          nn.Bilinear, nn.Unfold, nn.Fold)):
        raise GraphBuildError(f"cannot follow channels through module {name!r} ({type(mod).__name__})")
    else:  # BatchNorm, ReLU, pooling, dropout, Flatten, Identity, ... map channels through
        tracker.passthrough(f"{name} ({type(mod).__name__})", key_in, in_shape, key_out, out_shape)


def _generic_op(tracker: _Tracker, op: str, key_out, where: str, args, kwargs, traced, shapes,
                out_shape, key_of, shape_of) -> None:
    if op in _SKIP or op in _CONST:
        return
    if op in _UNSUPPORTED:
        raise GraphBuildError(f"cannot follow channels through {op!r} (in {where}); the network "
                              "graph supports convs, linears, element-wise ops, pooling, norms, "
                              "residual adds, channel concatenation and flatten/view")
    if op in _CAT:
        tensors = args[0] if args else kwargs.get("tensors")
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        keys = [key_of(t) for t in tensors]
        in_shapes = [shape_of(t) for t in tensors]
        tracker.cat(op, keys, in_shapes, int(dim), key_out, out_shape)
        return
    if len(traced) == 1:
        tracker.passthrough(op, traced[0], shapes[0], key_out, out_shape)
    else:
        tracker.elementwise(op, traced, shapes, key_out, out_shape)


# ------------------------------------------------------------------------------ dispatch tracer
def _trace_dispatch(model: nn.Module, x: torch.Tensor, tracker: _Tracker) -> None:
    """Record the data dependencies of one real forward pass, at the level of torch functions
    (``__torch_function__`` mode): it sees every conv, linear, add, cat and flatten, including
    those called as functions or tensor methods, and follows the branch actually taken."""
    from torch.overrides import TorchFunctionMode

    param_names = {id(p): n for n, p in model.named_parameters()}
    modules = dict(model.named_modules())
    alive: list = []  # keep every traced tensor alive so that ids are not reused

    def key(t):
        return id(t) if isinstance(t, torch.Tensor) and id(t) in tracker.values else None

    def shape(t):
        return tuple(int(s) for s in t.shape) if isinstance(t, torch.Tensor) else None

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if isinstance(out, torch.Tensor):
                flat = _flat_nodes(list(args) + list(kwargs.values()))
                traced = [t for t in flat if key(t) is not None]
                if traced:
                    alive.append(out)
                    self._record(func, args, kwargs, out, traced)
            elif isinstance(out, (tuple, list)):
                flat = _flat_nodes(list(args) + list(kwargs.values()))
                traced = [t for t in flat if key(t) is not None]
                name = _norm_name(getattr(func, "__name__", str(func)))
                if traced and name in _UNSUPPORTED:
                    raise GraphBuildError(f"cannot follow channels through {name!r}")
                if traced and name not in _SKIP:
                    for o in out:  # e.g. max_pool with indices: map what can be mapped
                        if isinstance(o, torch.Tensor):
                            try:
                                tracker.passthrough(name, id(traced[0]), shape(traced[0]), id(o), shape(o))
                                alive.append(o)
                            except GraphBuildError:
                                pass
            return out

        def _record(self, func, args, kwargs, out, traced):
            name = getattr(func, "__name__", str(func))
            op = _norm_name(name)
            if op in _CONV | _CONV_T | _LINEAR:
                weight = args[1] if len(args) > 1 else kwargs.get("weight")
                inp = args[0] if args else kwargs.get("input")
                if key(inp) is None:
                    return
                pname = param_names.get(id(weight))
                layer = pname.rsplit(".", 1)[0] if pname and "." in pname else (pname or op)
                mtype = type(modules[layer]).__name__ if layer in modules else op
                tracker.weighted("linear" if op in _LINEAR else "conv", layer, mtype, id(inp), shape(inp),
                                 id(out), shape(out), weight, transposed=op in _CONV_T)
                return
            if op == "getitem":
                tracker.getitem(id(args[0]), shape(args[0]), args[1], id(out), shape(out))
                return
            if op in _SKIP or op in _CONST:
                return
            keys, shapes = [id(t) for t in traced], [shape(t) for t in traced]
            if out is traced[0]:  # in-place op: relu_ (nothing to do), out += identity (merge)
                if len(traced) > 1:
                    tracker.elementwise(op, keys, shapes, id(out), shape(out))
                return
            _generic_op(tracker, op, id(out), f"{name} -> {list(out.shape)}", args, kwargs, keys,
                        shapes, shape(out), key, shape)

    x = x.clone()
    alive.append(x)
    tracker.input(id(x), shape(x))
    with torch.no_grad(), Recorder():
        model(x)


# ------------------------------------------------------------------------------ public API
def trace_dataflow(model: nn.Module, input_shape: tuple[int, ...], *, tracer: str = "auto",
                   mode: str = "relu", seed: int = 0) -> Dataflow:
    """Trace ``model`` on one random input of ``input_shape = (C, H, W)`` into unit layers with
    their input-channel sources and weight strengths (no top-k yet)."""
    if tracer not in TRACERS:
        raise ValueError(f"unknown tracer {tracer!r}; valid: {', '.join(TRACERS)}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, *input_shape, generator=g)
    was_training = model.training
    model.eval()
    try:
        used = tracer
        tracker = _Tracker(mode)
        if tracer in ("auto", "fx"):
            try:
                _trace_fx(model, x, tracker)
                used = "fx"
            except Exception as exc:  # fx cannot trace: control flow on data, unsupported calls
                if tracer == "fx":
                    if isinstance(exc, GraphBuildError):
                        raise
                    raise GraphBuildError(f"torch.fx cannot trace the model: {str(exc).splitlines()[0][:300]}") from None
                log.info("torch.fx failed (%s); tracing one forward pass instead",
                         str(exc).splitlines()[0][:200])
                tracker = _Tracker(mode)
                used = "dispatch"
        if used == "dispatch":
            try:
                _trace_dispatch(model, x, tracker)
            except GraphBuildError:
                raise
            except Exception as exc:
                raise GraphBuildError(f"the model does not run on an input of shape {tuple(x.shape)}: "
                                      f"{str(exc).splitlines()[0][:300]}") from None
    finally:
        model.train(was_training)
    if len(tracker.layers) < 2:
        raise GraphBuildError("the model has no conv or linear layer reachable from its input")
    unit_layer = np.empty(tracker.n_units, np.int32)
    for i, layer in enumerate(tracker.layers):
        unit_layer[layer.first_id:layer.first_id + layer.n_units] = i
    return Dataflow(tracker.layers, used, unit_layer)


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


def build_network_graph(model: nn.Module, input_shape: tuple[int, ...], *, k: int | None = 8,
                        threshold: float = 0.0, mode: str = "relu", tracer: str = "auto",
                        input_names: list[str] | None = None) -> nx.DiGraph:
    """The unit graph of ``model`` for inputs of ``input_shape = (C, H, W)``.

    Parameters
    ----------
    k : keep the ``k`` strongest incoming edges of every unit (``None``: all).
    threshold : also drop edges weaker than ``threshold`` times the strongest edge into the
        same layer (``0``: keep all that ``k`` keeps). Zero-weight edges are always dropped.
    mode : ``"relu"`` (positive weights only, seed 000's ReLU thresholding) or ``"abs"``.
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
            ((layer.name, j), {"layer": layer.name, "index": j, "kind": layer.kind, "order": layer.order,
                               "label": labels[j] if labels else f"{layer.name}[{j}]"})
            for j in range(layer.n_units))
    layer_meta = []
    n_candidates = 0
    for layer in flow.layers:
        src, dst, w = _top_edges(layer, k, threshold)
        if layer.strength is not None:
            n_candidates += layer.strength.size
        G.add_edges_from((ids[a], ids[b], {"weight": float(c)}) for a, b, c in zip(src.tolist(), dst.tolist(), w.tolist()))
        layer_meta.append({
            "name": layer.name, "kind": layer.kind, "module_type": layer.module_type,
            "n_units": layer.n_units, "order": layer.order, "level": levels[layer.name],
            "shape": list(layer.out_shape), "feeds_from": sorted(layer.feeds_from),
            "max_weight": float(w.max()) if w.size else 0.0, "n_edges": int(w.size),
        })
        layer.strength = None  # free the dense matrices
    G.graph.update(layers=layer_meta, k=k, threshold=threshold, mode=mode, tracer=flow.tracer,
                   input_shape=list(input_shape), input_names=list(names),
                   seconds=round(time.perf_counter() - t0, 3), n_candidate_edges=int(n_candidates))
    return G


def graph_for_store(store, *, k: int | None = 8, threshold: float = 0.0, mode: str = "relu",
                    tracer: str = "auto", model=None, **trust) -> nx.DiGraph:
    """The unit graph of the model a store was captured from (its spec and weights, its input
    size); ``trust`` holds the command's --trust-* flags, ``model`` an already loaded one."""
    module = model if model is not None else store.model(**trust).module
    return build_network_graph(module, store.input_shape, k=k, threshold=threshold, mode=mode, tracer=tracer)


# ------------------------------------------------------------------------------ responses
def _response(a: np.ndarray) -> np.ndarray:
    """A unit's response to one image: ReLU of its output, averaged over spatial positions
    (conv channels) or as is (linear neurons)."""
    a = np.maximum(np.asarray(a, np.float32), 0.0)
    return a.reshape(a.shape[0], -1).mean(axis=1) if a.ndim > 1 else a


def unit_responses(store, i: int, layers=None) -> dict[str, np.ndarray]:
    """Per layer, every unit's response to image ``i`` (layers the store lacks are left out)."""
    names = [n for n in (layers or store.layers) if n in store.layers]
    return {n: _response(store.read("activation", n, i)) for n in names}


def series_responses(store, indices, layers=None) -> dict[str, np.ndarray]:
    """Per layer, ``(len(indices), n_units)`` responses for a series of images."""
    names = [n for n in (layers or store.layers) if n in store.layers]
    return {n: np.stack([_response(store.read("activation", n, int(i))) for i in indices])
            for n in names}
