"""Per-layer health of a trained network on its dataset ([Hong-L4], [Zeiler2014] section 4).

* dead units: never above 0 on any image at any position (they pass nothing to the next layer);
* sparsity: the fraction of a unit's activation values (all images, all positions) that are <= 0;
* filter-to-filter Pearson correlation of the layer's weights (one row per output unit) and the
  fraction of units with a near-duplicate (``r >= dup_threshold`` with another one; a negated
  copy, ``r = -1``, responds to the opposite pattern and is not counted);
* a linear probe: scikit-learn logistic regression from the layer's descriptors to the true class,
  its accuracy on held-out images (stratified 5-fold cross-validation; one 70 / 30 split for
  large sets): how linearly separable the classes are at that depth;
* the confusion table of the model's predictions with an *uncertain* column: images whose top
  probability is below a threshold are counted there instead of under their predicted class.

Activation passes are streamed (one batch of activations in memory); the probe holds the
``(n, D)`` descriptors of at most ``probe_images`` images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from volviz.analysis.dataset.descriptors import NoDescriptorsError, batch_rows, descriptors, done_rows, image_table

#: up to this many images the probe is cross-validated; above, one held-out split
CV_UP_TO = 5000

__all__ = [
    "LayerDiagnostics",
    "Diagnostics",
    "activation_stats",
    "filter_correlation",
    "duplicate_fraction",
    "linear_probe",
    "confusion_with_uncertain",
    "diagnose",
]


@dataclass
class LayerDiagnostics:
    layer: str
    n_units: int
    dead: np.ndarray | None = None  # (U,) bool
    sparsity: np.ndarray | None = None  # (U,) fraction of values <= 0
    correlation: np.ndarray | None = None  # (U, U) of the weights
    duplicate_fraction: float | None = None
    probe_accuracy: float | None = None  # held-out
    probe_train_accuracy: float | None = None
    note: str = ""

    def summary(self) -> dict:
        return {
            "layer": self.layer,
            "units": self.n_units,
            "dead": None if self.dead is None else int(self.dead.sum()),
            "dead_units": None if self.dead is None else np.flatnonzero(self.dead).tolist(),
            "sparsity": None if self.sparsity is None else float(self.sparsity.mean()),
            "duplicate_fraction": self.duplicate_fraction,
            "probe_accuracy": self.probe_accuracy,
            "probe_train_accuracy": self.probe_train_accuracy,
            "note": self.note,
        }


@dataclass
class Diagnostics:
    layers: list[LayerDiagnostics]
    confusion: np.ndarray  # (K, K + 1): true class x (predicted class..., uncertain)
    class_names: list[str]
    threshold: float
    chance: float | None = None  # accuracy of always answering the most common class
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "layers": [d.summary() for d in self.layers],
            "confusion": self.confusion.tolist(),
            "columns": self.class_names + ["uncertain"],
            "rows": self.class_names,
            "uncertain_threshold": self.threshold,
            "probe_chance": self.chance,
            **self.extra,
        }


def activation_stats(store, layer: str, rows=None, batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(U,)`` maximum activation and ``(U,)`` fraction of values <= 0, one streamed pass."""
    rows = done_rows(store) if rows is None else rows
    batch = batch_rows(store, layer, batch)
    hi = le0 = None
    count = 0
    for sel in store.iter_batches(batch, rows):
        a = store.read_batch("activation", layer, sel)
        a = a.reshape(a.shape[0], a.shape[1], -1)  # (b, U, positions)
        m, z = a.max(axis=(0, 2)), (a <= 0).sum(axis=(0, 2))
        hi = m if hi is None else np.maximum(hi, m)
        le0 = z if le0 is None else le0 + z
        count += a.shape[0] * a.shape[2]
    return hi, le0 / max(count, 1)


def filter_correlation(weight: np.ndarray) -> np.ndarray:
    """``(U, U)`` Pearson correlation of the flattened filters ``weight (U, ...)`` (0 for a constant one)."""
    w = np.asarray(weight, np.float64).reshape(len(weight), -1)
    w = w - w.mean(1, keepdims=True)
    norm = np.linalg.norm(w, axis=1)
    w = w / np.where(norm > 0, norm, 1)[:, None]
    return np.clip(w @ w.T, -1, 1)


def duplicate_fraction(corr: np.ndarray, threshold: float = 0.9) -> float:
    """Fraction of units whose filter correlates ``>= threshold`` with another unit's."""
    c = np.array(corr, copy=True)
    np.fill_diagonal(c, -np.inf)
    return float((c.max(1) >= threshold).mean()) if len(c) > 1 else 0.0


