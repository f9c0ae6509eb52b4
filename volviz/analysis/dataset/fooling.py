"""Fooling images: a real image nudged until the model calls it another class with high confidence
([Hong-L4]: fooling a ConvNet, "adversarial examples").

Batched gradient ascent on ``log p(class | x0 + delta)`` over the perturbation ``delta`` in pixel
space: steps of fixed L2 length ``step`` along the normalized gradient (the iterative L2 method),
with the components that would push a pixel past 0 or 1 dropped, and a step halved for an image
whenever it lost ground. Each image stops at the step its confidence reaches the goal, so the
perturbation is about as small as this path makes it. The reported norms are those of the
returned image: ``||x - x0||_2`` and ``max |x - x0|`` in pixel units ([0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from volviz.analysis.dataset.descriptors import DatasetError
from volviz.analysis.dataset.modelio import Logits, normalize

__all__ = ["Fooling", "fool", "store_fool"]


@dataclass
class Fooling:
    rows: np.ndarray  # store rows (or -1)
    target: int
    originals: np.ndarray  # (B, C, H, W) pixels
    images: np.ndarray  # (B, C, H, W) fooled pixels
    prob_before: np.ndarray  # (B, K)
    prob_after: np.ndarray  # (B, K)
    l2: np.ndarray  # (B,) ||x - x0||_2 in pixels
    linf: np.ndarray  # (B,) max |x - x0|
    steps: np.ndarray  # (B,) steps taken
    success: np.ndarray  # (B,) p(target) >= confidence

    @property
    def relative_l2(self) -> np.ndarray:
        return self.l2 / np.maximum(np.sqrt((self.originals.reshape(len(self.l2), -1) ** 2).sum(1)), 1e-12)


def fool(
    model, prep, pixels: np.ndarray, target: int, *, confidence: float = 0.95, max_steps: int = 1000, step: float = 0.05
) -> Fooling:
    """Fool ``model`` on images ``pixels (B, C, H, W)`` (``[0, 1]``, ``prep``'s normalization)."""
    if not 0 < confidence < 1:
        raise DatasetError(f"--confidence must be between 0 and 1, got {confidence}")
    logits = Logits(model).eval()
    x0 = torch.as_tensor(np.asarray(pixels, np.float32))
    b = len(x0)
    with torch.no_grad():
        p0 = torch.softmax(logits(normalize(prep, x0)).float(), 1)
    k = p0.shape[1]
    if not 0 <= int(target) < k:
        raise DatasetError(f"--class {target} out of range: the model has {k} classes (0..{k - 1})")
    delta = torch.zeros_like(x0, requires_grad=True)
    active = torch.ones(b, dtype=torch.bool)
    steps = np.zeros(b, np.int64)
    length = torch.full((b,), float(step))
    last = torch.full((b,), -torch.inf)
    for t in range(max_steps + 1):
        x = (x0 + delta).clamp(0, 1)
        z = logits(normalize(prep, x)).float()
        with torch.no_grad():
            active &= torch.softmax(z, 1)[:, int(target)] < confidence
        logp = torch.log_softmax(z, 1)[:, int(target)]
        with torch.no_grad():  # a step that lost ground overshot: halve that image's step length
            length = torch.where(logp < last, (length / 2).clamp_min(step / 64), length)
            last = logp.detach()
        if t == max_steps or not active.any():
            break
        steps[active.numpy()] += 1
        (g,) = torch.autograd.grad(logp.sum(), delta)
        with torch.no_grad():
            xd = x0 + delta  # components that push a pixel past 0 or 1 would be clipped away: drop them
            g = torch.where(((xd <= 0) & (g < 0)) | ((xd >= 1) & (g > 0)), torch.zeros_like(g), g)
            norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))
            move = (length * active).view(-1, *([1] * (g.dim() - 1))) * g / norm
            delta.copy_((x0 + delta + move).clamp(0, 1) - x0)
    with torch.no_grad():
        final = (x0 + delta).clamp(0, 1)
        p1 = torch.softmax(logits(normalize(prep, final)).float(), 1)
    d = (final - x0).reshape(b, -1)
    return Fooling(
        np.full(b, -1),
        int(target),
        x0.numpy(),
        final.numpy(),
        p0.numpy(),
        p1.numpy(),
        d.norm(dim=1).numpy(),
        d.abs().amax(1).numpy(),
        steps,
        (p1[:, int(target)] >= confidence).numpy(),
    )


def store_fool(store, model, rows, target: int, **kw) -> Fooling:
    """:func:`fool` on store images ``rows``."""
    rows = np.asarray(rows, np.int64).reshape(-1)
    out = fool(model, store.preprocess, store.read_inputs(rows), target, **kw)
    out.rows = rows
    return out
