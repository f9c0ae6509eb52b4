"""Per-image weight gradients and capture cost, measured in one run.

For each model, on the same batch of images:
  floor    ONE batched forward + backward (weights' .grad summed over the batch): the same arithmetic
           as per-image weight gradients, done once
  volviz   capture_batch: batched per-image weight gradients from one backward pass (hooks + einsum)
  vmap     torch.func vmap(grad) per-sample gradients (the textbook vectorized way)
  loop     one forward + backward per image (the naive way)
and, for activations alone: a plain forward pass vs capture_batch(gradients=False).

    python benchmarks/bench_capture.py                       # CPU: lenet, resnet18, vgg16 (random weights)
    python benchmarks/bench_capture.py --device cuda --models resnet18 vgg16 --size 224
Writes benchmarks/results/capture-<device>.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import torch
import torchvision

from volviz.capture.engine import capture_batch
from volviz.capture.layers import select_layers
from volviz.capture.persample import func_per_sample_grads, loop_per_sample_grads

RESULTS = pathlib.Path(__file__).parent / "results"


def build(name: str):
    if name == "lenet":
        from volviz.sources.demo import build_demo_model
        return build_demo_model("digits").eval(), (1, 28, 28)
    return torchvision.models.get_model(name, weights=None).eval(), None


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat: int) -> float:
    fn()  # warm-up
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_model(name: str, batch: int, size: int, device, repeat: int, skip_loop: bool, skip_vmap: bool,
                conv_only: bool = False) -> dict:
    model, shape = build(name)
    model.to(device)
    shape = shape or (3, size, size)
    x = torch.randn(batch, *shape, device=device)
    layers = select_layers(model, None, ["conv"] if conv_only else None)
    weighted = [f"{n}.weight" for n in layers]
    for k, prm in model.named_parameters():  # the floor computes exactly the gradients we compare
        prm.requires_grad_(k in weighted)
    with torch.no_grad():
        t = model(x).argmax(1)

    def floor():
        model.zero_grad(set_to_none=True)
        model(x).gather(1, t.view(-1, 1)).sum().backward()

    def plain_forward():
        with torch.no_grad():
            model(x)

    row = {"model": name, "batch": batch, "input": list(shape), "layers": len(layers),
           "layer_types": "conv" if conv_only else "conv+linear",
           "params": sum(p.numel() for k, p in model.named_parameters() if k in weighted)}
    row["floor_s"] = timed(floor, device, repeat)
    ws: dict = {}  # as the capture loop does: buffers reused from batch to batch
    row["volviz_s"] = timed(lambda: capture_batch(model, x, layers, target="pred", workspace=ws), device, repeat)
    ws.clear()
    row["forward_s"] = timed(plain_forward, device, repeat)
    row["capture_acts_s"] = timed(lambda: capture_batch(model, x, layers, target="pred", gradients=False), device, repeat)
    if not skip_vmap:
        try:
            row["vmap_s"] = timed(lambda: func_per_sample_grads(model, x, t, weighted), device, 1)
        except RuntimeError as exc:  # out of memory on big models
            row["vmap_s"] = None
            row["vmap_error"] = str(exc).splitlines()[0][:120]
    if not skip_loop:
        row["loop_s"] = timed(lambda: loop_per_sample_grads(model, x, t, weighted), device, 1)
    model.zero_grad(set_to_none=True)
    for k in ("volviz", "vmap", "loop"):
        if row.get(f"{k}_s"):
            row[f"{k}_over_floor"] = row[f"{k}_s"] / row["floor_s"]
    row["capture_acts_over_forward"] = row["capture_acts_s"] / row["forward_s"]
    if row.get("loop_s"):
        row["loop_over_volviz"] = row["loop_s"] / row["volviz_s"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["lenet", "resnet18", "vgg16"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=64, help="input size for torchvision models (default 64 on CPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-loop", action="store_true")
    p.add_argument("--skip-vmap", action="store_true")
    p.add_argument("--conv-only", nargs="*", default=["vgg16"],
                   help="models whose per-image gradients are taken for conv layers only (VGG16's fc6 alone "
                   "is 103M weights: 64 per-image copies for the loop/vmap baselines need 26 GB)")
    p.add_argument("--no-tf32", action="store_true", help="disable TF32 on CUDA (exact float32)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device(a.device)
    machine = {"device": str(device), "platform": platform.platform(), "processor": platform.processor(),
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"capture-{device.type}.json"
    rows = []
    for m in a.models:
        rows.append(bench_model(m, a.batch, a.size, device, a.repeat, a.skip_loop, a.skip_vmap, m in a.conv_only))
        out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))  # keep what is done
        print(rows[-1], flush=True)
    print(f"machine: {machine}")
    print("| model | batch | input | floor s | volviz s | volviz/floor | vmap/floor | loop/floor | loop/volviz | capture(acts)/forward |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {'x'.join(map(str, r['input']))} | {r['floor_s']:.3f} | "
              f"{r['volviz_s']:.3f} | {f(r.get('volviz_over_floor'))} | {f(r.get('vmap_over_floor'))} | "
              f"{f(r.get('loop_over_floor'))} | {f(r.get('loop_over_volviz'))} | {r['capture_acts_over_forward']:.2f} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
