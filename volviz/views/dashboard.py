"""[Tamari2017]'s realtime dashboard as one picture: the input with the model's crop box, the
enlarged crop the model sees, the class probability bars, two conv layers as grids of feature
maps and one linear layer's activations as a grid ("generic"); or the input, the bars and the
linear layer's neurons sorted by their weight to one class with row averages ("fc").

Pure numpy -> ``uint8 (H, W, 3)``: the app shows it (live input or the time slider) and the
dashboard movie writes it frame by frame, so both look the same. The canvas is a multiple of 16
pixels a side (MP4 frames need no padding).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from volviz.errors import VolvizError
from volviz.views.grid import near_square_grid, neuron_grid, to_rgb, vis_square

__all__ = [
    "CANVAS",
    "MAX_SELECTED",
    "DashboardError",
    "DashboardFrame",
    "LayerPanel",
    "compose",
    "parse_selection",
]

CANVAS = (720, 960)  # (H, W): multiples of 16
MAX_SELECTED = 512  # maps / neurons one panel may show (a 4096-neuron fc7 is cut with a note)
BG, FG, DIM = (21, 23, 28), (230, 230, 230), (150, 150, 150)
PRED, TRUE = (4, 169, 77), (245, 176, 65)


class DashboardError(VolvizError, ValueError):
    """A dashboard choice that cannot be drawn (a selection out of range, a layer of the wrong kind)."""


def parse_selection(text: str, n: int, limit: int = MAX_SELECTED) -> np.ndarray:
    """Indices from ``"0-15"``, ``"3, 7, 20-24"`` or ``""`` (all, up to ``limit``), each in ``0..n-1``.

    >>> parse_selection("1, 4-6", 10).tolist()
    [1, 4, 5, 6]
    """
    text = (text or "").strip()
    if not text:
        return np.arange(min(n, limit))
    out: list[int] = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise DashboardError(f"{part[:20]!r} is not an index or a range such as 0-15") from None
        if not (0 <= a <= b < n):
            raise DashboardError(f"{part[:20]!r} is out of range: this layer has {n} (0..{n - 1})")
        if len(out) + (b - a + 1) > limit:
            raise DashboardError(f"at most {limit} maps or neurons per panel ({part[:20]!r} goes beyond)")
        out.extend(range(a, b + 1))
    return np.asarray(out, dtype=np.int64)


@dataclass
class LayerPanel:
    """One layer of the dashboard: its values, which maps / neurons, how many rows, a colour map."""

    name: str
    values: np.ndarray  # conv: (C, H, W); linear: (N,)
    select: str = ""
    rows: int = 0  # 0: near square
    cmap: str = "auto"


@dataclass
class DashboardFrame:
    """Everything one dashboard picture shows, for one image or live frame."""

    source: np.ndarray  # uint8 (H, W, 3): the frame / image as it came
    box: tuple[int, int, int, int] | None  # (top, left, height, width) of the model's crop in ``source``
    crop: np.ndarray  # uint8 (h, w, 3): the model's input (after preprocessing), for display
    probs: np.ndarray  # (K,)
    names: list[str]
    label: int = -1  # the true class (-1: unknown, e.g. a webcam)
    caption: str = ""
    convs: list[LayerPanel] = field(default_factory=list)  # the two conv panels
    fc: LayerPanel | None = None
    sorted: tuple[np.ndarray, str] | None = None  # (sorted_neurons image, its title), the FC-only view
    view: str = "generic"  # generic | fc
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ pieces
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font
        return ImageFont.load_default()


def _paste(canvas, rgb: np.ndarray, x: int, y: int, w: int, h: int, smooth: bool = False) -> tuple[int, int, int, int]:
    """Scale ``rgb`` to fit ``w x h`` (aspect kept, sharp pixels unless ``smooth``), centred
    horizontally at the top of the box; returns where it went ``(x, y, w, h)``."""
    from PIL import Image

    ih, iw = rgb.shape[:2]
    f = min(w / iw, h / ih)
    nw, nh = max(1, int(iw * f)), max(1, int(ih * f))
    img = Image.fromarray(np.ascontiguousarray(rgb)).resize(
        (nw, nh), Image.BILINEAR if smooth and f < 1 else Image.NEAREST
    )
    px = x + (w - nw) // 2
    canvas.paste(img, (px, y))
    return px, y, nw, nh


def _cmap(cmap: str, signed: bool) -> str:
    return cmap if cmap and cmap != "auto" else ("RdBu_r" if signed else "viridis")


def _colour(img: np.ndarray, cmap: str) -> np.ndarray:
    fin = img[np.isfinite(img)]
    signed = bool(fin.size) and fin.min() < 0 < fin.max()
    if signed:
        lim = float(np.abs(fin).max()) or 1.0
        return to_rgb(img, _cmap(cmap, True), clim=(-lim, lim), nan_color=BG)
    return to_rgb(img, _cmap(cmap, False), nan_color=BG)


def conv_grid(panel: LayerPanel) -> tuple[np.ndarray, str]:
    """A conv layer's chosen maps as one grid (all on one colour scale, [Tamari2017]'s ``vis_square``)."""
    v = np.asarray(panel.values, np.float32)
    if v.ndim != 3:
        raise DashboardError(f"{panel.name} is not a conv layer (its output has shape {tuple(v.shape)})")
    idx = parse_selection(panel.select, v.shape[0])
    rows, cols = _rows_cols(len(idx), panel.rows)
    img = vis_square(v[idx], normalize=None, rows=rows, cols=cols)
    what = f"maps {panel.select}" if panel.select.strip() else f"{len(idx)} of {v.shape[0]} maps"
    return _colour(img, panel.cmap), f"{panel.name}: {what} ({v.shape[1]}x{v.shape[2]}), {rows} rows"


def fc_grid(panel: LayerPanel) -> tuple[np.ndarray, str]:
    """A linear layer's chosen neurons as a grid, row-major."""
    v = np.asarray(panel.values, np.float32).ravel()
    idx = parse_selection(panel.select, v.size)
    rows, cols = _rows_cols(len(idx), panel.rows)
    grid = neuron_grid(v[idx], cols=cols)
    top = int(idx[int(np.argmax(v[idx]))])
    what = f"neurons {panel.select}" if panel.select.strip() else f"{len(idx)} of {v.size} neurons"
    return _colour(grid, panel.cmap), f"{panel.name}: {what}, {grid.shape[0]} rows; strongest #{top}"


