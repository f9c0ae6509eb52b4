"""Colormaps, opacity transfer-function presets and colour limits.

Pure numpy + matplotlib: nothing here touches VTK, so the 2-D grid views and the 3-D volume
scene share one definition of "what colour / how transparent is this value".

An opacity preset is a curve ``t -> opacity`` on the normalized value ``t in [0, 1]``
(``t = 0`` at ``clim[0]``, ``t = 1`` at ``clim[1]``):

=============  ==========================================================================
``linear``     opacity grows linearly with the value (0 at the low end, 1 at the top)
``sigmoid``    weak values nearly transparent, a soft step around the middle
``high``       only strong values: transparent below 60 % of the range, opaque at the top
``flat``       the same small opacity everywhere (a "fog" showing all of the data)
``diverging``  for signed data (gradients): zero transparent, both tails opaque
=============  ==========================================================================

A preset may also be a list of opacities, linearly interpolated over ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "DEFAULT_CMAP",
    "DIVERGING_CMAP",
    "OPACITY_PRESETS",
    "QUANTITY_LABELS",
    "Theme",
    "auto_clim",
    "colour_2d",
    "get_cmap",
    "is_signed",
    "opacity_curve",
    "sample_cmap",
    "theme_for",
]

#: colormap for activations (non-negative data)
DEFAULT_CMAP = "inferno"
#: colormap for signed data (gradients, pre-ReLU responses)
DIVERGING_CMAP = "RdBu_r"

#: what each store quantity is called on colour bars and in titles
QUANTITY_LABELS = {"activation": "activation", "grad_activation": "dS/da", "grad_weight": "dS/dW"}


class Theme:
    """The one colour theme of every view (CLI PNGs, 3-D volumes, the app): signed data (both
    signs present: gradients, pre-ReLU maps) on :data:`DIVERGING_CMAP` with symmetric limits and
    zero transparent in 3-D; non-negative data on :data:`DEFAULT_CMAP` with weak values faded."""

    __slots__ = ("cmap", "opacity", "symmetric")

    def __init__(self, cmap: str, opacity: str, symmetric: bool):
        self.cmap, self.opacity, self.symmetric = cmap, opacity, symmetric

    def __repr__(self) -> str:
        return f"Theme(cmap={self.cmap!r}, opacity={self.opacity!r}, symmetric={self.symmetric})"


SIGNED_THEME = Theme(DIVERGING_CMAP, "diverging", True)
UNSIGNED_THEME = Theme(DEFAULT_CMAP, "sigmoid", False)


def is_signed(data) -> bool:
    """True when the finite values hold both signs (``clim`` pairs ``(lo, hi)`` work too)."""
    v = _finite_values(data)
    return bool(v.size) and float(v.min()) < 0.0 < float(v.max())


def theme_for(data=None, *, signed: bool | None = None) -> Theme:
    """The theme for ``data`` (or for ``signed`` directly): :data:`SIGNED_THEME` or
    :data:`UNSIGNED_THEME`.

    >>> theme_for(np.array([-1.0, 2.0])).cmap, theme_for(signed=False).opacity
    ('RdBu_r', 'sigmoid')
    """
    if signed is None:
        signed = data is not None and is_signed(data)
    return SIGNED_THEME if signed else UNSIGNED_THEME


def colour_2d(
    img: np.ndarray, cmap=None, clim: tuple[float, float] | None = None, nan_color=(255, 255, 255)
) -> np.ndarray:
    """A 2-D array (maps mosaic, neuron grid, heatmap) to ``uint8 (H, W, 3)`` in the theme: signed
    data on the diverging map with limits symmetric around zero, other data on the sequential
    map over min..max; ``cmap`` / ``clim`` override. Shared by the CLI and the app's 2-D panels."""
    from .grid import to_rgb

    th = theme_for(img)
    if clim is None and th.symmetric:
        lim = float(np.nanmax(np.abs(np.where(np.isfinite(img), img, np.nan)))) or 1.0
        clim = (-lim, lim)
    return to_rgb(img, cmap or th.cmap, clim=clim, nan_color=nan_color)


def _linear(t: np.ndarray) -> np.ndarray:
    return t


def _sigmoid(t: np.ndarray) -> np.ndarray:
    s = 1.0 / (1.0 + np.exp(-12.0 * (t - 0.5)))
    lo, hi = 1.0 / (1.0 + np.exp(6.0)), 1.0 / (1.0 + np.exp(-6.0))
    return (s - lo) / (hi - lo)


def _high(t: np.ndarray) -> np.ndarray:
    return np.clip((t - 0.6) / 0.4, 0.0, 1.0) ** 0.75


def _flat(t: np.ndarray) -> np.ndarray:
    return np.full_like(t, 0.15)


