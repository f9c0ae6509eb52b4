"""Per-image reductions a capture keeps instead of (or beside) the full tensors: filter norms of
per-image weight gradients (all that importance needs) and pooled descriptors (the dataset view).
Both are computed from the float32 tensors the capture holds, batch by batch."""

from __future__ import annotations

import numpy as np


def filter_norms(grad_weight: np.ndarray) -> np.ndarray:
    """Per-image gradients ``(n, C_out, ...)`` -> filter norms ``(n, C_out)`` float32, by torch's
    norm on the float32 tensor in place (its cascade summation: within 3e-7 of a float64 sum on
    the layers of resnet18 and the LeNet, at a sixth to a ninth of the float64 conversion's time:
    the capture's main thread computes them for every layer of every batch).

    >>> filter_norms(np.ones((2, 3, 4))).tolist()
    [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]
    """
    import torch

    g = np.ascontiguousarray(grad_weight)
    if g.dtype != np.float32:
        g = g.astype(np.float32)
    return torch.linalg.vector_norm(torch.from_numpy(g).reshape(g.shape[0], g.shape[1], -1), dim=2).numpy()


def factor_norms(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Row norms of per-image Linear gradients ``outer(u[n], v[n])``: ``|u[n, j]| * ||v[n]||``."""
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    return (np.abs(u) * np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def pool(act: np.ndarray, how: str) -> np.ndarray:
    """One descriptor row per image: conv maps ``(n, C, H, W)`` -> spatial mean, max, both
    (``meanmax``: mean then max, ``2C`` values) or the whole map flattened (``full``); other
    shapes are flattened.

    >>> pool(np.arange(8.0).reshape(1, 2, 2, 2), "meanmax").tolist()
    [[1.5, 5.5, 3.0, 7.0]]
    """
    a = np.asarray(act)
    n = a.shape[0]
    if how == "full" or a.ndim != 4:
        return a.reshape(n, -1).astype(np.float32, copy=False)
    flat = a.reshape(n, a.shape[1], -1)
    parts = {"mean": [flat.mean(axis=2)], "max": [flat.max(axis=2)], "meanmax": [flat.mean(axis=2), flat.max(axis=2)]}[
        how
    ]
    return np.concatenate(parts, axis=1).astype(np.float32)
