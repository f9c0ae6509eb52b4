"""The store's real images as the reference of a preferred input: the mean pixel and channel
covariance (the Fourier colour matrix, the centre of decay), each unit's activations on them (its
top and mean, the unit of ``z``), class means and top-9 means (``--init mean``), and which layer
produces the class scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from volviz.analysis.actmax import results as R
from volviz.analysis.actmax.optimize import Problem
from volviz.store.store import Store

__all__ = ["RealStats", "real_statistics", "real_values", "logits_layer", "TOP_K_MEAN"]

TOP_K_MEAN = 9  # init=mean for a non-class unit: mean of its top-9 real images


def _done_indices(store: Store) -> np.ndarray:
    idx = np.flatnonzero(store.done)
    if not len(idx):
        raise R.PreferredError(
            f"{store.path} holds no captured images; preferred inputs are compared "
            "with the store's real images, so capture some first"
        )
    return idx


def _iter_inputs(store: Store, idx: np.ndarray, batch: int = 256):
    for sel in store.iter_batches(batch, idx):
        yield sel, store.read_inputs(sel)


@dataclass
class RealStats:
    centre: np.ndarray  # (C,) mean pixel
    cov: np.ndarray  # (C, C) channel covariance (per pixel)
    lo: np.ndarray  # (C,)
    hi: np.ndarray
    class_means: dict  # class index -> (C, H, W)


def real_statistics(store: Store) -> RealStats:
    """One pass over the store's real images: mean pixel, channel covariance, class means."""
    idx = _done_indices(store)
    labels = store.column("label")[idx]
    preds = store.column("pred")[idx]
    cls = np.where(labels >= 0, labels, preds)
    n = 0
    s1 = s2 = None
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    lo = hi = None
    pos = 0
    for sel, x in _iter_inputs(store, idx):
        c = x.shape[1]
        flat = x.transpose(1, 0, 2, 3).reshape(c, -1).astype(np.float64)
        s1 = flat.sum(1) if s1 is None else s1 + flat.sum(1)
        s2 = flat @ flat.T if s2 is None else s2 + flat @ flat.T
        n += flat.shape[1]
        lo = flat.min(1) if lo is None else np.minimum(lo, flat.min(1))
        hi = flat.max(1) if hi is None else np.maximum(hi, flat.max(1))
        for k in np.unique(cls[pos : pos + len(sel)]):
            m = cls[pos : pos + len(sel)] == k
            sums[int(k)] = sums.get(int(k), 0) + x[m].sum(0)
            counts[int(k)] = counts.get(int(k), 0) + int(m.sum())
        pos += len(sel)
    mean = s1 / n
    cov = s2 / n - np.outer(mean, mean)
    return RealStats(mean.astype(np.float32), cov, lo, hi, {k: (sums[k] / counts[k]).astype(np.float32) for k in sums})


def real_values(problem: Problem, store: Store, batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every unit's objective on every real image: ``(N, U)`` and the image indices ``(N,)``."""
    idx = _done_indices(store)
    if batch is None:  # at most ~8 M input pixels per forward pass (53 images of 224 x 224 x 3)
        batch = int(max(1, min(256, 8_000_000 // int(np.prod(problem.input_shape)))))
    out = []
    with torch.no_grad():
        for _, x in _iter_inputs(store, idx, batch):
            out.append(problem.values(torch.as_tensor(x, device=problem.device)).float().cpu().numpy())
    return np.concatenate(out), idx


def logits_layer(model: torch.nn.Module, input_shape, device: str = "cpu") -> str | None:
    """The module whose output IS the model's output (the class scores), if there is one."""
    from volviz.capture.layers import named_leaf_modules

    seen: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda mod, a, o, n=n: seen.__setitem__(n, o))
        for n, m in named_leaf_modules(model).items()
    ]
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
    for n, o in seen.items():
        if o is out:
            return n
    return None


def _base_images(
    problem: Problem, stats: RealStats, values: np.ndarray, idx: np.ndarray, store: Store, units=None
) -> np.ndarray:
    """init=mean: class units start from their class's mean image, other units from the mean of
    their top-9 real images; ``(len(units), C, H, W)`` (default every unit)."""
    units = np.arange(values.shape[1]) if units is None else np.asarray(units, dtype=np.int64)
    if problem.kind == "class":
        overall = np.mean(list(stats.class_means.values()), axis=0)
        return np.stack([stats.class_means.get(int(k), overall) for k in units])
    top = np.argsort(-values[:, units], axis=0)[:TOP_K_MEAN]  # (k, len(units)) rows into idx
    need = np.unique(top)
    imgs = store.read_inputs(idx[need])
    pos = {int(j): i for i, j in enumerate(need)}
    return np.stack([imgs[[pos[int(j)] for j in top[:, k]]].mean(0) for k in range(len(units))])
