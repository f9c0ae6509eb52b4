"""The "Dataset examples" 2-D panel ([Zeiler2014]'s top-9, Microscope's dataset examples): for
every unit of the current layer, the captured images that drive it hardest, cut to the region its
strongest activation sees (from the model's own gradients:
:func:`~volviz.analysis.dataset.topk.unit_crops`); units that never fire on the dataset grey.

The top examples come from one streamed pass over the store's activations of the layer
(:func:`~volviz.analysis.dataset.topk.top_examples`: memory one batch plus ``units x k``), made
once per store and layer (under the server in the pane's background job, ``ctx.background``: the
page goes on and the panel says what is being computed) and kept in the pane's memo; the Graph
tab's top-example thumbnails read the same memo (:func:`layer_top`, :func:`top_thumbnails`).
Without the model (not trusted) the examples are shown uncropped.
"""

from __future__ import annotations

import math

import numpy as np

from volviz.app.panels import PanelContext, PanelImage, input_rgb, register_panel

__all__ = ["DEAD_GREY", "TOP_K", "layer_top", "top_crops", "top_thumbnails", "examples_mosaic", "dataset_panel"]

TOP_K = 9  # examples per unit (a 3 x 3 block)
MAX_TILE = 28  # px of one example in the panel (crops are shrunk to it)
_GAP, _UNIT_GAP = 1, 4
_FILL, _BG = (40, 43, 50), (21, 23, 28)
DEAD_GREY = (128, 128, 128)  # a unit that never fires on the dataset, in every view of the app


def _memo(memo):
    return memo or (lambda key, compute: compute())


def layer_top(store, layer: str, memo=None, k: int = TOP_K):
    """The layer's :class:`~volviz.analysis.dataset.topk.TopExamples` (one streamed pass, once)."""
    from volviz.analysis.dataset.topk import top_examples

    return _memo(memo)(("top", str(store.path), layer, k), lambda: top_examples(store, layer, k, histograms=False))


def _to_uint8(crop: np.ndarray) -> np.ndarray:
    """A pixel-space crop ``(C, h, w)`` (NaN where padded) as ``uint8 (h, w, 3)``."""
    pad = np.isnan(crop).any(axis=0)
    rgb = input_rgb(np.nan_to_num(crop))
    rgb[pad] = _FILL
    return rgb


def top_crops(store, layer: str, model_fn, memo=None, k: int = TOP_K) -> tuple[list, str]:
    """Per unit, its top images as ``uint8 (k', h, w, 3)`` crops, and a note on how they were cut.

    Conv units: cut to the receptive field of the strongest position (needs the model); without
    the model, or for linear units, the whole images."""
    top = layer_top(store, layer, memo, k)

    def compute():
        from volviz.analysis.dataset.topk import unit_crops

        conv = bool(np.any(top.positions >= 0))
        if conv:
            try:
                model = model_fn()
            except Exception as exc:  # noqa: BLE001 - not trusted, weights gone: whole images
                how = f"whole images (no receptive-field crops: {exc})"
            else:
                crops, _ = unit_crops(store, model, top)
                return [np.stack([_to_uint8(c) for c in cu]) if len(cu) else None for cu in crops], (
                    "cut to the receptive field of the strongest position (from the model's gradients)"
                )
        else:
            how = "whole images (a linear unit sees all of it)"
        valid = np.unique(top.rows[top.rows >= 0])
        pixels = dict(zip(valid.tolist(), store.read_inputs(valid))) if len(valid) else {}
        out = [
            np.stack([input_rgb(pixels[int(r)]) for r in rows if r >= 0]) if (rows >= 0).any() else None
            for rows in top.rows
        ]
        return out, how

    return _memo(memo)(("top-crops", str(store.path), layer, k), compute)


def _ghost(tile: np.ndarray, grey=DEAD_GREY) -> np.ndarray:
    lum = tile.astype(np.float32).mean(axis=2, keepdims=True)
    return np.clip(np.asarray(grey, np.float32) + 0.18 * (lum - lum.mean()), 0, 255).astype(np.uint8)


