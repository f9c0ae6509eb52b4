"""Capture one batch: activations, class probabilities, and the gradients of ONE output neuron per
image (its score before softmax) w.r.t. each selected layer's activations and weights.

One forward pass and one backward pass serve the whole batch (see ``persample``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from volviz.capture.persample import func_per_sample_grads, has_fast_path, hook_per_sample_grad, linear_factors
from volviz.capture.tap import LayerTap

@dataclass
class BatchResult:
    probs: np.ndarray                  # (N, K)
    pred: np.ndarray                   # (N,)
    target: np.ndarray                 # (N,) the output neuron whose gradients were taken
    act: dict[str, np.ndarray]
    grad_act: dict[str, np.ndarray] = field(default_factory=dict)
    grad_weight: dict[str, np.ndarray] = field(default_factory=dict)
    # Linear layers: grad_weight[n] == outer(u[n], v[n]); stored as the two factors
    grad_weight_factors: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    nonfinite: dict[str, int] = field(default_factory=dict)  # layer -> count of NaN/Inf activations


def resolve_targets(target: str | int, logits: torch.Tensor, labels: torch.Tensor | None,
                    class_names: list[str] | None = None) -> torch.Tensor:
    """target: 'true' (each image's label; predicted where unlabelled), 'pred', a class index or name."""
    pred = logits.argmax(1)
    if target == "pred":
        return pred
    if target == "true":
        if labels is None:
            return pred
        labels = labels.to(pred.device)
        return torch.where(labels >= 0, labels, pred)
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        if not class_names or target not in class_names:
            from volviz.errors import TargetError
            shown = ", ".join(class_names[:10]) + (f", ... ({len(class_names)} names)" if class_names and len(class_names) > 10 else "")
            raise TargetError(f"unknown target class {target!r}; valid: true, pred, an index, or one of: {shown or 'no class names known'}")
        idx = class_names.index(target)
    else:
        idx = int(target)
    if not 0 <= idx < logits.shape[1]:
        from volviz.errors import TargetError
        raise TargetError(f"target class {idx} out of range: the model has {logits.shape[1]} outputs (0..{logits.shape[1] - 1})")
    return torch.full_like(pred, idx)


def model_logits(out) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    if hasattr(out, "logits"):
        out = out.logits
    return out.reshape(out.shape[0], -1)


def _buffer(workspace: dict | None, name: str, shape: tuple, like: torch.Tensor) -> torch.Tensor | None:
    if workspace is None or not isinstance(like, torch.Tensor):
        return None
    buf = workspace.get(name)
    if buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0] or buf.dtype != like.dtype \
            or buf.device != like.device:
        buf = workspace[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return buf[: shape[0]]


def capture_batch(model: nn.Module, x: torch.Tensor, layers: list[str], *, target: str | int = "true",
                  labels: torch.Tensor | None = None, class_names: list[str] | None = None,
                  gradients: bool = True, weight_gradients: bool = True,
                  workspace: dict | None = None) -> BatchResult:
    """Capture one batch. ``workspace``: a dict kept by the caller across batches; per-image weight
    gradients are then written into buffers reused from call to call, and the returned arrays
    alias them: consume (store) them before the next call with the same workspace."""
    if model.training:
        raise RuntimeError("capture needs model.eval(): in training mode dropout and batch norm mix "
                           "images, and per-image gradients would be wrong")
    modules = dict(model.named_modules())
    weighted = [n for n in layers if weight_gradients and isinstance(getattr(modules[n], "weight", None), nn.Parameter)]
    fast = [n for n in weighted if has_fast_path(modules[n])]
    slow = [n for n in weighted if n not in fast]
    with LayerTap(model, layers, keep_inputs=set(fast)) as tap, torch.set_grad_enabled(gradients):
        logits = model_logits(model(x))
        probs = torch.softmax(logits.detach().float(), 1)
        targets = resolve_targets(target, logits.detach(), labels, class_names)
        res = BatchResult(probs.cpu().numpy(), probs.argmax(1).cpu().numpy(), targets.cpu().numpy(), {})
        for name in layers:
            rec = tap.records.get(name)
            if rec is None:
                raise RuntimeError(f"layer {name} did not run in the forward pass")
            a = rec.output.detach()  # never modified in place: the network ran on a clone
            res.act[name] = a.float().cpu().numpy()
            if not torch.isfinite(a.sum()):  # one reduction; count only when something is off
                res.nonfinite[name] = int((~torch.isfinite(a)).sum())
        if not gradients:
            return res
        score = logits.gather(1, targets.view(-1, 1)).sum()
        outs = [tap.records[n].output for n in layers]
        grads = torch.autograd.grad(score, outs, allow_unused=True)
        for name, out, g in zip(layers, outs, grads):
            g = torch.zeros_like(out) if g is None else g
            res.grad_act[name] = g.float().cpu().numpy()
            if name in fast:
                module, inp = modules[name], tap.records[name].input.detach()
                factors = linear_factors(inp, g) if isinstance(module, nn.Linear) else None
                if factors is not None:
                    res.grad_weight_factors[name] = tuple(f.detach().float().cpu().numpy().copy() for f in factors)
                else:
                    buf = _buffer(workspace, name, (x.shape[0], *module.weight.shape), g)
                    res.grad_weight[name] = hook_per_sample_grad(module, inp, g, buf).float().cpu().numpy()
    if slow:
        x_ = x.detach()
        pg = func_per_sample_grads(model, x_, targets, [f"{n}.weight" for n in slow])
        for n in slow:
            res.grad_weight[n] = pg[f"{n}.weight"].float().cpu().numpy()
    return res
