"""Channel maps: which units feed each channel of a traced tensor, followed op by op.

The dataflow tracers (:mod:`volviz.analysis.dataflow_trace`) walk one forward pass and report
each op here; :class:`ChannelTracker` keeps, per tensor, which units feed each of its channels
(or each slice of its flattened features), so that a conv / linear layer knows the units behind
every one of its input channels, and turns the layer's weights into connection strengths.
Element-wise ops, pooling, batch norm and dropout pass channels through, a residual ``add`` (or
``mul``) merges them, ``cat`` along channels concatenates them, and ``flatten`` / ``view`` keep
track of which flat features belong to which channel; anything else raises
:class:`~volviz.errors.GraphBuildError`.

Split from the graph builder so that each reads in one sitting: this module knows nothing of
tracing or networkx.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from volviz.errors import GraphBuildError

INPUT = "input"
MODES = ("relu", "abs")

__all__ = ["INPUT", "MODES", "UnitLayer", "ChannelTracker"]


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
            np.array_equal(self.bounds, np.arange(len(self.src) + 1) * per)
        )


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


class ChannelTracker:
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
        layer = UnitLayer(
            name, kind, module_type, int(n), self.n_units, len(self.layers), tuple(int(s) for s in out_shape)
        )
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

    def weighted(
        self,
        kind: str,
        name: str,
        module_type: str,
        key_in,
        in_shape,
        key_out,
        out_shape,
        weight: torch.Tensor,
        transposed: bool = False,
    ) -> None:
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

    def _conv_strength(self, layer: UnitLayer, w: torch.Tensor, v: _Value | None, in_shape, transposed: bool) -> None:
        if transposed:  # (C_in, C_out / g, *k)
            c_in = int(w.shape[0])
            groups = layer.n_units // int(w.shape[1])
            local = self._thresh(w).pow(2).flatten(2).sum(2).sqrt()  # (C_in, C_out/g)
            per_in, per_out = c_in // groups, int(w.shape[1])
            s = torch.zeros(layer.n_units, c_in)
            for g in range(groups):
                s[g * per_out : (g + 1) * per_out, g * per_in : (g + 1) * per_in] = local[
                    g * per_in : (g + 1) * per_in
                ].T
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
                    s[g * per_out : (g + 1) * per_out, g * per_in : (g + 1) * per_in] = local[
                        g * per_out : (g + 1) * per_out
                    ]
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
                    f"{tuple(in_shape)} tensor (per position) is not supported; flatten first"
                )
            raise GraphBuildError(f"{layer.name}: expects {d} features, the traced input has {v.numel}")
        bounds = v.bounds
        keep = np.diff(bounds) > 0
        starts = bounds[:-1][keep]
        layer.in_sources = [s for s, k in zip(v.src, keep) if k]
        out = np.empty((layer.n_units, len(starts)), np.float32)
        rows = max(1, (1 << 24) // max(d, 1))  # ~64 MB of float32 per chunk
        for r in range(0, layer.n_units, rows):
            chunk = self._thresh(w[r : r + rows]).pow(2).numpy()
            out[r : r + rows] = np.sqrt(np.add.reduceat(chunk, starts, axis=1))
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
        raise GraphBuildError(f"cannot follow channels through {name!r}: shape {list(in_shape)} -> {list(out_shape)}")

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
