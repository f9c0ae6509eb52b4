"""Which per-image arrays a capture keeps for each layer, and how many bytes they take (the ONE
place that decides; the store creates, writes and reads exactly these)."""

from __future__ import annotations

import math

from volviz.store.plan import LayerInfo, Plan


def stored_quantities(plan: Plan, info: LayerInfo) -> list[str]:
    """The per-image quantities a capture keeps for one layer (the ONE place that decides)."""
    wanted = ["activation"] if info.activation else []
    if info.descriptor:
        wanted.append("descriptor")
    if plan.gradients and info.activation and info.gradient:
        wanted.append("grad_activation")
    if plan.gradients and plan.weight_gradients and info.weight_shape:
        if info.weight_grad:
            wanted.append("grad_weight")
        if plan.format_version >= 2:
            wanted.append("grad_norm")
    return wanted


def projected_bytes(plan: Plan) -> int:
    """Uncompressed bytes of every per-image array of a capture planned as ``plan`` (an upper
    bound: the store compresses)."""
    return bytes_per_image(plan) * len(plan.images)


def bytes_per_image(plan: Plan) -> int:
    """Uncompressed bytes one image takes in a store planned as ``plan`` (float16 volumes carry a
    float32 scale each; filter norms stay float32)."""
    item = 2 if plan.dtype == "float16" else 4
    scale = 4 if plan.dtype == "float16" else 0
    per = plan.n_outputs * 4 + 3 * 8 + 1 + math.prod(plan.input_shape) * 2
    for info in plan.layers:
        for q in stored_quantities(plan, info):
            if q in ("activation", "grad_activation"):
                per += math.prod(info.act_shape) * item + scale
            elif q == "descriptor":
                per += math.prod(info.descriptor_shape) * item + scale
            elif q == "grad_norm":
                per += info.weight_shape[0] * 4
            else:
                per += info.weight_values * item + scale * len(info.weight_parts)
    return per
