"""Issue 15 in the app: on a torchvision store (MobileNetV2, random weights, 64 px), rendering off
screen FIRST and then loading the model stack, in one process, must work: the app toggles the
saliency overlay and opens the Graph tab (its level-of-detail overview: one tile per layer), and
both show something. The process is a fresh one (a subprocess): in the test session torchvision is
usually imported already, which would hide the import-order crash (SIGSEGV) being tested."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("trame")

SCRIPT = textwrap.dedent("""
    import base64, io, os, sys, uuid
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import numpy as np
    from volviz.views import LayerVolumeScene
    first = LayerVolumeScene(np.random.default_rng(0).random((4, 8, 8)), window_size=(64, 48)).screenshot()
    assert first.std() > 0, "the first off-screen render is blank"

    import torch  # the model stack only now, after an EGL context exists
    torch.set_num_threads(1)
    import torchvision
    from PIL import Image
    from helpers import write_image_folder
    from volviz.cli import main

    root = sys.argv[1]
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), f"{root}/w.pth")
    imgs = write_image_folder(__import__("pathlib").Path(root) / "imgs", n_per_class=1, size=(64, 64), rgb=True)
    argv = ["capture", "--out", f"{root}/s", "--images", str(imgs), "--model", "mobilenet_v2", "--weights",
            f"{root}/w.pth", "--size", "64", "64", "--no-weight-grads"]
    assert main(argv) == 0

    from trame.app import get_server
    from volviz.app import state as S
    from volviz.app.explorer import Explorer

    app = Explorer([f"{root}/s"], server=get_server(f"tv-{uuid.uuid4().hex[:8]}", client_type="vue3"),
                   record_dir=f"{root}/rec", window_size=(160, 120))
    app.state.ready()
    png = lambda url: np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
    plain = png(app.state["p0_input"])
    app.state[S.SAL_ON] = True
    app.state.flush()
    note, sal = app.state["p0_sal_note"], png(app.state["p0_input"])
    assert "saliency map" in note and "unavailable" not in note, note
    assert sal.shape == plain.shape and np.abs(sal.astype(int) - plain).mean() > 1, "saliency changed nothing"

    app.state[S.APP_TAB] = "graph"
    app.state.flush()
    g = app.tabs["graph"]
    assert g.scene is not None, app.state[S.G_NOTE]
    shot = g.scene.screenshot()
    print("LOD", g.scene.lod, "std", round(float(shot.std()), 1), "layers", len(app.state[S.G_LAYERS]))
    assert g.scene.lod == "layers" and shot.std() > 5, "blank graph overview"
    app.close()
    print("OK")
""")


def test_app_on_torchvision_store_after_rendering(tmp_path, can_render):
    tests = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests.parent), str(tests)]), OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=600, env=env
    )
    assert r.returncode == 0, f"exit {r.returncode} (139 = segfault)\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert "OK" in r.stdout and "LOD layers" in r.stdout
