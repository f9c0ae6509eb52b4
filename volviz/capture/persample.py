"""Per-image weight gradients, batched.

The gradient of image n's output neuron w.r.t. a layer's weight is a product of two things one
batched backward pass already has: the layer's input for image n and the gradient w.r.t. the
layer's output for image n (the neuron of image n depends only on image n in eval mode, so the
gradient of the batch sum, taken w.r.t. the layer output, is per-image). This costs about as much
as the weight-gradient part of the backward pass itself, where ``torch.func.vmap(grad(...))``
re-runs the network per sample and a Python loop runs N backward passes.

Convolutions (1-D, 2-D, 3-D; any groups, channel multiplier, stride, dilation, padding mode) take
one of four exact routes, whichever the kernel shape makes fast:
  * pointwise (1x1, groups 1): one batched matrix product per layer, no unfolding;
  * large groups on a small output map (1-D/2-D): unfold + batched matrix product (Rochette et
    al. 2019, the way opacus goes), where the native kernel is slow on oneDNN;
  * everything else, depthwise and grouped above all: the native backward-weight kernel
    (``torch.nn.grad.conv*_weight``) with the batch folded into the groups, input reshaped to
    (1, N*C, ...) and groups=N*groups: one call where unfold + bmm makes N*groups tiny products;
    on a channels-last input with a large map, the native kernel once per image instead;
  * depthwise with 5x5 kernels and up (efficientnet, convnext): a depthwise forward conv of the
    input whose kernel is the output gradient (the weight gradient is that correlation).
Linear layers are an outer product (Goodfellow 2015; summed over extra dimensions); BatchNorm (eval), LayerNorm
(also torchvision's channels-first LayerNorm2d) and GroupNorm affine weights are the output
gradient times the normalized input, summed over positions. ``func_per_sample_grads``
(torch.func) serves other layer types and ``loop_per_sample_grads`` is the tests' reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Keep the unfolded input of one chunk under this many elements (about 1 GiB in float32).
UNFOLD_BUDGET = 256 * 1024 * 1024
# A 1-D/2-D conv whose weight per group exceeds this many elements per output position takes
# unfold + bmm: oneDNN's backward-weight kernel is slow with N big groups on small maps (resnet18
# layer3-4 at 64-112 px: 3-15x slower than unfold; resnext50 layer4: 7x) and faster on large maps and small
# groups (resnet18 layer1-2 at 112 px: 1.4-2.7x faster; depthwise and regnet group convs: 2-10x).
UNFOLD_WEIGHT_PER_POSITION = 1024
# A grouped conv on a channels-last input (convnext's blocks permute) with more output positions
# than this runs the native kernel once per image: folding the batch into the groups needs a
# channels-first copy, on which oneDNN's depthwise kernel is 5x slower (convnext stage 1: 31 ms vs 10 ms).
LOOP_MIN_POSITIONS = 256

# A depthwise 2-D conv with at least this many kernel taps (5x5, 7x7) gets its per-image weight
# gradient as a depthwise FORWARD conv of the padded input with the output gradient as kernel:
# oneDNN's forward kernel does it 2-15x faster than its backward-weight one (convnext 7x7: stage 1
# 29.6 vs 1.9 ms, stage 3 5.7 vs 0.7 ms; efficientnet 5x5: 4.4-5.6 vs 0.9-3.3 ms); on 3x3 kernels
# the folded backward kernel stays faster (mobilenet 56x56: 14 vs 22 ms).
CORRELATE_MIN_KERNEL = 25

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _is_layernorm2d(module: nn.Module) -> bool:
    """torchvision's ConvNeXt LayerNorm2d (channels-first LayerNorm), recognized without importing
    torchvision.models (an import of a second and more on every command)."""
    t = type(module)
    return t.__name__ == "LayerNorm2d" and t.__module__.startswith("torchvision.")


def _plain_forward(module: nn.Module, base: type) -> bool:
    """The module computes what its base class computes (a subclass that overrides forward may not)."""
    return type(module).forward is base.forward


def has_fast_path(module: nn.Module) -> bool:
    """A batched exact route exists (a subclass that overrides forward, e.g. weight standardization,
    may use its weight differently, so it takes the general torch.func route)."""
    for base in (nn.Linear, *CONV_TYPES):
        if isinstance(module, base):
            return _plain_forward(module, base)
    if isinstance(module, BATCH_NORMS):
        return module.running_mean is not None and _plain_forward(module, nn.modules.batchnorm._BatchNorm)
    if _is_layernorm2d(module):
        return True
    if isinstance(module, nn.LayerNorm):
        return _plain_forward(module, nn.LayerNorm)
    if isinstance(module, nn.GroupNorm):
        return _plain_forward(module, nn.GroupNorm)
    return False


def linear_factors(inp: torch.Tensor, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For a Linear layer on (N, in) input the per-image gradient is exactly outer(grad_out[n],
    inp[n]): return the two factors (N,out), (N,in) instead of N full matrices, or None when the
    input has extra dimensions (then the gradient is a sum of outer products)."""
    if inp.dim() == 2:
        return grad_out, inp
    return None


