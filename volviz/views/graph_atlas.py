"""Arrays behind the graph scenes: which edges to draw, thumbnails as uint8 tiles, texture atlases
and quad meshes. Numpy (and pyvista meshes); no actors.
"""

from __future__ import annotations

import math

import numpy as np
import pyvista as pv

from .graph_layout import DEPTH_AXIS, U_AXIS, V_AXIS, GraphLayout

__all__ = [
    "edge_arrays",
    "fit_tile",
    "thumbnails_to_uint8",
    "channel_tiles",
    "make_atlas",
    "quads",
    "layer_edges",
    "layer_mosaic",
    "arc",
    "polylines",
]


def edge_arrays(graph, layout: GraphLayout, edges_per_node: int | None = None, max_edges: int | None = None):
    """``(src_index, dst_index, t)`` of the edges to draw: global unit indices into
    ``layout.all_positions()`` and the weight scaled to ``0..1`` between the weakest and the
    strongest kept edge into the target's layer (weights of different layers differ in scale),
    sorted weak first."""
    off = layout.offsets()
    rows = [
        (off[u[0]] + u[1], off[v[0]] + v[1], w, v[0])
        for u, v, w in graph.edges(data="weight")
        if u[0] in off and v[0] in off
    ]
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    src = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    dst = np.fromiter((r[1] for r in rows), np.int64, len(rows))
    w = np.fromiter((r[2] for r in rows), np.float64, len(rows))
    lay = np.fromiter((layout.offsets()[r[3]] for r in rows), np.int64, len(rows))
    t = np.zeros(len(rows), np.float32)
    for key in np.unique(lay):  # min..max of the kept edges into each layer -> 0..1
        m = lay == key
        lo, hi = float(w[m].min()), float(w[m].max())
        t[m] = (w[m] - lo) / (hi - lo) if hi > lo else 1.0
    if edges_per_node is not None:
        order = np.lexsort((-t, dst))  # by target, strongest first
        d = dst[order]
        first = np.r_[True, d[1:] != d[:-1]]
        start = np.maximum.accumulate(np.where(first, np.arange(len(d)), 0))
        keep = order[(np.arange(len(d)) - start) < edges_per_node]
        src, dst, t = src[keep], dst[keep], t[keep]
    order = np.argsort(t, kind="stable")
    if max_edges is not None and len(order) > max_edges:
        order = order[len(order) - max_edges :]  # the strongest (relative to their layer)
    return src[order], dst[order], t[order]


