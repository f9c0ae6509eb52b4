"""Top dataset examples per unit ([Zeiler2014]'s top-9, [Hong-L4]) and the image region a unit sees.

A unit's score on an image is its activation (linear) or its strongest activation over positions
(conv), remembered with that position. One streamed pass keeps a running top-k per unit (memory:
one batch of activations plus ``U x k``); a second builds per-unit histograms of the score.

Receptive-field crops come from the model itself, not from a formula over kernel sizes and
strides: the crop of unit ``u`` at position ``(y, x)`` is the bounding box of the input pixels
where the gradient of that one activation is non-zero, united over the real image and a few
random probe inputs (one probe can hide a pixel behind a closed ReLU or an unselected max; random
inputs open every path). This handles padding, dilation, residual branches, grouped convs and any
module the model has, and it is what the perturbation test checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from volviz.analysis.dataset.descriptors import DatasetError, batch_rows, done_rows
from volviz.analysis.dataset.modelio import normalize

__all__ = [
    "TopExamples",
    "top_examples",
    "merge_topk",
    "unit_scores",
    "support_masks",
    "boxes_from_masks",
    "crop_boxes",
    "crop",
    "unit_crops",
]


@dataclass
class TopExamples:
    layer: str
    rows: np.ndarray  # (U, k) store rows, best first (-1: fewer than k images)
    values: np.ndarray  # (U, k) score
    positions: np.ndarray  # (U, k, 2) (y, x) of the strongest position; -1 for linear layers
    minimum: np.ndarray  # (U,) lowest score over the dataset
    n_images: int
    hist_edges: np.ndarray | None = None  # (U, bins + 1)
    hist_counts: np.ndarray | None = None  # (U, bins)

    @property
    def dead(self) -> np.ndarray:
        """Units whose activation is never above 0 on any image at any position."""
        return ~(self.values[:, 0] > 0)


def unit_scores(act: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(b, U)`` scores and ``(b, U, 2)`` positions of a batch ``(b, U[, H, W])``."""
    if act.ndim == 2:
        return act, np.full((*act.shape, 2), -1, np.int64)
    b, u, h, w = act.shape
    flat = act.reshape(b, u, h * w)
    arg = flat.argmax(2)  # first maximum: the top-left one on ties
    return np.take_along_axis(flat, arg[..., None], 2)[..., 0], np.stack([arg // w, arg % w], -1)


def merge_topk(vals, rows, pos, new_vals, new_rows, new_pos, k: int):
    """Best ``k`` of current ``(U, k)`` and new ``(U, b)`` candidates: highest score, then lowest row."""
    v = np.concatenate([vals, new_vals], 1)
    r = np.concatenate([rows, new_rows], 1)
    p = np.concatenate([pos, new_pos], 1)
    r_key = np.where(r < 0, np.iinfo(np.int64).max, r)
    order = np.lexsort((r_key, -v), axis=1)[:, :k]
    return (
        np.take_along_axis(v, order, 1),
        np.take_along_axis(r, order, 1),
        np.take_along_axis(p, order[..., None], 1),
    )


def _topk_range(rows, ref, layer: str, k: int, batch: int):
    """Running top-k and minimum score of ``layer``'s units over store images ``rows`` (a Dask
    task, or all of them here)."""
    from volviz.analysis.distributed_map import open_ref

    store = open_ref(ref)
    u = store.layers[layer].act_shape[0]
    vals = np.full((u, k), -np.inf, np.float32)
    top_rows = np.full((u, k), -1, np.int64)
    pos = np.full((u, k, 2), -1, np.int64)
    lo = np.full(u, np.inf, np.float32)
    for sel in store.iter_batches(batch, rows):
        s, p = unit_scores(store.read_batch("activation", layer, sel))
        lo = np.minimum(lo, s.min(0))
        vals, top_rows, pos = merge_topk(
            vals, top_rows, pos, s.T, np.broadcast_to(sel, s.T.shape), p.transpose(1, 0, 2), k
        )
    return vals, top_rows, pos, lo


def _merge_topk_parts(parts):
    """The ranges' top-k merged (highest score, then lowest row: the same as one pass)."""
    vals, rows, pos, lo = parts[0]
    k = vals.shape[1]
    for v, r, p, low in parts[1:]:
        vals, rows, pos = merge_topk(vals, rows, pos, v, r, p, k)
        lo = np.minimum(lo, low)
    return vals, rows, pos, lo


def _hist_range(rows, ref, layer: str, edges: np.ndarray, batch: int) -> np.ndarray:
    """``(U, bins)`` counts of the unit scores of store images ``rows`` in ``edges``' bins."""
    from volviz.analysis.distributed_map import open_ref

    store = open_ref(ref)
    u, bins = edges.shape[0], edges.shape[1] - 1
    counts = np.zeros((u, bins), np.int64)
    width = (edges[:, -1] - edges[:, 0]) / bins
    for sel in store.iter_batches(batch, rows):
        s, _ = unit_scores(store.read_batch("activation", layer, sel))
        b = np.clip(((s - edges[:, 0]) / width).astype(np.int64), 0, bins - 1)  # (b, U)
        counts += np.bincount((np.arange(u) * bins + b).ravel(), minlength=u * bins).reshape(u, bins)
    return counts


def top_examples(
    store,
    layer: str,
    k: int = 9,
    *,
    histograms: bool = True,
    bins: int = 32,
    batch: int | None = None,
    rows=None,
    dask=None,
) -> TopExamples:
    """The ``k`` captured images that drive each unit of ``layer`` hardest. ``dask``
    (:class:`~volviz.analysis.distributed_map.DaskOptions`): both passes as map (a range of
    images per task) + merge on Dask workers; the result is the same bits."""
    from volviz.analysis.distributed_map import map_ranges, store_ref

    if k < 1:
        raise DatasetError(f"-k must be at least 1, got {k}")
    if layer not in store.layers:
        raise DatasetError(f"layer {layer!r} is not in {store.path}; layers: {', '.join(store.layers)}")
    if not store.has("activation", layer):
        raise DatasetError(
            f"{store.path} keeps no activations of {layer!r} (top examples need where in the image "
            f"a unit fired); capture them with `volviz capture --layers {layer} --out NEW`"
        )
    rows = done_rows(store) if rows is None else np.asarray(rows, np.int64)
    batch = batch_rows(store, layer, batch)
    ref = store_ref(store, dask)
    kw = {"dask": dask, "align": batch}
    vals, top_rows, pos, lo = map_ranges(_topk_range, rows, _merge_topk_parts, ref, layer, k, batch, desc="top-k", **kw)
    out = TopExamples(layer, top_rows, vals, pos, lo, len(rows))
    if histograms and len(rows):
        hi = vals[:, 0]
        edges = np.linspace(lo, np.where(hi > lo, hi, lo + 1), bins + 1, axis=1).astype(np.float32)
        counts = map_ranges(_hist_range, rows, sum, ref, layer, edges, batch, desc="histograms", **kw)
        out.hist_edges, out.hist_counts = edges, counts
    return out


# ---- receptive fields from the model ------------------------------------------------------------
def support_masks(
    model: torch.nn.Module,
    layer: str,
    units,
    positions,
    inputs: torch.Tensor,
    *,
    probes: int = 8,
    seed: int = 0,
    chunk: int = 512,
) -> np.ndarray:
    """``(B, H, W)`` bool: input pixels where the gradient of activation ``units[b]`` at
    ``positions[b] = (y, x)`` (or of linear output ``units[b]`` when ``y < 0``) is non-zero, united
    over ``inputs[b]`` (model input, normalized) and ``probes`` random normal inputs."""
    from volviz.analysis.actmax.objectives import LayerOutput

    units = np.asarray(units, np.int64).reshape(-1)
    positions = np.asarray(positions, np.int64).reshape(len(units), 2)
    inputs = torch.as_tensor(inputs, dtype=torch.float32)
    b, (c, h, w) = len(units), tuple(inputs.shape[1:])
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((probes, c, h, w), generator=gen) * inputs.std().clamp_min(1e-3) + inputs.mean()
    forward = LayerOutput(model, layer, unit_only=False)
    per = probes + 1
    masks = np.zeros((b, h, w), bool)
    step = max(1, chunk // per)
    for s in range(0, b, step):
        e = min(b, s + step)
        x = torch.cat([torch.cat([inputs[i : i + 1], noise]) for i in range(s, e)]).requires_grad_(True)
        out = forward(x)
        idx = torch.arange(len(x))
        uu = torch.as_tensor(np.repeat(units[s:e], per))
        if out.dim() == 4:
            yy = torch.as_tensor(np.repeat(positions[s:e, 0], per))
            xx = torch.as_tensor(np.repeat(positions[s:e, 1], per))
            sel = out[idx, uu, yy, xx]
        else:
            sel = out.reshape(len(x), -1)[idx, uu]
        (grad,) = torch.autograd.grad(sel.sum(), x)
        nz = (grad != 0).any(1).reshape(e - s, per, h, w).any(1)
        masks[s:e] = nz.numpy()
    return masks


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """``(B, 4)`` boxes ``(y0, y1, x0, x1)`` (end exclusive) around each mask's pixels; an empty
    mask (a unit no pixel reaches) gives the whole image."""
    b, h, w = masks.shape
    boxes = np.tile(np.array([0, h, 0, w], np.int64), (b, 1))
    for i, m in enumerate(masks):
        ys, xs = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if len(ys):
            boxes[i] = (ys[0], ys[-1] + 1, xs[0], xs[-1] + 1)
    return boxes


def crop_boxes(model, layer: str, units, positions, inputs, **kw) -> np.ndarray:
    """Receptive-field boxes of units at positions (see :func:`support_masks`)."""
    return boxes_from_masks(support_masks(model, layer, units, positions, inputs, **kw))


def crop(image: np.ndarray, box, size: tuple[int, int] | None = None, fill: float = np.nan) -> np.ndarray:
    """``image (C, H, W)`` cut to ``box``; with ``size``, padded to it on the side where the box
    was cut by the image border (so a unit's crops line up)."""
    y0, y1, x0, x1 = (int(v) for v in box)
    part = image[:, y0:y1, x0:x1]
    if size is None:
        return part
    th, tw = max(size[0], part.shape[1]), max(size[1], part.shape[2])
    out = np.full((image.shape[0], th, tw), fill, np.float32)
    oy = th - part.shape[1] if y0 == 0 and y1 < image.shape[1] else 0
    ox = tw - part.shape[2] if x0 == 0 and x1 < image.shape[2] else 0
    out[:, oy : oy + part.shape[1], ox : ox + part.shape[2]] = part
    return out


def unit_crops(
    store, model, top: TopExamples, units=None, *, probes: int = 8, chunk_units: int = 32
) -> tuple[list, np.ndarray]:
    """For each unit: its top images' receptive-field crops (pixel space, ``(k, C, h, w)``, NaN
    where padded) and their boxes ``(U, k, 4)``; the images of ``chunk_units`` units at a time."""
    units = np.arange(len(top.rows)) if units is None else np.asarray(units, np.int64).reshape(-1)
    boxes = np.zeros((len(units), top.rows.shape[1], 4), np.int64)
    crops = []
    for s in range(0, len(units), chunk_units):
        us = units[s : s + chunk_units]
        rows, pos = top.rows[us], top.positions[us]
        valid = rows >= 0
        uniq = np.unique(rows[valid])
        pixels = store.read_inputs(uniq) if len(uniq) else np.zeros((0, *store.input_shape), np.float32)
        where = {int(r): i for i, r in enumerate(uniq)}
        if len(uniq):
            x = normalize(store.preprocess, pixels[[where[int(r)] for r in rows[valid]]])
            unit_of = np.broadcast_to(us[:, None], rows.shape)[valid]
            b = np.zeros((*rows.shape, 4), np.int64)
            b[valid] = crop_boxes(model, top.layer, unit_of, pos[valid], x, probes=probes)
            boxes[s : s + len(us)] = b
        for j in range(len(us)):
            ok = np.flatnonzero(valid[j])
            bj = boxes[s + j, ok]
            if not len(ok):
                crops.append(np.zeros((0, store.input_shape[0], 1, 1), np.float32))
                continue
            size = (int((bj[:, 1] - bj[:, 0]).max()), int((bj[:, 3] - bj[:, 2]).max()))
            crops.append(np.stack([crop(pixels[where[int(rows[j, i])]], boxes[s + j, i], size) for i in ok]))
    return crops, boxes
