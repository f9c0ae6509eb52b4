"""Per-image weight gradients, batched.

The gradient of image n's output neuron w.r.t. a layer's weight is a product of two things one
batched backward pass already has: the layer's input for image n and the gradient w.r.t. the
layer's output for image n (the neuron of image n depends only on image n in eval mode, so the
gradient of the batch sum, taken w.r.t. the layer output, is per-image). For a Linear layer this is
an outer product; for a convolution, the outer product summed over output positions (unfold +
einsum). This costs about as much as the weight-gradient part of the backward pass itself, where
``torch.func.vmap(grad(...))`` re-runs the network per sample and a Python loop runs N backward
passes. ``func_per_sample_grads`` (torch.func) serves layer types without a fast path and
``loop_per_sample_grads`` is the reference the tests compare against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Keep the unfolded input of one chunk under this many elements (about 1 GiB in float32).
UNFOLD_BUDGET = 256 * 1024 * 1024


def has_fast_path(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d))


def linear_factors(inp: torch.Tensor, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For a Linear layer on (N, in) input the per-image gradient is exactly outer(grad_out[n],
    inp[n]): return the two factors (N,out), (N,in) instead of N full matrices, or None when the
    input has extra dimensions (then the gradient is a sum of outer products)."""
    if inp.dim() == 2:
        return grad_out, inp
    return None


def _same_padding(module: nn.Conv2d) -> tuple[int, int, int, int]:
    pads = []
    for k, d in zip(reversed(module.kernel_size), reversed(module.dilation)):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


def explicit_padding(module: nn.Conv2d, inp: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """The input padded as the conv pads it when ``F.unfold`` cannot ('same'/'valid' strings,
    reflect / replicate / circular modes); returns (input, padding left for unfold)."""
    padding = module.padding
    if isinstance(padding, str) or module.padding_mode != "zeros":
        if isinstance(padding, str):
            pads = _same_padding(module) if padding == "same" else (0, 0, 0, 0)
        else:
            pads = module._reversed_padding_repeated_twice
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        return F.pad(inp, pads, mode=mode), (0, 0)
    return inp, padding


def _conv2d_per_sample(module: nn.Conv2d, inp: torch.Tensor, grad_out: torch.Tensor,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    inp, padding = explicit_padding(module, inp)
    N, c_in = inp.shape[:2]
    c_out, g = module.out_channels, module.groups
    kh, kw = module.kernel_size
    L = grad_out.shape[-2] * grad_out.shape[-1]
    per_image = c_in * kh * kw * L
    step = max(1, min(N, UNFOLD_BUDGET // max(per_image, 1)))
    ci = (c_in // g) * kh * kw
    if out is None:
        out = torch.empty(N, g, c_out // g, ci, dtype=grad_out.dtype, device=grad_out.device)
    else:
        out = out.view(N, g, c_out // g, ci)
    for s in range(0, N, step):
        cols = F.unfold(inp[s:s + step], (kh, kw), dilation=module.dilation, padding=padding,
                        stride=module.stride)
        n = cols.shape[0]
        cols = cols.view(n * g, ci, L).transpose(1, 2)           # (n*g, L, ci)
        go = grad_out[s:s + step].reshape(n * g, c_out // g, L)  # (n*g, co, L)
        torch.bmm(go, cols, out=out[s:s + n].view(n * g, c_out // g, ci))
    return out.view(N, c_out, c_in // g, kh, kw)


def hook_per_sample_grad(module: nn.Module, inp: torch.Tensor, grad_out: torch.Tensor,
                         out: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image gradient w.r.t. ``module.weight`` from the layer's input and output gradient,
    shape (N, *weight.shape). ``out``: a contiguous buffer of that shape to write conv results
    into (reusing one across batches saves the page faults of fresh gigabytes)."""
    if isinstance(module, nn.Linear):
        g2 = grad_out.reshape(grad_out.shape[0], -1, grad_out.shape[-1])
        x2 = inp.reshape(inp.shape[0], -1, inp.shape[-1])
        return torch.einsum("nlo,nli->noi", g2, x2)
    if isinstance(module, nn.Conv2d):
        return _conv2d_per_sample(module, inp, grad_out, out)
    if isinstance(module, nn.Conv1d):
        as2d = nn.Conv2d(module.in_channels, module.out_channels, (1, module.kernel_size[0]),
                         stride=(1, module.stride[0]), dilation=(1, module.dilation[0]),
                         groups=module.groups, bias=False,
                         padding=module.padding if isinstance(module.padding, str) else (0, module.padding[0]),
                         padding_mode=module.padding_mode, device="meta")
        gw = _conv2d_per_sample(as2d, inp.unsqueeze(2), grad_out.unsqueeze(2))
        return gw.squeeze(3)
    raise TypeError(f"no batched per-sample gradient for {type(module).__name__}")


def _output_scores(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.reshape(out.shape[0], -1).gather(1, targets.view(-1, 1)).squeeze(1)


def func_per_sample_grads(model: nn.Module, x: torch.Tensor, targets: torch.Tensor,
                          param_names: list[str], chunk_size: int | None = None) -> dict[str, torch.Tensor]:
    """torch.func vmap(grad) over the batch: general (any layer type) but re-runs the network per
    sample inside vmap; used where no fast path exists, and as a benchmark baseline."""
    from torch.func import functional_call, grad, vmap

    all_params = dict(model.named_parameters())
    fixed = {k: v.detach() for k, v in all_params.items() if k not in param_names}
    fixed.update(dict(model.named_buffers()))
    chosen = {k: all_params[k].detach() for k in param_names}

    def score(params, xi, ti):
        out = functional_call(model, {**fixed, **params}, (xi.unsqueeze(0),))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.reshape(-1).gather(0, ti.reshape(1)).squeeze(0)

    return vmap(grad(score), in_dims=(None, 0, 0), chunk_size=chunk_size)(chosen, x, targets)


def loop_per_sample_grads(model: nn.Module, x: torch.Tensor, targets: torch.Tensor,
                          param_names: list[str]) -> dict[str, torch.Tensor]:
    """The naive way: one forward and backward pass per image. Reference for tests/benchmarks."""
    params = dict(model.named_parameters())
    chosen = [params[k] for k in param_names]
    results = {k: [] for k in param_names}
    for n in range(x.shape[0]):
        s = _output_scores(model, x[n:n + 1], targets[n:n + 1]).sum()
        grads = torch.autograd.grad(s, chosen, allow_unused=True)
        for k, g, p in zip(param_names, grads, chosen):
            results[k].append(torch.zeros_like(p) if g is None else g)
    return {k: torch.stack(v) for k, v in results.items()}
