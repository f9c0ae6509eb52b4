"""Filter importance [Jain2016, §3.2.3]: the norm of the gradient of ONE output neuron w.r.t. a
filter's weights, per image, and averaged over the images of a class (class-wise relevance).

Definitions
-----------
For image ``n``, output neuron ``t_n`` (its score before softmax) and a layer with weight ``W``
of shape ``(C_out, ...)``, filter ``j``'s importance is ``|| dS_{t_n}(x_n) / dW[j] ||_2`` (the
Frobenius norm over the filter's input channels and kernel; for a Linear layer, over row ``j``).
The class-wise relevance of class ``r`` is the MEAN of the per-image importances over the images
of class ``r`` whose gradients were taken w.r.t. neuron ``r`` (mean of norms, not norm of the mean
gradient: gradients of different images may cancel, their magnitudes do not).

Two ways to compute it, both streaming in batches:

* :func:`importance_from_store` reads the per-image weight gradients a capture stored, a batch at
  a time. Linear layers are stored as outer-product factors ``u, v`` and their row norms are
  ``|u_j| * ||v||``: the ``(out, in)`` matrix is never built.
* :func:`importance_on_the_fly` runs the model: one forward and one backward pass per batch give
  every layer's input and output gradient, and per-image weight gradients are formed (by
  :mod:`volviz.capture.persample`) for at most ``max_bytes`` worth of images of one layer at a
  time, reduced to filter norms, and dropped. Where it is cheaper (convolutions with small output
  maps, e.g. resnet18 layer3/4), the norms come from the Gram matrix of the unfolded input
  instead, and the gradients are never formed (:func:`conv2d_filter_norms_gram`).

Memory bound (on the fly): the batch's activations and activation gradients (as in one training
step of ``batch_size`` images), plus ``max_bytes`` (default 256 MiB) for one chunk of per-image
weight gradients, plus the unfold workspace of ``persample`` (at most 1 GiB for very large
convolutions; a few MiB for the demo models), plus the result, ``N x sum(C_out)`` float32 numbers
(1,000 images of resnet18: 23 MiB). Nothing grows with ``N`` except the result. From a store:
``batch_size`` images of one layer's stored gradients at a time.

The files of ``volviz importance`` are :mod:`volviz.analysis.importance_report`'s; the grids are
drawn by :mod:`volviz.views.figures`. This module needs torch, no matplotlib, pyvista or trame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

# InputSet and its loaders live in volviz.analysis.inputs; re-exported here until tests/test_app.py
# and benchmarks/bench_importance.py import them from there
from volviz.analysis.inputs import InputSet, inputs_from_paths, inputs_from_store  # noqa: F401
from volviz.capture.engine import model_logits, resolve_targets
from volviz.capture.persample import func_per_sample_grads, has_fast_path, hook_per_sample_grad
from volviz.capture.tap import LayerTap
from volviz.errors import AnalysisError, EmptyClassError, NotDifferentiableError, NoWeightsError, StoreError

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "OUTPUTS",
    "ImportanceResult",
    "batch_filter_importance",
    "filter_norms",
    "conv2d_filter_norms_gram",
    "factor_norms",
    "importance_from_store",
    "importance_on_the_fly",
    "merge_results",
    "weighted_layers",
    "check_weighted_layers",
    "class_index",
]

#: bytes of per-image weight gradients formed at once (one layer, a chunk of the batch)
DEFAULT_CHUNK_BYTES = 256 * 1024 * 1024
#: images of stored filter norms read at once (C_out floats each)
NORM_BLOCK = 4096
#: what is differentiated: the class score before softmax (default), its probability, its log
OUTPUTS = ("score", "prob", "log-prob")


# ---- layers -----------------------------------------------------------------------------------
def weighted_layers(model: nn.Module) -> list[str]:
    """Names of the leaf modules with a ``weight`` parameter, in module order."""
    return [
        n
        for n, m in model.named_modules()
        if n and not list(m.children()) and isinstance(getattr(m, "weight", None), nn.Parameter)
    ]


def check_weighted_layers(model: nn.Module, layers: list[str] | None) -> list[str]:
    """``layers`` (default: every conv / linear layer) checked to exist and to have weights."""
    from volviz.capture.layers import CONV_TYPES, LINEAR_TYPES, named_leaf_modules

    modules = dict(model.named_modules())
    valid = weighted_layers(model)
    if not layers:
        layers = [n for n in valid if isinstance(modules[n], CONV_TYPES + LINEAR_TYPES)] or valid
        if not layers:
            raise NoWeightsError("the model has no layer with weights")
        return layers
    leaves = named_leaf_modules(model)
    for name in layers:
        if name not in modules or not name:
            raise AnalysisError(f"no layer named {name!r}. Layers with weights: {', '.join(valid)}")
        if name not in valid:
            kind = type(modules[name]).__name__
            what = "is a container" if name not in leaves else "has no weights"
            raise NoWeightsError(
                f"layer {name!r} ({kind}) {what}, so it has no filters to score. "
                f"Layers with weights: {', '.join(valid)}"
            )
    return list(layers)


def class_index(cls: str | int, class_names: list[str] | None, n_classes: int) -> int:
    """A class given by name or index -> its index, with a clear error."""
    if isinstance(cls, str) and class_names and cls in class_names:
        return class_names.index(cls)
    try:
        k = int(cls)
    except (TypeError, ValueError):
        valid = ", ".join(class_names or map(str, range(n_classes)))
        raise AnalysisError(f"unknown class {cls!r}; valid: {valid}") from None
    if not 0 <= k < n_classes:
        raise AnalysisError(f"class {k} out of range: the model has {n_classes} outputs")
    return k


# ---- norms ------------------------------------------------------------------------------------
def filter_norms(grad_weight: np.ndarray | torch.Tensor):
    """Per-image gradients ``(n, C_out, ...)`` -> filter norms ``(n, C_out)``."""
    if isinstance(grad_weight, torch.Tensor):
        return grad_weight.reshape(grad_weight.shape[0], grad_weight.shape[1], -1).norm(dim=2)
    g = np.asarray(grad_weight, dtype=np.float64)
    return np.sqrt(np.einsum("noi,noi->no", *(2 * [g.reshape(g.shape[0], g.shape[1], -1)])))


def factor_norms(u, v):
    """Row norms of the per-image Linear gradients ``outer(u[n], v[n])``: ``|u[n, j]| * ||v[n]||``."""
    if isinstance(u, torch.Tensor):
        return u.abs() * v.norm(dim=1, keepdim=True)
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    return np.abs(u) * np.linalg.norm(v, axis=1, keepdims=True)


# ---- results ----------------------------------------------------------------------------------
@dataclass
class ImportanceResult:
    """Per-image filter importance of every layer, with what is needed to group it by class."""

    layers: list[str]
    per_image: dict[str, np.ndarray]  # layer -> (N, C_out) float32
    label: np.ndarray  # (N,) -1 = unlabelled
    target: np.ndarray  # (N,) the output neuron whose gradient was taken
    pred: np.ndarray  # (N,)
    class_names: list[str] | None
    n_classes: int
    image_ids: list[str] = field(default_factory=list)
    source: str = ""  # "store" | "model"

    @property
    def n_images(self) -> int:
        return len(self.target)

    def _layer(self, layer: str) -> np.ndarray:
        if layer not in self.per_image:
            raise AnalysisError(f"no importance for layer {layer!r}; computed for {', '.join(self.layers)}")
        return self.per_image[layer]

    def class_name(self, k: int) -> str:
        return self.class_names[k] if self.class_names and 0 <= k < len(self.class_names) else str(k)

    def mean(self, layer: str, reference: int, input_class: int | None = None) -> tuple[np.ndarray, int]:
        """Mean importance of ``layer``'s filters for output neuron ``reference`` over the images
        of ``input_class`` (default: the reference class itself). Returns (C_out,) and the count."""
        input_class = reference if input_class is None else input_class
        sel = (self.target == reference) & (self.label == input_class)
        n = int(sel.sum())
        if n == 0:
            present = sorted(set(int(c) for c in self.label if c >= 0))
            if input_class not in present:
                raise EmptyClassError(
                    f"class {self.class_name(input_class)} has no images here; classes with images: "
                    f"{', '.join(self.class_name(c) for c in present) or 'none (unlabelled images)'}"
                )
            raise EmptyClassError(
                f"no images of class {self.class_name(input_class)} analysed w.r.t. output neuron "
                f"{self.class_name(reference)} (their gradients were taken for other neurons); capture "
                "with --target true or this class, or use --images"
            )
        return self._layer(layer)[sel].astype(np.float64).mean(0), n

    def class_relevance(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """(K, C_out) class-wise relevance (row r: mean over class-r images of the importance for
        neuron r; NaN where the class has no such images) and the (K,) image counts."""
        imp = self._layer(layer)
        out = np.full((self.n_classes, imp.shape[1]), np.nan)
        counts = np.zeros(self.n_classes, dtype=np.int64)
        for r in range(self.n_classes):
            sel = (self.target == r) & (self.label == r)
            counts[r] = sel.sum()
            if counts[r]:
                out[r] = imp[sel].astype(np.float64).mean(0)
        return out, counts

    def overall(self, layer: str) -> np.ndarray:
        """Mean over all images (each w.r.t. its own target neuron): a class-agnostic ranking."""
        return self._layer(layer).astype(np.float64).mean(0)

    def total_norm(self, layer: str) -> np.ndarray:
        """(N,) the norm of the whole weight gradient of the layer per image."""
        imp = self._layer(layer).astype(np.float64)
        return np.sqrt((imp**2).sum(1))


# ---- on the fly -------------------------------------------------------------------------------
def _gram_is_cheaper(module: nn.Module, grad_out: torch.Tensor) -> bool:
    """Conv2d filter norms via the Gram matrix of the unfolded input cost ``L^2 (ci + C_out)``
    per image against ``C_out ci L`` for forming the gradients (``L`` output positions, ``ci`` =
    C_in k_h k_w): cheaper in deep layers with small maps (resnet18 layer3/4)."""
    if not isinstance(module, nn.Conv2d) or module.groups != 1:
        return False
    L = grad_out.shape[-2] * grad_out.shape[-1]
    ci = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
    return L * (ci + module.out_channels) < module.out_channels * ci


def conv2d_filter_norms_gram(
    module: nn.Conv2d, inp: torch.Tensor, grad_out: torch.Tensor, max_bytes: int = DEFAULT_CHUNK_BYTES
) -> torch.Tensor:
    """Per-image filter norms of a (groups=1) Conv2d without forming the gradients:
    ``||G_n[j]||^2 = g_nj^T (U_n^T U_n) g_nj`` with ``U_n`` the unfolded input (ci x L) and
    ``g_nj`` filter j's output gradient (L) (Goodfellow 2015, Rochette et al. 2019)."""
    import torch.nn.functional as F

    from volviz.capture.persample import explicit_padding

    inp, padding = explicit_padding(module, inp)
    n_all = inp.shape[0]
    L = grad_out.shape[-2] * grad_out.shape[-1]
    ci = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
    step = max(1, int(max_bytes // ((ci * L + L * L + module.out_channels * L) * 4)))
    out = []
    for s in range(0, n_all, step):
        cols = F.unfold(
            inp[s : s + step], module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride
        )  # (n, ci, L)
        gram = torch.bmm(cols.transpose(1, 2), cols)  # (n, L, L)
        g = grad_out[s : s + step].reshape(cols.shape[0], module.out_channels, L)
        out.append((torch.bmm(g, gram) * g).sum(2).clamp_min(0).sqrt())
    return torch.cat(out)


def _output_values(logits: torch.Tensor, output: str) -> torch.Tensor:
    if output == "score":
        return logits
    if output == "prob":
        return torch.softmax(logits, 1)
    if output == "log-prob":
        return torch.log_softmax(logits, 1)
    raise AnalysisError(f"unknown output {output!r}; valid: {', '.join(OUTPUTS)}")


def batch_filter_importance(
    model: nn.Module,
    x: torch.Tensor,
    layers: list[str],
    target: torch.Tensor | str | int = "pred",
    *,
    labels: torch.Tensor | None = None,
    class_names: list[str] | None = None,
    output: str = "score",
    max_bytes: int = DEFAULT_CHUNK_BYTES,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """One batch: filter norms ``(n, C_out)`` of every layer's per-image weight gradient of the
    score of one output neuron per image, the batch's logits and the neurons used.

    ``target``: a tensor of neuron indices, or 'true' / 'pred' / a class (see
    ``volviz.capture.engine.resolve_targets``). ``output``: differentiate the class ``score``
    (before softmax, as the capture does), its softmax ``prob`` or its ``log-prob``. Per-image
    gradients exist for at most ``max_bytes`` of one layer at a time."""
    if model.training:
        raise AnalysisError(
            "importance needs model.eval(): in training mode dropout and batch norm "
            "mix images and the per-image gradients would be wrong"
        )
    modules = dict(model.named_modules())
    fast = [n for n in layers if has_fast_path(modules[n])]
    slow = [n for n in layers if n not in fast]
    out: dict[str, torch.Tensor] = {}
    with LayerTap(model, layers, keep_inputs=set(fast)) as tap, torch.enable_grad():
        logits = model_logits(model(x))
        if not logits.requires_grad:
            raise NotDifferentiableError(
                "the model's output does not depend differentiably on its weights (no gradient "
                "graph: torch.no_grad, detach or integer ops inside forward)"
            )
        targets = (
            target
            if isinstance(target, torch.Tensor)
            else resolve_targets(target, logits.detach(), labels, class_names)
        )
        score = _output_values(logits, output).gather(1, targets.view(-1, 1)).sum()
        missing = [n for n in layers if n not in tap.records]
        if missing:
            raise AnalysisError(f"layer(s) {', '.join(missing)} did not run in the forward pass")
        outs = [tap.records[n].output for n in layers]
        try:
            grads = torch.autograd.grad(score, outs, allow_unused=True)
        except RuntimeError as exc:
            raise NotDifferentiableError(f"cannot backpropagate to the selected layers: {exc}") from None
        for name, g in zip(layers, grads):
            if g is None:
                raise NotDifferentiableError(
                    f"the output does not depend differentiably on layer {name!r} (the gradient "
                    "path is cut between it and the output: integer ops, .detach(), argmax ...)"
                )
        for name, g in zip(layers, grads):
            if name not in fast:
                continue
            module, inp = modules[name], tap.records[name].input.detach()
            g = g.detach()
            if isinstance(module, nn.Linear) and inp.dim() == 2:
                out[name] = factor_norms(g, inp).float()
                continue
            if _gram_is_cheaper(module, g):
                out[name] = conv2d_filter_norms_gram(module, inp, g, max_bytes).float()
                continue
            numel = module.weight.numel()
            step = max(1, int(max_bytes // (numel * 4)))
            parts = [
                filter_norms(hook_per_sample_grad(module, inp[s : s + step], g[s : s + step]))
                for s in range(0, len(inp), step)
            ]
            out[name] = torch.cat(parts).float()
    if slow:
        params = [f"{n}.weight" for n in slow]
        step = max(1, int(max_bytes // max(sum(modules[n].weight.numel() for n in slow) * 4, 1)))
        parts: dict[str, list] = {n: [] for n in slow}
        for s in range(0, len(x), step):
            pg = func_per_sample_grads(model, x[s : s + step].detach(), targets[s : s + step], params)
            for n in slow:
                parts[n].append(filter_norms(pg[f"{n}.weight"]).float())
        for n in slow:
            out[n] = torch.cat(parts[n])
    return {n: out[n] for n in layers}, logits.detach(), targets


def importance_on_the_fly(
    model: nn.Module,
    inputs: InputSet,
    layers: list[str] | None = None,
    *,
    target: str | int = "true",
    class_names: list[str] | None = None,
    output: str = "score",
    batch_size: int = 64,
    max_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: bool = True,
    dask=None,
    store=None,
) -> ImportanceResult:
    """Per-image filter importance of ``layers`` for ``inputs``, computed from the model in
    batches. ``target``: 'true' (each image's label, predicted where unlabelled), 'pred', or a
    class index / name (one neuron for every image, e.g. to compare input classes). ``output``:
    'score' (the class score before softmax, default, as stored by the capture), 'prob' or
    'log-prob'. ``dask`` (:class:`~volviz.analysis.distributed_map.DaskOptions`): on Dask
    workers, over ranges of ``batch_size``-aligned images, each worker loading ``store``'s model."""
    layers = check_weighted_layers(model, layers)
    _output_values(torch.zeros(1, 2), output)  # refuse an unknown output before any work
    if dask is not None:
        from volviz.analysis.distributed_map import map_ranges, store_ref

        if store is None or not inputs.records:
            raise AnalysisError("importance on Dask needs the store (its model) and image files")
        opts = (layers, target, class_names, output, batch_size, max_bytes)
        return map_ranges(
            _fly_range,
            inputs.records,
            merge_results,
            store_ref(store, dask),
            dask.trust_key,
            inputs.prep,
            opts,
            dask=dask,
            align=batch_size,
            desc="importance",
        )
    per_image: dict[str, list[np.ndarray]] = {n: [] for n in layers}
    tgt, pred = [], []
    n_classes = None
    bar = tqdm(total=len(inputs), desc="importance", unit="img", disable=not progress)
    try:
        for _, x, labels in inputs.batches(batch_size):
            norms, logits, t = batch_filter_importance(
                model, x, layers, target, labels=labels, class_names=class_names, output=output, max_bytes=max_bytes
            )
            n_classes = logits.shape[1]
            for n in layers:
                per_image[n].append(norms[n].numpy())
            tgt.append(t.numpy())
            pred.append(logits.argmax(1).numpy())
            bar.update(len(x))
    finally:
        bar.close()
    return ImportanceResult(
        layers,
        {n: np.concatenate(v) for n, v in per_image.items()},
        inputs.labels.copy(),
        np.concatenate(tgt),
        np.concatenate(pred),
        class_names,
        int(n_classes),
        list(inputs.ids),
        "model",
    )


# ---- on Dask: one range of images, and the merge ----------------------------------------------
def _fly_range(records, ref, trust, prep, opts) -> ImportanceResult:
    """One range of :func:`importance_on_the_fly` (a Dask task)."""
    from volviz.analysis.distributed_map import model_of

    layers, target, class_names, output, batch_size, max_bytes = opts
    return importance_on_the_fly(
        model_of(ref, trust),
        InputSet(records, prep),
        layers,
        target=target,
        class_names=class_names,
        output=output,
        batch_size=batch_size,
        max_bytes=max_bytes,
        progress=False,
    )


def merge_results(parts: list[ImportanceResult]) -> ImportanceResult:
    """Results of consecutive image ranges -> the result over all of them, in order."""
    first = parts[0]
    return ImportanceResult(
        first.layers,
        {n: np.concatenate([p.per_image[n] for p in parts]) for n in first.layers},
        np.concatenate([p.label for p in parts]),
        np.concatenate([p.target for p in parts]),
        np.concatenate([p.pred for p in parts]),
        first.class_names,
        first.n_classes,
        [i for p in parts for i in p.image_ids],
        first.source,
    )


def _stored_range(rows, ref, layers, batch_size, progress=False) -> dict[str, np.ndarray]:
    """Filter norms of store images ``rows`` (a Dask task, or the whole set in this process)."""
    from volviz.analysis.distributed_map import open_ref

    store = open_ref(ref)
    out = {}
    bar = tqdm(total=len(rows) * len(layers), desc="importance (store)", unit="img", disable=not progress)
    try:
        for name in layers:
            info = store.layers[name]
            parts = []
            # stored norms are C_out floats per image: read them in large blocks (same values)
            step = max(batch_size, NORM_BLOCK) if store.has("grad_norm", name) else batch_size
            for s in range(0, len(rows), step):
                sel = rows[s : s + step]
                if store.has("grad_norm", name):  # kept by the capture: no per-image tensor to read
                    parts.append(store.read_batch("grad_norm", name, sel))
                elif info.weight_factors:
                    parts.append(factor_norms(*store.read_factors(name, sel)).astype(np.float32))
                else:
                    parts.append(filter_norms(store.read_batch("grad_weight", name, sel)).astype(np.float32))
                bar.update(len(sel))
            out[name] = np.concatenate(parts) if parts else np.zeros((0, info.weight_shape[0]), np.float32)
    finally:
        bar.close()
    return out


def _merge_norms(parts: list[dict]) -> dict[str, np.ndarray]:
    return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}


# ---- from a store -----------------------------------------------------------------------------
def importance_from_store(
    store, layers: list[str] | None = None, *, batch_size: int = 64, progress: bool = True, dask=None
) -> ImportanceResult:
    """Per-image filter importance from the weight gradients a capture stored (w.r.t. the
    store's target neuron per image), reading ``batch_size`` images of one layer at a time;
    with ``dask``, ranges of images on Dask workers that open the store read-only."""
    from volviz.analysis.distributed_map import map_ranges, store_ref

    with_w = [n for n, info in store.layers.items() if info.weight_shape]
    if not layers:
        layers = with_w
        if not layers:
            raise NoWeightsError(f"{store.path} holds no layer with weights")
    for name in layers:
        if name not in store.layers:
            raise AnalysisError(f"layer {name!r} is not in this store. Layers with weights: {', '.join(with_w)}")
        info = store.layers[name]
        if not info.weight_shape:
            raise NoWeightsError(
                f"layer {name!r} ({info.module_type}) has no weights, so it has no filters "
                f"to score. Layers with weights: {', '.join(with_w)}"
            )
        if not store.has("grad_norm", name) and not store.has("grad_weight", name):
            raise StoreError(
                f"{store.path} has no weight gradients for {name!r} (captured with --no-grads "
                "or --no-weight-grads); recapture, or compute on the fly with --images"
            )
    idx = np.flatnonzero(store.done)
    if len(idx) == 0:
        raise StoreError(f"{store.path} holds no captured image yet")
    per_image = map_ranges(
        _stored_range,
        idx,
        _merge_norms,
        store_ref(store, dask),
        list(layers),
        batch_size,
        progress and dask is None,
        dask=dask,
        align=batch_size,
        desc="importance (store)",
    )
    probs = store.column("probs")
    n_classes = probs.shape[1]
    return ImportanceResult(
        list(layers),
        per_image,
        store.column("label")[idx],
        store.column("target")[idx],
        store.column("pred")[idx],
        store.class_names,
        int(n_classes),
        [store.images.ids[i] for i in idx],
        "store",
    )
