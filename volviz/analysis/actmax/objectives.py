"""What is maximized: one unit per batch element, and the penalties subtracted from it.

Unit kinds ([Tang] sections 3.2-3.3):

========== =========================================================================
``channel`` a conv channel's mean activation over all positions ([Tang] section 3.2)
``centre``  a conv channel's activation at the centre position (one neuron, one receptive field)
``neuron``  one output of a linear layer
``class``   a class score before the softmax ([Tang] section 3.3), i.e. ``neuron`` on the
            layer that produces the model's logits
========== =========================================================================

:class:`LayerOutput` runs the model only up to the target layer: a forward hook keeps the layer's
output and raises :class:`_Stop`, so nothing after the layer is computed (the cost of a unit of
``conv1`` is the cost of ``conv1``). The hook is removed in ``finally`` after every call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from volviz.errors import ObjectiveError  # noqa: F401  (re-exported)

__all__ = ["OBJECTIVE_KINDS", "ObjectiveError", "LayerOutput", "unit_values", "unit_count", "l1_penalty", "tv_penalty"]

OBJECTIVE_KINDS = ("channel", "centre", "neuron", "class")


class _Stop(Exception):
    """Raised by the stop hook once the target layer has produced its output."""


class LayerOutput:
    """``f(x)`` = the output of ``layer`` for model input ``x``, computing only what precedes it.

    ``layer=None`` means the model's own output (flattened logits).

    :meth:`units` goes one step further: for a ``Linear`` layer or a ``Conv2d`` (zero padding; for
    a grouped or depthwise conv only the input channels of the unit's group are read) it stops at
    the layer's *input* and computes only unit ``u_b`` for element b
    (one weight row, or one filter via a grouped convolution with one group per element), so the
    target layer costs one unit, not all of them: 6x cheaper for the digits model's ``conv2``.
    ``unit_only=False`` computes the whole layer and picks the unit (same numbers up to rounding);
    ``unit_only="linear"`` does so for conv layers only.
    """

    def __init__(self, model: nn.Module, layer: str | None, unit_only: bool | str = True):
        self.model = model
        self.layer = layer
        self.module = None
        if layer is not None:
            modules = dict(model.named_modules())
            if layer not in modules:
                raise ObjectiveError(f"no layer named {layer!r} in the model")
            self.module = modules[layer]
        m = self.module
        conv_ok = unit_only is True or unit_only == "all"
        self.unit_only = bool(unit_only) and (
            isinstance(m, nn.Linear)
            or (conv_ok and isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str))
        )

    def _run_to(self, x: torch.Tensor, pre: bool) -> torch.Tensor:
        box: dict[str, torch.Tensor] = {}

        def hook(module, args, output=None):
            box["out"] = args[0] if pre else output
            raise _Stop

        handle = self.module.register_forward_pre_hook(hook) if pre else self.module.register_forward_hook(hook)
        try:
            self.model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        out = box.get("out")
        if out is None:
            raise ObjectiveError(f"layer {self.layer} does not run in the model's forward pass")
        if not isinstance(out, torch.Tensor):
            raise ObjectiveError(f"layer {self.layer} returns {type(out).__name__}, not a tensor")
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer is None:
            from volviz.capture.engine import model_logits

            return model_logits(self.model(x))
        return self._run_to(x, pre=False)

    def units(self, x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """Output of unit ``units[b]`` for image b: ``(B, H, W)`` (conv) or ``(B,)`` (flat)."""
        if not self.unit_only:
            out = self(x)
            return out[torch.arange(out.shape[0], device=out.device), units.to(out.device)]
        inp = self._run_to(x, pre=True)
        m = self.module
        units = units.to(inp.device)
        w = m.weight[units]  # (B, in) or (B, C_in, k, k): one unit's weights per element
        bias = None if m.bias is None else m.bias[units]
        if isinstance(m, nn.Linear):
            if inp.dim() != 2:
                out = self(x)
                return out[torch.arange(out.shape[0], device=out.device), units]
            y = torch.einsum("bi,bi->b", inp, w.to(inp.dtype))
            return y if bias is None else y + bias.to(y.dtype)
        if m.groups > 1:  # grouped / depthwise: unit u reads only the input channels of its group
            c_in = m.in_channels // m.groups
            first = (units // (m.out_channels // m.groups)) * c_in
            chans = first[:, None] + torch.arange(c_in, device=inp.device)[None, :]
            inp = inp[torch.arange(inp.shape[0], device=inp.device)[:, None], chans]
        b, c, h, wd = inp.shape
        y = F.conv2d(
            inp.reshape(1, b * c, h, wd), w, None if bias is None else bias, m.stride, m.padding, m.dilation, groups=b
        )
        return y.reshape(b, *y.shape[2:])


def unit_count(kind: str, out_shape: tuple[int, ...]) -> int:
    """Number of units of a layer whose per-image output has shape ``out_shape``."""
    check_kind(kind, out_shape)
    return int(out_shape[0])


def check_kind(kind: str, out_shape: tuple[int, ...]) -> None:
    if kind not in OBJECTIVE_KINDS:
        raise ObjectiveError(f"unknown objective {kind!r}; valid: {', '.join(OBJECTIVE_KINDS)}")
    if kind in ("channel", "centre") and len(out_shape) != 3:
        raise ObjectiveError(
            f"objective {kind!r} needs a layer with spatial output (C, H, W); this "
            f"layer's output is {tuple(out_shape)}: use 'neuron'"
        )
    if kind in ("neuron", "class") and len(out_shape) != 1:
        raise ObjectiveError(
            f"objective {kind!r} needs a layer with flat output (N,); this "
            f"layer's output is {tuple(out_shape)}: use 'channel' or 'centre'"
        )


def reduce_unit(out: torch.Tensor, kind: str) -> torch.Tensor:
    """``(B, H, W)`` or ``(B,)`` output of one unit per element -> ``(B,)`` objective (float32)."""
    out = out.float()
    if kind == "channel":
        return out.flatten(1).mean(1)
    if kind == "centre":
        h, w = out.shape[-2:]
        return out[:, h // 2, w // 2]
    return out


def unit_values(act: torch.Tensor, kind: str, units: torch.Tensor | None = None) -> torch.Tensor:
    """The objective of every unit, ``(B, U)`` (``units=None``), or of unit ``units[b]`` for
    element b, ``(B,)``. Computed in float32."""
    if units is not None:
        idx = torch.arange(act.shape[0], device=act.device)
        act = act[idx, units.to(act.device)]  # (B, ...) one unit per element
    act = act.float()
    if kind == "channel":
        return act.flatten(2 if units is None else 1).mean(-1)
    if kind == "centre":
        h, w = act.shape[-2:]
        return act[..., h // 2, w // 2]
    return act  # neuron / class


def l1_penalty(x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mean absolute deviation from the centre pixel (sparsity of what is drawn)."""
    return (x - centre).abs().flatten(1).mean(1)


def tv_penalty(x: torch.Tensor) -> torch.Tensor:
    """``(B,)`` anisotropic total variation: mean ``|dx|`` + mean ``|dy|`` (size independent)."""
    dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().flatten(1).mean(1)
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().flatten(1).mean(1)
    return dx + dy
