"""Tracing a model's dataflow: which conv / linear layer reads the units of which other one.

The dataflow is traced, not guessed from module order: ``torch.fx`` (symbolic trace plus shape
propagation) first, and when fx cannot trace the model (data-dependent control flow...), a
function-level hook that records every torch call of one real forward pass
(``TorchFunctionMode``, the "dispatch" tracer). Either tracer reports the ops it sees to a
:class:`~volviz.analysis.channel_map.ChannelTracker`: permutes and transposes as the permutation
of dims they are, chunks and splits as their pieces; ops that mix channels in ways a per-channel
map cannot express (matmul, attention, pixel shuffle...) raise :class:`GraphBuildError` naming
the op.

:func:`trace_dataflow` returns the unit layers with their weight strengths;
:mod:`volviz.analysis.network_graph` turns them into a graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from volviz.analysis.channel_map import ChannelTracker, UnitLayer
from volviz.errors import GraphBuildError

log = logging.getLogger("volviz.graph")

TRACERS = ("auto", "fx", "dispatch")

__all__ = ["TRACERS", "Dataflow", "trace_dataflow"]


# ------------------------------------------------------------------------------ op classes
_CONV = {"conv1d", "conv2d", "conv3d"}
_CONV_T = {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
_LINEAR = {"linear"}
_CAT = {"cat", "concat", "concatenate"}
_CONST = set(
    "zeros_like ones_like empty_like full_like rand_like randn_like new_zeros new_ones "
    "new_empty new_full new_tensor".split()
)
# ops that reorder dims: followed as the permutation they are (ChannelTracker.permute)
_PERMUTE = {"permute", "transpose", "t", "movedim", "moveaxis", "swapaxes", "swapdims"}
# ops that cut a tensor into pieces along one dim (ChannelTracker.split)
_SPLIT = {"split", "chunk", "unbind", "tensor_split", "split_with_sizes", "unsafe_split", "unsafe_chunk"}
# ops that move, mix or select channels in ways a per-channel map cannot follow
_UNSUPPORTED = set(
    "pixel_shuffle pixel_unshuffle matmul bmm mm einsum baddbmm roll flip gather index_select "
    "narrow select stack take masked_select bilinear multi_head_attention_forward "
    "scaled_dot_product_attention".split()
)
# inert calls whose tensor result carries no data of the input (or is not data)
_SKIP = {"size", "dim", "numel", "shape", "get", "__get__", "device", "dtype"}


def _dim_order(op: str, rest: list, kwargs: dict, nd: int) -> tuple[int, ...]:
    """The permutation of dims a permute-like call makes (new dim j = old dim perm[j]), found by
    making the same call on a shape-only tensor whose dim sizes name the dims."""
    kwargs = {k: v for k, v in kwargs.items() if k != "input"}
    probe = torch.empty(tuple(range(2, nd + 2)), device="meta")
    try:
        out = getattr(probe, op)(*rest, **kwargs)
    except Exception as exc:  # a dim computed from data, or an odd call
        raise GraphBuildError(f"cannot follow channels through {op!r} with arguments {rest!r}: {exc}") from None
    return tuple(int(s) - 2 for s in out.shape)


def _split_dim(op: str, args: list, kwargs: dict) -> int:
    """The dim a split-like call cuts along (torch's default 0 where none is given)."""
    if "dim" in kwargs:
        return int(kwargs["dim"])
    pos = 1 if op == "unbind" else 2  # unbind(x, dim); chunk / split(x, n_or_sizes, dim)
    return int(args[pos]) if len(args) > pos else 0


def _norm_name(name: str) -> str:
    n = name.strip("_")
    if n.startswith("i") and n[1:] in ("add", "sub", "mul", "truediv", "div", "and", "or"):
        n = n[1:]  # __iadd__ -> add
    if n.startswith("r") and n[1:] in ("add", "sub", "mul", "truediv", "div"):
        n = n[1:]
    if n.endswith("_") and n[:-1]:
        n = n[:-1]  # relu_ -> relu
    return n


@dataclass
class Dataflow:
    """The traced unit layers in forward order (the input first), and which tracer made them."""

    layers: list[UnitLayer]
    tracer: str
    unit_layer: np.ndarray  # global unit id -> index into layers

    def layer_of(self, uid: int) -> UnitLayer:
        return self.layers[int(self.unit_layer[uid])]

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


def _trace_fx(model: nn.Module, x: torch.Tensor, tracker: ChannelTracker) -> None:
    import contextlib
    import io

    from torch.fx import Node, symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

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
                raise GraphBuildError(
                    f"models with several tensor inputs are not supported (second input {node.name!r})"
                )
            placeholders += 1
            continue
        if node.op in ("get_attr", "output"):
            continue
        flat = _flat_nodes(list(node.args) + list(node.kwargs.values()))
        traced = [a for a in flat if isinstance(a, Node) and tracker.has(a)]
        getitem = _norm_name(getattr(node.target, "__name__", str(node.target))) == "getitem"
        piece = node.args[1] if getitem and isinstance(node.args[1], int) else None
        if piece is not None and tracker.has((node.args[0], piece)):
            # a piece of a split (or of another op with several outputs)
            tracker.values[node] = tracker.values[(node.args[0], piece)]
            continue
        if traced and isinstance(meta, (tuple, list)) and not hasattr(meta, "shape"):  # several outputs
            name = _norm_name(getattr(node.target, "__name__", str(node.target)))
            _pieces(
                tracker,
                name,
                node.format_node(),
                node.args,
                node.kwargs,
                traced[0],
                _shape(traced[0].meta.get("tensor_meta")),
                [_shape(m) for m in meta],
                [(node, i) for i in range(len(meta))],
            )
            continue
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
            tracker.weighted(kind, layer, op, traced[0], shapes[0], node, out_shape, weight, transposed=op in _CONV_T)
            continue
        if op == "getitem":
            tracker.getitem(traced[0], shapes[0], node.args[1], node, out_shape)
            continue
        _generic_op(
            tracker,
            op,
            node,
            node.format_node(),
            node.args,
            node.kwargs,
            traced,
            shapes,
            out_shape,
            lambda a: a if isinstance(a, Node) and tracker.has(a) else None,
            lambda a: _shape(a.meta.get("tensor_meta")) if isinstance(a, Node) else None,
        )


def _fetch_attr(gm, target: str) -> torch.Tensor:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _module_op(tracker: ChannelTracker, name: str, mod: nn.Module, key_in, in_shape, key_out, out_shape) -> None:
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        tracker.weighted("conv", name, type(mod).__name__, key_in, in_shape, key_out, out_shape, mod.weight)
    elif isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        tracker.weighted(
            "conv", name, type(mod).__name__, key_in, in_shape, key_out, out_shape, mod.weight, transposed=True
        )
    elif isinstance(mod, nn.Linear):
        tracker.weighted("linear", name, "Linear", key_in, in_shape, key_out, out_shape, mod.weight)
    elif isinstance(mod, nn.ChannelShuffle):
        tracker.channel_shuffle(f"{name} (ChannelShuffle)", key_in, in_shape, mod.groups, key_out, out_shape)
    elif isinstance(
        mod,
        (nn.PixelShuffle, nn.PixelUnshuffle, nn.MultiheadAttention, nn.Bilinear, nn.Unfold, nn.Fold),
    ):
        raise GraphBuildError(f"cannot follow channels through module {name!r} ({type(mod).__name__})")
    else:  # BatchNorm, ReLU, pooling, dropout, Flatten, Identity, ... map channels through
        tracker.passthrough(f"{name} ({type(mod).__name__})", key_in, in_shape, key_out, out_shape)


def _generic_op(
    tracker: ChannelTracker, op: str, key_out, where: str, args, kwargs, traced, shapes, out_shape, key_of, shape_of
) -> None:
    if op in _SKIP or op in _CONST:
        return
    if op in _UNSUPPORTED:
        raise GraphBuildError(
            f"cannot follow channels through {op!r} (in {where}); the network "
            "graph supports convs, linears, element-wise ops, pooling, norms, "
            "residual adds, channel concatenation, splits, permutes and flatten/view"
        )
    if op in ("channel_shuffle", "native_channel_shuffle"):
        groups = args[1] if len(args) > 1 else kwargs["groups"]
        tracker.channel_shuffle(op, traced[0], shapes[0], int(groups), key_out, out_shape)
        return
    if op in _PERMUTE:
        perm = _dim_order(op, list(args[1:]), dict(kwargs), len(shapes[0]))
        tracker.permute(op, traced[0], shapes[0], perm, key_out, out_shape)
        return
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


def _pieces(tracker: ChannelTracker, op: str, where: str, args, kwargs, key_in, in_shape, out_shapes, keys_out) -> None:
    """The outputs of an op with several: the pieces of a split, else each output mapped as a
    pass-through where it can be (max_pool's indices, ...), left untraced where not."""
    if op in _SPLIT:
        tracker.split(op, key_in, in_shape, _split_dim(op, list(args), dict(kwargs)), out_shapes, keys_out)
        return
    if op in _UNSUPPORTED:
        raise GraphBuildError(f"cannot follow channels through {op!r} (in {where})")
    if op in _SKIP:
        return
    for k, s in zip(keys_out, out_shapes):
        if s is not None:
            try:
                tracker.passthrough(op, key_in, in_shape, k, s)
            except GraphBuildError:
                pass


# ------------------------------------------------------------------------------ dispatch tracer
def _trace_dispatch(model: nn.Module, x: torch.Tensor, tracker: ChannelTracker) -> None:
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
                if traced:
                    outs = [o for o in out if isinstance(o, torch.Tensor)]
                    alive.extend(outs)
                    _pieces(
                        tracker,
                        name,
                        name,
                        args,
                        kwargs,
                        id(traced[0]),
                        shape(traced[0]),
                        [shape(o) for o in outs],
                        [id(o) for o in outs],
                    )
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
                tracker.weighted(
                    "linear" if op in _LINEAR else "conv",
                    layer,
                    mtype,
                    id(inp),
                    shape(inp),
                    id(out),
                    shape(out),
                    weight,
                    transposed=op in _CONV_T,
                )
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
            _generic_op(
                tracker, op, id(out), f"{name} -> {list(out.shape)}", args, kwargs, keys, shapes, shape(out), key, shape
            )

    x = x.clone()
    alive.append(x)
    tracker.input(id(x), shape(x))
    with torch.no_grad(), Recorder():
        model(x)


# ------------------------------------------------------------------------------ entry point
def trace_dataflow(
    model: nn.Module, input_shape: tuple[int, ...], *, tracer: str = "auto", mode: str = "relu", seed: int = 0
) -> Dataflow:
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
        tracker = ChannelTracker(mode)
        if tracer in ("auto", "fx"):
            try:
                _trace_fx(model, x, tracker)
                used = "fx"
            except Exception as exc:  # fx cannot trace: control flow on data, unsupported calls
                if tracer == "fx":
                    if isinstance(exc, GraphBuildError):
                        raise
                    first = str(exc).splitlines()[0][:300]
                    raise GraphBuildError(f"torch.fx cannot trace the model: {first}") from None
                log.info("torch.fx failed (%s); tracing one forward pass instead", str(exc).splitlines()[0][:200])
                tracker = ChannelTracker(mode)
                used = "dispatch"
        if used == "dispatch":
            try:
                _trace_dispatch(model, x, tracker)
            except GraphBuildError:
                raise
            except Exception as exc:
                raise GraphBuildError(
                    f"the model does not run on an input of shape {tuple(x.shape)}: {str(exc).splitlines()[0][:300]}"
                ) from None
    finally:
        model.train(was_training)
    if len(tracker.layers) < 2:
        raise GraphBuildError("the model has no conv or linear layer reachable from its input")
    unit_layer = np.empty(tracker.n_units, np.int32)
    for i, layer in enumerate(tracker.layers):
        unit_layer[layer.first_id : layer.first_id + layer.n_units] = i
    return Dataflow(tracker.layers, used, unit_layer)
