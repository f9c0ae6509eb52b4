"""A TorchScript file as an ordinary (eager) ``nn.Module``, so forward hooks, per-image weight
gradients and ``torch.func`` work on it as on any model.

TorchScript modules refuse Python forward hooks (``register_forward_hook is not supported on
ScriptModules``), and their compiled forward calls submodules inside the graph, out of Python's
reach. So the module tree is mirrored by eager modules: Conv and Linear leaves become the real
``nn.Conv2d`` / ``nn.Linear`` (checked against the scripted leaf on a random input), and every
other module runs its own TorchScript graph node by node, calling its children as Python modules
(hooks fire) and each aten op through ``torch.ops``. Traced and scripted files both work; a graph
with a construct this interpreter does not know is refused at load time, naming it.
"""

from __future__ import annotations

import collections
import operator
import pathlib
import re

import torch
from torch import nn

from volviz.errors import ModelLoadError

_CONV = {"Conv1d": nn.Conv1d, "Conv2d": nn.Conv2d, "Conv3d": nn.Conv3d}
# ScalarType / MemoryFormat codes that traced graphs keep as ints
_DTYPES = {
    0: torch.uint8,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.int64,
    5: torch.float16,
    6: torch.float32,
    7: torch.float64,
    11: torch.bool,
    15: torch.bfloat16,
}
_MEMORY = {0: torch.contiguous_format, 1: torch.preserve_format, 2: torch.channels_last, 3: torch.channels_last_3d}


def _size(t, dim=None):
    return list(t.size()) if dim is None else t.size(dim)


def _warn(*_args):
    return None


# ops on lists, None, strings and shapes: always Python
_PY_OPS = {
    "__is__": operator.is_,
    "__isnot__": operator.is_not,
    "__not__": operator.not_,
    "__getitem__": operator.getitem,
    "len": len,
    "format": lambda f, *a: f.format(*a),
    "warn": _warn,
    "append": lambda lst, x: lst.append(x) or lst,
    "list": list,
    "__contains__": lambda c, x: x in c,
    "dim": lambda t: t.dim(),
    "size": _size,
    "Int": int,
    "Float": float,
    "Bool": bool,
    "str": str,
    "ScalarImplicit": lambda t: t.item(),
    "numel": lambda t: t.numel(),
}
# arithmetic and comparisons: Python when no argument is a tensor, the aten op otherwise
_SCALAR_OPS = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "div": operator.truediv,
    "floordiv": operator.floordiv,
    "remainder": operator.mod,
    "neg": operator.neg,
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "__and__": operator.and_,
    "__or__": operator.or_,
    "__xor__": operator.xor,
    "pow": operator.pow,
    "min": min,
    "max": max,
    "abs": abs,
}


class UnsupportedScript(ModelLoadError):
    """A TorchScript graph uses a construct the eager adapter cannot run."""


def _aten(node) -> callable:
    name = node.kind().split("::", 1)[1]
    if name in _PY_OPS:
        return _PY_OPS[name]
    try:
        schema = torch._C.parse_schema(node.schema())
        op = getattr(getattr(torch.ops.aten, name), schema.overload_name or "default")
    except (RuntimeError, AttributeError):
        raise UnsupportedScript(f"the TorchScript op {node.kind()} has no Python equivalent") from None
    kw = [a.name for a in schema.arguments if a.kwarg_only]
    conv = [
        (i, _DTYPES if "ScalarType" in str(a.type) else _MEMORY)
        for i, a in enumerate(schema.arguments)
        if "ScalarType" in str(a.type) or "MemoryFormat" in str(a.type)
    ]
    py = _SCALAR_OPS.get(name)

    def call(*args):
        if py is not None and not any(isinstance(a, torch.Tensor) for a in args):
            return py(*args)
        if conv:
            args = list(args)
            for i, table in conv:
                if i < len(args) and isinstance(args[i], int) and not isinstance(args[i], bool):
                    args[i] = table.get(args[i], args[i])
        n = len(args) - len(kw)
        return op(*args[:n], **dict(zip(kw, args[n:])))

    return call


