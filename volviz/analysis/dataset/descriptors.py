"""One row per image for a layer: the descriptor every dataset analysis works on.

A store either keeps pooled descriptors (``volviz capture --descriptors LAYER``, cheap for 100k+
images) or full activations; :func:`descriptors` reads the first when present and otherwise pools
the second, one batch at a time, so the working memory beyond the ``(n, D)`` result is one batch
of activations. Conv maps pool to their spatial mean, max or both (``meanmax``: mean then max);
linear outputs are used as they are.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from volviz.errors import AnalysisError

__all__ = [
    "DatasetError",
    "NoDescriptorsError",
    "TooFewImagesError",
    "POOLS",
    "BATCH",
    "BATCH_BYTES",
    "batch_rows",
    "descriptors",
    "iter_descriptors",
    "descriptor_dim",
    "done_rows",
    "image_table",
    "conv_layer",
]

POOLS = ("mean", "max", "meanmax")
#: images per streamed batch (the memory bound of every pass: BATCH x one image's activation)
BATCH = 256
#: ... and at most this many bytes of one layer's activations per batch (a read holds about 3x this)
BATCH_BYTES = 64 << 20


class DatasetError(AnalysisError):
    """A dataset analysis (embedding, neighbours, top examples, ...) cannot run as asked."""


class NoDescriptorsError(DatasetError):
    """The store keeps neither descriptors nor activations of the layer asked."""


class TooFewImagesError(DatasetError):
    """Fewer images than the analysis needs to mean anything."""


def batch_rows(store, layer: str, batch: int | None = None) -> int:
    """Images per streamed batch: ``batch``, or :data:`BATCH` capped so that one batch of the
    layer's activations stays within :data:`BATCH_BYTES`."""
    if batch:
        return max(1, int(batch))
    per = int(np.prod(store.layers[layer].act_shape)) * 4 if layer in store.layers else 1
    return int(max(1, min(BATCH, BATCH_BYTES // max(per, 1))))


def done_rows(store) -> np.ndarray:
    """Indices of the captured images; an error when there are none."""
    rows = np.flatnonzero(store.done)
    if not len(rows):
        raise DatasetError(
            f"{store.path} holds no captured image yet; run `volviz capture --resume --out {store.path}`"
        )
    return rows


def image_table(store, rows=None) -> dict[str, np.ndarray]:
    """rows, label (-1 unlabelled), pred, probs and the top probability of the captured images."""
    rows = done_rows(store) if rows is None else np.asarray(rows, dtype=np.int64)
    probs = store.column("probs")[rows]
    return {
        "rows": rows,
        "label": store.column("label")[rows],
        "pred": store.column("pred")[rows],
        "probs": probs,
        "confidence": probs.max(axis=1) if probs.size else np.zeros(len(rows)),
    }


def conv_layer(store, layer: str) -> bool:
    _check_layer(store, layer)
    return len(store.layers[layer].act_shape) == 3


def _check_layer(store, layer: str) -> None:
    if layer not in store.layers:
        raise DatasetError(f"layer {layer!r} is not in {store.path}; layers: {', '.join(store.layers)}")


def _source(store, layer: str, pool: str) -> tuple[str, callable]:
    """Which stored quantity to read and how to turn a batch of it into descriptors."""
    from volviz.capture.reduce import pool as pool_maps

    if pool not in POOLS:
        raise DatasetError(f"unknown pool {pool!r}; valid: {', '.join(POOLS)}")
    _check_layer(store, layer)
    info = store.layers[layer]
    shape = tuple(info.act_shape)
    if store.has("descriptor", layer):
        kept = info.descriptor or "full"
        if len(shape) != 3 or kept == pool:
            return "descriptor", lambda d: d
        c = shape[0]
        if kept == "full":
            return "descriptor", lambda d: pool_maps(d.reshape(len(d), *shape), pool)
        if kept == "meanmax":
            return "descriptor", (lambda d: d[:, :c]) if pool == "mean" else (lambda d: d[:, c:])
        if not store.has("activation", layer):
            raise NoDescriptorsError(
                f"{store.path} keeps the {kept} descriptor of {layer!r}, not the {pool} one; "
                f"use --pool {kept}, or capture with `volviz capture --descriptors {layer} "
                f"--pool {pool} ...`"
            )
    if store.has("activation", layer):
        return "activation", (lambda a: pool_maps(a, pool)) if len(shape) == 3 else (lambda a: a.reshape(len(a), -1))
    raise NoDescriptorsError(
        f"{store.path} keeps no descriptors or activations of {layer!r}; make them with "
        f"`volviz capture --descriptors {layer} --out NEW ...` (same model and images)"
    )


def descriptor_dim(store, layer: str, pool: str = "mean") -> int:
    _check_layer(store, layer)
    shape = tuple(store.layers[layer].act_shape)
    if len(shape) != 3:
        return int(np.prod(shape))
    return (2 if pool == "meanmax" else 1) * shape[0]


def iter_descriptors(
    store, layer: str, rows=None, pool: str = "mean", batch: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(rows, descriptors)`` one batch at a time: memory bounded by the batch."""
    quantity, convert = _source(store, layer, pool)
    batch = batch_rows(store, layer, batch)
    rows = done_rows(store) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
    for sel in store.iter_batches(batch, rows):
        yield sel, np.ascontiguousarray(convert(store.read_batch(quantity, layer, sel)), dtype=np.float32)


def _descriptor_range(rows, ref, layer: str, pool: str, batch: int | None) -> np.ndarray:
    """Descriptors of store images ``rows`` (a Dask task, or all of them here)."""
    from volviz.analysis.distributed_map import open_ref

    store = open_ref(ref)
    parts = [d for _, d in iter_descriptors(store, layer, rows, pool, batch)]
    if not parts:
        return np.zeros((0, descriptor_dim(store, layer, pool)), np.float32)
    return np.concatenate(parts)


def descriptors(store, layer: str, rows=None, pool: str = "mean", batch: int | None = None, dask=None) -> np.ndarray:
    """``(n, D)`` float32 descriptors of images ``rows`` (default: every captured image).

    Reads ``store.read_batch("descriptor", ...)`` when the store keeps descriptors of ``layer``,
    otherwise pools its activations batch by batch (conv: spatial ``mean``, ``max`` or
    ``meanmax``; linear: as is). A layer with neither names the capture that makes them.
    ``dask`` (:class:`~volviz.analysis.distributed_map.DaskOptions`): ranges of images on Dask
    workers, concatenated in order (the same bits: pooling is per image).
    """
    from volviz.analysis.distributed_map import map_ranges, store_ref

    _source(store, layer, pool)  # refuse a layer without descriptors before any work
    rows = done_rows(store) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
    b = batch_rows(store, layer, batch)
    return map_ranges(
        _descriptor_range,
        rows,
        np.concatenate,
        store_ref(store, dask),
        layer,
        pool,
        b,
        dask=dask,
        align=b,
        desc="descriptors",
    )
