"""Gradient time series by class groups [Jain2016, §3.2.2].

Given a reference class ``r`` (the output neuron analysed), pick images of

* the reference class,
* the most SIMILAR class and
* the most DISSIMILAR class,

each correctly classified and misclassified where such images exist, and order them into one
sequence the time slider plays: ``[(image index, group label), ...]``. The gradients shown for
every image are those of neuron ``r`` ([Jain2016] made the loss a function of the analysed neuron
only), so images of other classes show how much neuron ``r`` depends on the weights when the input
is NOT of its class. One colour scale is shared by the whole sequence (the global max |grad|), so
the magnitude difference between groups is visible.

Class similarity, two choices (``by``):

``confusion`` (default)
    soft confusion: ``P[a, b]`` = mean softmax probability of class ``b`` over the images labelled
    ``a``; similarity of ``r`` and ``c`` = ``(P[r, c] + P[c, r]) / 2``. Probabilities rather than
    hard counts, because a 98 %-accurate model confuses most class pairs zero times and counts
    would leave the dissimilar class a tie among many.
``descriptor``
    distance between the class means of a layer's activation vectors (by default the input of the
    last layer, i.e. the "CNN code"); similar = nearest mean, dissimilar = farthest.

Within a group, the images shown are the most confident ones: correct images with the highest
probability of their class, misclassified images with the highest probability of the wrong class.
:class:`GroupsReport` is what ``volviz groups`` computes and writes (``sequence.json``; the strip PNG
is :func:`volviz.views.figures.write_groups_report`'s) and reads back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from volviz.analysis.importance import class_index
from volviz.analysis.report_io import read_inside, write_files
from volviz.errors import AnalysisError, EmptyClassError

__all__ = [
    "GroupItem",
    "ClassGroups",
    "soft_confusion",
    "confusion_similarity",
    "descriptor_similarity",
    "pick_class_groups",
    "class_groups_from_store",
    "GroupGradients",
    "group_gradients",
    "magnitude_by_class",
    "group_stats",
    "GroupsReport",
]

BY = ("confusion", "descriptor")


@dataclass
class GroupItem:
    index: int  # image index (in the store / the image list the labels came from)
    group: str  # "reference" | "similar" | "dissimilar"
    class_index: int
    correct: bool
    pred: int
    prob: float  # probability of the predicted class
    label: str  # human-readable group label for the time slider
    store_target: int = -1  # the neuron whose gradients the store holds for this image (-1: unknown)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ClassGroups:
    reference: int
    similar: int
    dissimilar: int
    by: str
    similarity: np.ndarray  # (K,) similarity of each class to the reference (NaN: no images)
    items: list[GroupItem]
    missing: list[str] = field(default_factory=list)  # groups with no image, and why
    class_names: list[str] | None = None

    def name(self, k: int) -> str:
        return self.class_names[k] if self.class_names else str(k)

    @property
    def store_has_reference_gradients(self) -> bool:
        """True when the store's gradients of every image in the sequence are those of the
        reference neuron (a capture with ``--target <reference>``); otherwise (the default
        ``--target true``) an app shows :func:`group_gradients` instead of the stored arrays."""
        return all(it.store_target == self.reference for it in self.items)

    def sequence(self) -> list[tuple[int, str]]:
        """What the time slider plays: (image index, group label), in order."""
        return [(it.index, it.label) for it in self.items]

    def to_dict(self) -> dict:
        return {
            "reference": self.name(self.reference),
            "similar": self.name(self.similar),
            "dissimilar": self.name(self.dissimilar),
            "by": self.by,
            "similarity": {
                self.name(k): (None if not np.isfinite(v) else round(float(v), 6))
                for k, v in enumerate(self.similarity)
            },
            "sequence": [it.to_dict() for it in self.items],
            "missing": self.missing,
            "store_has_reference_gradients": self.store_has_reference_gradients,
            "class_names": self.class_names,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ClassGroups:
        """The groups of a :meth:`to_dict` (similarities as written: 6 decimals)."""
        names = d.get("class_names")
        index = (lambda s: names.index(s)) if names else int
        sim = np.array([np.nan if v is None else float(v) for v in d["similarity"].values()])
        return cls(
            index(d["reference"]),
            index(d["similar"]),
            index(d["dissimilar"]),
            d["by"],
            sim,
            [GroupItem(**it) for it in d["sequence"]],
            list(d.get("missing", [])),
            names,
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def table(self) -> str:
        lines = [
            f"reference class {self.name(self.reference)}; most similar {self.name(self.similar)}, "
            f"most dissimilar {self.name(self.dissimilar)} (by {self.by})",
            f"{'step':>4} {'image':>6}  {'group':<40} {'pred':>6} {'p(pred)':>8}",
        ]
        for s, it in enumerate(self.items):
            lines.append(f"{s:>4} {it.index:>6}  {it.label:<40} {self.name(it.pred):>6} {it.prob:>8.3f}")
        lines += [f"missing: {m}" for m in self.missing]
        return "\n".join(lines)


def soft_confusion(probs: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K): row a = mean softmax probabilities over the images labelled a (NaN row: none)."""
    P = np.full((n_classes, n_classes), np.nan)
    for a in range(n_classes):
        sel = labels == a
        if sel.any():
            P[a] = probs[sel].astype(np.float64).mean(0)
    return P