class _Program:
    """A graph (or block) compiled once to (kind, inputs, outputs, payload) steps."""

    def __init__(self, block, functions: dict):
        self.steps = []
        for node in block.nodes():
            kind = node.kind()
            ins = [v.unique() for v in node.inputs()]
            outs = [v.unique() for v in node.outputs()]
            payload = None
            if kind == "prim::Constant":
                t = node.output().type()
                if t.kind() == "FunctionType":
                    payload = t.annotation_str
                    if payload not in functions:
                        raise UnsupportedScript(f"the TorchScript file calls {payload}, which it does not contain")
                else:
                    payload = node.output().toIValue()
            elif kind in ("prim::GetAttr", "prim::CallMethod"):
                payload = node.s("name")
            elif kind in ("prim::If", "prim::Loop"):
                payload = [
                    (_Program(b, functions), [v.unique() for v in b.inputs()], [v.unique() for v in b.outputs()])
                    for b in node.blocks()
                ]
            elif kind == "prim::TupleConstruct" and node.output().type().str().startswith("NamedTuple("):
                t = node.output().type()  # GoogLeNetOutputs & co. stay namedtuples (``.logits``)
                names = re.findall(r"(\w+) : ", t.str()[len("NamedTuple(") :])
                payload = collections.namedtuple(t.annotation_str.rsplit(".", 1)[-1], names)
            elif kind == "prim::RaiseException":
                payload = "TorchScript model raised an exception"
            elif kind.startswith("aten::"):
                payload = _aten(node)
            elif kind not in _PRIM:
                raise UnsupportedScript(f"the TorchScript construct {kind} is not supported")
            self.steps.append((kind, ins, outs, payload))


def _getattr(obj, name):
    if isinstance(obj, ScriptedModule):
        for d in (obj._parameters, obj._buffers, obj._modules):
            if name in d:
                return d[name]
        if name == "training":
            return obj.training
        return getattr(obj._ts, name)
    return getattr(obj, name)


_PRIM = {
    "prim::ListConstruct": lambda *a: list(a),
    "prim::TupleConstruct": lambda *a: tuple(a),
    "prim::DictConstruct": lambda *a: dict(zip(a[::2], a[1::2])),
    "prim::Uninitialized": lambda: None,
    "prim::unchecked_cast": lambda x: x,
    "prim::requires_grad": lambda t: t.requires_grad,
    "prim::device": lambda t: t.device,
    "prim::dtype": lambda t: t.dtype,
    "prim::TupleIndex": operator.getitem,
    "prim::NumToTensor": lambda x: torch.scalar_tensor(x),
    "prim::is_cuda": lambda t: t.is_cuda,
    "prim::min": min,
    "prim::max": max,
    "prim::data": lambda t: t,
    "prim::layout": lambda t: t.layout,
    "prim::ListUnpack": None,
    "prim::TupleUnpack": None,
    "prim::GetAttr": None,
    "prim::CallMethod": None,
    "prim::CallFunction": None,
    "prim::If": None,
    "prim::Loop": None,
    "prim::RaiseException": None,
    "prim::Constant": None,
}


