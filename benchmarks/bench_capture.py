"""Per-image weight gradients of every conv and linear layer: volviz against the floor and the field.

For each model, on the same batch of images and the same output neuron per image (its predicted
class), one run, the methods interleaved repeat after repeat:
  floor    ONE batched forward + backward (weights' .grad summed over the batch): the same
           arithmetic as per-image weight gradients, done once
  volviz   capture_batch: activations, activation gradients and per-image weight gradients from
           one forward and one backward pass (buffers reused batch to batch, as the capture does)
  fresh    the same with a fresh workspace: the first batch of a capture
  opacus   opacus GradSampleModule (hooks; the same layers, loss_reduction="sum")
  vmap     torch.func vmap(grad) (the textbook vectorized way)
  loop     one forward + backward per image, on the first --loop-images images, extrapolated
plus a plain forward against capture_batch(gradients=False) (activations only). Ratios to the
floor in process CPU time and in wall time, best of --repeat; the machine (lscpu model name) and
the load average before and after (the run, and each model). Fairness: opacus' per-image
gradients are compared with volviz's after the timing (the same layers, the same values).
Memory: the plan's predicted peak (volviz.capture.memory) against the peak measured with torch's
profiler, steady state.

    python benchmarks/bench_capture.py --threads 1                  # every model, CPU, ~10 min
    python benchmarks/bench_capture.py --models resnet18 mobilenet_v2 --size 224 --device cuda
Writes benchmarks/results/capture-<device>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import platform
import subprocess
import time
import warnings

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # before torch: the profiler's start/stop chatter

import torch  # noqa: E402
import torchvision  # noqa: E402

from volviz.capture.engine import capture_batch  # noqa: E402
from volviz.capture.layers import select_layers  # noqa: E402
from volviz.capture.memory import measure_capture_peak, plan_memory  # noqa: E402
from volviz.capture.persample import func_per_sample_grads, loop_per_sample_grads  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results"
MODELS = [
    "lenet",
    "resnet18",
    "resnet50",
    "vgg16",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "convnext_tiny",
    "densenet121",
    "regnet_y_400mf",
    "shufflenet_v2_x1_0",
]
METHODS = ["floor", "volviz", "fresh", "opacus", "vmap", "loop", "forward", "acts"]


def build(name: str):
    if name == "lenet":
        from volviz.sources.demo import build_demo_model

        return build_demo_model("digits").eval(), (1, 28, 28)
    return torchvision.models.get_model(name, weights=None).eval(), None


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def machine_info(device) -> dict:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        cpu = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "")
    except (OSError, subprocess.SubprocessError):
        cpu = platform.processor()
    return {
        "device": str(device),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
    }


def bench_model(name: str, batch: int, size: int, device, repeat: int, loop_images: int, conv_only: bool) -> dict:
    model, shape = build(name)
    for mod in model.modules():  # opacus' backward hooks refuse an in-place op after a layer
        if hasattr(mod, "inplace"):
            mod.inplace = False
    model.to(device)
    shape = shape or (3, size, size)
    x = torch.randn(batch, *shape, device=device, generator=torch.Generator(device).manual_seed(0))
    layers = select_layers(model, None, ["conv"] if conv_only else None)
    weighted = [f"{n}.weight" for n in layers]
    for k, prm in model.named_parameters():  # every method computes exactly these gradients
        prm.requires_grad_(k in weighted)
    with torch.no_grad():
        t = model(x).argmax(1)  # the same output neuron per image for every method

    from opacus import GradSampleModule

    om = copy.deepcopy(model)  # opacus wraps its model for good
    for n, mod in om.named_modules():
        if n in layers:
            mod.train()  # opacus records activations only for layers in training mode (eval elsewhere)
    gsm = GradSampleModule(om, batch_first=True, loss_reduction="sum", strict=False)
    ws: dict = {}
    sub = x[:loop_images]

    def floor():
        model.zero_grad(set_to_none=True)
        model(x).gather(1, t.view(-1, 1)).sum().backward()

    def opacus():
        gsm.zero_grad(set_to_none=True)
        gsm(x).gather(1, t.view(-1, 1)).sum().backward()
        return {k: p.grad_sample for k, p in om.named_parameters() if p.requires_grad}

    def plain_forward():
        with torch.no_grad():
            model(x)

    fns = {
        "floor": floor,
        "volviz": lambda: capture_batch(model, x, layers, target="pred", workspace=ws),
        "fresh": lambda: capture_batch(model, x, layers, target="pred", workspace={}),
        "opacus": opacus,
        "vmap": lambda: func_per_sample_grads(model, x, t, weighted),
        "loop": lambda: loop_per_sample_grads(model, sub, t[:loop_images], weighted),
        "forward": plain_forward,
        "acts": lambda: capture_batch(model, x, layers, target="pred", gradients=False),
    }
    scale = {"loop": batch / len(sub)}
    best = {k: [float("inf"), float("inf")] for k in fns}  # cpu, wall
    errors = {}
    for r in range(repeat + 1):  # round 0 warms up (oneDNN primitives, buffers)
        for k, fn in fns.items():
            if k in errors:
                continue
            try:
                sync(device)
                c0, w0 = time.process_time(), time.perf_counter()
                fn()
                sync(device)
                c, w = time.process_time() - c0, time.perf_counter() - w0
            except (RuntimeError, NotImplementedError, ValueError) as exc:  # out of memory, unsupported layer
                errors[k] = str(exc).splitlines()[0][:160]
                continue
            if r:
                best[k] = [min(best[k][0], c * scale.get(k, 1)), min(best[k][1], w * scale.get(k, 1))]
    model.zero_grad(set_to_none=True)
    agreement = None if "opacus" in errors else opacus_agreement(opacus(), fns["volviz"](), layers, batch)

    row = {
        "model": name,
        "batch": batch,
        "input": list(shape),
        "layers": len(layers),
        "layer_types": "conv" if conv_only else "conv+linear",
        "loop_images": len(sub),
        "params": sum(p.numel() for k, p in model.named_parameters() if k in weighted),
        "errors": errors,
        "opacus_vs_volviz_max_rel_diff": agreement,  # the same layers, the same quantity
    }
    for k in fns:
        row[f"{k}_cpu_s"], row[f"{k}_wall_s"] = best[k] if k not in errors else (None, None)
    for k in ("volviz", "fresh", "opacus", "vmap", "loop"):
        for clock in ("cpu", "wall"):
            v = row[f"{k}_{clock}_s"]
            row[f"{k}_over_floor_{clock}"] = v / row[f"floor_{clock}_s"] if v is not None else None
    for clock in ("cpu", "wall"):
        o = row[f"opacus_{clock}_s"]
        row[f"opacus_over_volviz_{clock}"] = o / row[f"volviz_{clock}_s"] if o is not None else None
        row[f"acts_over_forward_{clock}"] = row[f"acts_{clock}_s"] / row[f"forward_{clock}_s"]
    if device.type == "cpu":  # the memory plan against torch's profiler (CUDA: the same on the device)
        plan = plan_memory(model, x, layers, requested=batch, budget=1 << 50)
        row["memory_predicted"] = plan.peak()
        row["memory_measured"] = measure_capture_peak(model, x, layers, target="pred")
        row["memory_predicted_over_measured"] = row["memory_predicted"] / row["memory_measured"]
    return row


def opacus_agreement(grad_samples: dict, res, layers: list[str], batch: int) -> float:
    """Fairness check: opacus computed per-image gradients of exactly the layers volviz did, and the
    same ones; the largest difference relative to each layer's largest value (float32 kernels on
    different operand orders: about 1e-6; 1 where one of them is zero and the other is not)."""
    worst = 0.0
    for n in layers:
        g = grad_samples.get(f"{n}.weight")
        if g is None or g.shape[0] != batch:
            raise ValueError(f"opacus has no per-image gradient for {n}: not the same layers")
        if n in res.grad_weight_factors:
            u, v = res.grad_weight_factors[n]
            mine = torch.einsum("no,ni->noi", torch.from_numpy(u), torch.from_numpy(v))
        else:
            mine = torch.from_numpy(res.grad_weight[n])
        ref = g.detach().reshape(mine.shape)
        scale = torch.maximum(mine.abs().max(), ref.abs().max()).clamp_min(1e-30)
        worst = max(worst, float((mine - ref).abs().max() / scale))
    return worst


def table(rows: list[dict]) -> str:
    f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [
        "| model | batch | input | floor s (cpu) | volviz / floor cpu (wall) | fresh / floor | opacus / floor "
        "| vmap / floor | loop / floor | opacus / volviz | opacus vs volviz | acts / forward "
        "| memory predicted / measured | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = r.get("opacus_vs_volviz_max_rel_diff")
        agree = "-" if d is None else f"{d:.0e}" if d < 1e-3 else f"**differs: {d:.2g}**"
        mem = "-"
        if r.get("memory_measured"):
            ratio = f(r["memory_predicted_over_measured"])
            mem = f"{r['memory_predicted'] / 2**20:.0f} / {r['memory_measured'] / 2**20:.0f} MiB ({ratio})"
        lines.append(
            f"| {r['model']} | {r['batch']} | {'x'.join(map(str, r['input']))} | {r['floor_cpu_s']:.3f} | "
            f"**{f(r['volviz_over_floor_cpu'])}** ({f(r['volviz_over_floor_wall'])}) | "
            f"{f(r['fresh_over_floor_cpu'])} | {f(r['opacus_over_floor_cpu'])} | {f(r['vmap_over_floor_cpu'])} | "
            f"{f(r['loop_over_floor_cpu'])} | **{f(r['opacus_over_volviz_cpu'])}** | {agree} | "
            f"{f(r['acts_over_forward_cpu'])} | {mem} | {r['load_average_start']:.1f}-{r['load_average_end']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--batch", type=int, default=8, help="images per batch for torchvision models (LeNet: 8x)")
    p.add_argument("--size", type=int, default=112, help="input size for torchvision models")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=2, help="timed rounds after one warm-up round")
    p.add_argument("--loop-images", type=int, default=4, help="images the loop runs (extrapolated to the batch)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--conv-only",
        nargs="*",
        default=["vgg16"],
        help="models whose per-image gradients are taken for conv layers only (VGG16's fc6 alone is "
        "103M weights: per-image copies for the opacus/vmap/loop baselines need GBs)",
    )
    p.add_argument("--out", default=None, help="JSON file (default benchmarks/results/capture-<device>.json)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    device = torch.device(a.device)
    machine = machine_info(device)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = pathlib.Path(a.out) if a.out else RESULTS / f"capture-{device.type}.json"
    rows = []
    info = {"machine": machine, "load_average_start": os.getloadavg(), "started": time.strftime("%Y-%m-%d %H:%M")}
    t0 = time.perf_counter()
    for m in a.models:
        batch = a.batch * 8 if m == "lenet" else a.batch
        load = os.getloadavg()[0]  # other jobs on the machine: the 1-minute load as this model starts
        rows.append(
            bench_model(
                m, batch, a.size, device, a.repeat, a.loop_images * (4 if m == "lenet" else 1), m in a.conv_only
            )
        )
        rows[-1].update(load_average_start=load, load_average_end=os.getloadavg()[0])
        info.update(load_average_end=os.getloadavg(), seconds=round(time.perf_counter() - t0, 1))
        out.write_text(json.dumps({**info, "rows": rows}, indent=1))  # keep what is done
        print(json.dumps(rows[-1]), flush=True)
    print(
        f"machine: {machine}; load average {info['load_average_start']} -> {info['load_average_end']}; "
        f"{info['seconds']} s"
    )
    print(table(rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