def confusion_similarity(probs: np.ndarray, labels: np.ndarray, reference: int) -> np.ndarray:
    K = probs.shape[1]
    P = soft_confusion(probs, labels, K)
    return (P[reference] + P[:, reference]) / 2


def descriptor_similarity(descriptors: np.ndarray, labels: np.ndarray, reference: int, n_classes: int) -> np.ndarray:
    """Minus the Euclidean distance between class-mean descriptors ``(N, D)`` (bigger = more similar)."""
    d = np.asarray(descriptors, dtype=np.float64).reshape(len(labels), -1)
    means = np.full((n_classes, d.shape[1]), np.nan)
    for a in range(n_classes):
        if (labels == a).any():
            means[a] = d[labels == a].mean(0)
    return -np.linalg.norm(means - means[reference], axis=1)


def pick_class_groups(
    labels: np.ndarray,
    pred: np.ndarray,
    probs: np.ndarray,
    reference: int,
    *,
    by: str = "confusion",
    similarity: np.ndarray | None = None,
    per_group: int = 1,
    class_names: list[str] | None = None,
    indices: np.ndarray | None = None,
) -> ClassGroups:
    """Choose the similar / dissimilar class and the images of each group.

    ``labels, pred, probs``: per image; ``indices``: the image index reported for each row
    (default 0..N-1). ``similarity``: (K,) precomputed (``by='descriptor'``)."""
    labels, pred, probs = np.asarray(labels), np.asarray(pred), np.asarray(probs)
    K = probs.shape[1]
    indices = np.arange(len(labels)) if indices is None else np.asarray(indices)
    name = (lambda k: class_names[k]) if class_names else str
    if by not in BY:
        raise AnalysisError(f"unknown similarity {by!r}; valid: {', '.join(BY)}")
    if not 0 <= reference < K:
        raise AnalysisError(f"reference class {reference} out of range (the model has {K} classes)")
    if per_group < 1:
        raise AnalysisError("per_group must be at least 1")
    if not (labels == reference).any():
        have = sorted(set(int(c) for c in labels if c >= 0))
        raise EmptyClassError(
            f"reference class {name(reference)} has no labelled images; classes with "
            f"images: {', '.join(name(c) for c in have) or 'none (unlabelled set)'}"
        )
    if similarity is None:
        if by != "confusion":
            raise AnalysisError("by='descriptor' needs the similarity computed from descriptors")
        similarity = confusion_similarity(probs, labels, reference)
    sim = np.asarray(similarity, dtype=np.float64).copy()
    present = np.array([(labels == c).any() for c in range(K)])
    others = [c for c in range(K) if c != reference and present[c] and np.isfinite(sim[c])]
    if not others:
        raise EmptyClassError(f"no class other than {name(reference)} has images: nothing to compare with")
    similar = max(others, key=lambda c: (sim[c], -c))
    dissimilar = min(others, key=lambda c: (sim[c], c))
    sim[~present] = np.nan
    items, missing = [], []
    for group, c in (("reference", reference), ("similar", similar), ("dissimilar", dissimilar)):
        of_c = np.flatnonzero(labels == c)
        correct = of_c[pred[of_c] == c]
        wrong = of_c[pred[of_c] != c]
        for ok, sel in ((True, correct), (False, wrong)):
            what = "correct" if ok else "misclassified"
            if len(sel) == 0:
                missing.append(f"{group} class {name(c)}: no {what} image ({len(of_c)} images of the class)")
                continue
            conf = probs[sel, pred[sel]]
            for i in sel[np.argsort(-conf, kind="stable")][:per_group]:
                lab = f"{group} {name(c)} · {what}" + ("" if ok else f" as {name(int(pred[i]))}")
                items.append(GroupItem(int(indices[i]), group, int(c), ok, int(pred[i]), float(probs[i, pred[i]]), lab))
    return ClassGroups(reference, similar, dissimilar, by, sim, items, missing, class_names)


