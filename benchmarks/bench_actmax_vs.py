"""Preferred inputs on a CPU: volviz against Lucent (torch-lucent) on the same units, and the time
per unit at 224 px.

Both sides maximize the same objective (the mean of one conv channel, Lucent's ``channel``) of the
same model (torchvision, random weights from ``torch.manual_seed(0)``: nothing is downloaded), for
the same number of steps, one image per unit, and both final images are scored the same way:
``z = (a - mean_real) / (top_real - mean_real)`` with ``a`` the unit's activation for the final
image (no transforms) and ``mean_real`` / ``top_real`` over real photos (scikit-image's sample
images, crops and flips). ``z = 1`` is the best real photo.

* volviz: what ``volviz optimize --search 0`` does: the default ``Config`` (pixel image, Adam 0.05,
  L2 decay, total variation, jitter, blur, clipping), batch norms folded, the model truncated at
  the layer, every unit of the list in batched runs (``auto_batch``).
* Lucent 0.1.8: ``render_vis(model, "layer:unit", param.image(size))`` with its defaults (Fourier
  image with decorrelated colour, its standard transforms, Adam 0.05), one unit per call (as its
  documentation does), ``fixed_image_size=size`` so the model sees the same size as volviz's.

    python benchmarks/bench_actmax_vs.py --part lucent      # resnet18, 64 px, 128 steps, 16 units
    python benchmarks/bench_actmax_vs.py --part cpu224      # mobilenet_v2 / resnet18 at 224 px

Writes benchmarks/results/actmax_vs_lucent.json / actmax_cpu224.json. Lucent is optional: without
it only volviz is timed. It imports IPython for notebooks only; a stub stands in when it is absent.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time
import types

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import cpu_name  # noqa: E402  (benchmarks/ is on sys.path when run)

from volviz.analysis.actmax.optimize import Config, Problem, optimize_batch  # noqa: E402
from volviz.analysis.actmax.run import prepare_model  # noqa: E402
from volviz.analysis.actmax.speed import auto_batch, fold_batchnorm  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PARTS = {
    "lucent": dict(size=64, steps=128, cases=[("resnet18", "layer3.0.conv2", 16), ("resnet18", "layer2.0.conv1", 16)]),
    "cpu224": dict(
        size=224,
        steps=64,
        cases=[
            ("mobilenet_v2", "features.6.conv.1.0", 8),
            ("mobilenet_v2", "features.14.conv.0.0", 8),
            ("resnet18", "layer2.0.conv1", 8),
            ("resnet18", "layer4.0.conv1", 8),
        ],
    ),
}


def lucent():
    """The lucent modules, or None when torch-lucent is not installed."""
    if "IPython" not in sys.modules:
        try:
            import IPython  # noqa: F401
        except ImportError:
            ip, disp = types.ModuleType("IPython"), types.ModuleType("IPython.display")
            disp.display = lambda *a, **k: None
            disp.HTML = disp.Image = lambda *a, **k: None
            ip.display = disp
            sys.modules["IPython"], sys.modules["IPython.display"] = ip, disp
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from lucent.optvis import param, render
        return render, param
    except ImportError:
        return None


def real_images(size: int) -> np.ndarray:
    """Real photos ``(N, 3, size, size)`` in [0, 1]: scikit-image's samples, centre and corner crops, flips."""
    import skimage.data as data
    import torch.nn.functional as F

    out = []
    for name in (
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "camera",
        "brick",
        "grass",
        "gravel",
        "coins",
        "horse",
        "immunohistochemistry",
        "hubble_deep_field",
        "page",
        "text",
        "moon",
        "clock",
    ):
        try:
            img = np.asarray(getattr(data, name)(), dtype=np.float32)
        except Exception:  # noqa: BLE001 - a sample that needs a download: skip it
            continue
        img = img / (255.0 if img.max() > 1.5 else 1.0)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        img = img[..., :3]
        h, w = img.shape[:2]
        s = min(h, w)
        for fy, fx, f in ((0.5, 0.5, 1.0), (0.0, 0.0, 0.7), (1.0, 1.0, 0.7), (0.0, 1.0, 0.7), (1.0, 0.0, 0.7)):
            c = int(s * f)
            y, x = int((h - c) * fy), int((w - c) * fx)
            t = torch.from_numpy(np.ascontiguousarray(img[y : y + c, x : x + c].transpose(2, 0, 1)))[None]
            t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
            out += [t.numpy(), t.flip(-1).numpy()]
    return np.clip(np.stack(out), 0, 1)


def model_of(name: str):
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)().eval()


