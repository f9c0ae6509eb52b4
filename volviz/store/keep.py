"""What a capture keeps per image: which layers' full weight gradients, and how a per-image byte
budget is met at dataset scale.

At 100k images every kilobyte per image is 100 MB. What the analyses need is small and always
kept: probabilities, the filter norms of every layer's weight gradients (importance, exact), the
descriptors asked for. The per-image volumes the views show are what grows, so over the budget
(``--image-budget-mb``, default 2 MB) a capture gives up, in this order, and says so:
  1. float32: the volumes are stored as float16, each image scaled by its own maximum (relative
     error 5e-4; filter norms and probabilities stay float32);
  2. full weight gradients chosen by default (the named ones stay): the last layers first;
  3. activation-gradient volumes: the largest maps first (their filter norms stay).
Activations are never given up (``--layers`` picks fewer).
"""

from __future__ import annotations

import dataclasses
import logging
import math

from volviz.capture.memory import fmt_bytes
from volviz.store.plan import LayerInfo, Plan

log = logging.getLogger("volviz.capture")

#: bytes one image may take in the store by default (``--image-budget-mb``; 0 or None: no limit)
IMAGE_BUDGET = 2_000_000


def choose_kept(infos: list[LayerInfo], s) -> list[LayerInfo]:
    """Which per-image tensors the store keeps for each layer (descriptors, activations, full
    weight gradients): full weight gradients of the named layers, or of the first layers whose
    per-image gradients fit ``s.weight_grad_budget`` together; filter norms are always kept."""
    desc = set(s.descriptors or [])
    named = s.weight_grad_layers
    budget, used, out = s.weight_grad_budget, 0, []
    for info in infos:
        nbytes = info.weight_values * 4
        if named is None:  # a prefix of the layers: the first ones, while they fit
            keep = bool(nbytes) and used + nbytes <= budget
            used = used + nbytes if keep or not nbytes else budget + 1
        else:
            keep = "all" in named or info.name in named
        out.append(
            dataclasses.replace(
                info,
                weight_grad=keep and bool(info.weight_shape),
                weight_input=info.weight_input if keep and s.gradients else None,
                conv=info.conv if keep and s.gradients else None,
                activation=not s.descriptors_only,
                descriptor=s.pool if info.name in desc else None,
            )
        )
    left = [i.name for i in out if i.weight_shape and not i.weight_grad and s.gradients and s.weight_gradients]
    if left:
        log.info(
            "keeping only the filter norms of the weight gradients of %s (over the per-image budget of %s; "
            "--weight-grads LAYER ... or all stores them)",
            _names(left),
            fmt_bytes(budget),
        )
    return out


def _names(names: list[str], most: int = 6) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _without_weight(info: LayerInfo) -> LayerInfo:
    return dataclasses.replace(info, weight_grad=False, weight_input=None, conv=None)


def fit_image_budget(plan: Plan, s) -> None:
    """Resolve ``s.dtype`` ("auto": float32 unless over the budget) and give up per-image volumes,
    in the module's order, until one image fits ``s.image_budget``; logs each step and its option."""
    from volviz.store.contents import bytes_per_image

    budget = s.image_budget
    plan.dtype = "float32" if s.dtype == "auto" else s.dtype
    start = bytes_per_image(plan)
    if not budget or start <= budget:
        return
    steps = []
    if s.dtype == "auto":
        plan.dtype = "float16"
        steps.append("float16 volumes (per-image scaled; --float32 keeps float32)")
    dropped = []
    if s.weight_grad_layers is None:
        for k in reversed(range(len(plan.layers))):
            if bytes_per_image(plan) <= budget:
                break
            if plan.layers[k].weight_grad:
                dropped.append(plan.layers[k].name)
                plan.layers[k] = _without_weight(plan.layers[k])
        if dropped:
            steps.append(f"only filter norms of the weight gradients of {_names(dropped[::-1])}")
    by_size = sorted(
        (k for k, i in enumerate(plan.layers) if i.gradient and i.activation and plan.gradients),
        key=lambda k: -math.prod(plan.layers[k].act_shape),
    )
    no_grad = []
    for k in by_size:
        if bytes_per_image(plan) <= budget:
            break
        info = dataclasses.replace(plan.layers[k], gradient=False)
        plan.layers[k] = _without_weight(info) if info.weight_input else info
        no_grad.append(info.name)
    if no_grad:
        steps.append(f"no activation-gradient volumes of {_names(no_grad)}")
    end = bytes_per_image(plan)
    log.warning(
        "%s per image is over the %s budget per image (--image-budget-mb; 0: no limit), so the store keeps %s: "
        "%s per image%s",
        fmt_bytes(start),
        f"{budget / 1e6:g} MB",
        "; ".join(steps) or "everything",
        fmt_bytes(end),
        "" if end <= budget else " (the activations alone are over it: --layers picks fewer)",
    )
