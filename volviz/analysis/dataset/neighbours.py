"""Nearest images in a layer's descriptor space ([PreferredInputs2016]'s descriptor neighbours).

Exact search is a chunked brute force (``chunk x n`` distances at a time); above
:data:`APPROX_FROM` images the all-images passes use pynndescent's approximate graph instead
(recall about 0.99 at its defaults), because the exact one grows as ``n^2``. The share of an
image's neighbours that have its class, per layer, says where in the network the classes separate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from volviz.analysis.dataset.descriptors import DatasetError, descriptors, image_table

__all__ = [
    "METRICS",
    "APPROX_FROM",
    "Neighbours",
    "NeighbourIndex",
    "brute_neighbours",
    "nearest",
    "class_of",
    "class_share",
    "store_neighbours",
    "share_table",
]

METRICS = ("cosine", "euclidean")
APPROX_FROM = 20000


@dataclass
class Neighbours:
    query: int  # store row of the query image
    rows: np.ndarray  # (k,) store rows, nearest first
    distance: np.ndarray  # (k,)
    same_class: np.ndarray  # (k,) bool: the neighbour has the query's class
    layer: str = ""
    metric: str = "cosine"


def _prep(x: np.ndarray, metric: str) -> np.ndarray:
    if metric not in METRICS:
        raise DatasetError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    x = np.asarray(x, np.float32)
    if metric == "cosine":
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norm > 0, norm, 1)
    return x


def _distances(q: np.ndarray, x: np.ndarray, x2: np.ndarray, metric: str) -> np.ndarray:
    dot = q @ x.T
    if metric == "cosine":
        return np.clip(1.0 - dot, 0, 2)
    return np.sqrt(np.clip((q * q).sum(1)[:, None] + x2[None, :] - 2 * dot, 0, None))


class NeighbourIndex:
    """Exact search over the rows of ``x``, prepared once (scaled to length 1 for cosine, squared
    norms for Euclidean): a query is then one product with the matrix, ``chunk x n`` distances at
    a time. One query among 100,000 x 500-d rows: ~25 ms on one core (benchmarks/bench_dataset.py)."""

    def __init__(self, x: np.ndarray, metric: str = "cosine"):
        self.metric = metric
        self.x = _prep(x, metric)
        self.x2 = (self.x * self.x).sum(1)

    def __len__(self) -> int:
        return len(self.x)

    def query(
        self, queries=None, k: int = 16, *, exclude_self: bool = True, chunk: int = 1024
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest rows of the rows ``queries`` (default all): ``(q, k)`` indices and
        distances, nearest first, ties by index; ``exclude_self`` leaves each query out of its list."""
        xp, n = self.x, len(self.x)
        queries = np.arange(n) if queries is None else np.asarray(queries, np.int64).reshape(-1)
        k = min(int(k), n - (1 if exclude_self else 0))
        if k < 1:
            raise DatasetError(f"{n} image{'s' if n != 1 else ''}: no neighbours to find")
        idx = np.empty((len(queries), k), np.int64)
        dist = np.empty((len(queries), k), np.float32)
        for s in range(0, len(queries), chunk):
            qi = queries[s : s + chunk]
            d = _distances(xp[qi], xp, self.x2, self.metric).astype(np.float64)
            if exclude_self:
                d[np.arange(len(qi)), qi] = np.inf
            part = np.argpartition(d, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(qi), 1))
            pd = np.take_along_axis(d, part, 1)
            order = np.lexsort((part, pd), axis=1)  # by distance, then index
            idx[s : s + chunk] = np.take_along_axis(part, order, 1)
            dist[s : s + chunk] = np.take_along_axis(pd, order, 1)
        return idx, dist


