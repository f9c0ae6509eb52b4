"""2-D views: a layer's maps as a near-square mosaic (Caffe's ``vis_square``), an FC layer's
activations as a grid, colormapping to RGB and PNG output.

Pure numpy (+ matplotlib colormaps, imageio for PNG). Empty cells and the gaps between tiles are
``NaN`` by default; :func:`to_rgb` paints ``NaN`` in ``nan_color`` (white, like Caffe's padding).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .colors import DEFAULT_CMAP, get_cmap

__all__ = [
    "near_square_grid",
    "neuron_grid",
    "save_png",
    "tile_mosaic",
    "to_rgb",
    "vis_square",
]


def near_square_grid(n: int, max_aspect: float = 2.0) -> tuple[int, int]:
    """``(rows, cols)`` for laying out ``n`` items: ``rows * cols >= n``, ``rows <= cols``.

    An exact factorization ``rows * cols == n`` (no empty cells) is used when its aspect
    ``cols / rows`` is at most ``max_aspect``, the most square one first; otherwise
    ``cols = ceil(sqrt(n))``, ``rows = ceil(n / cols)`` (fewer than ``cols`` empty cells).

    Examples
    --------
    >>> near_square_grid(96), near_square_grid(20), near_square_grid(500), near_square_grid(97)
    ((8, 12), (4, 5), (20, 25), (10, 10))
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"need n >= 1, got {n}")
    for rows in range(math.isqrt(n), 0, -1):
        if n % rows == 0:
            if (n // rows) / rows <= max_aspect:
                return rows, n // rows
            break  # smaller divisors are only less square
    cols = math.isqrt(n - 1) + 1 if n > 1 else 1  # ceil(sqrt(n))
    return -(-n // cols), cols


def tile_mosaic(
    tiles: np.ndarray,
    rows: int | None = None,
    cols: int | None = None,
    gap: int = 1,
    fill: float = np.nan,
) -> np.ndarray:
    """Lay out ``tiles (N, h, w[, 3])`` row-major on a ``rows x cols`` grid.

    Tile ``i`` goes to grid cell ``(i // cols, i % cols)``, i.e. its top-left pixel is at
    ``((i // cols) * (h + gap), (i % cols) * (w + gap))``. Gaps lie only *between* tiles (no
    border); gaps and empty cells hold ``fill``. Output shape:
    ``(rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap[, 3])``, dtype float32.
    """
    tiles = np.asarray(tiles)
    if tiles.ndim not in (3, 4):
        raise ValueError(f"tiles must be (N, h, w) or (N, h, w, 3), got shape {tiles.shape}")
    n, h, w = tiles.shape[:3]
    if rows is None or cols is None:
        r, c = near_square_grid(max(n, 1))
        rows = r if rows is None else rows
        cols = c if cols is None else cols
        if rows * cols < n:  # one of them was given: grow the other
            if rows == r:
                rows = -(-n // cols)
            else:
                cols = -(-n // rows)
    if rows * cols < n:
        raise ValueError(f"a {rows} x {cols} grid cannot hold {n} tiles")
    extra = tiles.shape[3:]
    out = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap) + extra, fill, np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = r * (h + gap), c * (w + gap)
        out[y : y + h, x : x + w] = tiles[i]
    return out


def _normalize(maps: np.ndarray, how) -> np.ndarray:
    maps = maps.astype(np.float32, copy=True)
    if how is None or how == "none":
        return maps
    if how == "global":
        groups = [maps]
    elif how == "per_map":
        groups = list(maps)
    else:
        raise ValueError(f"normalize must be 'global', 'per_map' or None, got {how!r}")
    for g in groups:  # views into maps: normalized in place
        fin = np.isfinite(g)
        if not fin.any():
            continue
        lo, hi = float(g[fin].min()), float(g[fin].max())
        g -= lo
        if hi > lo:
            g /= hi - lo
    return maps


def vis_square(
    maps: np.ndarray,
    padding: int = 1,
    pad_value: float = np.nan,
    normalize: str | None = "global",
    rows: int | None = None,
    cols: int | None = None,
) -> np.ndarray:
    """A layer's maps ``(C, H, W)`` (or RGB filters ``(C, H, W, 3)``) as one near-square image.

    [Tamari2017]'s / Caffe's ``vis_square``: normalize, then tile row-major on
    :func:`near_square_grid` ``(C)`` with ``padding`` pixels between tiles (no outer border, unlike
    Caffe). ``normalize="global"`` maps the min..max of all maps to 0..1 (maps stay comparable),
    ``"per_map"`` each map separately (shows the pattern of weak maps), ``None`` keeps values.
    Padding and empty cells hold ``pad_value`` (``NaN``: painted white by :func:`to_rgb`).

    Returns
    -------
    numpy.ndarray
        float32 ``(rows*H + (rows-1)*padding, cols*W + (cols-1)*padding[, 3])``.
    """
    maps = np.asarray(maps)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim not in (3, 4) or (maps.ndim == 4 and maps.shape[3] not in (3, 4)):
        raise ValueError(f"maps must be (C, H, W) or (C, H, W, 3), got shape {maps.shape}")
    if maps.shape[0] == 0:
        raise ValueError("no maps to show")
    return tile_mosaic(_normalize(maps, normalize), rows, cols, gap=int(padding), fill=pad_value)


def neuron_grid(vec: np.ndarray, cols: int | None = None, fill: float = np.nan) -> np.ndarray:
    """A linear layer's activations ``(N,)`` as a near-square 2-D grid (row-major, no gaps).

    Neuron ``j`` lands at ``(j // cols, j % cols)``; the unused cells of the last row hold
    ``fill``. ``cols`` defaults to :func:`near_square_grid` ``(N)``.
    """
    v = np.asarray(vec, dtype=np.float32).ravel()
    if v.size == 0:
        raise ValueError("empty vector")
    if cols is None:
        rows, cols = near_square_grid(v.size)
    else:
        rows = -(-v.size // int(cols))
    out = np.full(rows * cols, fill, np.float32)
    out[: v.size] = v
    return out.reshape(rows, cols)


def to_rgb(
    array2d: np.ndarray,
    cmap=DEFAULT_CMAP,
    clim: tuple[float, float] | None = None,
    nan_color=(255, 255, 255),
) -> np.ndarray:
    """Colormap a 2-D array to ``uint8 (H, W, 3)``.

    ``clim=None`` uses the finite min..max; values outside ``clim`` are clamped. ``NaN`` (gaps,
    empty cells) becomes ``nan_color``; ``+inf`` / ``-inf`` the top / bottom colour. An
    ``(H, W, 3)`` input is taken as RGB already in ``clim`` (default 0..1) and only scaled.
    """
    a = np.asarray(array2d, dtype=np.float64)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        a = a[..., :3]
        nan = np.isnan(a).any(axis=2)
        lo, hi = clim if clim is not None else (0.0, 1.0)
        t = np.clip((np.nan_to_num(a, nan=lo) - lo) / ((hi - lo) or 1.0), 0.0, 1.0)
        rgb = np.round(t * 255).astype(np.uint8)
    elif a.ndim == 2:
        nan = np.isnan(a)
        fin = np.isfinite(a)
        if clim is None:
            lo, hi = (float(a[fin].min()), float(a[fin].max())) if fin.any() else (0.0, 1.0)
        else:
            lo, hi = float(clim[0]), float(clim[1])
        t = (np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo) - lo) / (hi - lo) if hi > lo else None
        if t is None:  # constant image: middle colour
            t = np.full(a.shape, 0.5)
        lut = np.round(np.asarray(get_cmap(cmap)(np.linspace(0, 1, 256)))[:, :3] * 255)
        rgb = lut.astype(np.uint8)[np.round(np.clip(t, 0.0, 1.0) * 255).astype(np.intp)]
    else:
        raise ValueError(f"expected a 2-D array (or H x W x 3), got shape {a.shape}")
    rgb[nan] = np.asarray(nan_color, dtype=np.uint8)
    return rgb


def save_png(path: str | os.PathLike, rgb: np.ndarray, scale: int | None = None, min_size: int = 512) -> Path:
    """Write ``uint8 (H, W[, 3])`` to a PNG, enlarged by an integer nearest-neighbour ``scale``.

    ``scale=None`` picks the smallest integer making the longer side ``>= min_size`` (small maps,
    e.g. 28 x 28, stay visible and their pixels stay sharp). Parent folders are created.
    """
    import imageio.v3 as iio

    img = np.asarray(rgb)
    if img.dtype != np.uint8:
        raise TypeError(f"save_png needs uint8 pixels (use to_rgb), got {img.dtype}")
    if scale is None:
        scale = max(1, -(-int(min_size) // max(img.shape[:2])))
    scale = int(scale)
    if scale > 1:
        img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, img, extension=".png")
    return path
