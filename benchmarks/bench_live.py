"""Live input: latency from a frame arriving at the server (its state key set, as the page sets
it) to the dashboard's updated picture in the state (decoded, preprocessed, run, every panel
drawn, PNG-encoded), on the session's event loop with the frame pipeline the app uses.

Two models: the embedded digits LeNet (28 px, grey) and a torchvision resnet18 with random
weights at 112 px (RGB); both views (generic: input, crop, bars, two conv grids, an FC grid;
FC-only: sorted neurons). Frames are 160x120 JPEG data URLs made from the digits test images,
sent one after another (each when the last picture is in: latency, not throughput). Also a
breakdown of one frame's stages (decode / model / compose / PNG) as shares of the whole.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_live.py [--frames 40]

Writes benchmarks/results/live-cpu.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
import uuid

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from machine import cpu_name  # noqa: E402  (benchmarks/ is on sys.path when run)
from PIL import Image  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results"
DIGITS = ROOT / "data" / "digits" / "test"
MODELS = {"digits LeNet 28 px": [], "resnet18 112 px (random weights)": ["--model", "resnet18", "--size", "112", "112"]}


def frames(n: int) -> list[str]:
    """``n`` webcam-like frames: a digit centred on a 160x120 black frame, as JPEG data URLs."""
    files = sorted(DIGITS.glob("*/*.png"))
    out = []
    for k in range(n):
        d = Image.open(files[(k * 37) % len(files)]).convert("RGB").resize((112, 112))
        frame = Image.new("RGB", (160, 120))
        frame.paste(d, (24, 4))
        buf = io.BytesIO()
        frame.save(buf, format="JPEG", quality=85)
        out.append(f"data:image/jpeg;n={k};base64," + base64.b64encode(buf.getvalue()).decode())
    return out


def make_store(root: pathlib.Path, args: list[str]) -> pathlib.Path:
    from volviz.cli import main

    imgs = root / "imgs"
    if not imgs.exists():
        for c in range(10):
            (imgs / str(c)).mkdir(parents=True)
            for f in sorted((DIGITS / str(c)).glob("*.png"))[:1]:
                shutil.copy(f, imgs / str(c) / f.name)
    out = root / f"store{len(list(root.glob('store*')))}"
    assert main(["capture", "--out", str(out), "--images", str(imgs), "--no-grads", *args]) == 0
    return out


def latency(store: pathlib.Path, view: str, urls: list[str], warm: int = 3) -> dict:
    from trame.app import get_server

    from volviz.app import dashboard_keys as K
    from volviz.app import state as S
    from volviz.app.explorer import Explorer

    server = get_server(f"bench-{uuid.uuid4().hex[:8]}", client_type="vue3")
    app = Explorer([str(store)], server=server, record_dir=store.parent / "rec", build_ui=False)
    app.state.ready()
    st = app.state
    st[S.APP_TAB], st[K.DB_VIEW] = "dashboard", view
    st.flush()
    got = []

    async def run():
        for k, url in enumerate(urls):
            shown = st[K.DB_SHOWN]
            t0 = time.perf_counter()
            st[K.LV_FRAME] = url
            st.flush()  # the handler runs: the frame has arrived
            while st[K.DB_SHOWN] == shown:
                await asyncio.sleep(0.0005)
            if k >= warm:
                got.append(time.perf_counter() - t0)

    asyncio.run(run())
    assert not st[K.DB_ERROR], st[K.DB_ERROR]
    app.close()
    ms = np.asarray(got) * 1000
    return {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)), "frames": len(ms)}


def stages(store: pathlib.Path, view: str, url: str, n: int = 15) -> dict:
    """Median seconds of each stage of one frame, measured one by one."""
    from volviz.app.dashboard_data import Dashboard
    from volviz.app.live import decode_frame
    from volviz.app.panels import png_data_url
    from volviz.store.store import Store
    from volviz.views.dashboard import compose

    st = Store.open(store)
    board = Dashboard(st, st.model().module)
    ch = board.defaults()
    ch.view = view
    t = {"decode": [], "model + frame": [], "compose": [], "png": []}
    for _ in range(n):
        t0 = time.perf_counter()
        rgb = decode_frame(url)
        t1 = time.perf_counter()
        frame = board.from_frame(rgb, ch, "bench")
        t2 = time.perf_counter()
        img = compose(frame)
        t3 = time.perf_counter()
        png_data_url(img, max_side=960)
        t4 = time.perf_counter()
        for key, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            t[key].append(dt)
    med = {k: statistics.median(v) for k, v in t.items()}
    total = sum(med.values())
    return {k: round(v / total, 3) for k, v in med.items()} | {"total_ms": round(total * 1000, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--out", default=str(RESULTS / "live-cpu.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    urls = frames(a.frames)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in MODELS.items():
            store = make_store(pathlib.Path(tmp), args)
            for view in ("generic", "fc"):
                r = latency(store, view, urls)
                r.update(model=name, view=view, stages=stages(store, view, urls[0]))
                rows.append(r)
                print(f"{name} {view}: median {r['median_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms", flush=True)
    out = {"machine": cpu_name(), "torch_threads": 1, "frame": "160x120 JPEG", "rows": rows}
    pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"\nmachine: {out['machine']}, 1 torch thread\n")
    print("| model | view | median ms | p95 ms | decode | model + frame | compose | PNG |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["stages"]
        print(
            f"| {r['model']} | {r['view']} | {r['median_ms']:.0f} | {r['p95_ms']:.0f} | {s['decode']:.0%} | "
            f"{s['model + frame']:.0%} | {s['compose']:.0%} | {s['png']:.0%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