def brute_neighbours(
    x: np.ndarray, k: int, *, queries=None, metric: str = "cosine", exclude_self: bool = True, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest rows of ``x`` for the rows ``queries`` (default all), as
    :meth:`NeighbourIndex.query` (build the index once to query many times)."""
    return NeighbourIndex(x, metric).query(queries, k, exclude_self=exclude_self, chunk=chunk)


def nearest(
    x: np.ndarray, k: int, *, queries=None, metric: str = "cosine", method: str = "auto", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`brute_neighbours`, or pynndescent (``method="approx"``, or ``auto`` above
    :data:`APPROX_FROM` images) when all images are queried; the query itself is left out."""
    n = len(x)
    if method not in ("auto", "brute", "approx"):
        raise DatasetError(f"unknown neighbour method {method!r}; valid: auto, brute, approx")
    approx = method == "approx" or (method == "auto" and n > APPROX_FROM and queries is None)
    if not approx:
        return brute_neighbours(x, k, queries=queries, metric=metric)
    from pynndescent import NNDescent

    k = min(int(k), n - 1)
    index = NNDescent(
        _prep(x, metric),
        metric="cosine" if metric == "cosine" else "euclidean",
        n_neighbors=max(2 * k + 1, 30),
        random_state=seed,
        n_jobs=1,
    )
    idx, dist = index.neighbor_graph
    out_i = np.empty((n, k), np.int64)
    out_d = np.empty((n, k), np.float32)
    for i in range(n):  # drop the point itself wherever (or whether) it appears
        keep = idx[i] != i
        out_i[i], out_d[i] = idx[i][keep][:k], dist[i][keep][:k]
    if queries is not None:
        q = np.asarray(queries, np.int64).reshape(-1)
        return out_i[q], out_d[q]
    return out_i, out_d


def class_of(table: dict) -> np.ndarray:
    """Each image's class for neighbour statistics: its label, or the prediction when unlabelled."""
    return np.where(table["label"] >= 0, table["label"], table["pred"])


def class_share(idx: np.ndarray, classes: np.ndarray, query_classes: np.ndarray | None = None) -> np.ndarray:
    """Per query, the fraction of its neighbours ``idx (q, k)`` whose class is the query's."""
    qc = classes[: len(idx)] if query_classes is None else np.asarray(query_classes)
    return (classes[idx] == qc[:, None]).mean(1)


def store_neighbours(
    store,
    layer: str,
    image: int,
    k: int = 16,
    *,
    metric: str = "cosine",
    pool: str = "mean",
    x: np.ndarray | None = None,
) -> Neighbours:
    """The ``k`` captured images nearest to store image ``image`` in ``layer``'s descriptor space."""
    table = image_table(store)
    rows = table["rows"]
    pos = np.flatnonzero(rows == int(image))
    if not len(pos):
        raise DatasetError(
            f"image {image} is not a captured image of {store.path} (0..{store.n_images - 1}, captured ones only)"
        )
    x = descriptors(store, layer, rows, pool) if x is None else x
    idx, dist = brute_neighbours(x, k, queries=pos, metric=metric)
    cls = class_of(table)
    return Neighbours(int(image), rows[idx[0]], dist[0], cls[idx[0]] == cls[pos[0]], layer, metric)


def share_table(
    store, image: int | None, k: int = 16, *, metric: str = "cosine", pool: str = "mean", layers=None
) -> list[dict]:
    """Per layer: the share of the query's ``k`` neighbours with its class, and the mean share
    over every captured image (where in the network the classes separate)."""
    from volviz.analysis.dataset.descriptors import NoDescriptorsError

    table = image_table(store)
    cls = class_of(table)
    out = []
    for layer in layers or list(store.layers):
        try:
            x = descriptors(store, layer, table["rows"], pool)
        except NoDescriptorsError:
            continue
        idx, _ = nearest(x, k, metric=metric)
        share = class_share(idx, cls)
        row = {"layer": layer, "dim": int(x.shape[1]), "mean_share": float(share.mean())}
        if image is not None:
            pos = np.flatnonzero(table["rows"] == int(image))
            if not len(pos):
                raise DatasetError(f"image {image} is not a captured image of {store.path}")
            row["query_share"] = float(share[pos[0]])
        out.append(row)
    return out
