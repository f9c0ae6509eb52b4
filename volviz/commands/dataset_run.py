"""What the dataset subcommands do (their arguments are in ``volviz.commands.dataset``).

Outputs are written complete or not at all: a temporary file or folder beside ``--out``,
renamed at the end."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import numpy as np

from volviz.commands.common import check_output, open_store, store_model
from volviz.errors import StoreError, UserError


# ---- shared -----------------------------------------------------------------------------------
def _threads() -> None:
    from volviz.cli import setup_torch_threads

    setup_torch_threads()


def _layer(store, layer: str | None) -> str:
    if layer is None:
        raise UserError(f"--layer is required; layers of {store.path}: {', '.join(store.layers)}")
    if layer not in store.layers:
        raise UserError(f"--layer {layer!r} is not in {store.path}; layers: {', '.join(store.layers)}")
    return layer


def _image(store, text: str) -> int:
    """An image by index or by its id (file name) in the store."""
    try:
        i = int(text)
    except ValueError:
        images = store.images
        ids = [k for k, (i, p) in enumerate(zip(images.ids, images.paths)) if i == text or os.path.basename(p) == text]
        if not ids:
            raise UserError(f"--image {text!r}: no image of {store.path} has that index or name") from None
        i = ids[0]
    if not 0 <= i < store.n_images or not store.done[i]:
        raise UserError(f"--image {i}: not a captured image of {store.path} (0..{store.n_images - 1})")
    return i


def _class(store, text: str) -> int:
    names = store.class_names or []
    if text in names:
        return names.index(text)
    try:
        c = int(text)
    except ValueError:
        raise UserError(f"--class {text!r}: not a class name ({', '.join(names[:12])}) or index") from None
    if not 0 <= c < store.plan.n_outputs:
        raise UserError(f"--class {c} out of range: the model has {store.plan.n_outputs} classes")
    return c


def _name(store, c: int) -> str:
    names = store.class_names or []
    return names[c] if 0 <= c < len(names) else str(c)


def _model(store, a):
    m = store_model(store, a).module.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _file(path, draw) -> pathlib.Path:
    """Draw into a temporary file beside ``path``, then rename it into place."""
    out = check_output(path, (".png",))
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".volviz-", suffix=".png", dir=out.absolute().parent)
    os.close(fd)
    try:
        draw(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


class _Folder:
    """Files collected in a temporary folder and moved into ``out`` when everything succeeded."""

    def __init__(self, out):
        self.out = pathlib.Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"--out {self.out} exists and is not a folder")
        parent = self.out.absolute().parent
        parent.mkdir(parents=True, exist_ok=True)
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix=".volviz-", dir=parent))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest):
        try:
            if exc_type is None:
                self.out.mkdir(parents=True, exist_ok=True)
                for f in self.tmp.iterdir():
                    os.replace(f, self.out / f.name)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


# ---- embed ------------------------------------------------------------------------------------
def cmd_embed(a) -> int:
    from volviz.analysis.dataset import embed_store, image_table, save_embedding
    from volviz.views.dataset_figures import embedding_figure

    _threads()
    check_output(a.out, (".png",))
    try:
        store = open_store(a.store, "r" if a.no_save else "r+")
    except StoreError as exc:
        if "read-only" not in str(exc):
            raise
        store, a.no_save = open_store(a.store), True
        print(f"note: {a.store} is read-only; the coordinates are not kept in it")
    layer = _layer(store, a.layer)
    emb = embed_store(
        store,
        layer,
        a.method,
        a.dims,
        pool=a.pool,
        seed=a.seed,
        perplexity=a.perplexity,
        n_neighbors=a.neighbors,
        n_jobs=max(1, (os.cpu_count() or 2) - 1),
    )
    if not a.no_save:
        save_embedding(store, emb)
    table = image_table(store, emb.rows)
    title = f"{layer} ({a.pool}) {a.method} {a.dims}-D, {len(emb.rows)} images"
    _file(
        a.out,
        lambda p: embedding_figure(
            emb.coords,
            table,
            p,
            by=a.colour,
            pixels=store.read_inputs if a.thumbnails > 0 else None,
            class_names=store.class_names,
            title=title,
            thumbs=a.thumbnails,
        ),
    )
    kept = "" if a.no_save else f"; coordinates kept in {store.path} (results/embedding/{layer})"
    print(f"{title} -> {a.out}{kept}")
    return 0


# ---- neighbours -------------------------------------------------------------------------------
def cmd_neighbours(a) -> int:
    from volviz.analysis.dataset import share_table, store_neighbours
    from volviz.views.dataset_figures import neighbour_strip

    store = open_store(a.store)
    image = _image(store, a.image)
    if not a.table and not a.out:
        raise UserError("give --out F.png for the neighbour strip, --table for the per-layer table, or both")
    if a.out:
        layer = _layer(store, a.layer)
        nb = store_neighbours(store, layer, image, a.k, metric=a.metric, pool=a.pool)
        labels = store.column("label")
        caps = [f"#{int(r)} {_name(store, int(labels[r]))}\nd={d:.3g}" for r, d in zip(nb.rows, nb.distance)]
        title = (
            f"{layer} ({a.metric}): {nb.same_class.mean():.0%} of the {len(nb.rows)} nearest share "
            f"image {image}'s class"
        )
        _file(
            a.out,
            lambda p: neighbour_strip(
                store.read_input(image), store.read_inputs(nb.rows), caps, nb.same_class, p, title=title
            ),
        )
        print(f"{title} -> {a.out}")
    if a.table:
        rows = share_table(store, image, a.k, metric=a.metric, pool=a.pool)
        print(f"share of the {a.k} nearest images ({a.metric}) with the query's class:")
        print(f"{'layer':<20} {'dim':>6} {'image ' + str(image):>10} {'all images':>11}")
        for r in rows:
            print(f"{r['layer']:<20} {r['dim']:>6} {r['query_share']:>10.3f} {r['mean_share']:>11.3f}")
    return 0


# ---- top examples -----------------------------------------------------------------------------
def cmd_top(a) -> int:
    from volviz.analysis.dataset.topk import top_examples, unit_crops
    from volviz.views.dataset_figures import histogram_figure, topk_grid

    _threads()
    store = open_store(a.store)
    layer = _layer(store, a.layer)
    from volviz.commands.common import dask_options

    top = top_examples(store, layer, a.k, bins=a.bins, dask=dask_options(a))
    units = np.arange(len(top.rows)) if not a.units else np.asarray(a.units)
    if units.max() >= len(top.rows) or units.min() < 0:
        raise UserError(f"--units: {layer} has {len(top.rows)} units (0..{len(top.rows) - 1})")
    crops, boxes = unit_crops(store, _model(store, a), top, units)
    strongest = units[np.argsort(-top.values[units, 0])][:25]
    with _Folder(a.out) as out:
        topk_grid(
            crops,
            top.dead[units],
            out.tmp / f"{layer}_top{a.k}.png",
            units=units,
            title=f"{layer}: top {a.k} images per unit, cut to the receptive field (grey: dead)",
        )
        histogram_figure(
            top.hist_edges,
            top.hist_counts,
            top.values,
            strongest,
            out.tmp / f"{layer}_hist.png",
            title=f"{layer}: score over {top.n_images} images (red: the top {a.k})",
        )
        (out.tmp / f"{layer}_top.json").write_text(
            json.dumps(
                {
                    "layer": layer,
                    "k": a.k,
                    "units": units.tolist(),
                    "rows": top.rows[units].tolist(),
                    "values": np.nan_to_num(top.values[units], neginf=0).round(5).tolist(),
                    "positions": top.positions[units].tolist(),
                    "boxes": boxes.tolist(),
                    "dead": np.flatnonzero(top.dead).tolist(),
                }
            )
        )
    print(f"{layer}: top {a.k} of {top.n_images} images for {len(units)} units, {int(top.dead.sum())} dead -> {a.out}")
    return 0


# ---- occlusion / deconv -----------------------------------------------------------------------
def cmd_occlusion(a) -> int:
    from volviz.analysis.dataset.occlusion import store_occlusion
    from volviz.views.dataset_figures import occlusion_figure

    _threads()
    store = open_store(a.store)
    image = _image(store, a.image)
    target = _class(store, a.cls) if a.cls is not None else None
    res = store_occlusion(store, _model(store, a), image, window=a.window, stride=a.stride, target=target)
    _file(a.out, lambda p: occlusion_figure(res, p, class_names=store.class_names))
    desc = ", ".join(
        f"{k} {_name(store, c)} p={p:.3f} (largest drop {m.max():.3f})"
        for k, c, p, m in zip(res.kinds, res.classes, res.probs, res.maps)
    )
    print(f"image {image}: {desc} -> {a.out}")
    return 0


def cmd_deconv(a) -> int:
    import warnings

    from volviz.analysis.dataset.occlusion import store_deconv
    from volviz.views.dataset_figures import deconv_figure

    _threads()
    store = open_store(a.store)
    layer = _layer(store, a.layer)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        res = store_deconv(store, _model(store, a), layer, a.unit, a.k)
    for w in seen:
        if "deconvnet" in str(w.message):
            print(f"note: {w.message}")
    _file(a.out, lambda p: deconv_figure(res, p))
    print(f"{layer} unit {a.unit}: deconvnet of its top {len(res.rows)} images {res.rows.tolist()} -> {a.out}")
    return 0


# ---- invert / fool ----------------------------------------------------------------------------
def cmd_invert(a) -> int:
    from volviz.analysis.actmax.optimize import Config
    from volviz.analysis.dataset.inversion import DEFAULT_CONFIG, store_inversion
    from volviz.views.dataset_figures import inversion_figure

    _threads()
    store = open_store(a.store)
    layer = a.layer
    rows = [_image(store, i) for i in a.image]
    cfg = DEFAULT_CONFIG.replace(**{k: v for k, v in (("tv", a.tv), ("lr", a.lr), ("param", a.param)) if v is not None})
    assert isinstance(cfg, Config)
    res = store_inversion(store, _model(store, a), layer, rows, steps=a.steps, config=cfg, seed=a.seed)
    _file(a.out, lambda p: inversion_figure(res, p))
    for r, d0, d1 in zip(res.rows, res.distance_start, res.distance_final):
        print(f"image {int(r)}: {layer} code distance {d0:.4f} (start) -> {d1:.5f} ({d0 / max(d1, 1e-12):.0f}x lower)")
    print(f"-> {a.out}")
    return 0


def cmd_fool(a) -> int:
    from volviz.analysis.dataset.fooling import store_fool
    from volviz.views.dataset_figures import fooling_figure

    _threads()
    store = open_store(a.store)
    rows = [_image(store, i) for i in a.image]
    target = _class(store, a.cls)
    res = store_fool(store, _model(store, a), rows, target, confidence=a.confidence, max_steps=a.max_steps, step=a.step)
    _file(a.out, lambda p: fooling_figure(res, p, class_names=store.class_names))
    for i, r in enumerate(res.rows):
        c0, c1 = int(res.prob_before[i].argmax()), int(res.prob_after[i].argmax())
        state = "fooled" if res.success[i] else f"NOT reached {a.confidence} in {a.max_steps} steps"
        print(
            f"image {int(r)}: {_name(store, c0)} (p={res.prob_before[i, c0]:.3f}) -> {_name(store, c1)} "
            f"(p={res.prob_after[i, c1]:.3f}) {state}; perturbation L2 {res.l2[i]:.3f} "
            f"({res.relative_l2[i]:.1%} of the image), max |d| {res.linf[i]:.3f}, {int(res.steps[i])} steps"
        )
    print(f"-> {a.out}")
    return 0 if res.success.all() else 1


# ---- diagnose ---------------------------------------------------------------------------------
def cmd_diagnose(a) -> int:
    from volviz.analysis.dataset.diagnostics import diagnose
    from volviz.views import diagnostic_figures as F

    _threads()
    store = open_store(a.store)
    layers = [_layer(store, n) for n in a.layers] if a.layers else None
    model = _model(store, a)
    diag = diagnose(store, model, layers, pool=a.pool, threshold=a.threshold, dup_threshold=a.dup_threshold)
    modules = dict(model.named_modules())
    convs = [
        d.layer
        for d in diag.layers
        if getattr(modules.get(d.layer), "weight", None) is not None and modules[d.layer].weight.dim() == 4
    ]
    lines = [f"{'layer':<18} {'units':>6} {'dead':>6} {'<=0':>6} {'dup':>6} {'probe':>6}"]
    for d in diag.layers:
        s = d.summary()
        f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
        lines.append(
            f"{d.layer:<18} {d.n_units:>6} {f(s['dead'], 'd'):>6} {f(s['sparsity'], '.2f'):>6} "
            f"{f(s['duplicate_fraction'], '.2f'):>6} {f(s['probe_accuracy'], '.3f'):>6}  {d.note}"
        )
    conf = diag.confusion
    right, unc = int(np.trace(conf[:, :-1])), int(conf[:, -1].sum())
    wrong = int(conf[:, :-1].sum()) - right
    lines.append(f"confusion: {right} right, {wrong} wrong, {unc} uncertain (top probability < {a.threshold:g})")
    with _Folder(a.out) as out:
        (out.tmp / "diagnostics.json").write_text(json.dumps(diag.summary(), indent=1))
        (out.tmp / "report.txt").write_text("\n".join(lines) + "\n")
        header = ",".join(["true"] + diag.class_names + ["uncertain"])
        body = [",".join([n] + [str(v) for v in row]) for n, row in zip(diag.class_names, diag.confusion)]
        (out.tmp / "confusion.csv").write_text("\n".join([header, *body]) + "\n")
        F.confusion_figure(diag, out.tmp / "confusion.png")
        F.dead_sparsity_figure(diag, out.tmp / "dead_sparsity.png")
        if any(d.probe_accuracy is not None for d in diag.layers):
            F.probe_figure(diag, out.tmp / "probe.png")
        for d in diag.layers:
            if d.correlation is not None:
                path = out.tmp / f"correlation_{d.layer}.png"
                F.correlation_figure(d.correlation, d.layer, d.duplicate_fraction, path)
        if convs:
            w = modules[convs[0]].weight.detach().cpu().numpy()
            F.filters_figure(w, out.tmp / f"filters_{convs[0]}.png")
    print("\n".join(lines))
    print(f"-> {a.out}")
    return 0