def _fit_tile(img: np.ndarray, px: int) -> np.ndarray:
    """uint8 (h, w, 3) -> (px, px, 3): box-average down by an integer factor, then nearest."""
    h, w = img.shape[:2]
    f = max(1, min(h, w) // px)
    if f > 1:
        hh, ww = (h // f) * f, (w // f) * f
        img = img[:hh, :ww].reshape(hh // f, f, ww // f, f, -1).mean(axis=(1, 3))
        h, w = img.shape[:2]
    yi = np.minimum((np.arange(px) * h) // px, h - 1)
    xi = np.minimum((np.arange(px) * w) // px, w - 1)
    return np.asarray(img[yi][:, xi], dtype=np.uint8)


def thumbnails_to_uint8(images: np.ndarray) -> np.ndarray:
    """Preferred inputs ``(n, C, H, W)`` (any range) -> ``uint8 (n, H, W, 3)``.

    Values already in ``[0, 1]`` are kept (they are pixels); otherwise each image is stretched
    to its own 1st..99th percentile. Grey (C = 1) is repeated to RGB; more than 3 channels
    show the first 3.
    """
    a = np.asarray(images, dtype=np.float32)
    if a.ndim != 4:
        raise ValueError(f"thumbnails must be (n, C, H, W), got shape {a.shape}")
    a = np.nan_to_num(a)
    if a.min() < 0 or a.max() > 1:
        lo = np.percentile(a, 1, axis=(1, 2, 3), keepdims=True)
        hi = np.percentile(a, 99, axis=(1, 2, 3), keepdims=True)
        a = np.clip((a - lo) / np.where(hi > lo, hi - lo, 1), 0, 1)
    if a.shape[1] == 1:
        a = np.repeat(a, 3, axis=1)
    elif a.shape[1] == 2:
        a = np.concatenate([a, a[:, :1]], axis=1)
    a = a[:, :3]
    return np.round(a.transpose(0, 2, 3, 1) * 255).astype(np.uint8)


def channel_tiles(image: np.ndarray) -> np.ndarray:
    """The current input image as one tile per channel: ``(C, H, W)`` in ``[0, 1]`` ->
    ``uint8 (C, H, W, 3)``; with 3 channels, channel c tinted red / green / blue ([PreferredInputs2016]'s
    input layer), otherwise grey."""
    x = np.clip(np.nan_to_num(np.asarray(image, np.float32)), 0, 1)
    if x.ndim == 2:
        x = x[None]
    c = x.shape[0]
    out = np.zeros((c, *x.shape[1:], 3), np.float32)
    for i in range(c):
        if c == 3:
            out[i, ..., i] = x[i]
        else:
            out[i] = x[i][..., None]
    return np.round(out * 255).astype(np.uint8)


def make_atlas(
    tiles: np.ndarray, px: int, grey: tuple[int, int, int] = (128, 128, 128), max_px: int = 4096
) -> tuple[np.ndarray, int, int, int]:
    """An atlas of ``n`` tiles (left half, near-square grid) and their grey copies (right half).

    Returns ``(atlas uint8 (rows*T, 2*cols*T, 3), rows, cols, T)``; tile ``j`` sits at grid
    ``divmod(j, cols)`` of the left half, its grey copy at the same place in the right half.
    """
    n = len(tiles)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    t = int(max(4, min(px, max_px // (2 * cols), max_px // rows)))
    atlas = np.zeros((rows * t, 2 * cols * t, 3), np.uint8)
    g = np.asarray(grey, np.float32)
    for j in range(n):
        r, c = divmod(j, cols)
        tile = _fit_tile(tiles[j], t)
        atlas[r * t : (r + 1) * t, c * t : (c + 1) * t] = tile
        lum = tile.astype(np.float32).mean(axis=2, keepdims=True)
        ghost = g + 0.18 * (lum - lum.mean())  # flat grey with a faint trace of the picture
        atlas[r * t : (r + 1) * t, (cols + c) * t : (cols + c + 1) * t] = np.clip(ghost, 0, 255).astype(np.uint8)
    return atlas, rows, cols, t


def _quads(centers: np.ndarray, half: float | np.ndarray, shift: np.ndarray | None = None) -> pv.PolyData:
    half = np.broadcast_to(np.asarray(half, float), (len(centers),))[:, None]
    c = centers if shift is None else centers + shift
    du, dv = U_AXIS[None] * half, V_AXIS[None] * half
    pts = np.stack([c - du - dv, c + du - dv, c + du + dv, c - du + dv], axis=1).reshape(-1, 3)
    n = len(centers)
    faces = np.column_stack([np.full(n, 4), np.arange(4 * n).reshape(n, 4)]).ravel()
    return pv.PolyData(pts, faces=faces)


# ------------------------------------------------------------------ the layer overview (graph_overview.py)
def layer_edges(graph, names: list[str]) -> list[tuple[int, int, float]]:
    """``(src, dst, share)`` per layer connection (indices into ``names``): the layers each layer
    reads from (its dataflow ``feeds_from``) and the share of the kept unit edges into ``dst``
    that come from ``src`` (1 when the graph kept none)."""
    idx = {n: i for i, n in enumerate(names)}
    pair: dict[tuple[str, str], float] = {}
    total: dict[str, float] = {}
    for u, v, w in graph.edges(data="weight"):
        pair[(u[0], v[0])] = pair.get((u[0], v[0]), 0.0) + float(w)
        total[v[0]] = total.get(v[0], 0.0) + float(w)
    out = []
    for d in graph.graph["layers"]:
        dst = d["name"]
        for src in d.get("feeds_from", []):
            if src in idx and dst in idx:
                share = pair.get((src, dst), 0.0) / total[dst] if total.get(dst) else 1.0
                out.append((idx[src], idx[dst], float(share)))
    return out


def layer_mosaic(
    thumbs: np.ndarray | None,
    units,
    px: int,
    fires=None,
    missing=(74, 79, 90),
    grey=(128, 128, 128),
    gap_color=(22, 24, 30),
) -> np.ndarray:
    """``uint8 (px, px, 3)``: the thumbnails of ``units`` on a near-square grid with 1-pixel gaps;
    units not firing (``fires[j]`` False) grey; without thumbnails a slate square per unit."""
    units = list(units)
    g = max(1, math.ceil(math.sqrt(len(units))))
    cell = max(2, (px - (g - 1)) // g)
    out = np.empty((px, px, 3), np.uint8)
    out[:] = gap_color
    off = (px - (g * cell + g - 1)) // 2
    for k, j in enumerate(units):
        r, c = divmod(k, g)
        y, x = off + r * (cell + 1), off + c * (cell + 1)
        if thumbs is None:
            tile = np.broadcast_to(np.asarray(missing, np.uint8), (cell, cell, 3))
        else:
            tile = fit_tile(thumbs[j], cell)
        if fires is not None and not fires[j]:
            lum = tile.astype(np.float32).mean(axis=2, keepdims=True)
            tile = np.clip(np.asarray(grey, np.float32) + 0.18 * (lum - lum.mean()), 0, 255).astype(np.uint8)
        out[y : y + cell, x : x + cell] = tile
    return out


def arc(a: np.ndarray, b: np.ndarray, bulge: float, n: int = 16) -> np.ndarray:
    """Points of a quadratic Bezier from ``a`` to ``b`` bowing ``bulge`` (world units) sideways in
    the tile plane (upwards for a horizontal chord)."""
    chord = b - a
    side = np.cross(DEPTH_AXIS, chord)
    if np.linalg.norm(side) < 1e-9:
        side = V_AXIS.copy()
    side = side / np.linalg.norm(side)
    if side @ V_AXIS < -1e-9 or (abs(side @ V_AXIS) < 1e-9 and side @ U_AXIS < 0):
        side = -side
    ctrl = (a + b) / 2 + side * bulge
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * a + 2 * (1 - t) * t * ctrl + t**2 * b


def polylines(polys: list[np.ndarray]) -> pv.PolyData | None:
    if not polys:
        return None
    pts = np.concatenate(polys)
    cells, k = [], 0
    for p in polys:
        cells += [len(p), *range(k, k + len(p))]
        k += len(p)
    return pv.PolyData(pts, lines=np.asarray(cells))


fit_tile = _fit_tile
quads = _quads
