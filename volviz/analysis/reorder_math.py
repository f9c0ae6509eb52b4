"""The numerics behind the filter orders of :mod:`volviz.analysis.reorder`: per-filter features
from a volume (or a stack over images), the first principal component with a fixed sign, k-means,
and chains of clusters that put similar clusters next to each other ([Jain2016] section 5).
numpy and scikit-learn only."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import euclidean_distances

# --------------------------------------------------------------------------- input handling


def _channel_axis(ndim: int, stacked: bool | None) -> int:
    """Axis of the filters: 1 for a stack over images, else 0 (``stacked=None``: ndim >= 4)."""
    if stacked is None:
        stacked = ndim >= 4
    if stacked and ndim < 2:
        raise ValueError(f"a stack over images needs at least 2 dimensions (N, C, ...), got {ndim}")
    return 1 if stacked else 0


def _as_float(X) -> np.ndarray:
    """float32 stays float32 (large stacks); everything else becomes float64."""
    X = np.asarray(X)
    if X.dtype == np.float32:
        return X
    try:
        return X.astype(np.float64, copy=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"expected a numeric array, got dtype {X.dtype}") from exc


def _finite(F: np.ndarray) -> tuple[np.ndarray, bool]:
    """Replace NaN and +-Inf by 0; say whether there were any."""
    if np.isfinite(F).all():
        return F, False
    return np.nan_to_num(F, nan=0.0, posinf=0.0, neginf=0.0), True


def _filter_features(X, stacked: bool | None = None) -> tuple[np.ndarray, bool]:
    """One row per filter: ``(C, D)`` features and whether non-finite values were replaced.

    For a stack ``(N, C, ...)`` row ``c`` is ``X[0, c].ravel()``, ``X[1, c].ravel()``, ...
    concatenated.
    """
    X = _as_float(X)
    if X.ndim == 0:
        raise ValueError("expected an array with a filter axis, got a scalar")
    axis = _channel_axis(X.ndim, stacked)
    C = X.shape[axis]
    if C == 0:
        raise ValueError(f"no filters: the filter axis {axis} of shape {X.shape} has length 0")
    F = np.moveaxis(X, axis, 0).reshape(C, -1)
    return _finite(F)


def _is_constant(F: np.ndarray) -> bool:
    """True when all filter vectors are equal (zero variance), or there is nothing to compare."""
    if F.shape[0] < 2 or F.shape[1] == 0:
        return True
    spread = np.ptp(F, axis=0).max()
    scale = max(1.0, float(np.abs(F).max()))
    return bool(spread <= 1e-12 * scale)


def _boundaries(sorted_labels: np.ndarray) -> np.ndarray:
    """Positions p > 0 where ``sorted_labels[p] != sorted_labels[p - 1]``."""
    return (np.flatnonzero(np.diff(sorted_labels)) + 1).astype(np.intp)


# --------------------------------------------------------------------------- PCA helpers


def _fix_sign(component: np.ndarray) -> np.ndarray:
    """Sign convention: the entry of largest absolute value (first one on ties) is positive.

    This is the convention of scikit-learn's ``svd_flip(u_based_decision=False)``; applying it
    here keeps the order deterministic whatever the solver or library version.
    """
    j = int(np.argmax(np.abs(component)))
    return -component if component[j] < 0 else component


def _pc1(F: np.ndarray, *, svd_solver: str = "full", random_state=None):
    """First principal direction of the rows of F (sign fixed), or None when F is constant.

    Returns ``(component, projection, explained_variance_ratio)`` with
    ``projection = (F - mean) @ component``.
    """
    if _is_constant(F):
        return None
    pca = PCA(n_components=1, svd_solver=svd_solver, random_state=random_state).fit(F)
    component = _fix_sign(pca.components_[0])
    projection = (F - pca.mean_) @ component
    return component, projection, float(pca.explained_variance_ratio_[0])


# --------------------------------------------------------------------------- cluster chains


def _two_opt(path: list[int], dist: np.ndarray, max_passes: int = 100) -> list[int]:
    """Improve an OPEN path through all points by segment reversals (2-opt).

    Reversing ``path[i..j]`` replaces the edges ``(i-1, i)`` and ``(j, j+1)`` by ``(i-1, j)`` and
    ``(i, j+1)``; a missing edge at either end of the path costs 0, so the ends can move too.
    """
    p = np.asarray(path)
    k = len(p)
    tol = 1e-12 * max(1.0, float(dist.max()))
    for _ in range(max_passes):
        improved = False
        for i in range(k - 1):
            js = np.arange(i + 1, k)
            nxt = np.where(js < k - 1, p[np.minimum(js + 1, k - 1)], -1)
            old = np.where(nxt >= 0, dist[p[js], nxt], 0.0)
            new = np.where(nxt >= 0, dist[p[i], nxt], 0.0)
            if i > 0:
                old = old + dist[p[i - 1], p[i]]
                new = new + dist[p[i - 1], p[js]]
            gain = old - new
            best = int(np.argmax(gain))
            if gain[best] > tol:
                j = int(js[best])
                p[i : j + 1] = p[i : j + 1][::-1].copy()
                improved = True
        if not improved:
            break
    return p.tolist()


def _chain(centers: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Order cluster centroids along a 1-D path that keeps similar centroids adjacent.

    Greedy nearest-neighbour chain started at the centroid with the smallest projection on
    ``reference``, then shortened by 2-opt (an approximate shortest open path through the
    centroids, i.e. seriation).  The path is oriented so that its first centroid projects on
    ``reference`` no higher than its last one.
    """
    k = len(centers)
    if k == 1:
        return np.zeros(1, dtype=np.intp)
    dist = euclidean_distances(centers)
    proj = centers @ reference
    start = int(np.argmin(proj))
    path = [start]
    left = np.ones(k, dtype=bool)
    left[start] = False
    for _ in range(k - 1):
        d = np.where(left, dist[path[-1]], np.inf)
        nxt = int(np.argmin(d))
        path.append(nxt)
        left[nxt] = False
    path = _two_opt(path, dist)
    if proj[path[0]] > proj[path[-1]]:
        path.reverse()
    return np.asarray(path, dtype=np.intp)


