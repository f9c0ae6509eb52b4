"""The dataset view: how its passes scale with the number of images, and what they hold in memory.

  synthetic  planted clusters (N x D float32, 10 classes): streamed PCA, t-SNE (scikit-learn
             Barnes-Hut up to 5,000 images, openTSNE FFT above), UMAP, exact all-images k-NN
             (chunked brute force) against pynndescent (time and recall); the neighbour class
             share says whether the clusters came back
  store      the digits LeNet on 1,000 images (its 200 shipped test digits, five copies each):
             descriptors, top-9 of every conv2 unit with receptive-field crops, diagnose; the
             tracemalloc peak of the streamed passes against the size of the layer's activations

    python benchmarks/bench_dataset.py                          # N = 2000, 20000; D = 256
    python benchmarks/bench_dataset.py --sizes 2000 --skip-store
Writes benchmarks/results/dataset-cpu.json and prints a Markdown table. One torch / numba thread.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import tempfile
import time
import tracemalloc

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from machine import cpu_name  # noqa: E402  (benchmarks/ is on sys.path when run)

RESULTS = pathlib.Path(__file__).parent / "results"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def clusters(n: int, d: int, k: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (k, d)) * 3
    y = rng.integers(0, k, n)
    return (centres[y] + rng.normal(0, 1, (n, d))).astype(np.float32), y


def synthetic(n: int, d: int, methods: list[str]) -> dict:
    from volviz.analysis.dataset.embedding import embed
    from volviz.analysis.dataset.neighbours import brute_neighbours, class_share, nearest

    x, y = clusters(n, d)
    row = {"n": n, "d": d}
    for m in methods:
        coords, t = timed(lambda: embed(x, m, 2))
        idx, _ = brute_neighbours(coords, 10, metric="euclidean")
        row[f"{m}_s"], row[f"{m}_share"] = round(t, 2), round(float(class_share(idx, y).mean()), 3)
    (exact, _), t = timed(lambda: brute_neighbours(x, 16))
    row["knn_brute_s"] = round(t, 2)
    nearest(x[:200], 16, method="approx")  # numba compiles pynndescent on first use: not timed
    (approx, _), t = timed(lambda: nearest(x, 16, method="approx"))
    row["knn_approx_s"] = round(t, 2)
    row["knn_approx_recall"] = round(float(np.mean([len(set(a) & set(b)) / 16 for a, b in zip(exact, approx)])), 3)
    return row


def store_part(tmp: pathlib.Path, repeat: int = 5) -> dict:
    import torch

    torch.set_num_threads(1)
    from volviz.analysis.dataset import descriptors as D
    from volviz.analysis.dataset.diagnostics import diagnose
    from volviz.analysis.dataset.embedding import embed_store
    from volviz.analysis.dataset.topk import top_examples, unit_crops
    from volviz.sources.demo import demo_images_dir
    from volviz.store.capture import CaptureSettings, run_capture

    images = tmp / "digits"
    for f in sorted(demo_images_dir("digits").glob("*/*.png")):  # the 200 shipped digits, `repeat` copies each
        (images / f.parent.name).mkdir(parents=True, exist_ok=True)
        for k in range(repeat):
            shutil.copy(f, images / f.parent.name / f"{f.stem}_{k}.png")
    settings = CaptureSettings(images=[str(images)], gradients=False)
    st, t_cap = timed(lambda: run_capture(tmp / "s", settings, progress=False))
    model = st.model().module.eval()
    n = int(st.done.sum())
    out = {"images": n, "capture_s": round(t_cap, 1)}
    for layer in ("conv1", "conv2", "fc1"):
        act_mb = n * int(np.prod(st.layers[layer].act_shape)) * 4 / 2**20
        tracemalloc.start()
        _, t = timed(lambda: top_examples(st, layer, 9, batch=64))
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        out[layer] = {"activations_mb": round(act_mb, 1), "topk_s": round(t, 2), "topk_peak_mb": round(peak, 1)}
        tracemalloc.start()
        _, t = timed(lambda: D.descriptors(st, layer, pool="mean", batch=64))
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        out[layer].update(descriptors_s=round(t, 2), descriptors_peak_mb=round(peak, 1))
        tracemalloc.stop()
    for m in ("pca", "tsne", "umap"):
        _, out[f"embed_fc1_{m}_s"] = timed(lambda: embed_store(st, "fc1", m))
    top = top_examples(st, "conv2", 9)
    _, t = timed(lambda: unit_crops(st, model, top))
    out["crops_conv2_all_units_s"] = round(t, 2)
    _, t = timed(lambda: diagnose(st, model))
    out["diagnose_s"] = round(t, 2)
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--methods", nargs="+", default=["pca", "tsne", "umap"])
    ap.add_argument("--skip-store", action="store_true")
    a = ap.parse_args()
    rows = []
    for n in a.sizes:
        rows.append(synthetic(n, a.dim, a.methods))
        print(rows[-1], flush=True)
    store = None
    if not a.skip_store:
        with tempfile.TemporaryDirectory() as tmp:
            store = store_part(pathlib.Path(tmp))
        print(store, flush=True)
    result = {
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "synthetic": rows,
        "store": store,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dataset-cpu.json").write_text(json.dumps(result, indent=1))
    cols = (
        ["n"]
        + [c for m in a.methods for c in (f"{m}_s", f"{m}_share")]
        + ["knn_brute_s", "knn_approx_s", "knn_approx_recall"]
    )
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
