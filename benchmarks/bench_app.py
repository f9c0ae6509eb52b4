"""Server-side cost of one time-slider step in the explorer vs a full scene rebuild.

    python benchmarks/bench_app.py                    # default store (stores/digits, captured if
                                                      # missing) + a synthetic 64 x 112 x 112 layer
    python benchmarks/bench_app.py --store S --layers conv1 conv2 --steps 20 --size 800 600

step     what the app does when the slider moves one image: read the one chunk (cache cold: the
         prefetcher disabled), ``scene.update()`` in place, captions + input image + the visible
         2-D panel (PNG-encoded), then one render of the view (as the remote view's image push
         does before JPEG encoding).
rebuild  what a naive app would do instead: read the chunk, drop the scene and build a new
         LayerVolumeScene in the same window, render.
fast     the step as the served app renders it while the slider moves or plays (ray-cast image
         sample distance 2: a quarter of the rays), refined to full quality 0.3 s after the last step.
app      the app's whole step (``show_position``: also captions, the input image and the visible
         2-D panel as PNGs), cold cache, and with the prefetcher ahead (the normal case when playing).

Writes benchmarks/results/app-cpu.json and prints a Markdown table (median of --steps steps).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
import uuid

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results"
SYNTH_SHAPE = (64, 112, 112)


def synthetic_net() -> nn.Module:
    """A conv layer with 64 smooth 5x5 filters on a 112 x 112 grey input (then a small head)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, SYNTH_SHAPE[0], 5, padding=2)
    head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(SYNTH_SHAPE[0] * 16, 10))
    return nn.Sequential(conv, head)


def synthetic_store(root: pathlib.Path, n_images: int) -> pathlib.Path:
    """Capture :func:`synthetic_net` on smooth random images: one 64 x 112 x 112 conv layer."""
    import imageio.v3 as iio
    from scipy.ndimage import gaussian_filter

    from volviz.store.capture import CaptureSettings, run_capture

    rng = np.random.default_rng(0)
    imgs = root / "imgs" / "x"
    imgs.mkdir(parents=True)
    for i in range(n_images):
        a = gaussian_filter(rng.random(SYNTH_SHAPE[1:]), 4)
        a = (a - a.min()) / (a.max() - a.min())
        iio.imwrite(imgs / f"{i:03d}.png", (a * 255).astype(np.uint8))
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    s = CaptureSettings(
        model="bench_app:synthetic_net",
        images=[str(imgs.parent)],
        layers=["0"],
        size=SYNTH_SHAPE[1:],
        channels=1,
        gradients=False,
    )
    return run_capture(root / "synthetic", s).path


def _render(pane) -> None:
    pane.plotter.ren_win.Render()  # what the remote view's image push does before JPEG encoding


