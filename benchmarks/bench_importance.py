"""Benchmark: filter importance (per-image gradient norms of every conv / linear layer) over many
images, on the fly from the model, for the embedded digits LeNet and for resnet18.

    .venv/bin/python benchmarks/bench_importance.py                 # 1,000 images, 1 thread
    .venv/bin/python benchmarks/bench_importance.py --images 200 --threads 2 --size 64
    .venv/bin/python benchmarks/bench_importance.py --device cuda    # on a GPU machine

Measures images / second of ``volviz.analysis.importance.importance_on_the_fly`` (batched per-image
weight gradients reduced to filter norms in chunks of at most ``max_bytes``, or Gram-matrix norms
where cheaper), against the floor (the same images, one batched forward + backward giving only the
batch-summed weight gradient) and, on a small subset, the naive reference (one forward + backward
pass per image, ``volviz.capture.persample.loop_per_sample_grads``), and checks that volviz and the
reference agree. Inputs are random
tensors of the model's input shape (the work does not depend on pixel values); resnet18 has
random weights and 1,000 classes. Prints a table and writes JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import sys
import time

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from volviz.analysis.importance import check_weighted_layers, importance_on_the_fly  # noqa: E402
from volviz.analysis.inputs import InputSet  # noqa: E402
from volviz.capture.persample import loop_per_sample_grads  # noqa: E402


def build(name: str, size: int):
    import torchvision

    from volviz.sources.demo import DEMO_INFO, load_demo_model

    if name == "digits":
        try:
            m = load_demo_model("digits")
        except FileNotFoundError:
            from volviz.sources.demo import build_demo_model

            m = build_demo_model("digits")
        return m.eval(), tuple(DEMO_INFO["digits"].input_size)
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None).eval(), (3, size, size)


def bench(name: str, n: int, size: int, batch: int, loop_n: int, device: str) -> dict:
    model, shape = build(name, size)
    model = model.to(device)
    layers = check_weighted_layers(model, None)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, *shape, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    inputs = InputSet.from_tensors(x.to(device), labels.numpy())
    # warm-up (allocator, kernels), not timed
    importance_on_the_fly(
        model,
        InputSet.from_tensors(x[:batch].to(device), labels[:batch].numpy()),
        layers,
        target="true",
        batch_size=batch,
        progress=False,
    )
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = importance_on_the_fly(model, inputs, layers, target="true", batch_size=batch, progress=False)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak so far (MiB), before the loop baseline
    # floor: the same images, one batched forward + backward (weights' .grad summed over the batch)
    params = [dict(model.named_modules())[name].weight for name in layers]
    t2 = time.perf_counter()
    for s in range(0, n, batch):
        xb, tb = x[s : s + batch].to(device), labels[s : s + batch].to(device)
        out = model(xb)
        torch.autograd.grad(out.gather(1, tb.view(-1, 1)).sum(), params)
    if device == "cuda":
        torch.cuda.synchronize()
    t_floor = time.perf_counter() - t2
    # naive reference on a subset: one backward pass per image, full weight gradients
    xs, ts = x[:loop_n].to(device), labels[:loop_n].to(device)
    t1 = time.perf_counter()
    ref = loop_per_sample_grads(model, xs, ts, [f"{name}.weight" for name in layers])
    t_loop = time.perf_counter() - t1
    err = 0.0
    for name in layers:
        r = ref[f"{name}.weight"]
        r = r.reshape(loop_n, r.shape[1], -1).norm(dim=2).cpu().numpy()
        err = max(err, float(np.abs(r - res.per_image[name][:loop_n]).max() / max(r.max(), 1e-30)))
    n_weights = sum(p.numel() for p in params)
    filters = sum(res.per_image[name].shape[1] for name in layers)
    return {
        "model": name,
        "input": list(shape),
        "images": n,
        "batch_size": batch,
        "layers": len(layers),
        "filters": filters,
        "weights": int(n_weights),
        "seconds": round(t, 3),
        "floor_seconds": round(t_floor, 3),
        "volviz_over_floor": round(t / t_floor, 2),
        "images_per_s": round(n / t, 1),
        "loop_images": loop_n,
        "loop_images_per_s": round(loop_n / t_loop, 1),
        "speedup_vs_loop": round((n / t) / (loop_n / t_loop), 1),
        "max_rel_diff_vs_loop": err,
        "result_mib": round(sum(v.nbytes for v in res.per_image.values()) / 2**20, 2),
        "peak_rss_mib_after_importance": round(rss, 1),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--size", type=int, nargs="+", default=[112], help="resnet18 input side(s) (default 112)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--loop-images", type=int, default=20, help="images for the naive per-image baseline")
    p.add_argument("--models", nargs="+", default=["digits", "resnet18"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "importance.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    for name in a.models:
        for size in a.size if name != "digits" else [28]:
            r = bench(name, a.images, size, a.batch_size, a.loop_images, a.device)
            rows.append(r)
            print(
                f"{r['model']:<10} {'x'.join(map(str, r['input'])):<10} {r['images']:>6} img  {r['seconds']:>8.2f} s  "
                f"{r['images_per_s']:>8.1f} img/s  (loop {r['loop_images_per_s']:.1f} img/s, x{r['speedup_vs_loop']})  "
                f"max rel diff {r['max_rel_diff_vs_loop']:.1e}",
                flush=True,
            )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info = {
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs",
        "device": a.device,
        "threads": a.threads,
        "torch": torch.__version__,
        "peak_rss_mib": round(peak, 1),
        "date": time.strftime("%Y-%m-%d"),
        "results": rows,
    }
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, out)
    print(
        "\n| model | input | images | layers | filters | volviz s | images/s | floor s | volviz / floor "
        "| loop images/s | volviz / loop speed-up | peak RSS (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {'x'.join(map(str, r['input']))} | {r['images']} | {r['layers']} | "
            f"{r['filters']} | {r['seconds']} | **{r['images_per_s']}** | {r['floor_seconds']} | "
            f"{r['volviz_over_floor']} | "
            f"{r['loop_images_per_s']} | {r['speedup_vs_loop']} | {r['peak_rss_mib_after_importance']:.0f} |"
        )
    print(f"\npeak RSS {peak:.0f} MiB; {info['machine']}, {a.threads} thread(s), torch {torch.__version__} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