def linear_probe(x: np.ndarray, y: np.ndarray, *, seed: int = 0, folds: int = 5) -> tuple[float, float]:
    """Train / held-out accuracy of a standardized logistic regression from ``x`` to ``y``:
    stratified ``folds``-fold cross-validation (fewer folds when a class has fewer images), or
    one 70 / 30 split above :data:`CV_UP_TO` images (where one split is already precise)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_validate, train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    if len(y) > CV_UP_TO:
        xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
        clf.fit(xtr, ytr)
        return float(clf.score(xtr, ytr)), float(clf.score(xte, yte))
    k = int(min(folds, np.bincount(np.unique(y, return_inverse=True)[1]).min()))
    cv = StratifiedKFold(k, shuffle=True, random_state=seed)
    res = cross_validate(clf, x, y, cv=cv, return_train_score=True)
    return float(res["train_score"].mean()), float(res["test_score"].mean())


def confusion_with_uncertain(
    label: np.ndarray, pred: np.ndarray, confidence: np.ndarray, n_classes: int, threshold: float = 0.5
) -> np.ndarray:
    """``(K, K + 1)`` counts: row = true class, column = predicted class, or the last column when the
    top probability is below ``threshold``. Unlabelled images (label -1) are left out."""
    keep = (label >= 0) & (label < n_classes) & (pred >= 0) & (pred < n_classes)
    col = np.where(confidence[keep] < threshold, n_classes, pred[keep])
    out = np.zeros((n_classes, n_classes + 1), np.int64)
    np.add.at(out, (label[keep], col), 1)
    return out


def _probe_data(store, layer, table, pool, probe_images, seed):
    lab = table["label"]
    keep = np.flatnonzero(lab >= 0)
    if len(keep) > probe_images:
        keep = np.sort(np.random.default_rng(seed).choice(keep, probe_images, replace=False))
    y = lab[keep]
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        return None, None, "the probe needs labelled images of at least 2 classes"
    if counts.min() < 2:
        return None, None, "the held-out probe needs at least 2 labelled images of every class"
    return descriptors(store, layer, table["rows"][keep], pool), y, ""


def diagnose(
    store,
    model=None,
    layers=None,
    *,
    pool: str = "mean",
    threshold: float = 0.5,
    dup_threshold: float = 0.9,
    probe_images: int = 20000,
    seed: int = 0,
    batch: int | None = None,
) -> Diagnostics:
    """Every diagnostic for ``layers`` (default: all captured); ``model`` (optional) gives the weights."""
    table = image_table(store)
    modules = dict(model.named_modules()) if model is not None else {}
    out = []
    for layer in layers or list(store.layers):
        info = store.layers[layer]
        d = LayerDiagnostics(layer, int(info.act_shape[0]))
        if store.has("activation", layer):
            hi, d.sparsity = activation_stats(store, layer, table["rows"], batch)
            d.dead = ~(hi > 0)
        else:
            try:
                d.dead = ~(descriptors(store, layer, table["rows"], "max", batch).max(0) > 0)
                d.note = "descriptors only: dead units from the max descriptor, no sparsity"
            except NoDescriptorsError:
                d.note = "no activations or max descriptors stored"
        w = getattr(modules.get(layer), "weight", None)
        if w is not None and w.dim() >= 2:
            d.correlation = filter_correlation(w.detach().cpu().numpy())
            d.duplicate_fraction = duplicate_fraction(d.correlation, dup_threshold)
        try:
            x, y, why = _probe_data(store, layer, table, pool, probe_images, seed)
        except NoDescriptorsError as exc:
            x, why = None, str(exc)
        if x is not None:
            d.probe_train_accuracy, d.probe_accuracy = linear_probe(x, y, seed=seed)
        elif why:
            d.note = (d.note + "; " if d.note else "") + why
        out.append(d)
    k = store.plan.n_outputs
    names = list(store.class_names or [str(i) for i in range(k)])[:k]
    names += [str(i) for i in range(len(names), k)]
    conf = confusion_with_uncertain(table["label"], table["pred"], table["confidence"], k, threshold)
    lab = table["label"][table["label"] >= 0]
    chance = float(np.bincount(lab).max() / len(lab)) if len(lab) else None
    return Diagnostics(
        out,
        conf,
        names,
        threshold,
        chance,
        {"dup_threshold": dup_threshold, "pool": pool, "n_images": int(len(table["rows"]))},
    )
