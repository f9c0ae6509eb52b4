"""Arrays to volumes: a layer's maps, or a weight tensor's filters, as one ``(C, H, W)`` float32
stack in display order.

Pure numpy (no VTK), so code that only prepares the data of a volume (the app's prefetching,
the source view, tests) does not need a render context; :class:`~volviz.views.volume.
LayerVolumeScene` draws what these return.
"""

from __future__ import annotations

import numpy as np

from .grid import near_square_grid, tile_mosaic

__all__ = [
    "activation_volume",
    "array_volume",
    "as_volume",
    "bin_stack",
    "check_order",
    "stack_bin",
    "weight_volume",
    "MAX_SAMPLES",
]


def check_order(order, n: int) -> np.ndarray:
    """Validate a channel permutation of ``range(n)`` (``None`` = identity); return ``intp[n]``."""
    if order is None:
        return np.arange(n)
    o = np.asarray(order)
    if o.ndim != 1 or o.size != n or not np.issubdtype(o.dtype, np.integer):
        raise ValueError(f"order must be a permutation of range({n}), got shape {o.shape}, dtype {o.dtype}")
    if not np.array_equal(np.sort(o), np.arange(n)):
        raise ValueError(f"order must be a permutation of range({n})")
    return o.astype(np.intp)


def activation_volume(maps: np.ndarray, order=None) -> np.ndarray:
    """A layer's output maps ``(C, H, W)`` as a float32 volume, channels in ``order``.

    ``order[i]`` is the channel shown at position ``i`` (an orderer's ``order_``); ``None`` keeps
    the natural order. A linear layer's ``(N,)`` activations become ``(1, rows, cols)`` laid out
    by :func:`~volviz.views.grid.neuron_grid` with empty cells ``0``.
    """
    a = np.asarray(maps)
    if a.ndim == 1:
        from .grid import neuron_grid

        a = neuron_grid(a, fill=0.0)[None]  # 0, not NaN: no non-finite warning
    if a.ndim != 3:
        raise ValueError(f"maps must be (C, H, W), got shape {a.shape}")
    return np.ascontiguousarray(a[check_order(order, a.shape[0])], dtype=np.float32)


def weight_volume(w: np.ndarray, gap_value: float = 0.0) -> np.ndarray:
    """A weight (or weight-gradient) tensor as a volume ``(C_out, H', W')``, one slice per filter.

    * conv ``(C_out, C_in, kH, kW)``: slice ``o`` is a mosaic of the filter's ``C_in`` kernels on
      a :func:`~volviz.views.grid.near_square_grid` ``(C_in) = (rows, cols)`` grid, row-major,
      with 1-pixel gaps: kernel ``i`` covers rows ``r*(kH+1) .. r*(kH+1)+kH-1`` and columns
      ``c*(kW+1) .. c*(kW+1)+kW-1`` with ``(r, c) = divmod(i, cols)``.
      ``H' = rows*kH + rows-1``, ``W' = cols*kW + cols-1``.
    * conv1d ``(C_out, C_in, k)``: as conv with ``kH = 1``.
    * linear ``(N_out, N_in)``: slice ``o`` holds row ``o`` on a ``(rows, cols)`` grid, input
      ``j`` at ``divmod(j, cols)``, no gaps. ``H' = rows``, ``W' = cols``.

    Gaps and unused cells hold ``gap_value``, default ``0.0``: zero is "no weight / no
    gradient", transparent under the ``diverging`` preset, and it keeps the volume finite (``NaN``
    would trip the scene's non-finite warning).
    """
    a = np.asarray(w, dtype=np.float32)
    if a.ndim == 3:
        a = a[:, :, None, :]
    if a.ndim == 4:
        c_out, c_in, kh, kw = a.shape
        rows, cols = near_square_grid(c_in)
        out = np.full((c_out, rows * kh + rows - 1, cols * kw + cols - 1), gap_value, np.float32)
        for o in range(c_out):
            out[o] = tile_mosaic(a[o], rows, cols, gap=1, fill=gap_value)
        return out
    if a.ndim == 2:
        n_out, n_in = a.shape
        rows, cols = near_square_grid(n_in)
        out = np.full((n_out, rows * cols), gap_value, np.float32)
        out[:, :n_in] = a
        return out.reshape(n_out, rows, cols)
    raise ValueError(
        f"weight_volume expects (C_out, C_in, kH, kW), (C_out, C_in, k) or (N_out, N_in), got shape {a.shape}"
    )


def as_volume(volume) -> np.ndarray:
    """``volume`` as a float32 ``(C, H, W)`` array (no copy when it already is one)."""
    v = np.asarray(volume)
    if v.ndim != 3 or 0 in v.shape:
        raise ValueError(f"volume must be a non-empty (C, H, W) array, got shape {v.shape}")
    return v.astype(np.float32, copy=False)


#: rays sample a volume at most this many times across its longest side (see LayerVolumeScene)
MAX_SAMPLES = 320


def stack_bin(shape, z_spacing: float, max_samples: int = MAX_SAMPLES) -> int:
    """How many adjacent maps one displayed slab holds so that every slab gets at least two ray
    samples. A ray samples every ``longest side / max_samples``; a stack of ``C`` maps
    ``z_spacing`` apart with slabs thinner than two samples aliases into moire rings (1280 maps of
    7 x 7 in a cube: 8 maps per sample). 1 for every stack that is not that deep.

    >>> stack_bin((1280, 7, 7), 7 / 1280), stack_bin((50, 8, 8), 8 / 50), stack_bin((512, 14, 14), 14 / 512)
    (8, 1, 4)
    """
    c, h, w = (int(v) for v in shape)
    step = max(w, h, c * z_spacing, 1.0) / max_samples
    f = int(np.ceil(2.0 * step / z_spacing - 1e-9)) if z_spacing > 0 else 1
    return int(min(max(f, 1), max(c, 1)))


def bin_stack(d: np.ndarray, f: int) -> np.ndarray:
    """``(C, H, W)`` -> ``(ceil(C / f), H, W)``: each slab the value of largest magnitude (sign
    kept) among its ``f`` maps, so the strongest responses stay visible (a mean would dilute a
    single strong map among weak ones). NaN only where all ``f`` maps are NaN."""
    if f <= 1:
        return d
    c, h, w = d.shape
    n = -(-c // f)
    pad = np.zeros((n * f, h, w), np.float32)
    pad[:c] = d
    pad[c:] = np.nan
    groups = pad.reshape(n, f, h, w)
    mag = np.nan_to_num(np.abs(groups), nan=-1.0)
    pick = mag.argmax(axis=1)[:, None]
    return np.take_along_axis(groups, pick, axis=1)[:, 0]


def array_volume(array: np.ndarray, quantity: str) -> tuple[np.ndarray, str]:
    """One image's stored array as a ``(C, H, W)`` volume and its kind: a weight gradient via
    :func:`weight_volume` (``"weights"``), a linear layer's vector as one grid slice
    (``"neurons"``), conv maps as they are (``"maps"``; conv1d maps ``(C, L)`` as ``(C, 1, L)``).
    The same as ``volviz.views.source.to_volume``, without its import of the orderers."""
    a = np.asarray(array)
    if quantity == "grad_weight":
        return weight_volume(a), "weights"
    if a.ndim == 1:
        from .grid import neuron_grid

        return neuron_grid(a, fill=0.0)[None].astype(np.float32), "neurons"
    if a.ndim == 2:
        return a[:, None, :].astype(np.float32), "maps"
    if a.ndim != 3:
        raise ValueError(f"cannot show an array of shape {a.shape} as a volume")
    return a.astype(np.float32, copy=False), "maps"