def _same_padding(module: nn.modules.conv._ConvNd) -> tuple[int, ...]:
    pads = []
    for k, d in zip(reversed(module.kernel_size), reversed(module.dilation)):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


def explicit_padding(module: nn.modules.conv._ConvNd, inp: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """The input padded as the conv pads it when the kernels cannot ('same'/'valid' strings,
    reflect / replicate / circular modes); returns (input, zero padding left to apply)."""
    padding = module.padding
    if isinstance(padding, str) or module.padding_mode != "zeros":
        if isinstance(padding, str):
            pads = _same_padding(module) if padding == "same" else (0,) * (2 * len(module.kernel_size))
        else:
            pads = module._reversed_padding_repeated_twice
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        return F.pad(inp, pads, mode=mode), (0,) * len(module.kernel_size)
    return inp, tuple(padding)


def conv_route(module: nn.modules.conv._ConvNd, padding: tuple, out_positions: int, channels_last: bool = False) -> str:
    """Which exact method is fast for this conv: 'pointwise', 'correlate', 'unfold', 'folded' or
    'per_image'."""
    if module.groups == 1 and all(k == 1 for k in module.kernel_size) and not any(padding):
        return "pointwise"
    depthwise = module.groups == module.in_channels == module.out_channels
    taps = module.kernel_size[0] * module.kernel_size[-1]
    if depthwise and len(module.kernel_size) == 2 and taps >= CORRELATE_MIN_KERNEL:
        return "correlate"
    if channels_last and module.groups > 1 and out_positions > LOOP_MIN_POSITIONS:
        return "per_image"
    per_group = module.weight[0].numel() * module.out_channels // module.groups
    if len(module.kernel_size) <= 2 and per_group > UNFOLD_WEIGHT_PER_POSITION * out_positions:
        return "unfold"
    return "folded"


def is_channels_last(t: torch.Tensor) -> bool:
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(t.dim())
    return fmt is not None and not t.is_contiguous() and t.is_contiguous(memory_format=fmt)


def _into(out: torch.Tensor | None, result: torch.Tensor) -> torch.Tensor:
    if out is None:
        return result
    out.copy_(result.view(out.shape))
    return out


def _conv_pointwise(module, inp, grad_out, out):
    N, c_in, c_out = inp.shape[0], inp.shape[1], grad_out.shape[1]
    idx = (slice(None), slice(None)) + tuple(slice(0, o * s, s) for o, s in zip(grad_out.shape[2:], module.stride))
    x = inp[idx].reshape(N, c_in, -1)
    go = grad_out.reshape(N, c_out, -1)
    if out is None:
        return torch.bmm(go, x.transpose(1, 2))
    torch.bmm(go, x.transpose(1, 2), out=out.view(N, c_out, c_in))
    return out


def _conv_unfold(module, inp, grad_out, padding, out):
    if inp.dim() == 3:  # Conv1d as a (1, k) Conv2d
        inp, grad_out = inp.unsqueeze(2), grad_out.unsqueeze(2)
        kernel, stride, dilation, padding = (
            (1, module.kernel_size[0]),
            (1, module.stride[0]),
            (1, module.dilation[0]),
            (0, padding[0]),
        )
    else:
        kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    N, c_in = inp.shape[:2]
    c_out, g = module.out_channels, module.groups
    L = grad_out.shape[-2] * grad_out.shape[-1]
    ci = (c_in // g) * kernel[0] * kernel[1]
    step = max(1, min(N, UNFOLD_BUDGET // max(c_in * kernel[0] * kernel[1] * L, 1)))
    if out is None:
        out = torch.empty(N, *module.weight.shape, dtype=grad_out.dtype, device=grad_out.device)
    flat = out.view(N * g, c_out // g, ci)
    for s in range(0, N, step):
        cols = F.unfold(inp[s : s + step], kernel, dilation=dilation, padding=padding, stride=stride)
        n = cols.shape[0]
        cols = cols.view(n * g, ci, L).transpose(1, 2)  # (n*g, L, ci)
        go = grad_out[s : s + step].reshape(n * g, c_out // g, L)  # (n*g, co, L)
        torch.bmm(go, cols, out=flat[s * g : (s + n) * g])
    return out


def _fold_channels_last(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) stored as NHWC -> (1, N*C, H, W) stored as NHWC: the batch folded into the
    channels without leaving the layout oneDNN's grouped kernels are fast on (a channels-first
    fold costs a transposing copy and runs the slower kernel: convnext stage 3, 9.9 vs 7.7 ms)."""
    N, C, H, W = t.shape
    return t.permute(2, 3, 0, 1).reshape(H, W, 1, N * C).permute(2, 3, 0, 1)


def _conv_folded(module, inp, grad_out, padding, out):
    """torch.nn.grad.conv*_weight with the batch folded into the groups, called directly so that
    the reused buffer stands in for the weight argument (only its shape is read): conv*_weight
    would materialize an expanded weight of that size first."""
    N, c_in = inp.shape[:2]
    c_out, g, d = grad_out.shape[1], module.groups, inp.dim() - 2
    if d == 2 and is_channels_last(inp):
        x, go = _fold_channels_last(inp), _fold_channels_last(grad_out)
    else:
        x = inp.reshape(1, N * c_in, *inp.shape[2:])
        go = grad_out.reshape(1, N * c_out, *grad_out.shape[2:])
    shape = (N * c_out, c_in // g, *module.kernel_size)
    weight = out.view(shape) if out is not None else grad_out.new_empty(shape)
    w = torch.ops.aten.convolution_backward(
        go, x, weight, None, module.stride, padding, module.dilation, False, [0] * d, N * g, (False, True, False)
    )[1]
    return _into(out, w)


def _conv_correlate(module, inp, grad_out, padding, out):
    """Depthwise: dW[n, c, i, j] = sum_hw g[n, c, h, w] * x_pad[n, c, h*s + i*d, w*s + j*d], which is
    a depthwise conv of x_pad (batch folded into the channels) whose kernel is g, run with
    dilation = the layer's stride and stride = the layer's dilation; extra rows are cut off."""
    N, C = inp.shape[:2]
    (kh, kw), (ph, pw) = module.kernel_size, padding
    x = F.pad(inp, (pw, pw, ph, ph)) if ph or pw else inp
    x = x.reshape(1, N * C, *x.shape[2:])
    g = grad_out.reshape(N * C, 1, *grad_out.shape[2:])
    w = F.conv2d(x, g, stride=module.dilation, dilation=module.stride, groups=N * C)[0, :, :kh, :kw]
    return _into(out, w.reshape(N, C, 1, kh, kw))


def _conv_per_image(module, inp, grad_out, padding, out):
    """The native kernel once per image (the batch-1 call keeps the input's channels-last layout)."""
    N, d = inp.shape[0], inp.dim() - 2
    if out is None:
        out = torch.empty(N, *module.weight.shape, dtype=grad_out.dtype, device=grad_out.device)
    w = out.view(N, *module.weight.shape)
    for n in range(N):
        w[n] = torch.ops.aten.convolution_backward(
            grad_out[n : n + 1],
            inp[n : n + 1],
            w[n],
            None,
            module.stride,
            padding,
            module.dilation,
            False,
            [0] * d,
            module.groups,
            (False, True, False),
        )[1]
    return out


def conv_per_sample(
    module: nn.modules.conv._ConvNd, inp: torch.Tensor, grad_out: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-image weight gradient of a Conv1d/2d/3d, (N, *weight.shape), exact (see module doc)."""
    inp, padding = explicit_padding(module, inp)
    route = conv_route(module, padding, grad_out[0, 0].numel(), is_channels_last(inp))
    if route == "pointwise":
        res = _conv_pointwise(module, inp, grad_out, out)
    elif route == "unfold":
        res = _conv_unfold(module, inp, grad_out, padding, out)
    elif route == "correlate":
        res = _conv_correlate(module, inp, grad_out, padding, out)
    elif route == "per_image":
        res = _conv_per_image(module, inp, grad_out, padding, out)
    else:
        res = _conv_folded(module, inp, grad_out, padding, out)
    return res.view(inp.shape[0], *module.weight.shape)


def normalized_input(module: nn.Module, inp: torch.Tensor) -> torch.Tensor:
    """What a norm layer multiplies its weight by: its input normalized, without the affine part."""
    if isinstance(module, BATCH_NORMS):
        shape = (1, -1) + (1,) * (inp.dim() - 2)
        scale = torch.rsqrt(module.running_var + module.eps).view(shape)
        return (inp - module.running_mean.view(shape)) * scale
    if _is_layernorm2d(module):
        x = inp.permute(0, 2, 3, 1)
        return F.layer_norm(x, module.normalized_shape, None, None, module.eps).permute(0, 3, 1, 2)
    if isinstance(module, nn.LayerNorm):
        return F.layer_norm(inp, module.normalized_shape, None, None, module.eps)
    if isinstance(module, nn.GroupNorm):
        return F.group_norm(inp, module.num_groups, None, None, module.eps)
    raise TypeError(f"{type(module).__name__} is not a normalization layer volviz knows")


def norm_per_sample(module: nn.Module, inp: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """Per-image gradient of a norm layer's affine weight: sum over positions of grad * x_hat."""
    prod = grad_out * normalized_input(module, inp)
    N, w_shape = inp.shape[0], module.weight.shape
    if isinstance(module, nn.LayerNorm) and not (_is_layernorm2d(module)):
        return prod.reshape(N, -1, *w_shape).sum(1)
    return prod.reshape(N, w_shape[0], -1).sum(2)


def hook_per_sample_grad(
    module: nn.Module, inp: torch.Tensor, grad_out: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-image gradient w.r.t. ``module.weight`` from the layer's input and output gradient,
    shape (N, *weight.shape). ``out``: a contiguous buffer of that shape to write into (reusing one
    across batches saves the page faults of fresh gigabytes)."""
    if isinstance(module, nn.Linear):
        N = grad_out.shape[0]
        g2 = grad_out.reshape(N, -1, grad_out.shape[-1])
        x2 = inp.reshape(N, -1, inp.shape[-1])
        if out is None:
            return torch.bmm(g2.transpose(1, 2), x2)
        torch.bmm(g2.transpose(1, 2), x2, out=out)
        return out
    if isinstance(module, CONV_TYPES):
        return conv_per_sample(module, inp, grad_out, out)
    if has_fast_path(module):
        return _into(out, norm_per_sample(module, inp, grad_out))
    raise TypeError(f"no batched per-sample gradient for {type(module).__name__}")


def _output_scores(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.reshape(out.shape[0], -1).gather(1, targets.view(-1, 1)).squeeze(1)


def func_per_sample_grads(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, param_names: list[str], chunk_size: int | None = None
) -> dict[str, torch.Tensor]:
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


def loop_per_sample_grads(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, param_names: list[str]
) -> dict[str, torch.Tensor]:
    """The naive way: one forward and backward pass per image. Reference for tests/benchmarks."""
    params = dict(model.named_parameters())
    chosen = [params[k] for k in param_names]
    results = {k: [] for k in param_names}
    for n in range(x.shape[0]):
        s = _output_scores(model, x[n : n + 1], targets[n : n + 1]).sum()
        grads = torch.autograd.grad(s, chosen, allow_unused=True)
        for k, g, p in zip(param_names, grads, chosen):
            results[k].append(torch.zeros_like(p) if g is None else g)
    return {k: torch.stack(v) for k, v in results.items()}
