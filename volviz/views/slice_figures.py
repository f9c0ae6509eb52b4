"""[Jain2016] section 3.1.3's slice figure: one vertical slice of a layer volume (a ``C x W``
image at a fixed row, or ``C x H`` at a fixed column) once per filter order, side by side, with
white bars between the clusters of the orders that ask for them; and the order-agreement plot of
that slice against every other one.

Matplotlib (Agg), in the look of :mod:`volviz.views.render_figures`: one shared colour range (the
panels hold the same numbers, only their rows are permuted), a colour bar, and titles shortened
with ``...`` to their panel's width (measured), so they never run into each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volviz.analysis.slice_orders import Agreement, SliceOrders, with_bars

from .colors import get_cmap, theme_for
from .render_figures import BG, FG, MUTED, _figure, _fit, _limits, _plt, _save, _style_axes

__all__ = ["SliceFigure", "agreement_figure", "agreement_path", "slice_figure", "slice_mosaic"]

DEFAULT_CMAP = "viridis"  # no white in it: the white bars never read as values (zero is white in RdBu)
NOTE = (
    "20 x 5 means: 20 k-means clusters, each split into up to 5 (fewer for fewer filters); "
    "clusters chained so that similar ones are adjacent; white bars: 7-means boundaries"
)
LINE_COLOURS = ("#4fc3f7", "#ffb74d", "#81c784", "#f06292", "#ba68c8", "#fff176")


@dataclass
class SliceFigure:
    """What was drawn: the file (or None), the RGB pixels when asked, and the measured boxes of
    the panel titles in figure pixels ``(x0, y0, x1, y1)``, left to right (tests check them)."""

    path: Path | None
    rgb: np.ndarray | None
    title_boxes: list[tuple[float, float, float, float]]


def agreement_path(out) -> Path:
    """Where the agreement plot of a slice figure goes: ``x.png`` -> ``x_agreement.png``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_agreement{out.suffix or '.png'}")


def slice_mosaic(
    so: SliceOrders, *, cmap=None, height: int = 256, panel_width: int = 96, gap: int = 6
) -> tuple[np.ndarray, list[tuple[str, int, int]], tuple[float, float]]:
    """The panels of :func:`slice_figure` as one small RGB image with no text (the app's Slice
    panel: numpy only, no matplotlib layout on a slider step): each slice
    scaled by whole pixels to about ``height`` x ``panel_width``, white bars inserted, panels
    ``gap`` px apart on the figures' background. Returns ``(rgb, [(key, x0, x1)], clim)``."""
    from .grid import to_rgb

    mat = np.asarray(so.matrix, np.float32)
    C, L = mat.shape
    clim = _limits(mat, theme_for(mat).symmetric)
    k, m = max(1, round(height / C)), max(1, round(panel_width / L))
    bar = max(3, k // 2)
    bg = np.array([int(BG[i : i + 2], 16) for i in (1, 3, 5)], np.uint8)
    tiles = []
    for p in so.panels:
        rgb = np.repeat(np.repeat(to_rgb(so.reordered(p), cmap or DEFAULT_CMAP, clim=clim), k, axis=0), m, axis=1)
        if p.bars and len(p.boundaries):
            parts = np.split(rgb, [int(b) * k for b in p.boundaries])
            white = np.full((bar, rgb.shape[1], 3), 255, np.uint8)
            rgb = np.concatenate([x for part in parts for x in (part, white)][:-1])
        tiles.append(rgb)
    h = max(t.shape[0] for t in tiles)
    out = np.empty((h, sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1), 3), np.uint8)
    out[:] = bg
    spans, x = [], 0
    for p, t in zip(so.panels, tiles):
        out[: t.shape[0], x : x + t.shape[1]] = t
        spans.append((p.key, x, x + t.shape[1]))
        x += t.shape[1] + gap
    return out, spans, clim


