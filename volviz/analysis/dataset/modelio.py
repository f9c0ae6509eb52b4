"""Between the store's pixels and the model: normalization, logits, probabilities.

The store keeps each image as the model saw it with the normalization undone (``[0, 1]``
pixels); the analyses that run the model normalize here, and report perturbations in pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from volviz.capture.engine import model_logits

__all__ = ["normalize", "denormalize", "model_inputs", "Logits", "Probabilities"]


def _vec(v, c: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(v, np.float32)).reshape(-1)
    return (t.expand(c) if t.numel() == 1 else t).reshape(1, c, 1, 1)


def normalize(prep, pixels) -> torch.Tensor:
    """``(n, C, H, W)`` pixels -> model input with the store's ``Preprocess`` mean / std."""
    x = torch.as_tensor(np.asarray(pixels, np.float32)) if not isinstance(pixels, torch.Tensor) else pixels.float()
    c = x.shape[1]
    if prep.mean is not None:
        x = x - _vec(prep.mean, c).to(x.device)
    if prep.std is not None:
        x = x / _vec(prep.std, c).to(x.device)
    return x


def denormalize(prep, x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    if prep.std is not None:
        x = x * _vec(prep.std, c).to(x.device)
    if prep.mean is not None:
        x = x + _vec(prep.mean, c).to(x.device)
    return x


def model_inputs(store, rows) -> torch.Tensor:
    """Store images ``rows`` as normalized model input."""
    return normalize(store.preprocess, store.read_inputs(rows))


class Logits(nn.Module):
    """Any model output (tensor, tuple, object with .logits) -> (N, K) class scores."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return model_logits(self.model(x))


class Probabilities(Logits):
    """Softmax of the class scores (what occlusion measures: p(class))."""

    def forward(self, x):
        return torch.softmax(super().forward(x).float(), dim=1)