def _run(prog: _Program, env: dict, functions: dict) -> None:
    for kind, ins, outs, payload in prog.steps:
        args = [env[i] for i in ins]
        if kind == "prim::Constant":
            val = payload
        elif kind == "prim::GetAttr":
            val = _getattr(args[0], payload)
        elif kind == "prim::CallMethod":
            obj = args[0]
            if payload == "forward" or not isinstance(obj, ScriptedModule):
                val = (obj if payload == "forward" else getattr(obj, payload))(*args[1:])
            else:
                val = obj.run_method(payload, args[1:])
        elif kind == "prim::CallFunction":
            fn_prog, fn_graph = functions[args[0]]
            val = _call(fn_prog, fn_graph, args[1:], functions)
        elif kind in ("prim::ListUnpack", "prim::TupleUnpack"):
            env.update(zip(outs, args[0]))
            continue
        elif kind == "prim::If":
            sub, _, bouts = payload[0 if args[0] else 1]
            _run(sub, env, functions)
            env.update(zip(outs, [env[o] for o in bouts]))
            continue
        elif kind == "prim::Loop":
            sub, bins, bouts = payload[0]
            trips, cond, carried = args[0], args[1], args[2:]
            i = 0
            while cond and i < trips:
                env.update(zip(bins, [i, *carried]))
                _run(sub, env, functions)
                cond, carried = env[bouts[0]], [env[o] for o in bouts[1:]]
                i += 1
            env.update(zip(outs, carried))
            continue
        elif kind == "prim::RaiseException":
            raise RuntimeError(f"{payload}: {args[0] if args else ''}")
        elif kind.startswith("aten::") or (kind == "prim::TupleConstruct" and payload is not None):
            val = payload(*args)
        else:
            val = _PRIM[kind](*args)
        if len(outs) == 1:
            env[outs[0]] = val
        elif outs:
            env.update(zip(outs, val))


def _call(prog: _Program, graph, args, functions: dict, self_obj=None):
    inputs = [v.unique() for v in graph.inputs()]
    env = dict(zip(inputs, ([self_obj] if self_obj is not None else []) + list(args)))
    _run(prog, env, functions)
    outs = [env[v.unique()] for v in graph.outputs()]
    return outs[0] if len(outs) == 1 else tuple(outs)


class ScriptedModule(nn.Module):
    """One module of a TorchScript file, its graph run node by node; children are eager modules."""

    def __init__(self, ts, functions: dict, cache: dict):
        super().__init__()
        object.__setattr__(self, "_ts", ts)
        self.original_name = ts.original_name
        self._functions, self._cache = functions, cache
        for name, p in ts.named_parameters(recurse=False):
            self.register_parameter(name, nn.Parameter(p.detach(), requires_grad=p.requires_grad))
        for name, b in ts.named_buffers(recurse=False):
            self.register_buffer(name, b.detach())
        for name, child in ts.named_children():
            self.add_module(name, _convert(child, functions, cache))
        self.programs = {m: self._program(m) for m in ts._c._method_names()}

    def _program(self, method: str):
        key = (self._ts._c._type().qualified_name(), method)
        if key not in self._cache:
            graph = self._ts._c._get_method(method).graph
            self._cache[key] = (_Program(graph, self._functions), graph)
        return self._cache[key]

    def run_method(self, method: str, args):
        prog, graph = self.programs[method]
        return _call(prog, graph, args, self._functions, self)

    def forward(self, *args):
        if "forward" not in self.programs:
            raise RuntimeError(f"the TorchScript module {self.original_name} has no forward (it never ran when traced)")
        return self.run_method("forward", args)

    def extra_repr(self) -> str:
        return f"TorchScript {self.original_name}"


def _conv_args(ts) -> dict | None:
    """stride/padding/... of a Conv leaf: attributes of a scripted one, graph constants of a traced one."""
    if not ts._c._has_method("forward"):
        return None
    if hasattr(ts, "stride"):
        return {k: getattr(ts, k) for k in ("stride", "padding", "dilation", "groups", "padding_mode")}
    graph = ts._c._get_method("forward").graph
    convs = [
        n for n in graph.nodes() if n.kind() in ("aten::_convolution", "aten::conv1d", "aten::conv2d", "aten::conv3d")
    ]
    others = [n for n in graph.nodes() if n.kind() not in ("prim::GetAttr", "prim::Constant", "prim::ListConstruct")]
    if len(convs) != 1 or len(others) != 1:
        return None

    def const(v):
        n = v.node()
        if n.kind() == "prim::ListConstruct":
            return [const(i) for i in n.inputs()]
        return n.output().toIValue() if n.kind() == "prim::Constant" else ValueError

    vals = [const(v) for v in convs[0].inputs()][3:]
    if any(v is ValueError for v in vals):
        return None
    if convs[0].kind() == "aten::_convolution":
        if vals[3]:  # transposed
            return None
        return {"stride": vals[0], "padding": vals[1], "dilation": vals[2], "groups": vals[5], "padding_mode": "zeros"}
    return {"stride": vals[0], "padding": vals[1], "dilation": vals[2], "groups": vals[3], "padding_mode": "zeros"}


