"""Channel maps: which units feed each channel of a traced tensor, followed op by op.

The dataflow tracers (:mod:`volviz.analysis.dataflow_trace`) walk one forward pass and report
each op here; :class:`ChannelTracker` keeps, per tensor, which units feed each of its channels
(or each slice of its flattened features), so that a conv / linear layer knows the units behind
every one of its input channels, and turns the layer's weights into connection strengths.
Element-wise ops, pooling, batch norm and dropout pass channels through, a residual ``add`` (or
``mul``) merges them, ``cat`` along channels concatenates them, ``chunk`` / ``split`` and slices
along channels split them, and ``flatten`` / ``view`` keep track of which flat features belong to
which channel. A permute or transpose is followed for what it does to channels: one that reorders
the channel dims among themselves (ShuffleNet's channel shuffle, a view to (N, g, C/g, H, W),
transpose(1, 2), view back) permutes the channels; one that moves the channel axis (ConvNeXt's
channels-last blocks, (N, C, H, W) -> (N, H, W, C) and back) leaves them as they are and is
remembered until it is undone, with a Linear on the channels-last tensor a per-position layer
(a 1x1 conv). Anything else raises :class:`~volviz.errors.GraphBuildError` naming the op.

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
    # None, or a permute moved the channel axis: the traced tensor is the channels-first value
    # above permuted by ``axes`` (its dim j is that value's dim axes[j])
    axes: tuple[int, ...] | None = None

    @property
    def numel(self) -> int:
        return int(self.bounds[-1])

    @classmethod
    def channels(cls, src: list[tuple[int, ...]], shape: tuple[int, ...]) -> "_Value":
        per = math.prod(shape[2:]) if len(shape) > 2 else 1
        return cls(list(src), np.arange(len(src) + 1, dtype=np.int64) * per)

    def is_channel_form(self, shape: tuple[int, ...]) -> bool:
        """Does dim 1 of ``shape`` index exactly these channels (equal-sized, in order)?"""
        if self.axes is not None or len(shape) < 2 or shape[1] != len(self.src):
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
        return _Value(src, first.bounds.copy(), first.axes)
    bounds = np.unique(np.concatenate([v.bounds for v in values]))
    src = []
    for start in bounds[:-1]:
        s: tuple[int, ...] = ()
        for v in values:
            s = _union(s, v.src[int(np.searchsorted(v.bounds, start, side="right")) - 1])
        src.append(s)
    return _Value(src, bounds)


def _slice(v: _Value, lo: int, hi: int) -> _Value:
    """The channel map of the flat elements ``lo:hi`` (a slice or split along dim 1)."""
    i0 = int(np.searchsorted(v.bounds, lo, side="right")) - 1
    i1 = int(np.searchsorted(v.bounds, hi, side="left"))
    return _Value(v.src[i0:i1], np.clip(v.bounds[i0 : i1 + 1], lo, hi) - lo)


def _channel_dims(v: _Value, shape: tuple[int, ...]) -> list[int]:
    """Every ``m`` such that dims 1..m of ``shape`` index the channels of ``v`` (C-order) and
    the dims after them lie within one channel."""
    c, out = len(v.src), []
    if v.axes is not None or v.numel != math.prod(shape[1:]):
        return out
    for m in range(1, len(shape)):
        per = math.prod(shape[m + 1 :])
        if math.prod(shape[1 : m + 1]) == c and np.array_equal(v.bounds, np.arange(c + 1) * per):
            out.append(m)
    return out


# a channels-last value is spelled out element by element when it is reshaped: up to this many
MAX_FLAT_ELEMENTS = 1 << 22


def _flatten_axes(v: _Value, shape: tuple[int, ...], what: str) -> _Value:
    """A value with a moved channel axis as a plain flat map of the tensor of ``shape`` as laid
    out (C-order), so that a reshape, flatten or split of it can be followed."""
    if v.axes is None:
        return v
    n = math.prod(shape[1:])
    if n > MAX_FLAT_ELEMENTS:
        raise GraphBuildError(
            f"cannot follow channels through {what!r}: it reshapes a {list(shape)} tensor whose channel "
            f"axis was moved by a permute/transpose (more than {MAX_FLAT_ELEMENTS} elements to follow)"
        )
    canon = [0] * len(shape)
    for j, a in enumerate(v.axes):
        canon[a] = shape[j]
    c = len(v.src)
    ch = np.broadcast_to(np.arange(c).reshape((c,) + (1,) * (len(shape) - 2)), canon[1:])
    flat = ch.transpose([a - 1 for a in v.axes[1:]]).ravel()
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    return _Value([v.src[i] for i in flat[starts]], np.r_[starts, flat.size].astype(np.int64))


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
def layer_src(layer: "UnitLayer") -> list[tuple[int, ...]]:
    """One channel per unit of ``layer``, each fed by that unit."""
    return [(layer.first_id + j,) for j in range(layer.n_units)]


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
        src = layer_src(layer)
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
        out = None
        if kind == "linear" and v is not None and v.axes is not None and v.axes[-1] == 1 and w.shape[1] == len(v.src):
            # a Linear on channels-last maps (ConvNeXt's blocks): per position, a 1x1 conv
            layer.in_sources = list(v.src)
            layer.strength = self._thresh(w).numpy().astype(np.float32, copy=False)
            out = _Value.channels(layer_src(layer), (1, layer.n_units, v.numel // len(v.src)))
            out.axes = v.axes
        elif kind == "linear":
            self._linear_strength(layer, w, v if v is None else _flatten_axes(v, in_shape, name), in_shape)
        else:
            self._conv_strength(layer, w, v if v is None else _flatten_axes(v, in_shape, name), in_shape, transposed)
        layer.feeds_from = {self._layer_name_of(u) for s in layer.in_sources for u in s}
        self.values[key_out] = out if out is not None else self._layer_value(layer, out_shape)

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
        if v.axes is not None:
            if in_shape == out_shape:
                return v  # element-wise on the permuted tensor (GELU, LayerNorm over channels-last)
            v = _flatten_axes(v, in_shape, name)
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
        if len({m.axes for m in mapped}) > 1:  # a channels-last and a channels-first operand
            mapped = [_flatten_axes(m, out_shape, name) for m in mapped]
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
                v = _flatten_axes(v, s, name)
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
        rest_full = all(isinstance(i, slice) and i == slice(None) for i in idx[2:])
        if isinstance(idx[1], (int, slice)) and rest_full and isinstance(idx[0], slice) and idx[0] == slice(None):
            rng = range(in_shape[1])[idx[1]] if isinstance(idx[1], slice) else [range(in_shape[1])[idx[1]]]
            if len(rng) and (len(rng) == 1 or rng.step == 1):  # one contiguous run of flat elements
                per = math.prod(in_shape[2:])
                v = _flatten_axes(v, in_shape, "getitem")
                self.values[key_out] = _slice(v, rng[0] * per, (rng[-1] + 1) * per)
                return
        raise GraphBuildError(f"cannot follow channels through indexing {index!r} of a {list(in_shape)} tensor")

    # ---- ops that reorder or split channels
    def permute(self, name: str, key_in, in_shape, perm, key_out, out_shape) -> None:
        """``perm``: the new dim j is the old dim perm[j] (torch.permute's ``dims``)."""
        v, nd = self.values[key_in], len(in_shape)
        perm = tuple(int(p) % nd for p in perm)
        if perm[0] != 0:
            raise GraphBuildError(f"cannot follow channels through {name!r}: it moves the batch axis ({perm})")
        if v.axes is not None:  # a second permute: compose; back to channels on dim 1 ends it
            axes = tuple(v.axes[p] for p in perm)
            self.values[key_out] = _Value(v.src, v.bounds, None if axes[1] == 1 else axes)
            return
        dims = _channel_dims(v, tuple(in_shape))
        for m in dims:
            inner = perm[1 : m + 1]
            if sorted(inner) == list(range(1, m + 1)):  # the channel dims reordered among themselves
                order = np.arange(len(v.src)).reshape(in_shape[1 : m + 1]).transpose([p - 1 for p in inner])
                self.values[key_out] = _Value([v.src[i] for i in order.ravel()], v.bounds.copy())
                return
        if 1 in dims:  # the channel axis moves (channels-last): remember where it went
            self.values[key_out] = _Value(v.src, v.bounds.copy(), perm)
            return
        raise GraphBuildError(
            f"cannot follow channels through {name!r} {perm} of a {list(in_shape)} tensor whose channels "
            "do not lie along its leading dims"
        )

    def channel_shuffle(self, name: str, key_in, in_shape, groups: int, key_out, out_shape) -> None:
        """nn.ChannelShuffle / F.channel_shuffle: view (N, g, C/g, ...), transpose(1, 2), view back."""
        v, c = self.values[key_in], int(in_shape[1])
        if v.axes is not None or c % int(groups):
            raise GraphBuildError(f"cannot follow channels through {name!r} of a {list(in_shape)} tensor")
        view = (in_shape[0], int(groups), c // int(groups), *in_shape[2:])
        self.values[key_out] = v
        self.permute(name, key_out, view, (0, 2, 1, *range(3, len(view))), key_out, out_shape)

    def split(self, name: str, key_in, in_shape, dim: int, out_shapes: list, keys_out: list) -> None:
        """chunk / split / unbind along ``dim``: along channels each piece gets its channels."""
        v, nd = self.values[key_in], len(in_shape)
        dim %= nd
        if dim == 0:
            raise GraphBuildError(f"{name!r} along the batch axis is not supported")
        if dim == 1:
            v, lo = _flatten_axes(v, tuple(in_shape), name), 0
            for k, s in zip(keys_out, out_shapes):
                n = math.prod(s[1:])
                self.values[k] = _slice(v, lo, lo + n)
                lo += n
            return
        for k, s in zip(keys_out, out_shapes):
            self.values[k] = self._map_to(v, in_shape, s, name)
