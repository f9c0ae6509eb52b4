"""Can this machine render off screen? Asked once, in a subprocess.

Without EGL or OSMesa, VTK segfaults instead of raising, so the question cannot be asked in the
process that would render: commands and the app ask here before they make a scene.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

__all__ = ["rendering_available"]

_PROBE = """
import os
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
import numpy as np, pyvista as pv
p = pv.Plotter(off_screen=True, window_size=(64, 48))
p.add_mesh(pv.Sphere())
img = p.screenshot(return_img=True)
p.close()
print("ok", img.shape, float(np.asarray(img).std()))
"""


@functools.lru_cache(maxsize=1)
def rendering_available(timeout: float = 120.0) -> tuple[bool, str]:
    """Probe off-screen rendering in a subprocess (without EGL or OSMesa, VTK segfaults
    instead of raising). Returns ``(ok, message)``; cached per process."""
    env = dict(os.environ)
    env.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return False, f"off-screen rendering probe timed out after {timeout} s"
    if r.returncode == 0 and r.stdout.startswith("ok"):
        return True, r.stdout.strip()
    tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
    return False, (
        f"off-screen rendering failed (exit {r.returncode}): {' | '.join(tail)}. "
        "Needs EGL (Mesa) or OSMesa; set VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow"
    )
