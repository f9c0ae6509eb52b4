"""Forward hooks that record selected layers' inputs and outputs, as a context manager.

Hooks see the real dataflow of any model (branches, residual adds), where a Sequential walk would
not. Each hook hands the rest of the network a *clone* of the layer's output, so an in-place op
downstream (``ReLU(inplace=True)`` right after a conv, as in VGG) cannot overwrite the recorded
activation, and the gradient taken w.r.t. the recorded tensor is the gradient w.r.t. the layer's
true output. Hooks are removed in ``finally``, also when the forward pass raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from volviz.errors import SharedModuleError  # noqa: F401  (re-exported)


@dataclass
class Recorded:
    output: torch.Tensor
    input: torch.Tensor | None = None


@dataclass
class LayerTap:
    model: nn.Module
    layers: list[str]
    keep_inputs: set[str] = field(default_factory=set)  # layers whose input we need (weight grads)
    records: dict[str, Recorded] = field(default_factory=dict)
    _handles: list = field(default_factory=list)

    def __enter__(self) -> "LayerTap":
        modules = dict(self.model.named_modules())
        try:
            for name in self.layers:
                self._handles.append(modules[name].register_forward_hook(self._make_hook(name)))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def reset(self) -> None:
        self.records.clear()

    def _make_hook(self, name: str):
        def hook(module, args, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {name} returns {type(output).__name__}; only tensor outputs can be captured")
            if name in self.records:
                raise SharedModuleError(
                    f"layer {name} ({type(module).__name__}) runs more than once per forward pass "
                    "(a shared module), so its activation is ambiguous; select the layers around it"
                )
            inp = args[0] if (name in self.keep_inputs and args) else None
            if not torch.is_grad_enabled():
                # no graph to keep: one copy of the value, and the network goes on with its own tensor
                self.records[name] = Recorded(output.detach().clone(), inp)
                return None
            self.records[name] = Recorded(output, inp)
            return output.clone()

        return hook
