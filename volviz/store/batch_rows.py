"""One captured batch as the store's rows: which arrays the plan keeps of a ``BatchResult``, each
cast as stored (float16 arrays per-image scaled, the scale beside them). What the shard writer
receives; nothing here touches the disk."""

from __future__ import annotations

import numpy as np

from volviz.capture.reduce import factor_norms, filter_norms, pool
from volviz.store import layout


def _cast(store, key: str, data: np.ndarray, out: dict, copy: bool = False) -> None:
    """``data`` as stored under ``key`` (float16: divided by the image's max |value|, so small
    gradients do not underflow); ``copy``: ``data`` is a buffer the capture reuses, so what is
    returned must not alias it."""
    dtype = store._array(key).dtype
    if dtype == np.float16:
        flat = np.abs(np.nan_to_num(data.reshape(data.shape[0], -1), nan=0, posinf=0, neginf=0))
        scale = flat.max(axis=1) if flat.size else np.ones(data.shape[0])
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        out[layout.scale_key(key)] = scale
        data = data / scale.reshape(-1, *([1] * (data.ndim - 1)))
        copy = False  # the division made a new array
    out[key] = np.array(data, dtype=dtype, copy=True) if copy else np.asarray(data).astype(dtype, copy=False)


def batch_rows(store, result, labels: np.ndarray, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """``{array key: rows}`` of one BatchResult for ``store`` (for :class:`ShardWriter`). None of
    the arrays aliases the capture's reused weight-gradient buffers: the writer may copy them
    later, on its own thread, while the next batch computes."""
    out = {
        "probs": np.asarray(result.probs, np.float32),
        "pred": np.asarray(result.pred, np.int64),
        "target": np.asarray(result.target, np.int64),
        "label": np.asarray(labels, np.int64),
        "input": inputs.astype(np.float16),
    }
    layers, norms = store.layers, store.plan.format_version >= 2
    for name, a in result.act.items():
        info = layers[name]
        if info.activation:
            _cast(store, layout.quantity_keys("activation", name)[0], a, out)
        if info.descriptor:
            _cast(store, layout.quantity_keys("descriptor", name)[0], pool(a, info.descriptor), out)
    for name, a in result.grad_act.items():
        if layers[name].activation and layers[name].gradient:
            _cast(store, layout.quantity_keys("grad_activation", name)[0], a, out)
    for name, a in result.grad_weight.items():
        info = layers[name]
        if info.weight_grad and info.weight_input:  # rebuilt on read from the input and grad_act
            _cast(store, layout.quantity_keys("grad_weight", name, ("x",))[0], result.layer_inputs[name], out)
        elif info.weight_grad:
            _cast(store, layout.quantity_keys("grad_weight", name)[0], a, out, copy=True)
        if norms:
            _cast(store, layout.quantity_keys("grad_norm", name)[0], filter_norms(a), out)
    for name, (u, v) in result.grad_weight_factors.items():
        if layers[name].weight_grad:
            ku, kv = layout.quantity_keys("grad_weight", name, ("u", "v"))
            _cast(store, ku, u, out)
            _cast(store, kv, v, out)
        if norms:
            _cast(store, layout.quantity_keys("grad_norm", name)[0], factor_norms(u, v), out)
    return out
