"""The helper meshes around a layer volume: orthogonal slices through it and the separators
between channel clusters.

Both are plain functions of the volume's grid, so a :class:`~volviz.views.volume.LayerVolumeScene`
can rebuild them and copy the result into the meshes its actors already show (the actors are
never replaced).
"""

from __future__ import annotations

import numpy as np
import pyvista as pv

from .volume_style import SCALARS

__all__ = ["slices_mesh", "separators_mesh"]


def slices_mesh(grid: pv.ImageData, dims: tuple[int, int, int], positions) -> pv.PolyData:
    """Opaque orthogonal slices through voxel centres of ``grid`` (dimensions ``dims``) at the
    fractions ``positions`` (x, y, z in [0, 1], ``None`` skips that axis)."""
    out = pv.PolyData()
    pieces = []
    for axis, frac in enumerate(positions):
        if frac is None:
            continue
        idx = int(round(min(max(float(frac), 0.0), 1.0) * (dims[axis] - 1)))
        voi = [0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1]
        voi[2 * axis] = voi[2 * axis + 1] = idx
        sub = grid.extract_subset(voi, rebase_coordinates=False)
        pieces.append(sub.extract_surface(pass_pointid=False, pass_cellid=False, algorithm="dataset_surface"))
    if pieces:
        out = pieces[0].append_polydata(*pieces[1:]) if len(pieces) > 1 else pieces[0]
    if out.n_points == 0:  # keep a valid (empty) scalar array for the mapper
        out = pv.PolyData(np.zeros((1, 3)))
        out.point_data[SCALARS] = np.zeros(1, np.float32)
    return out


def separators_mesh(grid: pv.ImageData, boundaries: np.ndarray, color, opacity: float) -> pv.PolyData:
    """All separators as one mesh: between stack positions ``b-1`` and ``b`` a faint plane
    (``opacity``) with an opaque frame, a little larger than the maps so it also shows as a
    bright line on the sides of the stack. Colours are per-cell RGBA."""
    if boundaries.size == 0:
        empty = pv.PolyData(np.zeros((1, 3)), verts=np.array([1, 0]))
        empty.cell_data["rgba"] = np.zeros((1, 4), np.uint8)
        return empty
    x0, x1, y0, y1, _, _ = grid.bounds
    m = 0.04 * max(x1 - x0, y1 - y0, 1.0)
    dz = grid.spacing[2]
    pts, faces, lines = [], [], []
    for k, b in enumerate(boundaries):
        z = (float(b) - 0.5) * dz
        pts += [(x0 - m, y0 - m, z), (x1 + m, y0 - m, z), (x1 + m, y1 + m, z), (x0 - m, y1 + m, z)]
        i = 4 * k
        faces += [4, i, i + 1, i + 2, i + 3]
        lines += [5, i, i + 1, i + 2, i + 3, i]
    mesh = pv.PolyData(np.array(pts, float), faces=np.array(faces), lines=np.array(lines))
    rgb = np.round(np.array(pv.Color(color).float_rgb) * 255)
    fill_a = round(255 * min(max(opacity, 0.0), 1.0))
    n = boundaries.size  # VTK cell order: lines first, then polygons
    rgba = np.empty((2 * n, 4), np.uint8)
    rgba[:, :3] = rgb
    rgba[:n, 3] = 255
    rgba[n:, 3] = fill_a
    mesh.cell_data["rgba"] = rgba
    return mesh
