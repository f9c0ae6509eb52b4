"""Filter orders for layer volumes: natural, PCA, k-means, two-level k-means, slice rows.

A layer's output is a volume of shape ``(C, H, W)``: C filter maps stacked one over another.
Filter order carries no meaning in a trained network, so the volume looks like noise along the
C axis. An *orderer* computes a permutation of the C filters that puts similar filters next to
each other ([Jain2016] section 3.1.3), and for clustering orders also where the clusters start,
so a view can draw separators between them.

All orderers follow the scikit-learn estimator shape: ``__init__`` stores parameters only,
``fit(X)`` returns ``self``, learned attributes end in ``_``.  After ``fit``:

``order_``
    int array (C,), a permutation: position ``p`` of the reordered volume shows filter
    ``order_[p]``.
``labels_``
    int array (C,), the cluster of each ORIGINAL filter (all zeros when nothing is clustered).
    Cluster ids follow the new order: cluster 0 comes first, so ``labels_[order_]`` is
    non-decreasing.
``boundaries_``
    int array, the positions ``p > 0`` (in the new order) where a new cluster starts, i.e. where a
    separator is drawn between positions ``p - 1`` and ``p``.  Empty for one cluster.
``had_nonfinite_``
    True when the fitted input held NaN or Inf (they were replaced by 0 for fitting).

What ``fit`` accepts (``stacked=None`` picks by dimension; pass it to say otherwise):

- one layer output: ``(C,)``, ``(C, D)`` or ``(C, H, W)``; the features of filter ``c`` are
  ``X[c]`` flattened;
- a stack over N images: ``(N, C, H, W)`` (or ``(N, C, D)`` / ``(N, C)`` with ``stacked=True``);
  the features of filter ``c`` are its maps over all N images concatenated, so ONE order is fitted
  for the whole image set and stays fixed while the image (time) slider moves.

This module uses numpy and scikit-learn only (no torch, no VTK).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> vol = rng.normal(size=(16, 8, 8))
>>> orderer = make_orderer("kmeans", n_clusters=4).fit(vol)
>>> orderer.transform(vol).shape
(16, 8, 8)
>>> sorted(orderer.order_.tolist()) == list(range(16))
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.preprocessing import StandardScaler

from volviz.analysis.reorder_math import (  # noqa: F401
    _as_float,
    _boundaries,
    _chain,
    _channel_axis,
    _filter_features,
    _finite,
    _fix_sign,
    _is_constant,
    _kmeans,
    _local_directions,
    _ordered_clusters,
    _pc1,
    _reference,
    _sort_along,
    _two_opt,
)

__all__ = [
    "ORDER_NAMES",
    "REORDERINGS",
    "Reordering",
    "reordering",
    "KMeansOrder",
    "NaturalOrder",
    "PCAOrder",
    "SliceOrder",
    "TwoLevelKMeansOrder",
    "make_orderer",
]

# --------------------------------------------------------------------------- estimators


class _BaseOrderer(BaseEstimator):
    """Shared ``fit`` / ``transform``; subclasses implement ``_fit_features(F)``."""

    def fit(self, X, y=None, *, stacked: bool | None = None):
        """Fit the order on one layer output or on a stack over images.

        Parameters
        ----------
        X : array_like
            ``(C,)``, ``(C, D)``, ``(C, H, W)`` or a stack ``(N, C, H, W)``.
        y : None
            Ignored (scikit-learn convention).
        stacked : bool or None
            True: axis 0 indexes images and axis 1 filters (use it for ``(N, C, D)`` or
            ``(N, C)``); False: axis 0 indexes filters; None: stacked when ``X.ndim >= 4``.

        Returns
        -------
        self
        """
        F, self.had_nonfinite_ = self._features(X, stacked)
        self.n_filters_ = F.shape[0]
        order, labels = self._fit_features(F)
        self.order_ = np.asarray(order, dtype=np.intp)
        self.labels_ = np.asarray(labels, dtype=np.intp)
        self.boundaries_ = _boundaries(self.labels_[self.order_])
        return self

    def _features(self, X, stacked):
        return _filter_features(X, stacked)

    def _fit_features(self, F: np.ndarray):  # pragma: no cover - abstract
        raise NotImplementedError

    def transform(self, X, *, stacked: bool | None = None) -> np.ndarray:
        """Return X with its filters in the fitted order (values untouched, NaN included).

        Filters lie on axis 0, or on axis 1 for a stack (``stacked=None``: when ``X.ndim >= 4``).
        """
        if not hasattr(self, "order_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet: call fit(X) first")
        X = np.asarray(X)
        axis = _channel_axis(X.ndim, stacked)
        if X.shape[axis] != self.n_filters_:
            raise ValueError(
                f"X has {X.shape[axis]} filters on axis {axis} (shape {X.shape}), the order was "
                f"fitted on {self.n_filters_}; pass stacked=True for an (N, C, ...) stack"
            )
        return np.take(X, self.order_, axis=axis)

    def fit_transform(self, X, y=None, *, stacked: bool | None = None) -> np.ndarray:
        """``fit(X)`` then ``transform(X)``."""
        return self.fit(X, stacked=stacked).transform(X, stacked=stacked)


class NaturalOrder(_BaseOrderer):
    """The identity order: filters as the network stores them."""

    def _fit_features(self, F):
        C = F.shape[0]
        return np.arange(C), np.zeros(C)


class PCAOrder(_BaseOrderer):
    """Sort filters by their projection on the first principal component of the filter vectors.

    Each filter's map (over all images for a stack) is flattened to a vector; PCA over the C
    vectors; filters sorted by increasing projection (stable argsort, ties keep index order).

    Sign convention: the principal direction is flipped so that its entry of largest absolute
    value (the first one on ties) is positive, the convention of scikit-learn's ``svd_flip``.
    Constant input (all filter vectors equal) gives the natural order.

    Parameters
    ----------
    random_state : int, RandomState or None
        Used only by the randomized solver.
    standardize : bool
        Scale every feature (pixel) to unit variance across filters before PCA
        (``StandardScaler``), so that the few high-variance pixels do not dominate.
    svd_solver : str
        Passed to ``sklearn.decomposition.PCA``; the default ``"full"`` is exact and
        deterministic, ``"randomized"`` is faster for very long filter vectors.

    Attributes
    ----------
    order_, labels_, boundaries_, had_nonfinite_, n_filters_
        See the module docstring.
    projection_ : ndarray (C,)
        Projection of each ORIGINAL filter on the component (zeros for constant input).
    component_ : ndarray (D,) or None
        The sign-fixed first principal direction (None for constant input).
    explained_variance_ratio_ : float
        Share of the variance along the component (nan for constant input).
    """

    def __init__(self, random_state=None, standardize: bool = False, svd_solver: str = "full"):
        self.random_state = random_state
        self.standardize = standardize
        self.svd_solver = svd_solver

    def _fit_features(self, F):
        C = F.shape[0]
        if self.standardize and not _is_constant(F):
            F = StandardScaler().fit_transform(F)
        pc = _pc1(F, svd_solver=self.svd_solver, random_state=self.random_state)
        if pc is None:
            self.component_, self.projection_ = None, np.zeros(C)
            self.explained_variance_ratio_ = float("nan")
            return np.arange(C), np.zeros(C)
        self.component_, self.projection_, self.explained_variance_ratio_ = pc
        return np.argsort(self.projection_, kind="stable"), np.zeros(C)


class KMeansOrder(_BaseOrderer):
    """Group filters by k-means; order the clusters by centroid similarity.

    1. ``sklearn.cluster.KMeans`` on the filter vectors (``n_clusters`` clamped to C; clusters
       left empty because filters repeat are dropped).
    2. Clusters are chained: greedy nearest-neighbour path over the centroids, started at the
       centroid lowest on the first principal component of the filters, then improved by 2-opt
       (an approximate shortest open path), so adjacent clusters have close centroids even when
       the clusters lie on a curved chain, where sorting centroids by one PCA projection folds.
       The path runs from low to high first-component projection.
    3. Inside a cluster, filters are sorted by their projection on the local chain direction
       (next centroid minus previous centroid), so the filters most like the previous cluster
       come first and those most like the next come last.  With one cluster this is the first
       principal direction (the PCA order).

    Parameters
    ----------
    n_clusters : int
    random_state : int, RandomState or None
    n_init : int or "auto"
        Passed to ``KMeans``.

    Attributes
    ----------
    order_, labels_, boundaries_, had_nonfinite_, n_filters_
        See the module docstring; ``labels_`` ids follow the new order.
    n_clusters_ : int
        Number of non-empty clusters.
    cluster_centers_ : ndarray (n_clusters_, D)
        Mean filter vector of each cluster, indexed by ``labels_`` id.
    """

    def __init__(self, n_clusters: int = 10, random_state=0, n_init=10):
        self.n_clusters = n_clusters
        self.random_state = random_state
        self.n_init = n_init

    def _fit_features(self, F):
        if int(self.n_clusters) < 1:
            raise ValueError(f"n_clusters must be >= 1, got {self.n_clusters}")
        labels, centers = _kmeans(F, self.n_clusters, self.random_state, self.n_init)
        seq, dirs = _ordered_clusters(centers, _reference(F))
        order = np.concatenate([_sort_along(F, np.flatnonzero(labels == c), d) for c, d in zip(seq, dirs)])
        rank = np.empty(len(seq), dtype=np.intp)
        rank[seq] = np.arange(len(seq))
        self.n_clusters_ = len(seq)
        self.cluster_centers_ = centers[seq]
        return order, rank[labels]


class TwoLevelKMeansOrder(_BaseOrderer):
    """[Jain2016]'s "20 x 5 means": k-means into ``n_outer`` clusters, each split into ``n_inner``.

    Outer clusters are ordered as in :class:`KMeansOrder`.  Inside each outer cluster, k-means
    into up to ``n_inner`` clusters (clamped to the outer cluster's size), the inner clusters
    chained the same way and run along the outer chain's local direction, filters sorted along
    the inner chain's local direction.

    Attributes
    ----------
    order_, labels_, boundaries_, had_nonfinite_, n_filters_
        ``labels_`` and ``boundaries_`` are those of the OUTER clusters.
    inner_labels_ : ndarray (C,)
        Inner cluster of each original filter, numbered over the whole order (0, 1, ... in
        order of appearance), unique across outer clusters.
    inner_boundaries_ : ndarray
        Positions p > 0 where a new inner cluster starts (this includes every outer boundary).
    n_clusters_, n_inner_clusters_ : int
        Numbers of non-empty outer clusters and of inner clusters in all.
    """

    def __init__(self, n_outer: int = 20, n_inner: int = 5, random_state=0, n_init=10):
        self.n_outer = n_outer
        self.n_inner = n_inner
        self.random_state = random_state
        self.n_init = n_init

    def _fit_features(self, F):
        if int(self.n_outer) < 1 or int(self.n_inner) < 1:
            raise ValueError(f"n_outer and n_inner must be >= 1, got {self.n_outer}, {self.n_inner}")
        labels, centers = _kmeans(F, self.n_outer, self.random_state, self.n_init)
        seq, dirs = _ordered_clusters(centers, _reference(F))
        order, inner = [], np.empty(F.shape[0], dtype=np.intp)
        next_inner = 0
        for c, direction in zip(seq, dirs):
            members = np.flatnonzero(labels == c)
            sub = F[members]
            sub_labels, sub_centers = _kmeans(sub, self.n_inner, self.random_state, self.n_init)
            sub_seq, sub_dirs = _ordered_clusters(sub_centers, direction)
            for s, d in zip(sub_seq, sub_dirs):
                part = members[_sort_along(sub, np.flatnonzero(sub_labels == s), d)]
                order.append(part)
                inner[part] = next_inner
                next_inner += 1
        order = np.concatenate(order)
        rank = np.empty(len(seq), dtype=np.intp)
        rank[seq] = np.arange(len(seq))
        self.inner_labels_ = inner
        self.inner_boundaries_ = _boundaries(inner[order])
        self.n_clusters_ = len(seq)
        self.n_inner_clusters_ = next_inner
        return order, rank[labels]


class SliceOrder(_BaseOrderer):
    """Order filters from one vertical slice of the volume ([Jain2016] section 3.1.3).

    The slice is the ``C x W`` matrix at row ``index`` (``axis="row"``) or the ``C x H`` matrix at
    column ``index`` (``axis="col"``); each filter is one row of it.  For a stack
    ``(N, C, H, W)`` the filter's slice rows of all N images are concatenated.  The rows are then
    ordered by :class:`PCAOrder` (``method="pca"``) or :class:`KMeansOrder`
    (``method="kmeans"``).  Only that slice is read: the rest of the volume has no effect.

    Parameters
    ----------
    method : {"pca", "kmeans"}
    axis : {"row", "col"}
    index : int or None
        Row (or column) of the slice; None is the middle one (``H // 2`` or ``W // 2``);
        negative values count from the end.
    n_clusters, random_state, n_init
        Passed to the k-means order (``random_state`` also to the PCA order).

    Attributes
    ----------
    order_, labels_, boundaries_, had_nonfinite_, n_filters_
        See the module docstring.
    index_ : int
        The slice actually used (non-negative).
    orderer_ : PCAOrder or KMeansOrder
        The fitted orderer of the slice rows.
    """

    def __init__(
        self,
        method: str = "pca",
        axis: str = "row",
        index: int | None = None,
        n_clusters: int = 7,
        random_state=0,
        n_init=10,
    ):
        self.method = method
        self.axis = axis
        self.index = index
        self.n_clusters = n_clusters
        self.random_state = random_state
        self.n_init = n_init

    def _features(self, X, stacked):
        if self.method not in ("pca", "kmeans"):
            raise ValueError(f"method must be 'pca' or 'kmeans', got {self.method!r}")
        if self.axis not in ("row", "col"):
            raise ValueError(f"axis must be 'row' or 'col', got {self.axis!r}")
        X = np.asarray(X)
        if stacked is None:
            stacked = X.ndim == 4
        if X.ndim != (4 if stacked else 3):
            want = "(N, C, H, W)" if stacked else "(C, H, W)"
            raise ValueError(f"SliceOrder needs a volume {want}, got shape {X.shape}")
        spatial = -2 if self.axis == "row" else -1
        size = X.shape[spatial]
        index = size // 2 if self.index is None else int(self.index)
        if not -size <= index < size:
            raise ValueError(f"slice index {index} out of range for {self.axis} size {size}")
        self.index_ = index % size
        # (C, W) or (N, C, W) for a row slice; (C, H) / (N, C, H) for a column slice
        piece = np.take(X, self.index_, axis=X.ndim + spatial)
        return _filter_features(piece, stacked)

    def _fit_features(self, F):
        if self.method == "pca":
            self.orderer_ = PCAOrder(random_state=self.random_state)
        else:
            self.orderer_ = KMeansOrder(n_clusters=self.n_clusters, random_state=self.random_state, n_init=self.n_init)
        self.orderer_.fit(F)
        return self.orderer_.order_, self.orderer_.labels_


# --------------------------------------------------------------------------- the registry


def _no_defaults(n_filters: int) -> dict:
    return {}


def _kmeans_defaults(n_filters: int) -> dict:
    return {"n_clusters": max(2, min(10, n_filters // 4))}


def _kmeans2_defaults(n_filters: int) -> dict:
    return {"n_outer": max(2, min(20, n_filters // 5)), "n_inner": 5}


@dataclass(frozen=True)
class Reordering:
    """One filter order and everything its users need to know about it: the CLI's ``--order``
    choices, the app's select and clusters slider and the views' parameter defaults all read
    :data:`REORDERINGS`, so a new order is one entry here.

    Attributes
    ----------
    name : the name on the command line and in scene files.
    title : what the app's select calls it.
    cls : the estimator class.
    fixed : constructor arguments the name implies (``method="pca"`` for ``slice-pca``).
    clusters : the parameter that counts clusters (the app's *clusters* slider, ``--clusters``);
        None when the order draws no separators.
    seeded : the estimator takes ``random_state``.
    defaults : ``defaults(n_filters) -> dict``: parameters for a layer of that many filters.
    """

    name: str
    title: str
    cls: type
    fixed: dict = field(default_factory=dict)
    clusters: str | None = None
    seeded: bool = True
    defaults: Callable[[int], dict] = _no_defaults

    def make(self, **kw) -> _BaseOrderer:
        """The estimator with ``kw`` (no defaults applied)."""
        clash = set(kw) & set(self.fixed)
        if clash:
            fixed = ", ".join(f"{k}={self.fixed[k]!r}" for k in sorted(clash))
            raise ValueError(f"order {self.name!r} fixes {fixed}; do not pass {', '.join(sorted(clash))}=")
        return self.cls(**self.fixed, **kw)

    def build(self, n_filters: int, *, clusters: int | None = None, random_state=0, **params) -> _BaseOrderer:
        """The estimator for a layer of ``n_filters``: the defaults, then ``clusters`` (None or 0:
        automatic), then ``params`` (None values are ignored)."""
        kw = self.defaults(int(n_filters))
        if self.clusters and clusters:
            kw[self.clusters] = int(clusters)
        kw.update({k: v for k, v in params.items() if v is not None})
        if self.seeded:
            kw.setdefault("random_state", random_state)
        return self.make(**kw)


REORDERINGS: dict[str, Reordering] = {
    r.name: r
    for r in (
        Reordering("natural", "natural", NaturalOrder, seeded=False),
        Reordering("pca", "PCA (filter outputs)", PCAOrder, seeded=False),
        Reordering("kmeans", "k-means, separators", KMeansOrder, clusters="n_clusters", defaults=_kmeans_defaults),
        Reordering("kmeans2", "two-level k-means", TwoLevelKMeansOrder, clusters="n_outer", defaults=_kmeans2_defaults),
        Reordering("slice-pca", "slice-row PCA", SliceOrder, {"method": "pca"}),
        Reordering(
            "slice-kmeans",
            "slice-row k-means",
            SliceOrder,
            {"method": "kmeans"},
            clusters="n_clusters",
            defaults=_kmeans_defaults,
        ),
    )
}
ORDER_NAMES: tuple[str, ...] = tuple(REORDERINGS)


def reordering(name: str) -> Reordering:
    """The registry entry of ``name`` (``"_"`` and ``"-"`` interchangeable, case ignored)."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in REORDERINGS:
        raise ValueError(f"unknown order {name!r}; valid names: {', '.join(ORDER_NAMES)}")
    return REORDERINGS[key]


def make_orderer(name: str, **kw) -> _BaseOrderer:
    """Build an orderer by name (one of :data:`ORDER_NAMES`); ``kw`` go to its constructor.

    ``"_"`` and ``"-"`` are interchangeable and case is ignored (``"slice_PCA"`` works).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid ones), or ``method=`` given to a
        ``slice-*`` name (the name already fixes it).
    TypeError
        For a keyword the orderer does not take.
    """
    return reordering(name).make(**kw)