def bench_layer(store_path: str, layer: str, steps: int, size: tuple[int, int]) -> dict:
    from trame.app import get_server

    from volviz.app import state as S
    from volviz.app.explorer import Explorer
    from volviz.views.volume import LayerVolumeScene

    app = Explorer(
        [store_path],
        server=get_server(f"bench-{uuid.uuid4().hex[:6]}", client_type="vue3"),
        record_dir=tempfile.mkdtemp(prefix="volviz-bench-rec-"),
        window_size=size,
        build_ui=False,
    )
    app.state.ready()
    pane = app.panes[0]
    app.state[pk("layer")] = layer
    app.state.flush()
    assert pane.layer == layer, app.state[pk("error")]
    pane.scene.screenshot()  # the first render initializes the window
    schedule = app.volume.prefetcher.schedule
    app.volume.prefetcher.schedule = lambda jobs: None
    n = min(steps, int(app.state[S.T_MAX]))
    step, upd, rend, rebuild, full, warm = [], [], [], [], [], []
    for k in range(1, n + 1):
        image = pane.image_at(k)
        # step: read the one chunk (cold cache), update the scalars in place, render
        app.volume.cache.clear()
        t0 = time.perf_counter()
        lv = app.volume.load(pane, image)
        pane.scene.update(lv.volume)
        if not np.array_equal(lv.order, pane.scene.order):
            pane.scene.set_order(lv.order, lv.boundaries)
        t1 = time.perf_counter()
        _render(pane)
        t2 = time.perf_counter()
        step.append(t2 - t0)
        upd.append(t1 - t0)
        rend.append(t2 - t1)
        # rebuild: read + a new scene in the same window + render
        app.volume.cache.clear()
        t0 = time.perf_counter()
        lv = app.volume.load(pane, image)
        style, title = pane.scene.style, pane.scene.title_text
        pane.scene.close()
        pane.scene = LayerVolumeScene(lv.volume, lv.order, lv.boundaries, style, title, plotter=pane.plotter)
        _render(pane)
        rebuild.append(time.perf_counter() - t0)
    # the same step rendered as the served app does while the slider moves (coarser rays,
    # refined to full quality REFINE_AFTER_S after the last step)
    fast = []
    app.volume.set_step_quality(pane, True)
    for k in range(1, n + 1):
        app.volume.cache.clear()
        t0 = time.perf_counter()
        lv = app.volume.load(pane, pane.image_at(k))
        pane.scene.update(lv.volume)
        _render(pane)
        fast.append(time.perf_counter() - t0)
    app.volume.set_step_quality(pane, False)
    # the app's whole step (3-D + captions, input image, visible 2-D panel), cold and prefetched
    for k in range(1, n + 1):
        app.volume.cache.clear()
        t0 = time.perf_counter()
        app.volume.show_position(k)
        _render(pane)
        full.append(time.perf_counter() - t0)
    app.volume.prefetcher.schedule = schedule
    app.volume.show_position(0)
    for k in range(1, n + 1):
        app.volume.prefetcher.wait()
        t0 = time.perf_counter()
        app.volume.show_position(k)
        _render(pane)
        warm.append(time.perf_counter() - t0)
    shape = list(pane.scene.shape)
    app.close()
    med = lambda xs: statistics.median(xs) * 1e3
    return {
        "store": str(store_path),
        "layer": layer,
        "shape": shape,
        "window": list(size),
        "steps": n,
        "step_ms": med(step),
        "step_read_update_ms": med(upd),
        "step_render_ms": med(rend),
        "rebuild_ms": med(rebuild),
        "step_over_rebuild": statistics.median(step) / statistics.median(rebuild),
        "fast_step_ms": med(fast),
        "fast_step_over_rebuild": statistics.median(fast) / statistics.median(rebuild),
        "app_step_ms": med(full),
        "app_step_prefetched_ms": med(warm),
    }


def pk(field: str) -> str:
    from volviz.app.state import pane_key

    return pane_key(0, field)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="stores/digits", help="default-model store (captured if missing)")
    ap.add_argument("--layers", nargs="+", default=["conv1", "conv2"])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--size", nargs=2, type=int, default=(800, 600), metavar=("W", "H"))
    ap.add_argument("--no-synthetic", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "app-cpu.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    from volviz.app.server import ensure_default_store

    store = str(ensure_default_store(a.store))
    rows = [bench_layer(store, layer, a.steps, tuple(a.size)) for layer in a.layers]
    if not a.no_synthetic:
        with tempfile.TemporaryDirectory(prefix="volviz-bench-") as tmp:
            synth = synthetic_store(pathlib.Path(tmp), a.steps + 1)
            rows.append(bench_layer(str(synth), "0", a.steps, tuple(a.size)) | {"store": "synthetic"})
    out = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": 1,
            "renderer": "VTK off-screen (EGL) " + _gl_renderer(),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        },
        "rows": rows,
    }
    pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(a.out).write_text(json.dumps(out, indent=1))
    print(
        "| layer | shape | step: read + update + render | rebuild | step / rebuild "
        "| step while moving (coarse rays) | app step (+ 2-D panels) | prefetched |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        name = f"{pathlib.Path(r['store']).name}:{r['layer']}"
        print(
            f"| {name} | {'x'.join(map(str, r['shape']))} | {r['step_ms']:.1f} ms "
            f"({r['step_read_update_ms']:.1f} + {r['step_render_ms']:.1f}) | {r['rebuild_ms']:.1f} ms "
            f"| {r['step_over_rebuild']:.2f} | {r['fast_step_ms']:.1f} ms ({r['fast_step_over_rebuild']:.2f}) "
            f"| {r['app_step_ms']:.1f} ms | {r['app_step_prefetched_ms']:.1f} ms |"
        )
    print(f"wrote {a.out}")
    return 0


def _gl_renderer() -> str:
    try:
        import pyvista as pv

        p = pv.Plotter(off_screen=True, window_size=(16, 16))
        p.screenshot(return_img=True)
        info = p.ren_win.ReportCapabilities()
        p.close()
        for line in info.splitlines():
            if "OpenGL renderer string" in line:
                return line.split(":", 1)[1].strip()
    except Exception:  # noqa: BLE001
        pass
    return "?"


if __name__ == "__main__":
    sys.exit(main())