def _activation_rows(rows, ref, layer: str, batch_size: int) -> np.ndarray:
    """Flattened activations of store images ``rows`` (a Dask task, or all of them here)."""
    from volviz.analysis.distributed_map import open_ref

    store = open_ref(ref)
    parts = [
        store.read_batch("activation", layer, rows[s : s + batch_size]).reshape(len(rows[s : s + batch_size]), -1)
        for s in range(0, len(rows), batch_size)
    ]
    return np.concatenate(parts)


def _store_descriptors(
    store, layer: str | None, rows: np.ndarray, batch_size: int = 128, dask=None
) -> tuple[np.ndarray, str]:
    from volviz.analysis.distributed_map import map_ranges, store_ref

    names = list(store.layers)
    if layer is None:
        layer = names[-2] if len(names) >= 2 else names[-1]
    if layer not in store.layers:
        raise AnalysisError(f"layer {layer!r} is not in this store; layers: {', '.join(names)}")
    merge = np.concatenate
    desc = map_ranges(
        _activation_rows, rows, merge, store_ref(store, dask), layer, batch_size, dask=dask, align=batch_size
    )
    return desc, layer


def class_groups_from_store(
    store, reference, *, by: str = "confusion", per_group: int = 1, descriptor_layer: str | None = None, dask=None
) -> ClassGroups:
    """:func:`pick_class_groups` on a store's captured images (indices are store indices);
    ``dask``: the descriptors of ``by="descriptor"`` read on Dask workers."""
    rows = np.flatnonzero(store.done)
    if len(rows) == 0:
        raise AnalysisError(f"{store.path} holds no captured image")
    probs = store.column("probs")[rows]
    labels, pred = store.column("label")[rows], store.column("pred")[rows]
    K = probs.shape[1]
    r = class_index(reference, store.class_names, K)
    sim = None
    if by == "descriptor":
        desc, layer = _store_descriptors(store, descriptor_layer, rows, dask=dask)
        sim = descriptor_similarity(desc, labels, r, K)
        by = f"descriptor ({layer})"
    groups = pick_class_groups(
        labels,
        pred,
        probs,
        r,
        by="descriptor" if sim is not None else by,
        similarity=sim,
        per_group=per_group,
        class_names=store.class_names,
        indices=rows,
    )
    groups.by = by
    target = store.column("target")
    for it in groups.items:
        it.store_target = int(target[it.index])
    return groups


