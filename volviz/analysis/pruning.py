"""Pruning analysis [Jain2016, §3.2.3]: remove filters by importance and measure each class's error.

* :func:`least_most_table`: for a reference class ``r`` and a layer, zero the ``k`` filters least
  important for ``r`` and, separately, the ``k`` most important ones, and report every class's
  error rate before and after (the table of [Jain2016]).
* :func:`threshold_sweep`: zero every filter whose importance is below a threshold; error rate
  per class and overall against the threshold and against the fraction of filters removed
  ([Jain2016], fig. 7).
* :func:`table_csv` / :func:`table_from_csv` and :meth:`SweepResult.to_csv` /
  :meth:`SweepResult.from_csv`: their files; :class:`volviz.analysis.prune_report.PruneReport`
  puts both together, as ``volviz prune`` and the app's Pruning tab compute, write and read them.

Error rate of class ``c`` = misclassified images of class ``c`` / images of class ``c``
([Jain2016], eq. 2). "Removing" filter ``j`` zeroes ``weight[j]`` and (by default) ``bias[j]`` in a
deep copy of the model, so its output map is exactly zero, as if the filter were cut out; the
caller's model is never modified.
"""

from __future__ import annotations

import copy
import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from volviz.analysis.importance import check_weighted_layers
from volviz.analysis.inputs import InputSet
from volviz.analysis.report_io import csv_text
from volviz.capture.engine import model_logits
from volviz.errors import AnalysisError, EmptyClassError, ThresholdError

__all__ = [
    "ThresholdError",
    "zero_filters",
    "predict",
    "predict_probs",
    "error_rates",
    "PruneRow",
    "least_most_table",
    "table_csv",
    "table_markdown",
    "SweepResult",
    "sweep_thresholds",
    "threshold_sweep",
]


def zero_filters(model: nn.Module, layer: str, filters, *, zero_bias: bool = True) -> nn.Module:
    """A deep copy of ``model`` with output filters ``filters`` of ``layer`` set to zero."""
    modules = dict(model.named_modules())
    check_weighted_layers(model, [layer])
    n_out = modules[layer].weight.shape[0]
    filters = np.asarray(list(filters), dtype=np.int64)
    if filters.size and (filters.min() < 0 or filters.max() >= n_out):
        raise AnalysisError(f"filter index out of range for {layer} ({n_out} filters): {filters.tolist()}")
    pruned = copy.deepcopy(model)
    m = dict(pruned.named_modules())[layer]
    if filters.size:
        idx = torch.from_numpy(filters)
        with torch.no_grad():
            m.weight[idx] = 0
            if zero_bias and isinstance(getattr(m, "bias", None), torch.Tensor):
                m.bias[idx] = 0
    return pruned.eval()


