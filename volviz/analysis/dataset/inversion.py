"""Representation inversion ([Mahendran2015]): an image whose code at a layer matches a real image's.

The optimizer is the preferred-input one (:func:`volviz.analysis.actmax.optimize_batch`: Adam
in pixel or Fourier space, L2 decay, blur, total variation, clipping, one problem per batch
element); only the objective changes. Element ``b`` maximizes::

    J_b = - ||phi(x_b) - phi_0[b]||^2 / ||phi_0[b]||^2        (minus the regularizers)

where ``phi`` is the layer's output and ``phi_0[b]`` the code of real image ``b``. The report
gives the relative code distance ``||phi(x) - phi_0|| / ||phi_0||`` of the start image and of the
result: what the layer keeps of an image is what every reconstruction shares.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from volviz.analysis.actmax.optimize import Config, Problem, optimize_batch
from volviz.analysis.dataset.descriptors import DatasetError
from volviz.analysis.dataset.modelio import model_inputs

__all__ = ["DEFAULT_CONFIG", "CodeProblem", "Inversion", "invert", "store_inversion"]

#: weak regularization: a good match first, a little smoothness and no jitter (the code is positional)
DEFAULT_CONFIG = Config(param="pixel", lr=0.05, l2_decay=0.0, l1=0.0, tv=0.002, blur_every=0, jitter=0)


class CodeProblem(Problem):
    """A :class:`Problem` whose "unit" ``b`` is target code ``b``: the value is the negative relative
    squared distance of the layer's output to it."""

    def __init__(self, *args, targets: torch.Tensor, **kw):
        kw.setdefault("unit_only", False)
        super().__init__(*args, **kw)
        self.targets = targets.to(self.device).float()
        self.norm2 = self.targets.flatten(1).pow(2).sum(1).clamp_min(1e-12)

    def out_shape(self) -> tuple[int, ...]:
        return (len(self.targets),)

    def codes(self, pixels: torch.Tensor) -> torch.Tensor:
        with self.precision_context():
            return self.forward(self.normalize(pixels)).float()

    def values(self, pixels: torch.Tensor, units: torch.Tensor | None = None) -> torch.Tensor:
        if units is None:
            raise DatasetError("code matching needs one target per image")
        diff = (self.codes(pixels) - self.targets[units]).flatten(1)
        return -diff.pow(2).sum(1) / self.norm2[units]


@dataclass
class Inversion:
    layer: str
    rows: np.ndarray  # store rows of the real images
    originals: np.ndarray  # (B, C, H, W) pixels
    images: np.ndarray  # (B, C, H, W) reconstructions (pixels)
    distance_start: np.ndarray  # (B,) relative code distance of the start image
    distance_final: np.ndarray  # (B,) ... of the reconstruction
    steps: int
    config: dict


def invert(
    model,
    layer: str,
    targets: torch.Tensor,
    input_shape,
    *,
    mean=None,
    std=None,
    steps: int = 300,
    config: Config = DEFAULT_CONFIG,
    seed: int = 0,
    centre=0.5,
    lo=0.0,
    hi=1.0,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reconstructions ``(B, C, H, W)`` of codes ``targets (B, ...)`` of ``layer``, and the relative
    code distances before and after."""
    if steps < 1:
        raise DatasetError(f"--steps must be at least 1, got {steps}")
    prob = CodeProblem(
        model,
        layer,
        "neuron",
        tuple(input_shape),
        mean,
        std,
        centre=centre,
        lo=lo,
        hi=hi,
        device=device,
        channels_last=False,
        targets=targets,
    )
    b = len(targets)
    res = optimize_batch(prob, np.arange(b), np.full(b, seed), config, steps)
    # values are -d^2: report d = ||phi(x) - phi_0|| / ||phi_0||
    return (res.images, np.sqrt(np.clip(-res.activation_init, 0, None)), np.sqrt(np.clip(-res.activation, 0, None)))


def store_inversion(
    store, model, layer: str, rows, *, steps: int = 300, config: Config = DEFAULT_CONFIG, seed: int = 0
) -> Inversion:
    """Reconstruct store images ``rows`` from their ``layer`` codes (computed by the model)."""
    from volviz.analysis.actmax.objectives import LayerOutput

    rows = np.asarray(rows, np.int64).reshape(-1)
    if layer not in dict(model.named_modules()):
        raise DatasetError(f"no layer {layer!r} in the store's model; layers: {', '.join(store.layers)}")
    x = model_inputs(store, rows)
    with torch.no_grad():
        targets = LayerOutput(model, layer, unit_only=False)(x).float()
    originals = store.read_inputs(rows)
    prep = store.preprocess
    centre = tuple(originals.mean(axis=(0, 2, 3)).tolist())
    images, d0, d1 = invert(
        model,
        layer,
        targets,
        store.input_shape,
        mean=prep.mean,
        std=prep.std,
        steps=steps,
        config=config,
        seed=seed,
        centre=centre,
        lo=0.0,
        hi=1.0,
    )
    return Inversion(layer, rows, originals, images, d0, d1, steps, config.to_dict())