def slice_figure(
    path,
    so: SliceOrders,
    *,
    title: str,
    caption: str = "",
    bar_label: str = "activation",
    cmap=None,
    width: int = 1200,
    plot_height: int = 440,
    as_rgb: bool = False,
    note: str = NOTE,
) -> SliceFigure:
    """The slice ``so.matrix`` once per panel of ``so`` (rows in the panel's order), one PNG at
    ``path`` (``as_rgb``: also, or only with ``path=None``, the pixels)."""
    mat = np.asarray(so.matrix, np.float32)
    C, L = mat.shape
    th = theme_for(mat)
    lo, hi = _limits(mat, th.symmetric)
    cm = get_cmap(cmap or DEFAULT_CMAP).with_extremes(bad="white")  # NaN rows: the white bars
    bar_rows = max(1, -(-C // 100))  # a bar stays a few pixels high for 500 filters
    n = len(so.panels)
    left, right, gap = 62, 110, 18
    panel_w = (width - left - right - gap * (n - 1)) / n
    height = plot_height + 170
    fig = _figure(width, height, title, caption)
    axes, ims, titles = [], [], []
    for k, p in enumerate(so.panels):
        x0 = left + k * (panel_w + gap)
        ax = fig.add_axes([x0 / width, 70 / height, panel_w / width, plot_height / height])
        img = so.reordered(p)
        if p.bars and len(p.boundaries):
            img, _ = with_bars(img, p.boundaries, bar_rows)
        im = ax.imshow(np.ma.masked_invalid(img), cmap=cm, vmin=lo, vmax=hi, interpolation="nearest", aspect="auto")
        _style_axes(ax)
        ax.set_xticks([0, L - 1])
        ax.set_xlabel("x (column)" if so.axis == "row" else "y (row)", labelpad=1)
        if k == 0:
            ax.set_ylabel(f"filters ({C}), top to bottom in each order")
        ax.set_yticks([])
        t = ax.set_title(f"{p.title}\n{p.detail}", color=FG, fontsize=10, loc="left", pad=6)
        axes.append(ax)
        ims.append(im)
        titles.append(t)
    for t in titles:
        _fit(fig, t, panel_w - 2)
    cb = fig.colorbar(ims[-1], ax=axes, fraction=0.03, pad=0.015)
    cb.set_label(bar_label, color=FG)
    cb.ax.yaxis.set_tick_params(color=FG, labelcolor=FG)
    cb.outline.set_edgecolor(MUTED)
    text = fig.text(
        10 / width,
        10 / height,
        note,
        ha="left",
        va="bottom",
        color=MUTED,
        fontsize=9,
    )
    _fit(fig, text, width - 20)
    if path is not None:  # one drawing: the file, then the pixels and boxes of that drawing
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=fig.dpi, facecolor=BG)
    else:
        fig.canvas.draw()
    r = fig.canvas.get_renderer()
    H = fig.bbox.height
    boxes = []
    for t in titles:
        e = t.get_window_extent(r)
        boxes.append((float(e.x0), float(H - e.y1), float(e.x1), float(H - e.y0)))
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy() if as_rgb else None
    _plt().close(fig)
    return SliceFigure(path, rgb, boxes)


def agreement_figure(path, ag: Agreement, *, title: str, caption: str = "", width: int = 900) -> Path:
    """One line per order: ``|rho|`` of slice ``ag.index``'s order with slice n's, n along x."""
    height = 600
    fig = _figure(width, height, title, caption)
    ax = fig.add_axes([70 / width, 150 / height, (width - 100) / width, (height - 240) / height])
    _style_axes(ax)
    n = len(next(iter(ag.values.values()))) if ag.values else 0
    xs = np.arange(n)
    for k, (key, vals) in enumerate(ag.values.items()):
        mean = ag.mean_except_self(key)
        ax.plot(
            xs,
            vals,
            marker="o",
            markersize=3.5,
            linewidth=1.5,
            color=LINE_COLOURS[k % len(LINE_COLOURS)],
            label=f"{ag.titles[key]}: mean {mean:.2f} over the other slices",
        )
    ax.axvline(ag.index, color=MUTED, linestyle="--", linewidth=1)
    what = "row" if ag.axis == "row" else "column"
    ax.set_xlim(-0.5, max(n - 0.5, 0.5))
    ax.set_ylim(0, 1.04)
    ax.set_xlabel(f"slice ({what}) n; dashed: slice {ag.index}")
    stat = "Spearman" if ag.stat == "spearman" else "Kendall"
    ax.set_ylabel(f"|{stat} rank correlation| with slice {ag.index}")
    ax.grid(color="#2c3038", linewidth=0.6)
    leg = fig.legend(
        loc="lower left",
        bbox_to_anchor=(60 / width, 4 / height),
        ncol=2,
        fontsize=9,
        facecolor=BG,
        edgecolor=MUTED,
        labelcolor=FG,
        frameon=False,
    )
    leg.set_in_layout(False)
    return _save(fig, path)