@dataclass
class GroupGradients:
    """Gradients of neuron ``reference`` w.r.t. one layer for every image of a sequence."""

    layer: str
    quantity: str  # grad_weight | grad_activation
    reference: int
    arrays: list[np.ndarray]  # one per sequence item
    norms: np.ndarray  # (S,) Frobenius norm per item
    clim: float  # global max |grad| over the sequence: the shared colour scale

    def group_means(self, groups: ClassGroups) -> dict[str, float]:
        out: dict[str, list[float]] = {}
        for it, n in zip(groups.items, self.norms):
            out.setdefault(it.label, []).append(float(n))
        return {k: float(np.mean(v)) for k, v in out.items()}


def group_gradients(
    model, x, reference: int, layer: str, *, quantity: str = "grad_weight", output: str = "score"
) -> GroupGradients:
    """The gradient of neuron ``reference`` (its ``output``: 'score' before softmax as the capture
    stores, 'prob' or 'log-prob') for each image of ``x (S, C, H, W)`` (the sequence, in order)
    w.r.t. ``layer``'s weight or activation; one backward pass per image (S is small)."""
    import torch

    from volviz.analysis.importance import _output_values, check_weighted_layers
    from volviz.capture.engine import model_logits
    from volviz.capture.tap import LayerTap

    if quantity not in ("grad_weight", "grad_activation"):
        raise AnalysisError(f"quantity must be grad_weight or grad_activation, not {quantity!r}")
    if quantity == "grad_weight":
        check_weighted_layers(model, [layer])
    modules = dict(model.named_modules())
    if layer not in modules:
        raise AnalysisError(f"no layer named {layer!r}")
    arrays = []
    for xi in torch.as_tensor(x):
        with LayerTap(model, [layer]) as tap, torch.enable_grad():
            val = _output_values(model_logits(model(xi[None])), output)[0, int(reference)]
            wrt = modules[layer].weight if quantity == "grad_weight" else tap.records[layer].output
            (g,) = torch.autograd.grad(val, [wrt], allow_unused=True)
        arrays.append(
            np.zeros(tuple(wrt.shape[1:] if quantity == "grad_activation" else wrt.shape), np.float32)
            if g is None
            else (g[0] if quantity == "grad_activation" else g).detach().float().numpy()
        )
    norms = np.array([float(np.linalg.norm(a)) for a in arrays])
    clim = float(max((np.abs(a).max() for a in arrays), default=0.0))
    return GroupGradients(layer, quantity, int(reference), arrays, norms, clim)


def magnitude_by_class(result, layer: str, reference: int) -> dict[int, dict[str, float]]:
    """From an :class:`~volviz.analysis.importance.ImportanceResult` computed with one target
    neuron ``reference`` for every image: per input class, the mean norm of the layer's whole
    weight gradient, over all / correct / misclassified images (NaN where none)."""
    sel_t = result.target == reference
    if not sel_t.any():
        raise EmptyClassError(f"no image was analysed w.r.t. neuron {reference}")
    tot = result.total_norm(layer)
    out = {}
    for c in range(result.n_classes):
        sel = sel_t & (result.label == c)
        if not sel.any():
            continue
        ok = sel & (result.pred == c)
        bad = sel & (result.pred != c)
        out[c] = {
            "n": int(sel.sum()),
            "mean": float(tot[sel].mean()),
            "median": float(np.median(tot[sel])),
            "correct": float(tot[ok].mean()) if ok.any() else float("nan"),
            "misclassified": float(tot[bad].mean()) if bad.any() else float("nan"),
            "n_misclassified": int(bad.sum()),
        }
    return out


