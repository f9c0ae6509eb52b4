"""Preferred images -> displayable RGB tiles (pure numpy; the views and the graph use these).

Channel mapping: grey (C = 1) is shown as grey; RGB (C = 3) as itself; other C as the three channels
in ``channels`` (default the first three; C = 2 puts the two channels in red and green).
Normalization ``per_unit`` stretches each image's min..max (over its shown channels together, so
hue is kept) to 0..1; a constant image keeps its pixel values. ``none`` shows pixel values as they
are (clipped to 0..1).
"""

from __future__ import annotations

import numpy as np

__all__ = ["NORMALIZE", "to_display", "upscale"]

NORMALIZE = ("per_unit", "none")


def _channels(c: int, channels) -> list:
    if channels is None:
        channels = [0, 0, 0] if c == 1 else [0, 1, 2] if c >= 3 else [0, 1, None]
    chans = list(channels)
    if len(chans) != 3:
        raise ValueError(f"channels must name 3 channels (or None for a black one), got {channels}")
    for k in chans:
        if k is not None and not 0 <= int(k) < c:
            raise ValueError(f"channel {k} out of range: the images have {c} channels")
    return [None if k is None else int(k) for k in chans]


def to_display(images: np.ndarray, normalize: str = "per_unit", channels=None) -> np.ndarray:
    """``(N, C, H, W)`` pixel images -> float32 ``(N, H, W, 3)`` in 0..1 (NaN images stay NaN)."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {x.shape}")
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
    n, c, h, w = x.shape
    chans = _channels(c, channels)
    used = sorted({k for k in chans if k is not None})
    if normalize == "per_unit" and used and n:
        shown = x[:, used]
        with np.errstate(invalid="ignore"):
            lo = np.min(shown, axis=(1, 2, 3), keepdims=True)
            span = np.max(shown, axis=(1, 2, 3), keepdims=True) - lo
        flat = ~(span > 1e-6)  # constant images (and NaN ones) keep their values
        x = np.where(flat, x, (x - lo) / np.where(flat, 1, span))
    out = np.zeros((n, 3, h, w), dtype=np.float32)
    for i, k in enumerate(chans):
        if k is not None:
            out[:, i] = x[:, k]
    return np.clip(out, 0, 1).transpose(0, 2, 3, 1)


def upscale(tiles: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of ``(N, H, W, ...)`` tiles by an integer factor."""
    factor = int(factor)
    if factor <= 1:
        return tiles
    return np.repeat(np.repeat(tiles, factor, axis=1), factor, axis=2)
