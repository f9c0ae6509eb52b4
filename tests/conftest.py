"""Shared test setup: headless VTK (EGL), one torch thread, a folder for rendered images."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# before anything imports vtk: off-screen EGL, no X-server probing
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(_ROOT))

try:  # 2-core machines: torch's default threads fight the renderer (see ENV.md)
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - the views tests need no torch
    pass

import pytest


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """A folder for files a test writes (PNGs, movies); set VOLVIZ_TEST_OUT to keep them."""
    keep = os.environ.get("VOLVIZ_TEST_OUT")
    if keep:
        d = Path(keep)
        d.mkdir(parents=True, exist_ok=True)
        return d
    return tmp_path


@pytest.fixture(scope="session")
def can_render() -> None:
    """Skip a test when this machine cannot render off screen (probed in a subprocess)."""
    from volviz.views import rendering_available

    ok, msg = rendering_available()
    if not ok:
        if os.environ.get("CI"):  # CI machines are known to render: never hide a breakage
            pytest.fail(msg)
        pytest.skip(msg)
