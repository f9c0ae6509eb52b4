"""Evaluating pruned models over a dataset [Jain2016, §3.2.3], in this process or on Dask.

A pruning run is many evaluations of the same images: the model with some filters of one layer
zeroed (a *spec* ``(layer, filters)``; ``None`` is the model as it is). What an error rate and
the mean class probability need of each evaluation is, per image, the predicted class and the
probability given to the image's own label. :func:`make_evaluator` returns a function from a
list of specs to those pairs: here, one spec at a time (lazily, so progress is per evaluation);
on Dask, every spec on each range of images in one task (each worker decodes its images and
loads the model once) and the ranges concatenated in order
(:func:`volviz.analysis.distributed_map.map_ranges`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

from volviz.analysis.inputs import InputSet
from volviz.errors import AnalysisError

__all__ = ["Spec", "label_prob", "pruned_outputs", "make_evaluator"]

Spec = tuple[str, list[int]] | None
Evaluator = Callable[[list[Spec]], Iterable[tuple[np.ndarray, np.ndarray]]]


def label_prob(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``probs[i, labels[i]]`` (NaN for an unlabelled image)."""
    labels = np.asarray(labels)
    ok = labels >= 0
    out = np.full(len(labels), np.nan)
    out[ok] = probs[np.flatnonzero(ok), labels[ok]]
    return out


def pruned_outputs(
    model, inputs: InputSet, specs: list[Spec], *, zero_bias: bool = True, batch_size: int = 256
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(pred, p(label))`` of the model with each spec's filters removed, one spec at a time."""
    from volviz.analysis.pruning import predict_probs, zero_filters

    for spec in specs:
        m = model if spec is None else zero_filters(model, spec[0], spec[1], zero_bias=zero_bias)
        probs = predict_probs(m, inputs, batch_size)
        yield probs.argmax(1), label_prob(probs, inputs.labels)


def _pruned_range(records, ref, trust, prep, specs, zero_bias, batch_size) -> tuple[np.ndarray, np.ndarray]:
    """Every spec on one range of images (a Dask task): ``(S, n)`` predictions and p(label)."""
    from volviz.analysis.distributed_map import model_of

    outs = list(
        pruned_outputs(model_of(ref, trust), InputSet(records, prep), specs, zero_bias=zero_bias, batch_size=batch_size)
    )
    return np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs])


def _merge(parts: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    pred = np.concatenate([p[0] for p in parts], axis=1)
    prob = np.concatenate([p[1] for p in parts], axis=1)
    return list(zip(pred, prob))


def make_evaluator(
    model, inputs: InputSet, *, zero_bias: bool = True, batch_size: int = 256, dask=None, store=None
) -> Evaluator:
    """specs -> ``(pred, p(label))`` per spec, in order. With ``dask``
    (:class:`~volviz.analysis.distributed_map.DaskOptions`), the workers load ``store``'s model
    and decode ``inputs``' image files themselves; ranges are aligned to ``batch_size`` so their
    batches are this process's."""
    if dask is None:
        return lambda specs: pruned_outputs(model, inputs, specs, zero_bias=zero_bias, batch_size=batch_size)
    if store is None or not inputs.records:
        raise AnalysisError("pruning on Dask needs the store (its model) and image files")
    from volviz.analysis.distributed_map import map_ranges, store_ref

    ref = store_ref(store, dask)

    def evaluate(specs: list[Spec]):
        specs = [None if s is None else (s[0], [int(f) for f in s[1]]) for s in specs]
        return map_ranges(
            _pruned_range,
            inputs.records,
            _merge,
            ref,
            dask.trust_key,
            inputs.prep,
            specs,
            zero_bias,
            batch_size,
            dask=dask,
            align=batch_size,
            desc=f"prune ({len(specs)} models)",
        )

    return evaluate