def group_stats(store, model, groups: ClassGroups, layer: str, output: str = "score", dask=None) -> dict:
    """Mean norm of the reference neuron's weight gradient over ALL store images of the
    reference, similar and dissimilar class (not only the few in the sequence): whether the
    dissimilar class's gradients are smaller is a claim about classes, not about examples.
    ``dask``: the gradients on Dask workers, a range of those images each."""
    from volviz.analysis.importance import importance_on_the_fly
    from volviz.analysis.inputs import InputSet

    wanted = {groups.reference: "reference", groups.similar: "similar", groups.dissimilar: "dissimilar"}
    labels = store.column("label")
    idx = [int(i) for i in np.flatnonzero(store.done) if int(labels[i]) in wanted]
    inputs = InputSet([store.images[i] for i in idx], store.preprocess)
    res = importance_on_the_fly(
        model,
        inputs,
        [layer],
        target=groups.reference,
        class_names=store.class_names,
        output=output,
        progress=False,
        dask=dask,
        store=store,
    )
    mag = magnitude_by_class(res, layer, groups.reference)
    return {g: dict(mag[c], **{"class": groups.name(c)}) for c, g in wanted.items() if c in mag}


@dataclass
class GroupsReport:
    """What ``volviz groups`` computes: the groups, the reference neuron's gradients of the
    sequence and (optionally) the magnitudes over all images of the three classes. Written as
    ``sequence.json``; read back without the gradient arrays (``gradients.arrays`` is empty)."""

    groups: ClassGroups
    gradients: GroupGradients
    output: str = "score"
    stats: dict = field(default_factory=dict)
    store: str = ""

    @classmethod
    def compute(
        cls,
        store,
        model,
        reference,
        *,
        by: str = "confusion",
        per_group: int = 1,
        descriptor_layer: str | None = None,
        layer: str | None = None,
        quantity: str = "grad_weight",
        output: str = "score",
        stats: bool = True,
        dask=None,
    ) -> GroupsReport:
        """The groups of ``store`` for ``reference``; gradients of ``layer`` (default: the first
        captured layer with weights) on the store's images, preprocessed as at capture. ``model``:
        the module, or a function returning it (called once the groups are known, so that a bad
        class is reported before a model is loaded). ``dask``: the streamed passes (descriptors,
        the statistics over all images of the three classes) on Dask workers."""
        from torch import nn

        from volviz.analysis.inputs import InputSet

        groups = class_groups_from_store(
            store, reference, by=by, per_group=per_group, descriptor_layer=descriptor_layer, dask=dask
        )
        model = model if isinstance(model, nn.Module) else model()
        layer = layer or next((n for n, i in store.layers.items() if i.weight_shape), None) or next(iter(store.layers))
        x = InputSet([store.images[it.index] for it in groups.items], store.preprocess).tensor(range(len(groups.items)))
        gg = group_gradients(model, x, groups.reference, layer, quantity=quantity, output=output)
        st = group_stats(store, model, groups, layer, output, dask) if stats and quantity == "grad_weight" else {}
        return cls(groups, gg, output, st, str(store.path))

    @property
    def differentiated(self) -> str:
        """``S_9``, ``p_9`` or ``log p_9``: the quantity whose gradients are shown."""
        g = self.groups
        return {"score": "S", "prob": "p", "log-prob": "log p"}[self.output] + f"_{g.name(g.reference)}"

    def to_dict(self) -> dict:
        gg = self.gradients
        d = self.groups.to_dict()
        d.update(
            layer=gg.layer,
            quantity=gg.quantity,
            output=self.output,
            clim=gg.clim,
            norms=[float(v) for v in gg.norms],
            store=self.store,
            group_stats=self.stats,
        )
        return d

    def write(self, folder) -> list[str]:
        """``sequence.json`` into ``folder``."""
        return write_files(folder, {"sequence.json": json.dumps(self.to_dict(), indent=1)})

    @classmethod
    def read(cls, folder) -> GroupsReport:
        try:
            d = json.loads(read_inside(folder, "sequence.json"))
            groups = ClassGroups.from_dict(d)
        except (ValueError, KeyError, TypeError):
            raise AnalysisError(
                f"{folder} holds no readable sequence.json: not a `volviz groups --out` folder"
            ) from None
        gg = GroupGradients(
            d["layer"], d["quantity"], groups.reference, [], np.asarray(d["norms"], np.float64), float(d["clim"])
        )
        return cls(groups, gg, d.get("output", "score"), d.get("group_stats", {}), d.get("store", ""))