def top_thumbnails(store, layer: str, model_fn, memo=None, px: int = 32) -> np.ndarray:
    """``uint8 (units, px, px, 3)``: each unit's best example (its crop), grey for a dead unit
    (the Graph tab's top-example thumbnails)."""
    from volviz.views.graph_atlas import fit_tile

    top = layer_top(store, layer, memo, k=1)  # only the best example: one crop per unit
    crops, _ = top_crops(store, layer, model_fn, memo, k=1)
    out = np.empty((len(crops), px, px, 3), np.uint8)
    for j, c in enumerate(crops):
        tile = fit_tile(_square(c[0]), px) if c is not None else np.full((px, px, 3), _FILL, np.uint8)
        out[j] = _ghost(tile) if top.dead[j] else tile
    return out


def _square(img: np.ndarray) -> np.ndarray:
    """Pad ``(h, w, 3)`` to a square (centred), so a thumbnail keeps its aspect."""
    h, w = img.shape[:2]
    s = max(h, w)
    out = np.empty((s, s, 3), np.uint8)
    out[:] = _FILL
    out[(s - h) // 2 : (s - h) // 2 + h, (s - w) // 2 : (s - w) // 2 + w] = img
    return out


def examples_mosaic(crops: list, dead: np.ndarray, order, k: int = TOP_K) -> np.ndarray:
    """``uint8`` mosaic: per unit (in ``order``, row-major on a near-square grid) a block of its
    ``k`` examples (``ceil(sqrt k)`` a side), grey for dead units."""
    from volviz.views.graph_atlas import fit_tile

    side = max((max(c.shape[1:3]) for c in crops if c is not None), default=8)
    t = int(min(MAX_TILE, side))
    b = math.ceil(math.sqrt(k))
    block = b * t + (b - 1) * _GAP
    n = len(order)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    out = np.empty((rows * block + (rows - 1) * _UNIT_GAP, cols * block + (cols - 1) * _UNIT_GAP, 3), np.uint8)
    out[:] = _BG
    for cell, j in enumerate(order):
        r, c = divmod(cell, cols)
        y0, x0 = r * (block + _UNIT_GAP), c * (block + _UNIT_GAP)
        out[y0 : y0 + block, x0 : x0 + block] = _FILL
        for i, img in enumerate(crops[j] if crops[j] is not None else []):
            if i >= b * b:
                break
            tile = fit_tile(_square(img), t)
            tile = _ghost(tile) if dead[j] else tile
            yy, xx = y0 + (i // b) * (t + _GAP), x0 + (i % b) * (t + _GAP)
            out[yy : yy + t, xx : xx + t] = tile
    return out


def _slow(ctx: PanelContext, what: str):
    """A memo whose misses are computed off the event loop (the panel shows ``what`` meanwhile)."""
    return lambda key, compute: ctx.background(key, compute, what)


def dataset_panel(ctx: PanelContext) -> PanelImage:
    store, layer = ctx.store, ctx.layer
    if not store.has("activation", layer):
        return PanelImage(
            None,
            f"this store keeps no activations of {layer} (top examples need where a unit fired); "
            f"capture them with `volviz capture --layers {layer} --out NEW`",
        )
    n, units = int(store.done.sum()), int(store.layers[layer].act_shape[0])
    what = f"finding the top {TOP_K} of {n} images of each of {layer}'s {units} units (a pass over its activations)"
    top = layer_top(store, layer, _slow(ctx, what))
    cut = f"cutting {layer}'s top examples to what each unit sees"
    crops, how = top_crops(store, layer, ctx.model, _slow(ctx, cut))
    order = np.asarray(ctx.volume.order) if ctx.volume is not None else np.arange(len(crops))
    in_3d = len(order) == len(crops)
    if not in_3d:
        order = np.arange(len(crops))
    rgb = examples_mosaic(crops, top.dead, order)
    dead = np.flatnonzero(top.dead)
    return PanelImage(
        rgb,
        f"{layer}: the top {TOP_K} of {top.n_images} images of each of its {len(crops)} units "
        f"(best first, row-major in each block), {how}; {'order as in 3-D' if in_3d else 'unit order'}; "
        f"{len(dead)} dead (grey: never above 0 on any image)"
        + (f": {', '.join(f'#{j}' for j in dead[:12])}{' ...' if len(dead) > 12 else ''}" if len(dead) else ""),
        {"rows": top.rows, "values": top.values, "dead": top.dead, "order": order},
    )


register_panel("examples", "Dataset examples", dataset_panel)
