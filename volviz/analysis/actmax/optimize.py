"""The batched optimization loop: one unit (and seed) per batch element.

For element ``b`` (unit ``u_b``, seed ``s_b``, regularization ``cfg_b``) every step does::

    x      = param.image()                      # pixel space, (B, C, H, W)
    a_b    = unit u_b of layer(normalize(jitter(x, shift_b,t)))
    J_b    = a_b / scale_b - l1_b * mean|x_b - centre| - tv_b * TV(x_b)
    Adam ascent on sum_b J_b with learning rate lr_b   # elementwise: elements never mix
    x_b   <- centre + (1 - l2_decay_b) (x_b - centre)  # L2 decay
    x_b   <- blur(x_b, blur_sigma_b)  every blur_every_b steps
    x_b   <- clip(x_b, lo, hi)

Because the model runs in eval mode, Adam is elementwise and every random number an element uses
comes from a generator seeded by its own ``(seed, unit)`` (:func:`transforms.element_rngs`),
element ``b`` of a batched run follows the same trajectory as a run of that unit alone, up to
floating-point summation order. ``scale_b`` (the unit's top activation on real images, see
``run.py``) makes the penalty weights mean the same for every unit of every layer.

Nothing here loops over units: the only per-element Python code draws the start noise and the
jitter table once, before the first step.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from volviz.analysis.actmax.objectives import (
    LayerOutput,
    ObjectiveError,
    check_kind,
    l1_penalty,
    reduce_unit,
    tv_penalty,
    unit_values,
)
from volviz.analysis.actmax.param import PARAM_KINDS, make_param
from volviz.analysis.actmax.transforms import blurred_noise, element_rngs, jitter, jitter_table

__all__ = ["Config", "Problem", "BatchResult", "PRECISIONS", "optimize_batch", "optimize_units"]

PRECISIONS = ("fp32", "tf32", "bf16")


@dataclass(frozen=True)
class Config:
    """One regularization setting: what the random search samples (``search.py``).

    ``lr``: Adam step (pixel units for ``pixel``, logit-spectrum units for ``fourier``).
    ``l2_decay``: fraction of the deviation from the centre removed per step. ``l1``, ``tv``: loss
    weights (relative to the unit's normalized activation). ``blur_every`` steps (0 = never) a
    Gaussian blur of ``blur_sigma`` pixels. ``jitter``: largest shift in pixels per step.
    ``clip``: keep pixels in the real images' range (``pixel`` only; ``fourier`` is bounded).
    """

    param: str = "pixel"
    lr: float = 0.05
    l2_decay: float = 0.002
    l1: float = 0.0
    tv: float = 0.05
    blur_every: int = 4
    blur_sigma: float = 0.5
    jitter: int = 1
    clip: bool = True

    def __post_init__(self):
        if self.param not in PARAM_KINDS:
            raise ValueError(f"unknown image parameterization {self.param!r}; valid: {', '.join(PARAM_KINDS)}")
        for name in ("lr", "l2_decay", "l1", "tv", "blur_sigma"):
            if not np.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.l2_decay >= 1:
            raise ValueError(f"l2_decay is a fraction per step and must be < 1, got {self.l2_decay}")
        if self.blur_every < 0 or self.jitter < 0:
            raise ValueError("blur_every and jitter must be >= 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **kw) -> "Config":
        return dataclasses.replace(self, **kw)


@dataclass
class Problem:
    """The model side: which layer and unit kind, how pixels become model input, where to run.

    ``mean``/``std``: the model's normalization (None = identity). ``centre``: the pixel that L2
    decay and L1 pull toward (the real images' mean pixel per channel; 0.5 without data).
    ``lo``/``hi``: the pixel range kept by clipping. ``colour``: the channel mixing matrix of the
    Fourier parameterization (:func:`param.colour_matrix`).
    """

    model: nn.Module
    layer: str | None
    kind: str
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    centre: tuple[float, ...] | float = 0.5
    lo: tuple[float, ...] | float = 0.0
    hi: tuple[float, ...] | float = 1.0
    colour: np.ndarray | None = None
    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = True  # feed channels-last input (2x faster on the CPU with a channels-last model)
    # compute only the target unit of the target layer (LayerOutput.units). None: Linear always,
    # Conv2d on the CPU only (measured 15x cheaper for digits conv1; a grouped conv with one group
    # per element is not known to be fast on GPUs, and saves little for deep layers)
    unit_only: bool | None = None
    # (h, w) of the optimized image when it is smaller than the model input: the image is
    # upsampled (bilinear) to the input size before the model sees it. None: the input size.
    image_size: tuple[int, int] | None = None

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        unit_only = self.unit_only
        if unit_only is None:
            unit_only = True if torch.device(self.device).type == "cpu" else "linear"
        self.forward = LayerOutput(self.model, self.layer, unit_only)
        c, h, w = self.input_shape
        size = (h, w) if self.image_size is None else tuple(int(v) for v in self.image_size)
        if len(size) != 2 or not (1 <= size[0] <= h and 1 <= size[1] <= w):
            raise ValueError(
                f"image_size must be (h, w) with 1 <= h <= {h} and 1 <= w <= {w} (the model "
                f"input), got {self.image_size}"
            )
        self.image_size = size

    @property
    def opt_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of the optimized images (the input shape unless ``image_size`` is smaller)."""
        return (self.input_shape[0], *self.image_size)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels at the optimized size -> pixels at the model's input size (bilinear)."""
        size = tuple(self.input_shape[1:])
        if tuple(x.shape[-2:]) == size:
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def from_input(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels at the model's input size -> the optimized size (antialiased), e.g. start images."""
        if tuple(x.shape[-2:]) == tuple(self.image_size):
            return x
        return F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)

    def _vec(self, v) -> torch.Tensor:
        c = self.input_shape[0]
        t = torch.as_tensor(np.asarray(v, dtype=np.float32), device=self.device).reshape(-1)
        return (t.expand(c) if t.numel() == 1 else t).reshape(1, c, 1, 1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = self.to_input(x)
        if self.mean is not None:
            x = x - self._vec(self.mean)
        if self.std is not None:
            x = x / self._vec(self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @contextlib.contextmanager
    def precision_context(self):
        """TF32 on or off for the run (restored afterwards), bf16 autocast for ``bf16``."""
        dev = torch.device(self.device).type
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        tf32 = self.precision in ("tf32", "bf16")
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        try:
            if self.precision == "bf16":
                with torch.autocast(dev, dtype=torch.bfloat16):
                    yield
            else:
                yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

    def values(self, pixels: torch.Tensor, units: torch.Tensor | None = None) -> torch.Tensor:
        """Objective of unit ``units[b]`` for image b, ``(B,)``, or of every unit, ``(B, U)``."""
        with self.precision_context():
            x = self.normalize(pixels)
            if units is None:
                act = self.forward(x)
                check_kind(self.kind, tuple(act.shape[1:]))
                return unit_values(act, self.kind)
            out = self.forward.units(x, units)
        if out.dim() != (3 if self.kind in ("channel", "centre") else 1):  # wrong kind for the layer
            check_kind(self.kind, tuple(self.forward(x[:1]).shape[1:]))
        return reduce_unit(out, self.kind)

    def out_shape(self) -> tuple[int, ...]:
        """Per-image output shape of the layer (one forward pass on one image, then cached)."""
        if getattr(self, "_out_shape", None) is None:
            with torch.no_grad():
                x = torch.full((1, *self.input_shape), 0.5, device=self.device)
                self._out_shape = tuple(self.forward(self.normalize(x)).shape[1:])
        return self._out_shape


@dataclass
class BatchResult:
    images: np.ndarray  # (B, C, H, W) float32 pixel images
    activation: np.ndarray  # (B,) objective of the final image (no jitter)
    activation_init: np.ndarray  # (B,) objective of the start image
    trace: np.ndarray | None = None  # (steps, B) objective during the run (jittered), if asked


def _as_configs(configs, n: int) -> list[Config]:
    if isinstance(configs, Config):
        return [configs] * n
    configs = list(configs)
    if len(configs) != n:
        raise ValueError(f"{len(configs)} configs for {n} batch elements")
    if len({(c.param, c.clip) for c in configs}) > 1:
        raise ValueError("one batch needs one parameterization and one clip setting")
    return configs


def optimize_batch(
    problem: Problem,
    units,
    seeds,
    configs: Config | list[Config],
    steps: int,
    *,
    scale=None,
    base: torch.Tensor | np.ndarray | None = None,
    init_std: float = 0.1,
    init_blur: float = 1.0,
    trace: bool = False,
    callback=None,
) -> BatchResult:
    """Optimize ``B = len(units)`` images at once, image b for unit ``units[b]`` from seed ``seeds[b]``.

    ``scale``: ``(B,)`` divisor of each unit's activation (default 1). ``base``: ``(B, C, H, W)``
    start images in pixel space (e.g. class means); default the centre pixel. Blurred Gaussian
    noise (``init_std``, blurred with ``init_blur`` pixels) from each element's own generator is
    added, so different seeds start from different images. Images are optimized at
    ``problem.opt_shape`` (``base`` at the model's input size is reduced to it). ``callback(t)``
    is called after step ``t`` (progress bars, timing).
    """
    units = np.asarray(units, dtype=np.int64).reshape(-1)
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
    b = len(units)
    if len(seeds) != b:
        raise ValueError(f"{len(seeds)} seeds for {b} units")
    cfgs = _as_configs(configs, b)
    n_units = problem.out_shape()[0]
    if b and (units.min() < 0 or units.max() >= n_units):
        raise ObjectiveError(
            f"unit {units.max() if units.max() >= n_units else units.min()} out of range: "
            f"layer {problem.layer} has {n_units} units"
        )
    dev = problem.device
    c, h, w = problem.opt_shape
    f32 = dict(dtype=torch.float32, device=dev)

    rngs = element_rngs(seeds, units)
    noise = blurred_noise(rngs, (c, h, w), init_std, init_blur)
    jit = np.array([k.jitter for k in cfgs], dtype=np.int64)
    shifts = jitter_table(rngs, steps, jit).to(dev) if jit.any() else None
    centre = problem._vec(problem.centre)
    if base is not None:
        base = problem.from_input(torch.as_tensor(base, **f32))
    start = (centre.expand(b, c, h, w) if base is None else base) + noise.to(dev)
    start = torch.maximum(torch.minimum(start, problem._vec(problem.hi)), problem._vec(problem.lo))

    param = make_param(
        cfgs[0].param,
        start,
        centre=problem.centre,
        lo=problem.lo,
        hi=problem.hi,
        clip=cfgs[0].clip,
        colour=problem.colour,
    )
    col = lambda name: torch.tensor([getattr(k, name) for k in cfgs], **f32)  # noqa: E731
    lr, l2, l1w, tvw, sigma = col("lr"), col("l2_decay"), col("l1"), col("tv"), col("blur_sigma")
    every = np.array([k.blur_every for k in cfgs], dtype=np.int64)
    max_sigma = float(max(k.blur_sigma for k in cfgs))
    any_l2, any_l1, any_tv = bool((l2 > 0).any()), bool((l1w > 0).any()), bool((tvw > 0).any())
    inv_scale = (
        torch.ones(b, **f32)
        if scale is None
        else 1.0 / torch.as_tensor(np.asarray(scale, dtype=np.float32), device=dev).clamp_min(1e-12)
    )
    units_t = torch.as_tensor(units, device=dev)

    with torch.no_grad():
        a0 = problem.values(param.image(), units_t)
    m = [torch.zeros_like(p) for p in param.params]
    v = [torch.zeros_like(p) for p in param.params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    history = []
    for t in range(steps):
        x = param.image()
        xin = jitter(x, shifts[t]) if shifts is not None else x
        a = problem.values(xin, units_t)
        obj = a * inv_scale
        if any_l1:
            obj = obj - l1w * l1_penalty(x, centre)
        if any_tv:
            obj = obj - tvw * tv_penalty(x)
        grads = torch.autograd.grad(obj.sum(), param.params)
        if trace:
            history.append(a.detach())
        with torch.no_grad():
            bc1, bc2 = 1 - beta1 ** (t + 1), 1 - beta2 ** (t + 1)
            for p, g, mi, vi in zip(param.params, grads, m, v):
                mi.mul_(beta1).add_(g, alpha=1 - beta1)
                vi.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                step = (mi / bc1) / ((vi / bc2).sqrt() + eps)
                p.add_(step * lr.view(-1, *([1] * (p.dim() - 1))))
        if any_l2:
            param.decay(l2)
        blur_now = (every > 0) & ((t + 1) % np.maximum(every, 1) == 0)
        if blur_now.any() and max_sigma > 0:
            param.blur(torch.where(torch.as_tensor(blur_now, device=dev), sigma, torch.zeros_like(sigma)), max_sigma)
        param.clip()
        if callback is not None:
            callback(t)

    with torch.no_grad():
        final = param.image().detach()
        a1 = problem.values(final, units_t)
    return BatchResult(
        final.float().cpu().numpy(),
        a1.float().cpu().numpy(),
        a0.float().cpu().numpy(),
        torch.stack(history).float().cpu().numpy() if trace and history else None,
    )


def optimize_units(
    problem: Problem, units, seeds, config: Config, steps: int, *, batch_size: int = 512, scale=None, base=None, **kw
):
    """Every unit in ``units`` with every seed in ``seeds``, ``batch_size`` elements per run.

    Yields ``(first, last, BatchResult)`` per run, where the result holds units
    ``units[first:last]`` x all seeds, element order unit-major (``(unit, seed)`` pairs), so a
    caller can write each run as soon as it finishes. ``scale``/``base``: per unit (not per
    element); they are repeated over the seeds here.
    """
    units = np.asarray(units, dtype=np.int64)
    seeds = np.asarray(seeds, dtype=np.int64)
    per_run = max(1, batch_size // len(seeds))
    for first in range(0, len(units), per_run):
        last = min(len(units), first + per_run)
        u = np.repeat(units[first:last], len(seeds))
        s = np.tile(seeds, last - first)
        sc = None if scale is None else np.repeat(np.asarray(scale)[first:last], len(seeds))
        bs = None if base is None else np.repeat(np.asarray(base)[first:last], len(seeds), axis=0)
        yield first, last, optimize_batch(problem, u, s, config, steps, scale=sc, base=bs, **kw)