def _rows_cols(n: int, rows: int) -> tuple[int, int]:
    if rows and rows > 0:
        rows = min(int(rows), n)
        return rows, -(-n // rows)
    return near_square_grid(n)


def sorted_rgb(img: np.ndarray, cmap: str, n_avg: int = 3) -> np.ndarray:
    """The sorted-neuron image (grid, a NaN gap, ``n_avg`` columns of row means) coloured as the
    Sorted panel does: the averages get their own colour range so their trend shows."""
    grid, means = img[:, : -(n_avg + 1)], img[:, -n_avg:]
    cm = _cmap(cmap, False)
    rgb = to_rgb(img, cm, clim=_robust(grid, 99.0), nan_color=BG)
    rgb[:, -n_avg:] = to_rgb(means, cm, clim=_robust(means, 100.0), nan_color=BG)
    return rgb


def _robust(a: np.ndarray, pct: float):
    fin = np.asarray(a)[np.isfinite(a)]
    if not fin.size:
        return None
    lo, hi = float(fin.min()), float(np.percentile(fin, pct))
    return (lo, hi) if hi > lo else None


def _bars(draw, probs, names, label, x, y, w, h, top: int = 10) -> None:
    """The class probability bars: the ``top`` most probable classes (+ the true one), in class
    order; the predicted class green, the true class's name amber."""
    probs = np.asarray(probs, np.float64)
    k = len(probs)
    keep = set(np.argsort(-probs, kind="stable")[:top].tolist()) if k > top else set(range(k))
    if 0 <= label < k:
        keep.add(int(label))
    rows = sorted(keep)
    pred = int(np.argmax(probs)) if k else -1
    font = _font(13)
    step = max(10, min(24, h // max(1, len(rows))))
    name_w = min(120, max(28, 8 * max(len(_name(names, c)) for c in rows)))
    for r, c in enumerate(rows):
        yy = y + r * step
        draw.text((x, yy), _name(names, c)[:14], fill=TRUE if c == label else FG, font=font)
        bw = int((w - name_w - 56) * float(probs[c]))
        draw.rectangle([x + name_w, yy + 2, x + name_w + max(1, bw), yy + step - 4], fill=PRED if c == pred else DIM)
        draw.text((x + name_w + max(1, bw) + 4, yy), f"{probs[c] * 100:.1f}%", fill=FG, font=font)


def _name(names, c: int) -> str:
    return names[c] if names and c < len(names) else str(c)


# ------------------------------------------------------------------------------ the picture
def compose(frame: DashboardFrame, size: tuple[int, int] = CANVAS) -> np.ndarray:
    """The dashboard as ``uint8 (H, W, 3)``, in the frame's view (``"generic"`` or ``"fc"``).

    Raises :class:`DashboardError` for a choice that cannot be drawn (the caller shows it).
    """
    from PIL import Image, ImageDraw

    view = frame.view
    if view not in ("generic", "fc"):
        raise DashboardError(f"unknown dashboard view {view!r}; use generic or fc")
    H, W = size
    canvas = Image.new("RGB", (W, H), BG)
    draw = ImageDraw.Draw(canvas)
    small, title = _font(12), _font(14)
    pad, top_h = 10, 212

    # top row: the input with the crop box | the crop the model sees | the bars
    col = (W - 4 * pad) // 4
    draw.text((pad, pad), "input", fill=DIM, font=small)
    px, py, pw, ph = _paste(canvas, frame.source, pad, pad + 16, col, top_h - 48, smooth=True)
    if frame.box is not None:
        t, left, bh, bw = frame.box
        sh, sw = frame.source.shape[:2]
        fx, fy = pw / sw, ph / sh
        draw.rectangle(
            [px + left * fx, py + t * fy, px + (left + bw) * fx - 1, py + (t + bh) * fy - 1], outline=PRED, width=2
        )
    x2 = 2 * pad + col
    ch, cw = frame.crop.shape[:2]
    draw.text((x2, pad), f"what the model sees ({cw}x{ch})", fill=DIM, font=small)
    _paste(canvas, frame.crop, x2, pad + 16, col, top_h - 48)
    x3 = 3 * pad + 2 * col
    draw.text((x3, pad), "class probabilities", fill=DIM, font=small)
    _bars(draw, frame.probs, frame.names, frame.label, x3, pad + 18, W - x3 - pad, top_h - 40)
    draw.text((pad, top_h - 20), frame.caption[:150], fill=FG, font=title)

    y = top_h + 4
    notes = list(frame.notes)
    if view == "generic":
        half = (W - 3 * pad) // 2
        grid_h = (H - y - 3 * pad) * 3 // 5 - 20
        for k, panel in enumerate(frame.convs[:2]):
            x = pad + k * (half + pad)
            try:
                rgb, text = conv_grid(panel)
            except DashboardError as exc:
                rgb, text = None, str(exc)
            draw.text((x, y), text[:90], fill=FG if rgb is not None else TRUE, font=small)
            if rgb is not None:
                _paste(canvas, rgb, x, y + 16, half, grid_h)
        y2 = y + grid_h + 24
        if frame.fc is not None:
            try:
                rgb, text = fc_grid(frame.fc)
            except DashboardError as exc:
                rgb, text = None, str(exc)
            draw.text((pad, y2), text[:140], fill=FG if rgb is not None else TRUE, font=small)
            if rgb is not None:
                _paste(canvas, rgb, pad, y2 + 16, W - 2 * pad, H - y2 - 16 - pad - 14)
        else:
            notes.append("no linear layer to show")
    else:
        if frame.sorted is None:
            notes.append("the FC-only view needs a linear layer that leads to the class scores")
        else:
            img, text = frame.sorted
            draw.text((pad, y), text[:150], fill=FG, font=small)
            _paste(canvas, sorted_rgb(img, frame.fc.cmap if frame.fc else "auto"), pad, y + 16, W - 2 * pad, H - y - 40)
    if notes:
        draw.text((pad, H - pad - 12), "; ".join(notes)[:160], fill=TRUE, font=small)
    return np.asarray(canvas)
