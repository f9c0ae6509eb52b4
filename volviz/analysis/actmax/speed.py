"""Making a run affordable on a CPU, and saying beforehand what it will cost.

* :func:`fold_batchnorm`: in eval mode a ``BatchNorm2d`` after a conv is an affine map per
  channel, so it can be folded into the conv's weights and bias. The preferred-input loop runs
  the model prefix forward and backward every step; on MobileNetV2 at 224 px the batch norms were
  about 30 % of that time. Folding only changes modules *upstream* of the target layer (never
  the target's own conv or norm), so the target's output is the same up to float rounding.
* :func:`auto_batch` caps the elements per batched run by input size: on a CPU the cost per image
  of a large-input prefix grows with the batch (cache misses; MobileNetV2 at 224 px: 29 ms per
  image and step at batch 4, 47 ms at batch 48), while small inputs gain from large batches.
* :func:`time_first_step` times one optimization step on a small batch, the base of the
  projected time ``volviz optimize`` prints before it starts.
"""

from __future__ import annotations

import copy
import logging
import time

import numpy as np
import torch
from torch import nn

log = logging.getLogger("volviz.actmax")

__all__ = ["fold_batchnorm", "auto_batch", "time_first_step", "format_seconds"]

#: elements per batch on a CPU: at most this many input pixels (C x H x W) in one batched run
CPU_BATCH_PIXELS = 1_200_000


def _pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv, bn)`` module names where the conv's only use is feeding the batch norm."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure: simply do not fold
        log.debug("no batch-norm folding: %s", exc)
        return []
    mods = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    out = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if (
            isinstance(src, torch.fx.Node)
            and src.op == "call_module"
            and isinstance(mods.get(src.target), nn.Conv2d)
            and len(src.users) == 1
            and calls[src.target] == 1
            and calls[node.target] == 1
        ):
            out.append((src.target, node.target))
    return out


def fold_batchnorm(model: nn.Module, keep=()) -> tuple[nn.Module, int]:
    """A copy of ``model`` (eval mode) with every foldable conv -> batch-norm pair folded, except
    pairs that contain a module named in ``keep`` (the target layer). Returns ``(model, n)``; the
    model itself when nothing folds (``n = 0``), e.g. a model without batch norm or one that
    ``torch.fx`` cannot trace."""
    if isinstance(model, torch.jit.ScriptModule) or model.training:
        return model, 0
    keep = set(keep)
    mods = dict(model.named_modules())
    pairs = [
        (c, b)
        for c, b in _pairs(model)
        if c not in keep and b not in keep and mods[b].track_running_stats and mods[b].running_mean is not None
    ]
    if not pairs:
        return model, 0
    folded = copy.deepcopy(model)
    fm = dict(folded.named_modules())
    with torch.no_grad():
        for conv_name, bn_name in pairs:
            conv, bn = fm[conv_name], fm[bn_name]
            scale = (
                bn.weight / torch.sqrt(bn.running_var + bn.eps)
                if bn.affine
                else 1.0 / torch.sqrt(bn.running_var + bn.eps)
            )
            shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
            w = conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype)
            b0 = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            bias = (b0 - bn.running_mean) * scale + shift
            conv.weight = nn.Parameter(w.contiguous(memory_format=torch.channels_last), requires_grad=False)
            conv.bias = nn.Parameter(bias.to(w.dtype), requires_grad=False)
            parent_name, _, attr = bn_name.rpartition(".")
            setattr(fm[parent_name] if parent_name else folded, attr, nn.Identity())
    return folded, len(pairs)


def auto_batch(input_shape, device: str = "cpu", limit: int = 512) -> int:
    """Elements per batched run: ``limit`` on a GPU; on a CPU at most :data:`CPU_BATCH_PIXELS`
    input pixels per batch (1,530 digits of 28 x 28, 8 images of 224 x 224 x 3), at least 1."""
    if torch.device(device).type != "cpu":
        return int(limit)
    px = int(np.prod(input_shape))
    return int(max(1, min(limit, CPU_BATCH_PIXELS // max(px, 1))))


def time_first_step(problem, units, seeds, config, *, scale=None) -> float:
    """Seconds of one optimization step for this batch of elements (the second of two steps,
    so one-time set-up such as kernel selection is not counted)."""
    from volviz.analysis.actmax.optimize import optimize_batch

    marks: list[float] = []
    t0 = time.perf_counter()
    optimize_batch(problem, units, seeds, config, 2, scale=scale, callback=lambda t: marks.append(time.perf_counter()))
    if len(marks) < 2:
        return max(marks[0] - t0, 1e-9) if marks else 0.0
    return max(marks[1] - marks[0], 1e-9)


def format_seconds(s: float) -> str:
    """``42 s``, ``7.5 min``, ``2.3 h``."""
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"