@torch.no_grad()
def predict_probs(model: nn.Module, inputs: InputSet, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities (N, K) of every image of ``inputs``."""
    return np.concatenate(
        [torch.softmax(model_logits(model(x)).double(), 1).numpy() for _, x, _ in inputs.batches(batch_size)]
    )


def predict(model: nn.Module, inputs: InputSet, batch_size: int = 256) -> np.ndarray:
    """Predicted class of every image of ``inputs``."""
    return predict_probs(model, inputs, batch_size).argmax(1)


def _class_prob(p_label: np.ndarray, labels: np.ndarray, c: int) -> float:
    """Mean probability the model gives class c on the images of class c (a finer measure than
    the error rate when only a few images of the class are misclassified); ``p_label[i]`` is the
    probability of image i's own label."""
    sel = labels == c
    return float(p_label[sel].mean()) if sel.any() else float("nan")


def error_rates(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, float, np.ndarray]:
    """Per-class error rate (K,) (NaN for a class without images), overall error rate over the
    labelled images, and the (K,) image counts."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    lab = labels >= 0
    if not lab.any():
        raise AnalysisError("error rates need labelled images (an ImageFolder tree: one subfolder per class)")
    counts = np.bincount(labels[lab], minlength=n_classes)[:n_classes]
    wrong = np.bincount(labels[lab & (pred != labels)], minlength=n_classes)[:n_classes]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, wrong / np.maximum(counts, 1), np.nan)
    return per_class, float((pred[lab] != labels[lab]).mean()), counts


# ---- least / most important ------------------------------------------------------------------
@dataclass
class PruneRow:
    reference: int  # class whose importance ranked the filters
    class_name: str
    layer: str
    k: int
    n_images: int
    error_before: float  # of the reference class
    error_least: float  # least important k filters removed
    error_most: float  # most important k filters removed
    overall_before: float
    overall_least: float
    overall_most: float
    least: list[int] = field(default_factory=list)
    most: list[int] = field(default_factory=list)
    prob_before: float = float("nan")  # mean p(class r) over the class-r images
    prob_least: float = float("nan")
    prob_most: float = float("nan")


def _rank(importance: np.ndarray) -> np.ndarray:
    """Filters from least to most important (stable: ties keep filter order)."""
    return np.argsort(np.asarray(importance, dtype=np.float64), kind="stable")


def least_most_table(
    model: nn.Module,
    inputs: InputSet,
    relevance: dict[str, np.ndarray],
    classes: list[int],
    *,
    k: int = 1,
    class_names: list[str] | None = None,
    zero_bias: bool = True,
    batch_size: int = 256,
    progress: bool = True,
    on_step: Callable[[], None] | None = None,
    dask=None,
    store=None,
) -> list[PruneRow]:
    """``relevance[layer]``: (K, C_out) class-wise relevance. One row per (class, layer).
    ``on_step()`` is called after each row (progress in an app; raising in it stops the run).
    ``dask`` / ``store``: evaluate on Dask workers (:mod:`volviz.analysis.prune_eval`)."""
    from volviz.analysis.prune_eval import make_evaluator

    n_classes = next(iter(relevance.values())).shape[0]
    labels = inputs.labels
    counts = np.bincount(labels[labels >= 0], minlength=n_classes)[:n_classes]
    for r in classes:
        if counts[r] == 0:
            name = class_names[r] if class_names else r
            raise EmptyClassError(f"class {name} has no labelled images in the evaluation set")
    plans = []
    for layer in relevance:
        for r in classes:
            imp = relevance[layer][r]
            if not np.all(np.isfinite(imp)):
                name = class_names[r] if class_names else r
                raise EmptyClassError(
                    f"no importance for class {name} in {layer}: the class has no images "
                    "analysed w.r.t. its own output neuron"
                )
            n_f = len(imp)
            if not 1 <= k < n_f:
                raise AnalysisError(
                    f"k={k} filters cannot be removed from {layer}: it has {n_f} filters (use 1..{n_f - 1})"
                )
            order = _rank(imp)
            plans.append((r, layer, order[:k].tolist(), order[::-1][:k].tolist()))
    evaluate = make_evaluator(model, inputs, zero_bias=zero_bias, batch_size=batch_size, dask=dask, store=store)
    specs = [None] + [s for _, layer, least, most in plans for s in ((layer, least), (layer, most))]
    results = iter(evaluate(specs))
    base_pred, base_p = next(results)
    base, base_all, _ = error_rates(base_pred, labels, n_classes)
    rows = []
    for r, layer, least, most in tqdm(plans, desc="prune least/most", disable=not progress):
        (pred_l, p_l), (pred_m, p_m) = next(results), next(results)
        e_l, a_l, _ = error_rates(pred_l, labels, n_classes)
        e_m, a_m, _ = error_rates(pred_m, labels, n_classes)
        rows.append(
            PruneRow(
                r,
                class_names[r] if class_names else str(r),
                layer,
                k,
                int(counts[r]),
                float(base[r]),
                float(e_l[r]),
                float(e_m[r]),
                base_all,
                a_l,
                a_m,
                least,
                most,
                _class_prob(base_p, labels, r),
                _class_prob(p_l, labels, r),
                _class_prob(p_m, labels, r),
            )
        )
        if on_step is not None:
            on_step()
    return rows


_COLUMNS = [
    "class",
    "layer",
    "k",
    "images",
    "error_before_%",
    "error_least_removed_%",
    "error_most_removed_%",
    "overall_before_%",
    "overall_least_removed_%",
    "overall_most_removed_%",
    "least_filters",
    "most_filters",
    "p_class_before",
    "p_class_least_removed",
    "p_class_most_removed",
]
_HEAD = [
    "class",
    "layer",
    "k",
    "images",
    "initial error (%)",
    "least important removed (%)",
    "most important removed (%)",
    "overall: initial / least / most (%)",
    "mean p(class): initial / least / most",
    "least",
    "most",
]


def _row_values(r: PruneRow) -> list:
    p = lambda v: f"{100 * v:.2f}"  # noqa: E731
    return [
        r.class_name,
        r.layer,
        r.k,
        r.n_images,
        p(r.error_before),
        p(r.error_least),
        p(r.error_most),
        p(r.overall_before),
        p(r.overall_least),
        p(r.overall_most),
        " ".join(map(str, r.least)),
        " ".join(map(str, r.most)),
        f"{r.prob_before:.4f}",
        f"{r.prob_least:.4f}",
        f"{r.prob_most:.4f}",
    ]


def table_csv(rows: list[PruneRow], run: dict | None = None) -> str:
    """``table.csv``: one line per row, then the reference class's index and ``run``'s values
    (the same on every line) so that :func:`table_from_csv` gets back everything."""
    run = run or {}
    return csv_text(
        _COLUMNS + ["class_index"] + list(run), (_row_values(r) + [r.reference] + list(run.values()) for r in rows)
    )


def table_from_csv(text: str) -> tuple[list[PruneRow], dict[str, str]]:
    """The rows of a :func:`table_csv` text (values as written: 0.01 % and 1e-4) and its run values."""
    body = list(csv.DictReader(io.StringIO(text)))
    rows, run = [], {}
    ints = lambda s: [int(v) for v in s.split()]  # noqa: E731
    pct = lambda s: float(s) / 100  # noqa: E731
    for d in body:
        ref = d.get("class_index")
        rows.append(
            PruneRow(
                int(ref) if ref not in (None, "") else -1,
                d["class"],
                d["layer"],
                int(d["k"]),
                int(d["images"]),
                pct(d["error_before_%"]),
                pct(d["error_least_removed_%"]),
                pct(d["error_most_removed_%"]),
                pct(d["overall_before_%"]),
                pct(d["overall_least_removed_%"]),
                pct(d["overall_most_removed_%"]),
                ints(d["least_filters"]),
                ints(d["most_filters"]),
                float(d["p_class_before"]),
                float(d["p_class_least_removed"]),
                float(d["p_class_most_removed"]),
            )
        )
        run = {k: v for k, v in d.items() if k not in _COLUMNS and k != "class_index"}
    return rows, run


def table_cells(rows: list[PruneRow]) -> tuple[list[str], list[list[str]]]:
    """The table as shown (Markdown, the app): header cells and one list of cells per row."""
    cells = []
    for r in rows:
        v = [str(x) for x in _row_values(r)]
        cells.append(v[:7] + [f"{v[7]} / {v[8]} / {v[9]}", f"{v[12]} / {v[13]} / {v[14]}", v[10], v[11]])
    return list(_HEAD), cells


def table_markdown(rows: list[PruneRow]) -> str:
    head, cells = table_cells(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines) + "\n"


# ---- threshold sweep -------------------------------------------------------------------------
@dataclass
class SweepResult:
    layer: str
    reference: str  # "all" or a class name: whose importance ranked filters
    importance: np.ndarray  # (C_out,)
    thresholds: np.ndarray  # (T,)
    n_removed: np.ndarray  # (T,)
    error: np.ndarray  # (T, K) per-class error rate
    overall: np.ndarray  # (T,)
    counts: np.ndarray  # (K,)
    class_names: list[str] | None = None
    # the control: the SAME number of filters removed, most important first
    error_most_first: np.ndarray | None = None  # (T, K)
    overall_most_first: np.ndarray | None = None  # (T,)

    @property
    def fraction_removed(self) -> np.ndarray:
        return self.n_removed / len(self.importance)

    def to_csv(self) -> str:
        """``sweep_<layer>.csv``; the layer, the ranking and the layer's filter count close every
        line so that :meth:`from_csv` gets the sweep back (but not the per-filter importances)."""
        K = self.error.shape[1]
        names = self.class_names or [str(c) for c in range(K)]
        ctrl = self.overall_most_first is not None
        head = (
            ["threshold", "filters_removed", "fraction_removed", "overall_error"]
            + [f"error_{n}" for n in names]
            + (["overall_error_most_first"] if ctrl else [])
            + ["layer", "ranking", "filters"]
        )
        return csv_text(
            head,
            (
                [
                    f"{self.thresholds[t]:.6g}",
                    int(self.n_removed[t]),
                    f"{self.fraction_removed[t]:.4f}",
                    f"{self.overall[t]:.4f}",
                ]
                + [f"{e:.4f}" for e in self.error[t]]
                + ([f"{self.overall_most_first[t]:.4f}"] if ctrl else [])
                + [self.layer, self.reference, len(self.importance)]
                for t in range(len(self.thresholds))
            ),
        )

    @classmethod
    def from_csv(cls, text: str, layer: str = "") -> SweepResult:
        """A sweep from its :meth:`to_csv` text. Not written, so not read: the per-filter
        importances (NaN), the image counts (None) and the per-class control curves (None)."""
        rows = list(csv.reader(io.StringIO(text)))
        head, body = rows[0], rows[1:]
        col = {h: i for i, h in enumerate(head)}
        errs = [i for i, h in enumerate(head) if i >= 4 and h.startswith("error_")]
        num = lambda i: np.array([float(r[i]) for r in body])  # noqa: E731
        removed = num(1).astype(np.int64)
        if "filters" in col and body:
            n_f = int(body[0][col["filters"]])
        else:  # an older file: every filter is removed at the last threshold
            n_f = int(removed.max(initial=0))
        ctrl = col.get("overall_error_most_first")
        return cls(
            body[0][col["layer"]] if "layer" in col and body else layer,
            body[0][col["ranking"]] if "ranking" in col and body else "all",
            np.full(n_f, np.nan),
            num(0),
            removed,
            np.array([[float(r[i]) for i in errs] for r in body]).reshape(len(body), len(errs)),
            num(3),
            None,
            [head[i][len("error_") :] for i in errs],
            None,
            num(ctrl) if ctrl is not None else None,
        )


def sweep_thresholds(importance: np.ndarray, steps: int = 50) -> np.ndarray:
    """Thresholds that remove 0, 1, 2, ... filters: 0 and the midpoints between consecutive
    sorted importance values, then the maximum + a margin (every filter removed); subsampled
    evenly to at most ``steps`` + 1 values when the layer has more filters."""
    v = np.unique(np.asarray(importance, dtype=np.float64))
    cuts = np.concatenate([[0.0], (v[:-1] + v[1:]) / 2, [v[-1] * (1 + 1e-9) + 1e-300]])
    if len(cuts) > steps + 1:
        cuts = cuts[np.unique(np.round(np.linspace(0, len(cuts) - 1, steps + 1)).astype(int))]
    return cuts


def threshold_sweep(
    model: nn.Module,
    inputs: InputSet,
    layer: str,
    importance: np.ndarray,
    *,
    thresholds: np.ndarray | None = None,
    steps: int = 50,
    n_classes: int,
    reference: str = "all",
    class_names: list[str] | None = None,
    zero_bias: bool = True,
    control: bool = True,
    batch_size: int = 256,
    progress: bool = True,
    on_step: Callable[[], None] | None = None,
    dask=None,
    store=None,
) -> SweepResult:
    """Zero every filter of ``layer`` with importance < threshold, for each threshold.

    ``control``: also remove the same NUMBER of filters starting from the most important ones
    (``error_most_first``): if the ranking means anything, that curve rises much earlier.
    ``on_step()`` is called after each threshold (progress in an app; raising in it stops the run).
    ``dask`` / ``store``: evaluate on Dask workers (:mod:`volviz.analysis.prune_eval`)."""
    importance = np.asarray(importance, dtype=np.float64)
    if not np.all(np.isfinite(importance)):
        raise EmptyClassError(f"the importance of {layer} is undefined (no images for the reference class)")
    if thresholds is None:
        thresholds = sweep_thresholds(importance, steps)
    else:
        thresholds = np.sort(np.asarray(thresholds, dtype=np.float64))
        hi = float(importance.max())
        bad = thresholds[(thresholds < 0) | (thresholds > hi) | ~np.isfinite(thresholds)]
        if bad.size:
            raise ThresholdError(
                f"threshold(s) {', '.join(f'{b:.4g}' for b in bad)} outside the range of {layer}'s "
                f"importance [0, {hi:.4g}] (min {importance.min():.4g}); a threshold above the maximum "
                "would remove every filter"
            )
    from volviz.analysis.prune_eval import make_evaluator

    most_first = _rank(importance)[::-1]
    cuts = [np.flatnonzero(importance < t) for t in thresholds]
    specs = [
        s
        for cut in cuts
        for s in [(layer, cut.tolist())] + ([(layer, most_first[: len(cut)].tolist())] if control else [])
    ]
    check_weighted_layers(model, [layer])
    results = iter(
        make_evaluator(model, inputs, zero_bias=zero_bias, batch_size=batch_size, dask=dask, store=store)(specs)
    )
    errs, overall, removed, c_errs, c_overall = [], [], [], [], []
    counts = None
    for cut in tqdm(cuts, desc=f"sweep {layer}", disable=not progress):
        e, a, counts = error_rates(next(results)[0], inputs.labels, n_classes)
        errs.append(e)
        overall.append(a)
        removed.append(len(cut))
        if control:
            e, a, _ = error_rates(next(results)[0], inputs.labels, n_classes)
            c_errs.append(e)
            c_overall.append(a)
        if on_step is not None:
            on_step()
    return SweepResult(
        layer,
        reference,
        importance,
        np.asarray(thresholds),
        np.asarray(removed),
        np.vstack(errs),
        np.asarray(overall),
        counts,
        class_names,
        np.vstack(c_errs) if control else None,
        np.asarray(c_overall) if control else None,
    )
