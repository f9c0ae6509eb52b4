"""The 2-D panels next to the 3-D view ([Tamari2017]): the current layer's maps as a grid, a linear
layer's activations as a grid of neurons, the sorted-neuron view, the input image and the class
probabilities. Pure numpy -> small PNGs (the browser scales them up with sharp pixels).

Panels are a registry: ``register_panel("key", "Title", fn)`` adds a tab to the app, where
``fn(ctx: PanelContext) -> PanelImage``. The importance and preferred-input panels plug in this
way (:mod:`volviz.app.analysis_panels`) without touching the layout. A panel whose first
computation takes seconds (the Dataset examples' pass over the store) asks for it with
``ctx.background(key, compute, what)``: the pane runs it in its background job and shows ``what``
meanwhile, so the event loop (every session's slider) never waits for it.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from volviz.views.grid import near_square_grid, neuron_grid, to_rgb, vis_square

__all__ = [
    "PANELS",
    "PanelContext",
    "PanelImage",
    "PanelPending",
    "class_weights",
    "input_rgb",
    "png_data_url",
    "prob_rows",
    "register_panel",
    "relu_follows",
    "sorted_neurons",
]


@dataclass
class PanelImage:
    rgb: np.ndarray | None  # uint8 (H, W, 3); None: nothing to show (see note)
    note: str = ""
    data: dict | None = None  # the numbers drawn (the app keeps them: tests compare them)


def _no_memo(key, compute):
    return compute()


def _at_once(key, compute, what):
    return compute()


class PanelPending(Exception):
    """Raised by ``ctx.background`` while the result of ``key`` is being computed off the event
    loop: the pane shows ``what`` with a spinner and renders the panel again once it is there."""

    def __init__(self, key, compute: Callable[[], object], what: str):
        super().__init__(what)
        self.key, self.compute, self.what = key, compute, what


@dataclass
class PanelContext:
    """What a panel may look at for the current image of one pane."""

    store: object  # volviz.store.store.Store
    image: int  # store index of the current image
    layer: str  # layer shown in 3-D
    quantity: str
    volume: object  # the LayerVolume shown in 3-D (natural order + order)
    fc_layer: str | None  # linear layer chosen for the neuron panels
    sort_class: int  # -1: the predicted class of the image
    read: Callable[[str, str, int], np.ndarray]  # cached store read (quantity, layer, image)
    model: Callable[[], object]  # lazily loaded nn.Module (raises with a clear message)
    memo: Callable[[object, Callable[[], object]], object] = _no_memo  # memo(key, compute): per store
    slice_row: int = 0  # the drawer's slice row (the Slice panel)
    # background(key, compute, what): memo, but under the server a miss is computed in the pane's
    # background job (one at a time) and raises PanelPending meanwhile; without a loop: at once
    background: Callable[[object, Callable[[], object], str], object] = _at_once


@dataclass
class Panel:
    key: str
    title: str
    render: Callable[[PanelContext], PanelImage]


PANELS: dict[str, Panel] = {}


def register_panel(key: str, title: str, render: Callable[[PanelContext], PanelImage]) -> None:
    """Add (or replace) a 2-D panel tab."""
    PANELS[key] = Panel(key, title, render)


# ------------------------------------------------------------------------------ encoding
MAX_PANEL_SIDE = 640  # px: the panels are ~400 px wide in the page; larger mosaics are reduced


def png_data_url(rgb: np.ndarray, max_side: int = MAX_PANEL_SIDE) -> str:
    """``uint8 (H, W[, 3])`` as a ``data:image/png;base64,...`` URL (fast zlib level; images
    longer than ``max_side`` are box-filtered down first: a 64 x 112 x 112 mosaic is 903 px)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(rgb))
    if max(img.size) > max_side:
        f = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.BOX)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def input_rgb(x: np.ndarray) -> np.ndarray:
    """A stored model input ``(C, H, W)`` in [0, 1] as ``uint8 (H, W, 3)`` (grey repeated)."""
    a = np.nan_to_num(np.asarray(x, np.float32))
    if a.ndim == 2:
        a = a[None]
    a = a[:3] if a.shape[0] >= 3 else a[:1]
    if a.min() < 0 or a.max() > 1:  # still normalized: stretch for display
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / ((hi - lo) or 1.0)
    rgb = np.round(np.clip(a, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    return rgb


def prob_rows(probs: np.ndarray, label: int, pred: int, names: list[str] | None, top: int = 10) -> list[dict]:
    """Rows of the class-probability bar chart: the ``top`` most probable classes, plus the true
    class when it is not among them, in class order; ``p`` in percent."""
    probs = np.asarray(probs, np.float64)
    k = len(probs)
    keep = set(np.argsort(-probs, kind="stable")[:top].tolist()) if k > top else set(range(k))
    if 0 <= label < k:
        keep.add(int(label))
    name = lambda c: names[c] if names and c < len(names) else str(c)
    return [
        {"name": name(c), "p": round(float(probs[c]) * 100, 1), "true": c == label, "pred": c == pred}
        for c in sorted(keep)
    ]


def _signed(a: np.ndarray) -> bool:
    fin = a[np.isfinite(a)]
    return bool(fin.size) and fin.min() < 0 < fin.max()


def _colour(img: np.ndarray, cmap: str | None) -> np.ndarray:
    if _signed(img):
        lim = float(np.nanmax(np.abs(img))) or 1.0
        return to_rgb(img, cmap or "RdBu_r", clim=(-lim, lim))
    return to_rgb(img, cmap or "viridis")


# ------------------------------------------------------------------------------ panels
def maps_panel(ctx: PanelContext, cmap: str | None = None) -> PanelImage:
    """The current 3-D layer as a 2-D grid, in the volume's filter order ([Tamari2017] ``vis_square``)."""
    lv = ctx.volume
    maps = lv.volume[lv.order]
    if lv.kind == "neurons":
        img = maps[0]
        note = f"{ctx.layer}: {int(np.isfinite(img).sum())} neurons as a grid"
    else:
        signed = _signed(maps)  # gradients, pre-ReLU maps: keep zero at the middle colour
        img = vis_square(maps, normalize=None if signed else "global")
        what = {"maps": "feature maps", "weights": "filters' weight gradients"}[lv.kind]
        note = f"{ctx.layer}: {maps.shape[0]} {what} ({maps.shape[1]}x{maps.shape[2]}), order as in 3-D, row-major"
    return PanelImage(_colour(img, cmap), note)


def neurons_panel(ctx: PanelContext, cmap: str | None = None) -> PanelImage:
    """A linear layer's activations for the current image as a near-square grid."""
    if not ctx.fc_layer:
        return PanelImage(None, "this store has no linear layer")
    vec = ctx.read("activation", ctx.fc_layer, ctx.image).ravel()
    grid = neuron_grid(vec)
    top = int(np.argmax(vec))
    return PanelImage(
        _colour(grid, cmap or "viridis"),
        f"{ctx.fc_layer}: {vec.size} neurons, row-major on {grid.shape[0]}x{grid.shape[1]}; "
        f"strongest #{top} ({vec[top]:.3g})",
    )


def class_weights(model, layers: dict, layer: str, n_outputs: int) -> tuple[np.ndarray, str]:
    """Weights from each neuron of linear ``layer`` to each class score, ``(K, N)``.

    The next captured linear layer whose input size is N takes the neurons; when it is the class
    layer (K outputs) its weight matrix is the answer ([Tamari2017] §4.2). Deeper chains
    (fc6 -> fc7 -> fc8) are multiplied through, ignoring the ReLUs between them, and the note says
    so. Raises ``ValueError`` when no path to the class layer exists.
    """
    import torch

    modules = dict(model.named_modules())
    names = list(layers)
    if layer not in modules or not hasattr(modules[layer], "weight"):
        raise ValueError(f"layer {layer!r} is not a weighted module of the model")
    n = int(np.prod(layers[layer].act_shape))
    w = None
    hops = []
    size = n
    for name in names[names.index(layer) + 1 :]:
        m = modules.get(name)
        if m is None or layers[name].kind != "linear" or not isinstance(getattr(m, "weight", None), torch.Tensor):
            continue
        wm = m.weight.detach().float().cpu().numpy()
        if wm.ndim != 2 or wm.shape[1] != size:
            continue
        w = wm if w is None else wm @ w
        hops.append(name)
        size = wm.shape[0]
        if size == n_outputs:
            note = "" if len(hops) == 1 else f" (through {' -> '.join(hops)}, ReLUs ignored: a linear approximation)"
            return w, note
    raise ValueError(
        f"no chain of linear layers leads from {layer!r} to the {n_outputs} class "
        "scores; pick the linear layer just before the output"
    )


def relu_follows(model, layer: str) -> bool:
    """True when a ``ReLU`` module comes after ``layer`` before the next weighted module (in
    registration order, e.g. LeNet's ``fc1 -> relu1 -> fc2``): the next layer then sees the
    rectified activations, as Caffe's in-place ReLU shows them ([Tamari2017])."""
    import torch

    seen = False
    for name, m in model.named_modules():
        if name == layer:
            seen = True
            continue
        if not seen or list(m.children()):
            continue
        if isinstance(m, torch.nn.ReLU):
            return True
        if any(True for _ in m.parameters(recurse=False)):
            return False
    return False


def sorted_neurons(
    act: np.ndarray, weights_c: np.ndarray, cols: int | None = None, gap: int = 1, avg_width: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[Tamari2017] §4.2: neurons sorted by their weight to one class (largest first), laid out
    row-major, with each row's mean activation.

    Returns ``(image, order, row_means)``: ``image`` is the ``rows x cols`` grid, a ``gap`` of
    NaN, then ``avg_width`` columns holding the row means (same units as the activations).
    """
    act = np.asarray(act, np.float32).ravel()
    order = np.argsort(-np.asarray(weights_c, np.float64), kind="stable")
    if cols is None:
        _, cols = near_square_grid(act.size)
    grid = neuron_grid(act[order], cols=cols)
    means = np.nanmean(grid, axis=1)
    img = np.full((grid.shape[0], grid.shape[1] + gap + avg_width), np.nan, np.float32)
    img[:, : grid.shape[1]] = grid
    img[:, grid.shape[1] + gap :] = means[:, None]
    return img, order, means


def sorted_panel(ctx: PanelContext, cmap: str | None = None) -> PanelImage:
    if not ctx.fc_layer:
        return PanelImage(None, "this store has no linear layer")
    store = ctx.store
    n_out = int(store.plan.n_outputs or store.column("probs").shape[1])
    try:
        w, how = class_weights(ctx.model(), store.layers, ctx.fc_layer, n_out)
    except Exception as exc:  # noqa: BLE001 - model missing, weights gone, no chain: say so
        return PanelImage(None, f"sorted-neuron view unavailable: {exc}")
    cls = ctx.sort_class
    if cls is None or cls < 0:
        cls = int(store.column("pred")[ctx.image])
    vec = ctx.read("activation", ctx.fc_layer, ctx.image).ravel()
    relu = relu_follows(ctx.model(), ctx.fc_layer)
    if relu:
        vec = np.maximum(vec, 0)
    img, _, means = sorted_neurons(vec, w[cls])
    names = store.class_names
    cname = names[cls] if names and cls < len(names) else str(cls)
    n_avg = 3
    grid = img[:, : -(n_avg + 1)]
    rgb = to_rgb(img, cmap or "viridis", clim=_robust(grid))
    # the row averages get their own colour range, so their trend shows ([Tamari2017] fig. 22)
    rgb[:, -n_avg:] = to_rgb(img[:, -n_avg:], cmap or "viridis", clim=_robust(means, 100))
    fin = means[np.isfinite(means)]
    return PanelImage(
        rgb,
        f"{ctx.fc_layer}{' after ReLU' if relu else ''}, sorted by weight to class "
        f"{cname}{how}: top rows = largest weights; right = row averages, own colour "
        f"scale ({fin[0]:.3g} top row, {fin[-1]:.3g} bottom row)",
    )


def _robust(a: np.ndarray, pct: float = 99.0) -> tuple[float, float] | None:
    fin = np.asarray(a)[np.isfinite(a)]
    if not fin.size:
        return None
    lo, hi = float(fin.min()), float(np.percentile(fin, pct))
    return (lo, hi) if hi > lo else None


register_panel("maps", "Maps", maps_panel)
register_panel("neurons", "Neurons", neurons_panel)
register_panel("sorted", "Sorted", sorted_panel)