def volviz_run(model, layer: str, units: np.ndarray, size: int, steps: int, opt_size: int | None = None):
    """Seconds per unit and the final images, the way ``volviz optimize --search 0`` runs."""
    m = prepare_model(model)
    m, folded = fold_batchnorm(m, {layer})
    pr = Problem(
        m, layer, "channel", (3, size, size), MEAN, STD, image_size=None if opt_size is None else (opt_size, opt_size)
    )
    batch = auto_batch((3, size, size))
    t = time.perf_counter()
    imgs = []
    for first in range(0, len(units), batch):
        u = units[first : first + batch]
        imgs.append(optimize_batch(pr, u, np.zeros(len(u), int), Config(), steps).images)
    secs = (time.perf_counter() - t) / len(units)
    return secs, np.concatenate(imgs), {"batch": batch, "folded_batch_norms": folded}


def lucent_run(lu, model, layer: str, units: np.ndarray, size: int, steps: int):
    import copy

    render, param = lu
    name = layer.replace(".", "_")
    secs = 0.0
    imgs = []
    for u in units:
        fresh = copy.deepcopy(model)  # render_vis leaves its hooks on the model: a clean one per unit
        t = time.perf_counter()
        out = render.render_vis(
            fresh,
            f"{name}:{int(u)}",
            param_f=lambda: param.image(size),
            thresholds=(steps,),
            show_image=False,
            progress=False,
            fixed_image_size=size,
        )
        secs += time.perf_counter() - t
        imgs.append(out[-1][0].transpose(2, 0, 1))
    return secs / len(units), np.stack(imgs).astype(np.float32)


def scorer(model, layer: str, size: int, real: np.ndarray):
    """``z(images, units)`` against the real photos, through the (unfolded) model."""
    pr = Problem(prepare_model(model), layer, "channel", (3, size, size), MEAN, STD, unit_only=False)
    with torch.no_grad():
        vals = np.concatenate([pr.values(torch.from_numpy(real[i : i + 16])).numpy() for i in range(0, len(real), 16)])
    top, mean = vals.max(0), vals.mean(0)

    def z(images: np.ndarray, units: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        with torch.no_grad():
            a = pr.values(x, torch.as_tensor(units)).numpy()
        return (a - mean[units]) / np.maximum(top[units] - mean[units], 1e-12)

    return z


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=sorted(PARTS), default="lucent")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int)
    p.add_argument("--units", type=int, help="units per layer (default: the part's)")
    p.add_argument("--no-lucent", action="store_true")
    p.add_argument("--opt-size", type=int, help="also time volviz with --size this (optimized below the input)")
    p.add_argument("--out")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    part = PARTS[a.part]
    size, steps = part["size"], a.steps or part["steps"]
    lu = None if a.no_lucent else lucent()
    real = real_images(size)
    rows = []
    for model_name, layer, k in part["cases"]:
        model = model_of(model_name)
        n = dict(model.named_modules())[layer].out_channels
        units = np.unique(np.linspace(0, n - 1, a.units or k).round().astype(np.int64))
        z = scorer(model, layer, size, real)
        row = {"model": model_name, "layer": layer, "units": units.tolist(), "input": size, "steps": steps}
        secs, imgs, info = volviz_run(model, layer, units, size, steps)
        zs = z(imgs, units)
        row.update(
            volviz_s_per_unit=round(secs, 3),
            volviz_median_z=round(float(np.median(zs)), 2),
            volviz_beats_real=round(float(np.mean(zs > 1)), 2),
            **info,
        )
        if a.opt_size:
            secs2, imgs2, _ = volviz_run(model, layer, units, size, steps, a.opt_size)
            zs2 = z(imgs2, units)
            row.update(
                opt_size=a.opt_size,
                volviz_small_s_per_unit=round(secs2, 3),
                volviz_small_median_z=round(float(np.median(zs2)), 2),
            )
        if lu is not None:
            ls, limgs = lucent_run(lu, model_of(model_name), layer, units, size, steps)
            lz = z(limgs, units)
            row.update(
                lucent_s_per_unit=round(ls, 3),
                lucent_median_z=round(float(np.median(lz)), 2),
                lucent_beats_real=round(float(np.mean(lz > 1)), 2),
                speedup=round(ls / secs, 2),
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "lucent": _lucent_version() if lu else None,
        "real_images": int(len(real)),
    }
    print()
    print(
        f"{'model':<13}{'layer':<22}{'units':>6}{'volviz s/unit':>14}{'z':>7}"
        + (f"{'Lucent s/unit':>15}{'z':>7}{'speed-up':>10}" if lu else "")
    )
    for r in rows:
        line = (
            f"{r['model']:<13}{r['layer']:<22}{len(r['units']):>6}{r['volviz_s_per_unit']:>14.2f}"
            f"{r['volviz_median_z']:>7.2f}"
        )
        if lu:
            line += f"{r['lucent_s_per_unit']:>15.2f}{r['lucent_median_z']:>7.2f}{r['speedup']:>9.1f}x"
        print(line)
    out = (
        pathlib.Path(a.out)
        if a.out
        else ROOT / "benchmarks" / "results" / ("actmax_vs_lucent.json" if a.part == "lucent" else "actmax_cpu224.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"part": a.part, "env": env, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


def _lucent_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("torch-lucent")
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    raise SystemExit(main())
