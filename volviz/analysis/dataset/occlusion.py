"""Occlusion sensitivity and deconvnet projections ([Zeiler2014], [Hong-L4]) through captum.

* :func:`occlusion_maps`: captum ``Occlusion`` of the softmax probability of a class: a square of
  the dataset's mean pixel slides over the image and each pixel gets the mean drop of ``p(class)``
  over the windows that cover it. Done for the true class and for the most probable one, so a
  misclassified image shows what supports each.
* :func:`deconv_projections`: captum ``Deconvolution`` of one activation (unit ``u`` at its
  strongest position) back to the input: ReLUs pass the positive part of the signal coming back,
  max-pooling sends it to the position that won (autograd's "switches"), convolutions are
  transposed. Without an ``nn.ReLU`` module before the layer it is the plain gradient.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from volviz.analysis.dataset.descriptors import DatasetError, done_rows, image_table
from volviz.analysis.dataset.modelio import Probabilities, model_inputs, normalize

__all__ = [
    "OcclusionResult",
    "occlusion_maps",
    "default_window",
    "mean_pixel",
    "store_occlusion",
    "UpTo",
    "deconv_projections",
    "DeconvResult",
    "store_deconv",
]


def default_window(h: int, w: int) -> tuple[int, int]:
    """A window about a quarter of the image side, moved by a third of it."""
    win = max(3, round(min(h, w) / 4))
    return win, max(1, win // 3)


def occlusion_maps(
    model: nn.Module, x: torch.Tensor, targets, *, window: int, stride: int, baseline: float | torch.Tensor = 0.0
) -> np.ndarray:
    """``(T, H, W)``: for image ``x (1, C, H, W)`` (model input) and each class of ``targets``,
    captum ``Occlusion`` of ``p(class)`` with a ``window x window`` square over all channels."""
    from captum.attr import Occlusion

    targets = [int(t) for t in np.atleast_1d(targets)]
    c = x.shape[1]
    xs = x.detach().float().expand(len(targets), *x.shape[1:]).contiguous()
    with torch.no_grad():
        attr = Occlusion(Probabilities(model).eval()).attribute(
            xs,
            sliding_window_shapes=(c, window, window),
            strides=(c, stride, stride),
            baselines=baseline,
            target=targets,
            perturbations_per_eval=8,
        )
    return attr.mean(1).numpy()  # the same value in every channel: the window spans them all


def mean_pixel(store, n: int = 256) -> np.ndarray:
    """``(C,)`` mean pixel of the first ``n`` captured images (the occluder's colour)."""
    rows = done_rows(store)[:n]
    return store.read_inputs(rows).mean(axis=(0, 2, 3))


@dataclass
class OcclusionResult:
    image: int
    pixels: np.ndarray  # (C, H, W) the input in [0, 1]
    classes: list[int]  # [true, most probable] (true left out when unlabelled)
    kinds: list[str]  # "true", "predicted"
    probs: np.ndarray  # p(class) of the unoccluded image, per map
    maps: np.ndarray  # (T, H, W) mean drop of p(class) when the pixel is covered
    window: int
    stride: int


def store_occlusion(
    store, model, image: int, *, window: int | None = None, stride: int | None = None, target: int | None = None
) -> OcclusionResult:
    """Occlusion maps of store image ``image`` for its true class and its most probable class
    (``target``: one class instead)."""
    table = image_table(store)
    if int(image) not in set(table["rows"].tolist()):
        raise DatasetError(f"image {image} is not a captured image of {store.path}")
    h, w = store.input_shape[1:]
    dw, ds = default_window(h, w)
    window, stride = int(window or dw), int(stride or ds)
    if not 1 <= window <= min(h, w) or stride < 1:
        raise DatasetError(f"--window must be 1..{min(h, w)} and --stride >= 1 (got {window}, {stride})")
    x = model_inputs(store, [image])
    with torch.no_grad():
        probs = Probabilities(model)(x)[0].numpy()
    if target is not None:
        classes, kinds = [int(target)], ["asked"]
    else:
        label = int(store.column("label")[image])
        classes, kinds = [int(probs.argmax())], ["predicted"]
        if label >= 0:
            classes, kinds = [label] + classes, ["true"] + kinds
    base = normalize(store.preprocess, mean_pixel(store)[None, :, None, None])
    maps = occlusion_maps(model, x, classes, window=window, stride=stride, baseline=base)
    return OcclusionResult(int(image), store.read_input(image), classes, kinds, probs[classes], maps, window, stride)


# ---- deconvnet --------------------------------------------------------------------------------
class UpTo(nn.Module):
    """The model cut after ``layer`` (what captum attributes a layer's unit through)."""

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        from volviz.analysis.actmax.objectives import LayerOutput

        self.model = model
        self._out = LayerOutput(model, layer, unit_only=False)

    def forward(self, x):
        return self._out(x)


def _relus_before(cut: nn.Module, model: nn.Module, x: torch.Tensor) -> bool:
    """Whether an ``nn.ReLU`` module (what captum's deconvnet rule applies to) runs up to the cut."""
    seen = []
    hooks = [m.register_forward_hook(lambda *_: seen.append(1)) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            cut(x)
    finally:
        for h in hooks:
            h.remove()
    return bool(seen)


def deconv_projections(model: nn.Module, layer: str, x: torch.Tensor, units, positions=None) -> np.ndarray:
    """``(B, C, H, W)`` captum ``Deconvolution`` of activation ``units[b]`` at ``positions[b] =
    (y, x)`` (conv) of layer ``layer`` for model inputs ``x (B, C, H, W)``."""
    from captum.attr import Deconvolution

    units = np.asarray(units, np.int64).reshape(-1)
    if positions is None or np.asarray(positions)[..., 0].min() < 0:
        target = [int(u) for u in units]
    else:
        pos = np.asarray(positions, np.int64).reshape(len(units), 2)
        target = [(int(u), int(p[0]), int(p[1])) for u, p in zip(units, pos)]
    cut = UpTo(model, layer).eval()
    if not _relus_before(cut, model, x[:1]):
        warnings.warn(
            f"deconvnet: no nn.ReLU module runs before {layer}, so the projection equals the gradient", stacklevel=2
        )
    with warnings.catch_warnings():  # captum announces its (temporary) ReLU hooks
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        x = x.detach().float().clone().requires_grad_(True)
        attr = Deconvolution(cut).attribute(x, target=target)
    return attr.detach().numpy()


@dataclass
class DeconvResult:
    layer: str
    unit: int
    rows: np.ndarray  # (k,) the unit's top images
    values: np.ndarray  # (k,) their scores
    positions: np.ndarray  # (k, 2)
    boxes: np.ndarray  # (k, 4) receptive-field boxes (y0, y1, x0, x1)
    pixels: np.ndarray  # (k, C, H, W) the images
    projections: np.ndarray  # (k, C, H, W) deconvnet projections


def store_deconv(store, model, layer: str, unit: int, k: int = 9, *, top=None) -> DeconvResult:
    """Deconvnet projections of unit ``unit``'s strongest activation on each of its top-``k`` images."""
    from volviz.analysis.dataset.topk import crop_boxes, top_examples

    top = top if top is not None else top_examples(store, layer, k, histograms=False)
    n_units = top.rows.shape[0]
    if not 0 <= int(unit) < n_units:
        raise DatasetError(f"--unit {unit} out of range: {layer} has {n_units} units (0..{n_units - 1})")
    keep = top.rows[unit] >= 0
    rows, pos = top.rows[unit][keep][:k], top.positions[unit][keep][:k]
    x = model_inputs(store, rows)
    units = np.full(len(rows), int(unit))
    proj = deconv_projections(model, layer, x, units, pos)
    boxes = crop_boxes(model, layer, units, pos, x)
    return DeconvResult(layer, int(unit), rows, top.values[unit][keep][:k], pos, boxes, store.read_inputs(rows), proj)
