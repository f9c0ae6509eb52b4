"""Preferred inputs: a whole layer batched (one unit per batch element) vs one unit at a time.

Same model, layer, steps, resolution, regularization (the default Config: Adam, L2 decay, total
variation, jitter, periodic blur, clipping) and seeds in both, in one run. One-unit-at-a-time is
timed on ``--single-units`` units spread over the layer and extrapolated to the whole layer (say
``--single-units all`` to time every unit). ``--bare`` also times the floor: forward + backward of
the model truncated at the layer, same batch and steps, no regularization and no optimizer.

    # CPU, the default digits model, every layer (the >= 10x target)
    python benchmarks/bench_actmax.py --preset digits-cpu
    # GPU: VGG16 (random weights) last conv layer, 512 units, 512 steps at 128 px
    python benchmarks/bench_actmax.py --preset vgg16-gpu --precision bf16
    python benchmarks/bench_actmax.py --preset vgg16-gpu --precision tf32

Prints a table and writes JSON to benchmarks/results/actmax_<model>_<device>_<precision>.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import cpu_name  # noqa: E402  (benchmarks/ is on sys.path when run)

from volviz.analysis.actmax.optimize import Config, Problem, optimize_batch  # noqa: E402
from volviz.analysis.actmax.run import prepare_model  # noqa: E402

PRESETS = {
    "digits-cpu": dict(
        model="digits",
        layers=["conv1", "conv2", "fc1", "fc2"],
        steps=256,
        size=None,
        device="cpu",
        precision="fp32",
        batch_size=512,
        single_units="16",
        threads=1,
        bare=False,
    ),
    "vgg16-gpu": dict(
        model="vgg16",
        layers=["features.28"],
        steps=512,
        size=128,
        device="cuda",
        precision="bf16",
        batch_size=512,
        single_units="4",
        threads=None,
        bare=True,
    ),
}


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def load(model_name: str, size: int | None, device: str):
    from volviz.sources.models import load_model

    note = ""
    try:
        loaded = load_model(model_name)
    except FileNotFoundError:  # demo weights not trained yet: timing does not depend on them
        from volviz.sources import demo
        from volviz.sources.models import LoadedModel

        info = demo.DEMO_INFO[model_name]
        loaded = LoadedModel(
            demo.build_demo_model(model_name).eval(),
            model_name,
            None,
            info.input_size,
            list(info.class_names),
            info.mean,
            info.std,
        )
        note = "random weights (demo weights not found)"
    if loaded.extra.get("random_weights"):
        note = "random weights"
    c, h, w = loaded.input_size
    shape = (c, size, size) if size else (c, h, w)
    return prepare_model(loaded.module, device), shape, loaded.mean, loaded.std, note


def kind_of(problem_out_shape) -> str:
    return "channel" if len(problem_out_shape) == 3 else "neuron"


def time_batched(pr: Problem, n_units: int, seeds: int, cfg: Config, steps: int, batch: int):
    """(wall seconds, process CPU seconds) for the whole layer, ``batch`` elements per run."""
    per_run = max(1, batch // seeds)
    _sync(pr.device)
    t, c = time.perf_counter(), time.process_time()
    for first in range(0, n_units, per_run):
        u = np.repeat(np.arange(first, min(n_units, first + per_run)), seeds)
        optimize_batch(pr, u, np.tile(np.arange(seeds), len(u) // seeds), cfg, steps)
    _sync(pr.device)
    return time.perf_counter() - t, time.process_time() - c


def time_single(pr: Problem, units: np.ndarray, seeds: int, cfg: Config, steps: int):
    """(wall, CPU) seconds per unit, one unit (and its seeds, one at a time) per run."""
    _sync(pr.device)
    t, c = time.perf_counter(), time.process_time()
    for u in units:
        for s in range(seeds):
            optimize_batch(pr, [u], [s], cfg, steps)
    _sync(pr.device)
    return (time.perf_counter() - t) / len(units), (time.process_time() - c) / len(units)


def time_bare(pr: Problem, n_units: int, seeds: int, steps: int, batch: int) -> float:
    """Forward + backward to the image of the truncated model: the floor of any method."""
    c, h, w = pr.input_shape
    total = n_units * seeds
    _sync(pr.device)
    t = time.perf_counter()
    for first in range(0, total, batch):
        b = min(batch, total - first)
        x = torch.rand(b, c, h, w, device=pr.device, requires_grad=True)
        units = torch.arange(b, device=pr.device) % n_units
        for _ in range(steps):
            a = pr.values(x, units)
            (g,) = torch.autograd.grad(a.sum(), x)
    _sync(pr.device)
    return time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="digits-cpu")
    p.add_argument("--model")
    p.add_argument("--layers", nargs="+")
    p.add_argument("--steps", type=int)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--size", type=int, help="square input side (default: the model's)")
    p.add_argument("--device")
    p.add_argument("--precision", choices=["fp32", "tf32", "bf16"])
    p.add_argument("--param", choices=["pixel", "fourier"], default="pixel")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--single-units", help="units timed one at a time (a number, or all)")
    p.add_argument("--threads", type=int)
    p.add_argument("--bare", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument(
        "--unit-only",
        choices=["auto", "all", "linear", "off"],
        default="auto",
        help="compute only the target unit of the target layer: auto (Linear always, Conv2d on "
        "the CPU), all, linear, off (whole target layer)",
    )
    p.add_argument("--out", help="JSON file (default benchmarks/results/actmax_<model>_<device>_<precision>.json)")
    a = p.parse_args(argv)
    cfg_p = dict(PRESETS[a.preset])
    for k in (
        "model",
        "layers",
        "steps",
        "size",
        "device",
        "precision",
        "batch_size",
        "single_units",
        "threads",
        "bare",
    ):
        if getattr(a, k) is not None:
            cfg_p[k] = getattr(a, k)
    if cfg_p["threads"]:
        torch.set_num_threads(cfg_p["threads"])
    dev = cfg_p["device"]
    if torch.device(dev).type == "cuda":
        if not torch.cuda.is_available():
            print(
                "CUDA is not available on this machine; run the GPU preset where there is a GPU "
                "(or pass --device cpu with a smaller --steps / --size to try the code path)"
            )
            return 2
        torch.backends.cudnn.benchmark = True
    model, shape, mean, std, note = load(cfg_p["model"], cfg_p["size"], dev)
    cfg = Config(param=a.param)
    unit_only = {"auto": None, "all": True, "linear": "linear", "off": False}[a.unit_only]
    rows = []
    for layer in cfg_p["layers"]:
        probe = Problem(model, layer, "neuron", shape, mean, std, device=dev, precision=cfg_p["precision"])
        kind = kind_of(probe.out_shape())
        pr = Problem(
            model, layer, kind, shape, mean, std, device=dev, precision=cfg_p["precision"], unit_only=unit_only
        )
        n = pr.out_shape()[0]
        single = (
            np.arange(n)
            if cfg_p["single_units"] == "all"
            else np.unique(np.linspace(0, n - 1, min(n, int(cfg_p["single_units"]))).round().astype(int))
        )
        optimize_batch(pr, [0, 1 % n], [0, 0], cfg, 3)  # warm-up (allocator, cuDNN autotune)
        tb, cb = time_batched(pr, n, a.seeds, cfg, cfg_p["steps"], cfg_p["batch_size"])
        ts, cs = time_single(pr, single, a.seeds, cfg, cfg_p["steps"])
        row = {
            "layer": layer,
            "objective": kind,
            "units": n,
            "seeds": a.seeds,
            "steps": cfg_p["steps"],
            "input": list(shape),
            "batched_s": round(tb, 3),
            "single_s_per_unit": round(ts, 4),
            "single_units_timed": int(len(single)),
            "single_s_layer": round(ts * n, 2),
            "single_extrapolated": bool(len(single) < n),
            "speedup": round(ts * n / tb, 1),
            # process CPU time: on a shared machine less noisy than wall time (CPU runs only)
            "batched_cpu_s": round(cb, 3),
            "single_cpu_s_layer": round(cs * n, 2),
            "speedup_cpu_time": round(cs * n / cb, 1),
        }
        if cfg_p["bare"]:
            row["bare_fwd_bwd_s"] = round(time_bare(pr, n, a.seeds, cfg_p["steps"], cfg_p["batch_size"]), 3)
        rows.append(row)
        print(f"  {layer}: batched {tb:.2f} s, one at a time {ts:.3f} s/unit", flush=True)
    tot_b = sum(r["batched_s"] for r in rows)
    tot_s = sum(r["single_s_layer"] for r in rows)
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "gpu": torch.cuda.get_device_name(0) if torch.device(dev).type == "cuda" else None,
    }
    print()
    print(
        f"model {cfg_p['model']} ({note or 'trained weights'}), input {shape}, {cfg_p['steps']} steps, "
        f"{a.seeds} seed(s), param {a.param}, unit-only {a.unit_only}, device {dev} "
        f"({env['gpu'] or env['cpu']}), precision "
        f"{cfg_p['precision']}, batch {cfg_p['batch_size']}, torch threads {env['threads']}"
    )
    head = f"{'layer':<14}{'units':>6}{'batched s':>11}{'1-unit s/unit':>15}{'1-unit layer s':>16}{'speedup':>9}"
    if cfg_p["bare"]:
        head += f"{'bare fwd+bwd s':>16}"
    print(head)
    for r in rows:
        line = (
            f"{r['layer']:<14}{r['units']:>6}{r['batched_s']:>11.2f}{r['single_s_per_unit']:>15.3f}"
            f"{r['single_s_layer']:>15.1f}{'*' if r['single_extrapolated'] else ' '}{r['speedup']:>8.1f}x"
        )
        if cfg_p["bare"]:
            line += f"{r['bare_fwd_bwd_s']:>16.2f}"
        print(line)
    print(f"{'total':<14}{sum(r['units'] for r in rows):>6}{tot_b:>11.2f}{'':>15}{tot_s:>15.1f} {tot_s / tot_b:>8.1f}x")
    cpu_speedup = sum(r["single_cpu_s_layer"] for r in rows) / sum(r["batched_cpu_s"] for r in rows)
    if torch.device(dev).type == "cpu":
        print(f"speedup by process CPU time (less sensitive to other processes): {cpu_speedup:.1f}x")
    if any(r["single_extrapolated"] for r in rows):
        print("* one-unit time extrapolated from the units timed (see single_units_timed in the JSON)")
    out = (
        pathlib.Path(a.out)
        if a.out
        else ROOT
        / "benchmarks"
        / "results"
        / f"actmax_{cfg_p['model']}_{torch.device(dev).type}_{cfg_p['precision']}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "settings": dict(cfg_p, seeds=a.seeds, param=a.param, unit_only=a.unit_only, note=note),
                "env": env,
                "rows": rows,
                "total_batched_s": round(tot_b, 3),
                "total_single_s": round(tot_s, 2),
                "total_speedup": round(tot_s / tot_b, 1),
                "total_speedup_cpu_time": round(cpu_speedup, 1),
            },
            indent=1,
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
