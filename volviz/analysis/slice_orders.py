"""Filter orders of ONE slice of a layer volume, and how well slices agree on them ([Jain2016]
section 3.1.3).

A vertical slice of a ``(C, H, W)`` volume is the ``C x W`` matrix at a fixed row (or the
``C x H`` matrix at a fixed column): one line of every filter map, stacked. [Jain2016] orders its
rows (the filters) raw, by 10-means, by 7-means with white bars between the clusters, by
"20 x 5 means" and by PCA, and notes that neighbouring slices give almost the same order.
:data:`SLICE_METHODS` lists those orders; each is an entry of the reordering registry
(:data:`volviz.analysis.reorder.REORDERINGS`) fitted on the slice matrix, so the numbers are those
of ``--order slice-kmeans`` / ``slice-pca`` (same estimators, same seeds): nothing is
re-implemented here. "20 x 5 means" is the registry's two-level k-means (``kmeans2``: 20 outer
clusters, each split into up to 5), clamped by the estimator to the filters there are.

:func:`order_agreement` compares slice ``N``'s order with every other slice's, per method, by a
rank correlation (Spearman or Kendall, scipy.stats) of the filters' positions. It reports
``|rho|``: an order read backwards puts the same filters next to each other (PCA's sign and a
cluster chain's direction are arbitrary), and reversing an order negates both statistics.

numpy, scikit-learn (through the registry) and scipy only.

Examples
--------
>>> import numpy as np
>>> vol = np.random.default_rng(0).normal(size=(12, 6, 5))
>>> so = slice_orders(vol, "row", 2)
>>> [p.key for p in so.panels]
['raw', 'kmeans10', 'kmeans7', 'kmeans20x5', 'pca']
>>> so.matrix.shape
(12, 5)
>>> agreement = order_agreement(vol, "row", 2, methods=("pca",))
>>> float(agreement.values["pca"][2])
1.0
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from volviz.analysis.reorder import reordering
from volviz.errors import AnalysisError

__all__ = [
    "AGREEMENT_STATS",
    "SLICE_AXES",
    "SLICE_METHODS",
    "Agreement",
    "SliceError",
    "SliceMethod",
    "SliceOrders",
    "SlicePanel",
    "order_agreement",
    "slice_orders",
    "slice_size",
    "take_slice",
    "with_bars",
]

SLICE_AXES = ("row", "col")
AGREEMENT_STATS = ("spearman", "kendall")


class SliceError(AnalysisError):
    """A slice that does not exist (beyond the layer's height or width, or a layer with no maps)."""


@dataclass(frozen=True)
class SliceMethod:
    """One panel of the slice figure: a registry order with the parameters [Jain2016] names."""

    key: str
    title: str
    order: str  # a name of REORDERINGS
    params: dict = field(default_factory=dict)
    bars: bool = False  # draw white bars between its clusters


SLICE_METHODS: tuple[SliceMethod, ...] = (
    SliceMethod("raw", "raw", "natural"),
    SliceMethod("kmeans10", "10-means", "kmeans", {"n_clusters": 10}),
    SliceMethod("kmeans7", "7-means", "kmeans", {"n_clusters": 7}, bars=True),
    SliceMethod("kmeans20x5", "20 x 5 means", "kmeans2", {"n_outer": 20, "n_inner": 5}),
    SliceMethod("pca", "PCA", "pca"),
)
METHODS_BY_KEY = {m.key: m for m in SLICE_METHODS}


def slice_size(shape, axis: str) -> int:
    """How many slices a ``(C, H, W)`` volume has along ``axis`` (H rows or W columns)."""
    if axis not in SLICE_AXES:
        raise SliceError(f"slice axis must be one of {', '.join(SLICE_AXES)}, got {axis!r}")
    if len(shape) != 3:
        raise SliceError(
            f"a slice needs a layer of maps (C x H x W); this one has shape {tuple(shape)}: pick a conv layer"
        )
    return int(shape[1] if axis == "row" else shape[2])


def take_slice(volume: np.ndarray, axis: str, index: int) -> np.ndarray:
    """The ``C x W`` matrix at row ``index`` (``axis="row"``) or ``C x H`` at column ``index``."""
    volume = np.asarray(volume)
    n = slice_size(volume.shape, axis)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= int(index) < n:
        what = "row" if axis == "row" else "column"
        raise SliceError(f"{what} {index} is out of range: this layer has {n} {what}s, valid 0..{n - 1}")
    return volume[:, int(index), :] if axis == "row" else volume[:, :, int(index)]


def _fit(method: SliceMethod, matrix: np.ndarray, random_state):
    """The registry's estimator for ``method``, fitted on the rows of ``matrix`` (C, L)."""
    r = reordering(method.order)
    return r.build(matrix.shape[0], random_state=random_state, **method.params).fit(matrix, stacked=False)


@dataclass
class SlicePanel:
    key: str
    title: str
    order: np.ndarray  # position p shows filter order[p]
    boundaries: np.ndarray  # positions where a new cluster starts
    n_clusters: int  # clusters actually found (1 when the order does not cluster; outer ones of 20 x 5)
    bars: bool
    n_inner: int = 0  # 20 x 5 means: the inner clusters in all

    @property
    def detail(self) -> str:
        """A line saying what the order did on this slice."""
        if self.key == "raw":
            return "natural order"
        if self.key == "pca":
            return "along PC 1"
        if self.n_inner:
            return f"{self.n_clusters} outer, {self.n_inner} inner"
        return f"{self.n_clusters} clusters" + (", bars" if self.bars else "")


@dataclass
class SliceOrders:
    axis: str
    index: int
    matrix: np.ndarray  # (C, L) the slice in natural filter order
    panels: list[SlicePanel]

    def reordered(self, panel: SlicePanel) -> np.ndarray:
        return self.matrix[panel.order]


def slice_orders(volume, axis: str = "row", index: int = 0, methods=SLICE_METHODS, random_state=0) -> SliceOrders:
    """Every order of ``methods`` fitted on one slice of ``volume`` (C, H, W)."""
    matrix = take_slice(volume, axis, index).astype(np.float32, copy=False)
    panels = []
    for m in methods:
        est = _fit(m, matrix, random_state)
        k, inner = int(getattr(est, "n_clusters_", 1)), int(getattr(est, "n_inner_clusters_", 0))
        panels.append(SlicePanel(m.key, m.title, est.order_, np.asarray(est.boundaries_, int), k, m.bars, inner))
    return SliceOrders(axis, int(index), matrix, panels)


def with_bars(matrix: np.ndarray, boundaries, width: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``matrix`` (C, L) with ``width`` NaN rows inserted before each boundary position (drawn
    white: the bars between clusters). Returns the image and, per image row, the position in
    the order it shows (-1 on a bar)."""
    matrix = np.asarray(matrix, np.float32)
    cuts = sorted(int(b) for b in boundaries if 0 < int(b) < matrix.shape[0])
    rows, where = [], []
    start = 0
    for b in [*cuts, matrix.shape[0]]:
        rows.append(matrix[start:b])
        where.append(np.arange(start, b))
        if b < matrix.shape[0]:
            rows.append(np.full((width, matrix.shape[1]), np.nan, np.float32))
            where.append(np.full(width, -1))
        start = b
    return np.concatenate(rows), np.concatenate(where)


@dataclass
class Agreement:
    axis: str
    index: int  # the reference slice N
    stat: str  # spearman | kendall
    values: dict[str, np.ndarray]  # method key -> |rho| of slice N's order with slice n's, (n_slices,)
    titles: dict[str, str]

    def mean_except_self(self, key: str) -> float:
        v = np.delete(self.values[key], self.index)
        return float(np.nanmean(v)) if v.size else float("nan")


def _positions(order: np.ndarray) -> np.ndarray:
    pos = np.empty(len(order), np.intp)
    pos[order] = np.arange(len(order))
    return pos


def order_agreement(
    volume, axis: str = "row", index: int = 0, methods=None, stat: str = "spearman", random_state=0
) -> Agreement:
    """``|rank correlation|`` of slice ``index``'s filter order with every slice's, per method
    (``methods``: keys of :data:`SLICE_METHODS`; default all but ``raw``, whose order never
    changes). A constant slice (every filter equal) gives no order: NaN there."""
    from scipy import stats

    if stat not in AGREEMENT_STATS:
        raise SliceError(f"agreement statistic must be one of {', '.join(AGREEMENT_STATS)}, got {stat!r}")
    volume = np.asarray(volume)
    n = slice_size(volume.shape, axis)
    take_slice(volume, axis, index)  # the range check
    keys = [m.key for m in SLICE_METHODS if m.key != "raw"] if methods is None else list(methods)
    unknown = [k for k in keys if k not in METHODS_BY_KEY]
    if unknown:
        raise SliceError(f"unknown slice order {unknown[0]!r}; valid: {', '.join(METHODS_BY_KEY)}")
    corr = stats.spearmanr if stat == "spearman" else stats.kendalltau
    values, titles = {}, {}
    for key in keys:
        m = METHODS_BY_KEY[key]
        slices = [take_slice(volume, axis, j).astype(np.float32, copy=False) for j in range(n)]
        constant = [bool(np.ptp(s, axis=0).max() == 0) if s.size else True for s in slices]
        pos = [_positions(_fit(m, s, random_state).order_) for s in slices]
        ref = pos[int(index)]
        out = np.full(n, np.nan)
        for j in range(n):
            if constant[j] or constant[int(index)]:
                continue
            out[j] = 1.0 if j == int(index) else abs(float(corr(ref, pos[j]).statistic))
        values[key], titles[key] = out, m.title
    return Agreement(axis, int(index), stat, values, titles)
