"""The capture's memory plan: what one batch holds at its peak and the largest batch that fits.

Counted, not guessed: one image goes through the model with the capture's hooks, and every tensor
autograd saves for the backward pass is counted once (by storage), next to the tensors the capture
itself holds. In steady state (batch after batch) a batch of N images holds, per image, through
the whole call: the per-image weight gradients, ONCE (buffers reused batch to batch; the earlier
plan counted them twice, "result + einsum workspace", and halved the batch for nothing), and the
previous batch's result, which the store still holds; beside these the larger of two phases:
  * forward: what autograd saved, the captured outputs, twice the largest tensor (an op's backward);
  * after the backward: captured outputs and inputs, their gradients, the largest temporary of
    one layer's per-image weight gradient (an unfolded input; oneDNN's reordered operands and
    blocked result for the folded kernel).
Measured against ``measure_peak`` (torch's profiler): within 6% on eleven torchvision families and
LeNet (docs/benchmarks.md). Not counted: a layer on the torch.func fallback (vmap re-runs the
network per image). What the caller holds beside the capture (the store's write buffers) it
passes in as extra parts.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from volviz.errors import CaptureError

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_retained: list[bool] = []


def retain_freed_memory(limit: int = 1 << 30) -> bool:
    """Ask glibc's malloc to keep freed memory for the next batch instead of handing it back to
    the OS: blocks under ``limit`` come from the heap (not a mapping of their own, unmapped when
    freed), and up to ``limit`` bytes free at its top stay there. Batch after batch a capture frees
    and re-allocates the same activations and gradients, and every page handed back is faulted
    in and zeroed again when it comes back: regnet_y_400mf, batch 8 at 112 px, 9,454 page faults
    (37 MB, about 5% of the floor's time) per batch before, 3 after. Once per process; False
    where the C library is not glibc."""
    if not _retained:
        import ctypes
        import platform

        ok = False
        if platform.libc_ver()[0] == "glibc":
            libc = ctypes.CDLL(None)
            ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(limit)) and libc.mallopt(_M_TRIM_THRESHOLD, int(limit)))
        _retained.append(ok)
    return _retained[0]


def available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


@dataclass
class MemoryPlan:
    """A batch's predicted peak: bytes per image of each part, bytes that do not grow with the
    batch, and the batch size chosen."""

    parts: dict[str, int]  # name -> bytes per image
    budget: int
    requested: int
    fixed: dict[str, int] = field(default_factory=dict)  # name -> bytes, whatever the batch
    store_per_image: int = 0  # bytes per image in the store (the caller's count)
    batch_size: int = 0
    reason: str = ""
    largest_layer: str = ""

    @property
    def per_image(self) -> int:
        return sum(self.parts.values())

    def peak(self, n: int | None = None) -> int:
        """Predicted peak bytes of a batch of ``n`` images (default: the chosen batch)."""
        return sum(self.fixed.values()) + self.per_image * (self.batch_size if n is None else n)

    def to_dict(self) -> dict:
        return {
            "parts": dict(self.parts),
            "fixed": dict(self.fixed),
            "per_image": self.per_image,
            "store_per_image": self.store_per_image,
            "budget": self.budget,
            "requested": self.requested,
            "batch_size": self.batch_size,
            "peak": self.peak(),
            "reason": self.reason,
            "largest_layer": self.largest_layer,
        }


def _storage_key(t: torch.Tensor):
    s = t.untyped_storage()
    return (s.data_ptr(), t.device), s.nbytes()


def _weight_grad_temporary(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    """Bytes of the largest temporary the per-image weight gradient of this layer makes, per image."""
    from volviz.capture import persample as ps

    item = out.element_size()
    if isinstance(module, ps.CONV_TYPES):
        padded, pads = ps.explicit_padding(module, inp[:1])
        route = ps.conv_route(module, pads, out[0, 0].numel(), ps.is_channels_last(inp))
        if route == "unfold":  # the unfolded input
            return inp.shape[1] * math.prod(module.kernel_size) * out[0, 0].numel() * item
        if route == "folded":  # the kernel's reordered input and output gradient, and its result in
            # oneDNN's blocked layout (channels padded to 16; up to 5x the weights for LeNet's 20 -> 50)
            co, ci = module.out_channels // module.groups, module.in_channels // module.groups
            blocked = math.ceil(co / 16) * 16 * math.ceil(ci / 16) * 16 / (co * ci) if min(co, ci) > 1 else 0
            return int(padded[0].numel() + out[0].numel() + (1 + 2 * blocked) * module.weight.numel()) * item
        if route == "per_image":  # one image's result
            return module.weight.numel() * item
        return (inp[0].numel() + module.weight.numel()) * item  # pointwise: a strided slice, the product
    if not isinstance(module, nn.Linear):  # norms: normalized input and product
        return 2 * out[0].numel() * item
    return 0


@dataclass
class MemoryProbe:
    """Bytes per image, counted on one image (see ``probe_memory``)."""

    input: int  # the input image
    weight_grads: int  # per-image weight gradients (the reused buffers)
    captured: int  # what one result holds: activations, their gradients, Linear factors
    forward: int  # end of the forward pass: saved tensors, captured outputs, largest temporary
    after_backward: int  # captured outputs and inputs, gradients, the largest layer's temporary
    largest_layer: str = ""


def probe_memory(
    model: nn.Module, x: torch.Tensor, layers: list[str], *, gradients: bool = True, weight_gradients: bool = True
) -> MemoryProbe:
    """Count what a batch holds, per image, on ONE image ``x`` (shape (1, ...)): a forward pass with
    the capture's hooks and autograd's saved-tensor hooks; nothing is kept."""
    from volviz.capture.engine import model_logits
    from volviz.capture.persample import has_fast_path, linear_factors
    from volviz.capture.tap import LayerTap

    if x.shape[0] != 1:
        raise ValueError(f"probe_memory counts one image; got a batch of {x.shape[0]}")
    x = x.clone()  # a view of a larger batch would count the whole batch
    modules = dict(model.named_modules())
    saved: dict = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            k, n = _storage_key(t)
            saved[k] = n
        return t

    weighted = [
        n
        for n in layers
        if gradients and weight_gradients and isinstance(getattr(modules[n], "weight", None), nn.Parameter)
    ]
    with (
        LayerTap(model, layers, keep_inputs=set(weighted)) as tap,
        torch.set_grad_enabled(gradients),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        model_logits(model(x))
    fixed = {_storage_key(t)[0] for t in [*model.parameters(), *model.buffers()]}
    kept: dict = {}
    acts = weight_grads = factors = temporary = 0
    per_layer = {}
    for name in layers:
        rec = tap.records[name]
        k, n = _storage_key(rec.output)
        kept[k] = n
        acts += rec.output.numel() * 4  # the capture hands out float32
        cost = rec.output.numel() * 4 * (2 if gradients else 1)
        if name in weighted:
            m = modules[name]
            ki, ni = _storage_key(rec.input)
            kept[ki] = ni
            if isinstance(m, nn.Linear) and linear_factors(rec.input, rec.output) is not None:
                w = (rec.output.numel() + rec.input.numel()) * 4
                factors += w
            else:
                w = m.weight.numel() * 4
                weight_grads += w
                if has_fast_path(m):
                    temporary = max(temporary, _weight_grad_temporary(m, rec.input, rec.output))
            cost += w
        per_layer[name] = cost
    graph = {k: n for k, n in {**saved, **kept}.items() if k not in fixed}
    largest = max([*graph.values(), 0])
    kept_bytes = sum(n for k, n in kept.items() if k not in fixed)
    captured = acts * (2 if gradients else 1) + factors
    del tap
    return MemoryProbe(
        input=x.numel() * x.element_size(),
        weight_grads=weight_grads,
        captured=captured,
        forward=sum(graph.values()) + 2 * largest if gradients else kept_bytes + largest,
        after_backward=kept_bytes + acts + factors + temporary if gradients else 0,
        largest_layer=max(per_layer, key=per_layer.get) if per_layer else "",
    )


def choose_batch_size(
    parts: dict[str, int],
    requested: int,
    budget: int | None = None,
    *,
    fixed: dict[str, int] | None = None,
    largest_layer: str = "",
) -> MemoryPlan:
    """The largest batch up to ``requested`` whose predicted peak fits ``budget`` (default: half the
    available memory); a CaptureError that says what to do when one image does not fit."""
    budget = budget or available_memory() // 2
    plan = MemoryPlan(
        parts=dict(parts), budget=budget, requested=requested, fixed=dict(fixed or {}), largest_layer=largest_layer
    )
    room = budget - sum(plan.fixed.values())
    if plan.per_image > room:
        raise CaptureError(
            f"one image needs {fmt_bytes(plan.peak(1))} of working memory for the selected layers, more than "
            f"the budget of {fmt_bytes(budget)}; the largest is {largest_layer or '?'}. Select fewer layers "
            "(--layers), skip weight gradients (--no-weight-grads) or raise --memory-budget-gb."
        )
    plan.batch_size = max(1, min(requested, room // max(plan.per_image, 1)))
    if plan.batch_size < requested:
        plan.reason = (
            f"lowered from {requested}: {requested} images would need {fmt_bytes(plan.peak(requested))}, "
            f"more than the budget of {fmt_bytes(budget)}"
        )
    else:
        plan.reason = f"as asked: {requested} images need {fmt_bytes(plan.peak())} of the {fmt_bytes(budget)} budget"
    return plan


def plan_parts(probe: MemoryProbe) -> dict[str, int]:
    """Bytes per image at a batch's peak, by part: in steady state the reused weight-gradient
    buffers and the previous batch's result (the store takes it while the next batch runs) are
    live through the whole call, beside the larger of its two phases."""
    phase = "forward" if probe.forward >= probe.after_backward else "after_backward"
    return {
        "input": probe.input,
        "weight_grads": probe.weight_grads,
        "previous": probe.captured,
        phase: max(probe.forward, probe.after_backward),
    }


def plan_memory(
    model: nn.Module,
    x: torch.Tensor,
    layers: list[str],
    *,
    requested: int,
    budget: int | None = None,
    gradients: bool = True,
    weight_gradients: bool = True,
    store_per_image: int = 0,
    extra_per_image: dict[str, int] | None = None,
    extra_fixed: dict[str, int] | None = None,
) -> MemoryPlan:
    """Probe one image (``x[:1]``) and choose the batch size: the whole plan in one call.
    ``extra_per_image`` / ``extra_fixed``: what the caller holds beside the capture (the store's
    write buffers), per image / whatever the batch, by name; ``store_per_image``: for the report."""
    probe = probe_memory(model, x[:1], layers, gradients=gradients, weight_gradients=weight_gradients)
    parts = {**plan_parts(probe), **(extra_per_image or {})}
    plan = choose_batch_size(parts, requested, budget, fixed=extra_fixed, largest_layer=probe.largest_layer)
    plan.store_per_image = store_per_image
    return plan


_PART_NAMES = {
    "forward": "the forward pass: what autograd keeps for the backward pass, the captured "
    "outputs, the largest op's temporaries",
    "after_backward": "after the backward pass: captured outputs and inputs, their gradients, "
    "the largest layer's temporaries",
    "weight_grads": "per-image weight gradients (buffers reused batch to batch)",
    "previous": "the previous batch's activations and gradients, until the store has them",
    "input": "the input images",
}


def describe_memory_plan(plan: MemoryPlan) -> str:
    """What ``volviz capture --dry-run`` prints: the projected peak of one batch and its parts,
    the store's bytes per image, the batch size chosen and why."""
    n = plan.batch_size
    lines = [
        f"batch size        {n} ({plan.reason})",
        f"projected memory  {fmt_bytes(plan.peak())} per batch at its peak, {fmt_bytes(plan.per_image)} per image",
    ]
    for k, v in sorted((kv for kv in plan.parts.items() if kv[1]), key=lambda kv: -kv[1]):
        lines.append(f"  {fmt_bytes(v * n):>11}  {_PART_NAMES.get(k, k)}")
    for k, v in plan.fixed.items():
        lines.append(f"  {fmt_bytes(v):>11}  {_PART_NAMES.get(k, k)} (whatever the batch)")
    if plan.largest_layer:
        lines.append(f"largest layer     {plan.largest_layer}")
    if plan.store_per_image:
        lines.append(f"store per image   {fmt_bytes(plan.store_per_image)}")
    lines.append(f"memory budget     {fmt_bytes(plan.budget)}")
    return "\n".join(lines)


def measure_peak(fn, *, baseline: int = 0, device: str = "cpu"):
    """Run ``fn()`` under torch's profiler and return (its result, peak bytes of live torch
    tensors on ``device`` during the call above what was live before, plus ``baseline``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    live = peak = 0
    for e in events:
        if str(e.device_type()).rsplit(".", 1)[-1].lower() != device:
            continue
        live += e.nbytes()
        peak = max(peak, live)
    return result, peak + baseline


def measure_capture_peak(model: nn.Module, x: torch.Tensor, layers: list[str], **capture_kw) -> int:
    """The measured peak of a batch in steady state, as the capture loop runs: a first batch fills
    the reused buffers, and the second runs while the first's result is still held."""
    from volviz.capture.engine import capture_batch

    workspace: dict = {}
    first = capture_batch(model, x, layers, workspace=workspace, **capture_kw)
    held = {}
    for arrays in (first.act, first.grad_act, first.grad_weight):
        for a in arrays.values():
            held[a.__array_interface__["data"][0]] = a.nbytes
    for u, v in first.grad_weight_factors.values():
        held[id(u)], held[id(v)] = u.nbytes, v.nbytes
    for t in workspace.values():
        held[t.data_ptr()] = t.untyped_storage().nbytes()
    baseline = sum(held.values()) + x.numel() * x.element_size()
    _, peak = measure_peak(
        lambda: capture_batch(model, x, layers, workspace=workspace, **capture_kw), baseline=baseline
    )
    return peak