def _eager_leaf(ts) -> nn.Module | None:
    """The real nn.Conv*/nn.Linear for a scripted leaf, or None when it cannot be rebuilt exactly."""
    name = getattr(ts, "original_name", "")
    params = dict(ts.named_parameters(recurse=False))
    w, b = params.get("weight"), params.get("bias")
    if w is None or list(ts.children()) or set(params) - {"weight", "bias"}:
        return None
    if name == "Linear" and w.dim() == 2:
        m = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        probe = torch.randn(2, w.shape[1])
    elif name in _CONV and w.dim() == int(name[4]) + 2:
        args = _conv_args(ts)
        if args is None:
            return None
        try:
            m = _CONV[name](w.shape[1] * args["groups"], w.shape[0], tuple(w.shape[2:]), bias=b is not None, **args)
        except (TypeError, ValueError):
            return None
        ks = [(k - 1) * d + 3 for k, d in zip(w.shape[2:], m.dilation)]
        probe = torch.randn(1, w.shape[1] * args["groups"], *ks)
    else:
        return None
    with torch.no_grad():
        m.weight.copy_(w)
        if b is not None:
            m.bias.copy_(b)
        try:
            ok = torch.allclose(m(probe), ts(probe), rtol=1e-4, atol=1e-5)
        except Exception:  # e.g. a traced leaf that never ran has no forward
            ok = False
    m.weight.requires_grad_(w.requires_grad)
    return m.eval() if ok else None


def _convert(ts, functions: dict, cache: dict) -> nn.Module:
    return _eager_leaf(ts) or ScriptedModule(ts, functions, cache)


class _Functions(dict):
    """TorchScript functions by qualified name, each compiled on first use."""

    def __init__(self, sources: dict):
        super().__init__()
        self.sources = sources

    def __missing__(self, key):
        fn = self.sources[key]
        self[key] = prog = (_Program(fn.graph, self), fn.graph)
        return prog

    def __contains__(self, key):
        return key in self.sources


def load_torchscript(path: str | pathlib.Path) -> nn.Module:
    """Load a ``torch.jit.save`` file as an eager, eval-mode module (see the module docstring)."""
    try:  # torch.jit.load's own steps, keeping the compilation unit that holds the called functions
        cu = torch._C.CompilationUnit()
        cpp = torch._C.import_ir_module(cu, str(path), torch.device("cpu"), {}, False)
        ts = torch.jit._recursive.wrap_cpp_module(cpp)
        lazy = _Functions({fn.qualified_name: fn for fn in cu.get_functions()})
    except (AttributeError, TypeError):  # a torch without these internals: graphs calling functions fail below
        ts, lazy = torch.jit.load(str(path), map_location="cpu"), _Functions({})
    try:
        module = _convert(ts, lazy, {})
    except UnsupportedScript as exc:
        raise ModelLoadError(
            f"{path}: {exc}; save a state_dict and load it with --model pkg.mod:factory --weights FILE instead"
        ) from None
    for key in list(lazy.sources):  # compile every function now, so an unsupported op fails at load
        try:
            lazy[key]
        except UnsupportedScript as exc:
            raise ModelLoadError(
                f"{path}: {exc}; save a state_dict and load it with --model pkg.mod:factory --weights FILE instead"
            ) from None
    return module.eval()
