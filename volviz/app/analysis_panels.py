"""Issue 5 and 4 in the explorer's 2-D panels: per-filter importance of the current layer (seed
004 §3.2.3), the layer's preferred inputs (``volviz optimize``), and the saliency overlay on the
input image ([Hong-L4] / [Tang]). Pure numpy / PIL / torch -> small PNGs; no trame, no VTK.

* **Importance** (tab): two bar charts over the layer's filters, from the store's weight
  gradients (:func:`~volviz.analysis.importance.importance_from_store`, computed once per store
  and layer, then cached): the class-wise relevance of the chosen class (mean over its images)
  and the current image's importance (w.r.t. the output neuron its gradients were taken for).
* **Preferred** (tab): the current layer's preferred inputs as a grid, in the 3-D view's filter
  order; or how to compute them.
* **Saliency** (a switch under the input image): ``max_c |dS/dI|`` of the predicted class
  (captum, :func:`~volviz.analysis.saliency.saliency_maps`) blended over the image.
"""

from __future__ import annotations

import numpy as np

from volviz.app.panels import PanelContext, PanelImage, register_panel

__all__ = [
    "layer_importance",
    "importance_values",
    "importance_chart",
    "importance_panel",
    "preferred_panel",
    "rgb_mosaic",
    "model_input",
    "saliency_overlay",
]

CHART_SIZE = (360, 270)  # shown ~350 px wide in the page: about 1:1, text stays legible
_BG, _FG, _GRID = (21, 23, 28), (225, 228, 232), (70, 74, 84)
_CLASS_COLOUR, _IMAGE_COLOUR = (245, 176, 65), (93, 173, 226)


# ------------------------------------------------------------------------------ importance
def layer_importance(store, layer: str, memo=None):
    """``(ImportanceResult of one layer, store index of each of its rows)``, computed from the
    store's weight gradients once (``memo(key, compute)`` caches it)."""

    def compute():
        from volviz.analysis.importance import importance_from_store

        return importance_from_store(store, [layer], progress=False), np.flatnonzero(store.done)

    return (memo or (lambda k, f: f()))(("importance", str(store.path), layer), compute)


def _class_name(store, k: int) -> str:
    names = store.class_names
    return names[k] if names and 0 <= k < len(names) else str(k)


