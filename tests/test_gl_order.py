"""Rendering off screen and THEN running a torchvision model in the same process must work (triton
imported after an EGL context segfaults; volviz.views imports it first)."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import numpy as np
    from volviz.views import LayerVolumeScene
    scene = LayerVolumeScene(np.random.default_rng(0).random((4, 8, 8)), window_size=(64, 48))
    img = scene.screenshot()
    assert img.std() > 0
    import torch, torchvision.models
    torch.set_num_threads(1)
    out = torchvision.models.mobilenet_v2(num_classes=3).eval()(torch.zeros(1, 3, 32, 32))
    print("OK", tuple(out.shape))
""")


def test_render_then_torchvision_in_one_process(can_render):
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=os.getcwd()),
    )
    assert r.returncode == 0, f"exit {r.returncode} (139 = segfault)\n{r.stderr[-2000:]}"
    assert "OK (1, 3)" in r.stdout
