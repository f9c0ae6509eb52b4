"""Image-specific class saliency [Simonyan2014] ([Hong-L4], [Tang]) through captum.

``M_ij = max_c |A_c,ij|`` where ``A`` is the attribution of the class score ``S_t`` (before
softmax) to the input pixels, ``c`` runs over the input channels:

* ``saliency``: ``A = dS_t / dI`` at the image (captum ``Saliency``);
* ``integrated-gradients``: ``A = (I - I0) * mean_a dS_t/dI (I0 + a (I - I0))`` (captum
  ``IntegratedGradients``), baseline ``I0`` = the black image (pixel value 0 before
  normalization), 50 steps;
* ``guided-backprop``: gradients with negative values zeroed at every ``nn.ReLU`` module on the
  way back (captum ``GuidedBackprop``; ReLUs called as functions inside ``forward`` are not seen,
  and a model without ``nn.ReLU`` modules gives the plain gradient).

Maps are returned as numpy ``(N, H, W)``. :func:`overlay` blends a map over its input image.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from volviz.capture.engine import model_logits
from volviz.errors import AnalysisError, NotDifferentiableError

__all__ = ["METHODS", "SALIENCY_METHODS", "SaliencyMethod", "saliency_maps", "overlay"]


def _saliency(model, x, target, baseline, n_steps):
    from captum.attr import Saliency

    return Saliency(model).attribute(x, target=target, abs=True)


def _integrated_gradients(model, x, target, baseline, n_steps):
    from captum.attr import IntegratedGradients

    return IntegratedGradients(model).attribute(
        x, baselines=0.0 if baseline is None else baseline, target=target, n_steps=n_steps
    )


def _guided_backprop(model, x, target, baseline, n_steps):
    from captum.attr import GuidedBackprop

    if not any(isinstance(m, nn.ReLU) for m in model.modules()):
        warnings.warn(
            "guided backprop: the model has no nn.ReLU modules, so the map equals the plain gradient", stacklevel=3
        )
    with warnings.catch_warnings():  # captum announces its (temporary) ReLU hooks
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        return GuidedBackprop(model).attribute(x, target=target)


@dataclass(frozen=True)
class SaliencyMethod:
    """One attribution method: the CLI's ``--method`` choices and the app's select read
    :data:`SALIENCY_METHODS`, so a new method is one entry here.

    Attributes
    ----------
    name : the name on the command line.
    title : what the app's select calls it.
    short : how a sentence names it ("saliency map (gradient)").
    attribute : ``attribute(model, x, target, baseline, n_steps) -> attributions (N, C, H, W)``.
    baseline : takes a reference input (the callers pass the normalized black image).
    """

    name: str
    title: str
    short: str
    attribute: Callable
    baseline: bool = False


SALIENCY_METHODS: dict[str, SaliencyMethod] = {
    m.name: m
    for m in (
        SaliencyMethod("saliency", "gradient (Saliency)", "gradient", _saliency),
        SaliencyMethod(
            "integrated-gradients", "integrated gradients", "integrated gradients", _integrated_gradients, baseline=True
        ),
        SaliencyMethod("guided-backprop", "guided backprop", "guided backprop", _guided_backprop),
    )
}
METHODS = tuple(SALIENCY_METHODS)


class _Logits(nn.Module):
    """Any model output (tensor, tuple, object with .logits) -> (N, K) scores, for captum."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return model_logits(self.model(x))


def saliency_maps(
    model: nn.Module,
    x: torch.Tensor,
    target,
    *,
    method: str = "saliency",
    baseline: torch.Tensor | float | None = None,
    n_steps: int = 50,
    return_attributions: bool = False,
):
    """``(N, H, W)`` maps ``max_c |attribution|`` for images ``x (N, C, H, W)`` and class scores
    ``target`` (an int or one index per image). ``baseline``: IG's reference input (default: 0,
    i.e. pass the normalized black image yourself for normalized models)."""
    if method not in SALIENCY_METHODS:
        raise AnalysisError(f"unknown saliency method {method!r}; valid: {', '.join(METHODS)}")
    if model.training:
        raise AnalysisError("saliency needs model.eval() (dropout would make the map random)")
    if x.dim() == 3:
        x = x[None]
    wrapped = _Logits(model).eval()
    x = x.detach().clone().float().requires_grad_(True)
    if isinstance(target, torch.Tensor):
        target = target.long()
    elif not isinstance(target, int):
        target = torch.as_tensor(np.asarray(target), dtype=torch.long)
    try:
        attr = SALIENCY_METHODS[method].attribute(wrapped, x, target, baseline, n_steps)
    except RuntimeError as exc:
        msg = str(exc)
        if "does not require grad" in msg or "differentiated" in msg or "grad_fn" in msg:
            raise NotDifferentiableError(
                f"the class score is not differentiable w.r.t. the input ({msg.splitlines()[0]})"
            ) from None
        raise
    attr = attr.detach()
    maps = attr.abs().amax(dim=1).numpy()
    return (maps, attr.numpy()) if return_attributions else maps


def overlay(
    image: np.ndarray,
    sal: np.ndarray,
    *,
    cmap: str = "inferno",
    alpha: float = 0.55,
    clim: tuple[float, float] | None = None,
) -> np.ndarray:
    """Blend a saliency map ``(H, W)`` over ``image`` ((C, H, W) or (H, W, C), values in [0, 1],
    grey or RGB): uint8 ``(H, W, 3)``. The map is scaled to ``clim`` (default 0..max) and the
    colour's weight grows with the value (as its square root), so unimportant pixels show the
    (slightly dimmed) image."""
    from matplotlib import colormaps

    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    img = np.clip(img[:, :, :3], 0, 1)
    s = np.asarray(sal, dtype=np.float64)
    if s.shape != img.shape[:2]:
        raise ValueError(f"saliency map {s.shape} and image {img.shape[:2]} differ in size")
    lo, hi = clim if clim is not None else (0.0, float(s.max()) if s.size else 1.0)
    t = np.clip((s - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(s)
    col = np.asarray(colormaps[cmap](t))[:, :, :3]
    a = alpha * np.sqrt(t)[:, :, None]  # sqrt: mid-strength pixels stay visible
    out = (1 - a) * (0.7 * img) + a * col  # the image dimmed, so the colours read on white too
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)