def _local_directions(centers: np.ndarray, seq: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Per cluster (in ``seq`` order): next centroid minus previous centroid along the chain."""
    k = len(seq)
    if k == 1:
        return fallback[None, :]
    prev = seq[np.maximum(np.arange(k) - 1, 0)]
    nxt = seq[np.minimum(np.arange(k) + 1, k - 1)]
    return centers[nxt] - centers[prev]


def _kmeans(F: np.ndarray, n_clusters: int, random_state, n_init) -> tuple[np.ndarray, np.ndarray]:
    """k-means labels (0..m-1, m <= n_clusters non-empty clusters) and member-mean centroids."""
    k = max(1, min(int(n_clusters), F.shape[0]))
    if k == 1 or _is_constant(F):
        return np.zeros(F.shape[0], dtype=np.intp), F.mean(axis=0, keepdims=True)
    with warnings.catch_warnings():
        # fewer distinct filters than clusters: sklearn warns and leaves clusters empty;
        # the empty ones are dropped just below.
        warnings.filterwarnings("ignore", message="Number of distinct clusters", category=ConvergenceWarning)
        raw = KMeans(n_clusters=k, random_state=random_state, n_init=n_init).fit(F).labels_
    _, labels = np.unique(raw, return_inverse=True)
    labels = labels.astype(np.intp)
    m = int(labels.max()) + 1
    centers = np.stack([F[labels == j].mean(axis=0) for j in range(m)])
    return labels, centers


def _ordered_clusters(centers, reference):
    """Chain the clusters; return (cluster sequence, local direction per sequence position)."""
    seq = _chain(centers, reference)
    return seq, _local_directions(centers, seq, reference)


def _sort_along(F: np.ndarray, members: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Members sorted by their projection on ``direction`` (stable: index order on ties)."""
    proj = F[members] @ direction
    return members[np.argsort(proj, kind="stable")]


def _reference(F: np.ndarray) -> np.ndarray:
    """Sign-fixed first principal direction of F, zeros when F is constant."""
    pc = _pc1(F)
    return pc[0] if pc is not None else np.zeros(F.shape[1], dtype=F.dtype)