def importance_values(store, layer: str, image: int, cls: int, memo=None) -> dict:
    """The numbers of the importance panel: ``class_mean`` (the class-wise relevance of class
    ``cls``: mean over its images of ``||dS_cls/dW_j||``; None when the class has none, ``why``
    says so) with its image count ``n``, and ``per_image`` (image ``image``'s importance, w.r.t.
    output neuron ``target``)."""
    from volviz.analysis.importance import EmptyClassError

    res, idx = layer_importance(store, layer, memo)
    row = int(np.searchsorted(idx, image))
    if row >= len(idx) or idx[row] != image:
        raise ValueError(f"image {image} has no gradients in the store (not captured yet)")
    out = {
        "layer": layer,
        "cls": int(cls),
        "image": int(image),
        "per_image": res.per_image[layer][row],
        "target": int(res.target[row]),
        "class_mean": None,
        "n": 0,
        "why": "",
    }
    try:
        out["class_mean"], out["n"] = res.mean(layer, int(cls))
    except EmptyClassError as exc:
        out["why"] = str(exc)
    return out


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _bars(draw, box, values, colour, title: str, font, small) -> None:
    """One bar chart in ``box = (x0, y0, x1, y1)``: a bar per filter (bins of maxima when there
    are more filters than pixels), its own scale [0, max], the 3 largest labelled."""
    x0, y0, x1, y1 = box
    draw.text((x0, y0), title, fill=_FG, font=font)
    top, bottom = y0 + 21, y1
    draw.line([(x0, bottom), (x1, bottom)], fill=_GRID)
    v = np.nan_to_num(np.asarray(values, np.float64))
    vmax = float(v.max()) if v.size else 0.0
    draw.text((x1 - 4, y0 + 2), f"max {vmax:.3g}", fill=_FG, font=small, anchor="ra")
    if not v.size or vmax <= 0:
        return
    n, width = len(v), x1 - x0
    bins = max(1, -(-n // width))  # filters per bar
    shown = v[: (n // bins) * bins].reshape(-1, bins).max(1) if bins > 1 else v
    step = width / len(shown)
    h = bottom - top - 15  # room for the labels of the tallest bars
    for j, val in enumerate(shown):
        a = x0 + j * step
        b = max(a + 1, a + step - (1 if step >= 4 else 0))
        draw.rectangle([a, bottom - h * val / vmax, b - 1, bottom], fill=colour)
    for j in np.argsort(-v, kind="stable")[:3]:  # the 3 most important filters, by index
        a = x0 + (j // bins) * step + step / 2
        draw.text((a, bottom - h * v[j] / vmax - 2), f"#{j}", fill=_FG, font=small, anchor="md")


def importance_chart(
    class_mean, per_image, class_title: str, image_title: str, size: tuple[int, int] = CHART_SIZE
) -> np.ndarray:
    """``uint8 (H, W, 3)``: the class-averaged importance (top) and the image's (bottom), one
    bar per filter in filter order, each on its own scale."""
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", (w, h), _BG)
    draw = ImageDraw.Draw(img)
    font, small = _font(13), _font(11)
    left, right, mid = 8, w - 8, h // 2
    if class_mean is not None:
        _bars(draw, (left, 4, right, mid - 10), class_mean, _CLASS_COLOUR, class_title, font, small)
    else:
        draw.text((left, 4), class_title, fill=_FG, font=font)
    _bars(draw, (left, mid + 2, right, h - 22), per_image, _IMAGE_COLOUR, image_title, font, small)
    n = len(per_image)
    for k in sorted({0, n // 4, n // 2, 3 * n // 4, n - 1}):  # filter index ticks
        x = left + (k + 0.5) * (right - left) / n
        edge = "la" if k == 0 and n > 1 else ("ra" if k == n - 1 and n > 1 else "ma")
        draw.text(
            (left if edge == "la" else right if edge == "ra" else x, h - 18), str(k), fill=_FG, font=small, anchor=edge
        )
    return np.asarray(img)


def importance_panel(ctx: PanelContext) -> PanelImage:
    store, layer = ctx.store, ctx.layer
    info = store.layers[layer]
    if not info.weight_shape:
        with_w = [n for n, i in store.layers.items() if i.weight_shape]
        return PanelImage(
            None,
            f"{layer} ({info.module_type}) has no weights, so no filters to score; "
            f"layers with weights: {', '.join(with_w)}",
        )
    if not store.has("grad_weight", layer):
        return PanelImage(
            None,
            f"this store has no weight gradients for {layer} (captured with --no-grads "
            "or --no-weight-grads); recapture, or use `volviz importance STORE --images ...`",
        )
    cls = ctx.sort_class if ctx.sort_class is not None and ctx.sort_class >= 0 else int(store.column("pred")[ctx.image])
    d = importance_values(store, layer, ctx.image, cls, ctx.memo)
    cname, tname = _class_name(store, cls), _class_name(store, d["target"])
    what = "filters" if info.kind == "conv" else "neurons (rows of W)"
    class_title = (
        f"class {cname}: mean over its {d['n']} images"
        if d["class_mean"] is not None
        else f"class {cname}: no images analysed w.r.t. its neuron"
    )
    image_title = f"this image ({ctx.image}), neuron {tname}"
    rgb = importance_chart(d["class_mean"], d["per_image"], class_title, image_title)
    top = np.argsort(-np.asarray(d["class_mean"] if d["class_mean"] is not None else d["per_image"]))[:3]
    note = (
        f"{layer}: importance ||dS/dW_j|| of its {len(d['per_image'])} {what} ([Jain2016]), in filter "
        f"order, each chart on its own scale; most important for class {cname}: "
        f"{', '.join(f'#{j}' for j in top)}. Class: the select above (default: the predicted class)."
        + (f" {d['why']}" if d["why"] else "")
    )
    return PanelImage(rgb, note, d)


# ------------------------------------------------------------------------------ preferred inputs
def rgb_mosaic(tiles: np.ndarray, gap: int = 1, fill=(40, 43, 50)) -> np.ndarray:
    """``uint8 (n, h, w, 3)`` tiles on a near-square grid with ``gap`` pixels between them."""
    from volviz.views.grid import tile_mosaic

    m = tile_mosaic(np.asarray(tiles, np.float32), gap=gap, fill=np.nan)
    out = np.nan_to_num(m, nan=0.0)
    out[np.isnan(m).any(axis=2)] = fill
    return out.astype(np.uint8)


def preferred_panel(ctx: PanelContext) -> PanelImage:
    from volviz.analysis.actmax import results as R

    store, layer = ctx.store, ctx.layer
    have = R.preferred_layers(store)
    if layer not in have:
        hint = f"`volviz optimize {store.path} --layers {layer}` (or `volviz optimize {store.path}` for every layer)"
        return PanelImage(
            None,
            f"no preferred inputs for {layer} in this store yet"
            f"{' (it has them for ' + ', '.join(have) + ')' if have else ''}; compute them "
            f"with {hint}, then open this tab again",
        )
    tiles = ctx.memo(("preferred", str(store.path), layer), lambda: R.thumbnails(store, layer, size=None))
    order = np.asarray(ctx.volume.order) if ctx.volume is not None else np.arange(len(tiles))
    in_3d = len(order) == len(tiles)
    if not in_3d:
        order = np.arange(len(tiles))
    rgb = rgb_mosaic(tiles[order])
    return PanelImage(
        rgb,
        f"{layer}: preferred input of each of its {len(tiles)} units (best seed, each "
        f"stretched to its own range), {'order as in 3-D' if in_3d else 'unit order'}, "
        "row-major",
        {"tiles": tiles, "order": order},
    )


# ------------------------------------------------------------------------------ saliency
def model_input(store, i: int):
    """Image ``i`` as the model saw it: ``torch (1, C, H, W)``, the capture's normalization
    applied again (the store keeps the input with normalization undone)."""
    import torch

    x = torch.from_numpy(np.asarray(store.read_input(int(i)), np.float32))[None]
    p = store.preprocess
    c = x.shape[1]
    mean = torch.tensor(p.mean or [0.0] * c, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(p.std or [1.0] * c, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean) / std, mean, std


def saliency_overlay(model, store, image: int, method: str = "saliency", target: int | None = None):
    """``(uint8 (H, W, 3) overlay, (H, W) map, target)``: ``max_c |A_c|`` of class ``target``
    (default: the predicted class) over the input image."""
    import torch

    from volviz.analysis.saliency import SALIENCY_METHODS, overlay, saliency_maps

    x, mean, std = model_input(store, image)
    if target is None:
        target = int(store.column("pred")[int(image)])
    takes_baseline = method in SALIENCY_METHODS and SALIENCY_METHODS[method].baseline
    baseline = ((torch.zeros_like(x) - mean) / std) if takes_baseline else None  # the black image
    sal = saliency_maps(model.eval(), x, int(target), method=method, baseline=baseline)[0]
    return overlay(store.read_input(int(image)), sal), sal, int(target)


register_panel("importance", "Importance", importance_panel)
register_panel("preferred", "Preferred", preferred_panel)