def _diverging(t: np.ndarray) -> np.ndarray:
    # |value| relative to the symmetric limit; a dead zone of 10 % around zero stays transparent
    # and small values stay faint (gradients are heavy-tailed: most voxels are near zero)
    a = np.abs(2.0 * t - 1.0)
    return np.clip((a - 0.1) / 0.9, 0.0, 1.0) ** 1.5


OPACITY_PRESETS = {
    "linear": _linear,
    "sigmoid": _sigmoid,
    "high": _high,
    "flat": _flat,
    "diverging": _diverging,
}


def opacity_curve(preset: str | Sequence[float], n: int = 256) -> np.ndarray:
    """Sample an opacity preset at ``n`` evenly spaced normalized values.

    Parameters
    ----------
    preset : str or sequence of float
        A name from :data:`OPACITY_PRESETS`, or opacities in ``[0, 1]`` placed evenly over the
        normalized range and linearly interpolated.
    n : int
        Number of samples.

    Returns
    -------
    numpy.ndarray
        ``float64[n]`` in ``[0, 1]``.

    Examples
    --------
    >>> opacity_curve("diverging", 5).round(2)
    array([1. , 0.3, 0. , 0.3, 1. ])
    """
    t = np.linspace(0.0, 1.0, n)
    if isinstance(preset, str):
        try:
            fn = OPACITY_PRESETS[preset]
        except KeyError:
            raise ValueError(
                f"unknown opacity preset {preset!r}; choose one of {sorted(OPACITY_PRESETS)} "
                "or give a list of opacities"
            ) from None
        out = fn(t)
    else:
        pts = np.asarray(preset, dtype=float).ravel()
        if pts.size == 0 or not np.all(np.isfinite(pts)):
            raise ValueError("an opacity list needs at least one finite value")
        if pts.size == 1:
            out = np.full(n, pts[0])
        else:
            out = np.interp(t, np.linspace(0.0, 1.0, pts.size), pts)
    return np.clip(out, 0.0, 1.0)


def get_cmap(cmap):
    """Return a matplotlib ``Colormap`` from a name (``"inferno"``, ``"RdBu_r"``) or a Colormap."""
    import matplotlib
    from matplotlib.colors import Colormap

    if isinstance(cmap, str):
        try:
            return matplotlib.colormaps[cmap]
        except KeyError:
            raise ValueError(f"unknown colormap {cmap!r}") from None
    if isinstance(cmap, Colormap):
        return cmap
    raise TypeError(f"cmap must be a colormap name or a matplotlib Colormap, got {type(cmap)}")


def sample_cmap(cmap, n: int = 256) -> np.ndarray:
    """``float64[n, 3]`` RGB in ``[0, 1]`` sampled evenly from a colormap."""
    return np.asarray(get_cmap(cmap)(np.linspace(0.0, 1.0, n)))[:, :3]


def _finite_values(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        arrays = [data]
    else:
        arrays = [np.asarray(a) for a in data]
    flat = [a.ravel().astype(np.float64, copy=False) for a in arrays]
    if not flat:
        return np.zeros(0)
    v = np.concatenate(flat) if len(flat) > 1 else flat[0]
    return v[np.isfinite(v)]


def auto_clim(
    data: np.ndarray | Iterable[np.ndarray],
    symmetric: bool | None = None,
    percentile: float = 99.5,
) -> tuple[float, float]:
    """Colour limits for one array or for many (e.g. every time step, so they share a scale).

    Non-finite values are ignored. The top limit is the ``percentile`` of the values (of
    ``|values|`` when symmetric), so a handful of extreme voxels do not wash everything else out;
    ``percentile=100`` gives the plain maximum.

    Parameters
    ----------
    data : ndarray or iterable of ndarray
    symmetric : bool, optional
        ``(-m, m)`` around zero. ``None`` (default): symmetric when the data are signed, i.e. hold
        both negative and positive values (gradients); otherwise ``(min, p)``.
    percentile : float
        Robust upper percentile in ``(0, 100]``.

    Returns
    -------
    (lo, hi) with ``lo < hi`` always (constant or empty data get a unit-wide range).
    """
    v = _finite_values(data)
    if v.size == 0:
        return (-1.0, 1.0) if symmetric else (0.0, 1.0)
    vmin, vmax = float(v.min()), float(v.max())
    if symmetric is None:
        symmetric = vmin < 0.0 < vmax
    if symmetric:
        m = float(np.percentile(np.abs(v), percentile))
        if m <= 0.0:
            m = max(abs(vmin), abs(vmax))
        if m <= 0.0:
            m = 1.0
        return (-m, m)
    hi = float(np.percentile(v, percentile))
    lo = vmin
    if hi <= lo:
        hi = vmax
    if hi <= lo:
        d = abs(lo) * 0.5 if lo != 0.0 else 0.5
        lo, hi = lo - d, hi + d
    return (lo, hi)
