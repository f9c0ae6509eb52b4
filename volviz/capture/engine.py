"""Capture one batch: activations, class probabilities, and the gradients of ONE output neuron per
image (its score before softmax) w.r.t. each selected layer's activations and weights.

One forward pass and one backward pass serve the whole batch (see ``persample``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from volviz.capture.memory import retain_freed_memory
from volviz.capture.persample import func_per_sample_grads, has_fast_path, hook_per_sample_grad, linear_factors
from volviz.capture.tap import LayerTap

log = logging.getLogger("volviz.capture")
_warned_slow: set[str] = set()


@dataclass
class BatchResult:
    probs: np.ndarray  # (N, K)
    pred: np.ndarray  # (N,)
    target: np.ndarray  # (N,) the output neuron whose gradients were taken
    act: dict[str, np.ndarray]
    grad_act: dict[str, np.ndarray] = field(default_factory=dict)
    grad_weight: dict[str, np.ndarray] = field(default_factory=dict)
    # Linear layers: grad_weight[n] == outer(u[n], v[n]); stored as the two factors
    grad_weight_factors: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # the inputs of the layers asked for with ``keep_inputs`` (a store keeps a conv's input in
    # place of its weight gradient when the input is smaller)
    layer_inputs: dict[str, np.ndarray] = field(default_factory=dict)
    nonfinite: dict[str, int] = field(default_factory=dict)  # layer -> count of NaN/Inf activations


def resolve_targets(
    target: str | int, logits: torch.Tensor, labels: torch.Tensor | None, class_names: list[str] | None = None
) -> torch.Tensor:
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
        from volviz.sources.classes import find_class

        idx = find_class(target, class_names)
    else:
        idx = int(target)
    if not 0 <= idx < logits.shape[1]:
        from volviz.errors import TargetError

        raise TargetError(
            f"target class {idx} out of range: the model has {logits.shape[1]} outputs (0..{logits.shape[1] - 1})"
        )
    return torch.full_like(pred, idx)


_logits_warned: set = set()


def model_logits(out, n_classes: int | None = None) -> torch.Tensor:
    """The class scores (N, K) in whatever a model's forward returns, so an auxiliary output is
    never taken silently: a tensor as is; ``.logits`` (torchvision GoogLeNet/Inception namedtuples,
    Hugging Face outputs); a dict's 'logits' or 'out'; in a tuple/list the one tensor whose last
    dim is ``n_classes``, else the LAST tensor (``return aux, logits``), with one warning saying so."""
    import logging

    from volviz.errors import CaptureError

    fix = "make forward return the class scores, e.g. wrap it in a module that returns them"
    if isinstance(getattr(out, "logits", None), torch.Tensor):
        out = out.logits
    elif isinstance(out, dict):
        key = next((k for k in ("logits", "out") if isinstance(out.get(k), torch.Tensor)), None)
        if key is None:
            keys = ", ".join(map(repr, list(out)[:8])) + (", ..." if len(out) > 8 else "")
            raise CaptureError(f"the model returns a dict with keys {keys} and no 'logits' or 'out' tensor; {fix}")
        out = out[key]
    elif isinstance(out, (tuple, list)):
        tensors = [(i, t) for i, t in enumerate(out) if isinstance(t, torch.Tensor) and t.dim() >= 1]
        if not tensors:
            raise CaptureError(f"the model returns a {type(out).__name__} with no tensor in it; {fix}")
        fit = [(i, t) for i, t in tensors if n_classes and t.shape[-1] == n_classes]
        i, chosen = tensors[0] if len(tensors) == 1 else (fit[0] if len(fit) == 1 else tensors[-1])
        sig = (type(out).__name__, len(out), i, tuple(tuple(t.shape[1:]) for _, t in tensors))
        if len(tensors) > 1 and sig not in _logits_warned:
            _logits_warned.add(sig)
            shapes = ", ".join(str(list(t.shape)) for _, t in tensors)
            why = f"its last dim is {n_classes}, the class count" if len(fit) == 1 else "the last tensor"
            logging.getLogger("volviz.capture").warning(
                "the model returns a %s of %d tensors (%s); taking element %d (%s) as the class scores. "
                "If that is wrong, %s",
                type(out).__name__,
                len(tensors),
                shapes,
                i,
                why,
                fix,
            )
        out = chosen
    if not isinstance(out, torch.Tensor):
        raise CaptureError(f"the model returns {type(out).__name__}, not a tensor of class scores; {fix}")
    if out.dim() == 0:
        raise CaptureError(f"the model returns a single number, not one row of class scores per image; {fix}")
    return out.reshape(out.shape[0], -1)


def _buffer(workspace: dict | None, name: str, shape: tuple, like: torch.Tensor) -> torch.Tensor | None:
    if workspace is None or not isinstance(like, torch.Tensor):
        return None
    buf = workspace.get(name)
    if (
        buf is None
        or buf.shape[1:] != shape[1:]
        or buf.shape[0] < shape[0]
        or buf.dtype != like.dtype
        or buf.device != like.device
    ):
        buf = workspace[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return buf[: shape[0]]


def capture_batch(
    model: nn.Module,
    x: torch.Tensor,
    layers: list[str],
    *,
    target: str | int = "true",
    labels: torch.Tensor | None = None,
    class_names: list[str] | None = None,
    gradients: bool = True,
    weight_gradients: bool = True,
    workspace: dict | None = None,
    keep_inputs: Collection[str] = (),
) -> BatchResult:
    """Capture one batch. ``workspace``: a dict kept by the caller across batches; per-image weight
    gradients are then written into buffers reused from call to call, and the returned arrays
    alias them: consume (store) them before the next call with the same workspace."""
    if model.training:
        raise RuntimeError(
            "capture needs model.eval(): in training mode dropout and batch norm mix "
            "images, and per-image gradients would be wrong"
        )
    retain_freed_memory()  # batch after batch the same blocks: no page faults to get them back
    modules = dict(model.named_modules())
    weighted = [
        n
        for n in layers
        if gradients and weight_gradients and isinstance(getattr(modules[n], "weight", None), nn.Parameter)
    ]
    fast = [n for n in weighted if has_fast_path(modules[n])]
    slow = [n for n in weighted if n not in fast]
    for kind in sorted({type(modules[n]).__name__ for n in slow} - _warned_slow):
        _warned_slow.add(kind)
        log.warning(
            "%s has no batched per-image weight gradient: it takes torch.func vmap, which re-runs "
            "the network per image (exact, but several times slower)",
            kind,
        )
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
                if name in keep_inputs:
                    res.layer_inputs[name] = inp.float().cpu().numpy()
    if slow:
        x_ = x.detach()
        pg = func_per_sample_grads(model, x_, targets, [f"{n}.weight" for n in slow])
        for n in slow:
            res.grad_weight[n] = pg[f"{n}.weight"].float().cpu().numpy()
    return res
