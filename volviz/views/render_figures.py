"""2-D figures of ``volviz render``: a layer's maps as a grid, a linear layer's neurons, a linear
layer's weight gradient as a heatmap of the rows that matter. Each has a title, a caption, a
colour bar with the quantity's name and axis labels, in the colour theme of ``colors.py``.

Matplotlib (Agg) draws them: it lays out text, ticks and colour bars; numpy arrays in, a PNG out.
Long titles are shortened with ``...`` to the figure's width (measured, not guessed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .colors import get_cmap, theme_for

__all__ = ["grid_figure", "neuron_figure", "weight_rows", "weight_rows_figure", "MAX_COLUMNS"]

#: a heatmap shows at most this many input columns (more are max-|value| pooled)
MAX_COLUMNS = 2048
BG, FG, MUTED = "#15171c", "#e8eaed", "#9aa0a6"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _fit(fig, text, max_px: float) -> None:
    """Shorten a matplotlib ``Text`` (each line, ``...`` at the cut) until it is ``max_px`` wide."""
    r = fig.canvas.get_renderer()
    full = text.get_text()
    if text.get_window_extent(r).width <= max_px:
        return
    lines = full.split("\n")
    out = []
    for line in lines:
        text.set_text(line)
        lo, hi = 0, len(line)
        if text.get_window_extent(r).width <= max_px:
            out.append(line)
            continue
        while lo < hi:
            mid = (lo + hi + 1) // 2
            text.set_text(line[:mid].rstrip() + "...")
            if text.get_window_extent(r).width <= max_px:
                lo = mid
            else:
                hi = mid - 1
        out.append(line[:lo].rstrip() + "...")
    text.set_text("\n".join(out))


def _figure(width_px: int, height_px: int, title: str, caption: str, top_px: int = 64):
    plt = _plt()
    dpi = 100
    fig = plt.figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, facecolor=BG)
    t = fig.text(
        10 / width_px, 1 - 10 / height_px, title, ha="left", va="top", color=FG, fontsize=13, fontweight="bold"
    )
    c = fig.text(10 / width_px, 1 - 34 / height_px, caption, ha="left", va="top", color=FG, fontsize=11)
    fig.canvas.draw()
    for txt in (t, c):
        _fit(fig, txt, width_px - 20)
    return fig


def _colourbar(fig, im, ax, label: str):
    cb = fig.colorbar(im, ax=ax, fraction=0.035, pad=0.02)
    cb.set_label(label, color=FG)
    cb.ax.yaxis.set_tick_params(color=FG, labelcolor=FG)
    cb.outline.set_edgecolor(MUTED)
    return cb


def _style_axes(ax) -> None:
    ax.set_facecolor(BG)
    for s in ax.spines.values():
        s.set_edgecolor(MUTED)
    ax.tick_params(colors=FG, labelcolor=FG, labelsize=9)
    ax.xaxis.label.set_color(FG)
    ax.yaxis.label.set_color(FG)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi, facecolor=BG)
    _plt().close(fig)
    return path


def _limits(data: np.ndarray, symmetric: bool):
    fin = data[np.isfinite(data)]
    if not fin.size:
        return (-1.0, 1.0) if symmetric else (0.0, 1.0)
    if symmetric:
        m = float(np.percentile(np.abs(fin), 99.5)) or float(np.abs(fin).max()) or 1.0
        return -m, m
    lo, hi = float(fin.min()), float(fin.max())
    return (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)


def grid_figure(
    path,
    image: np.ndarray,
    *,
    title: str,
    caption: str = "",
    bar_label: str = "value",
    cmap=None,
    note: str = "",
    marks=None,
    width: int = 900,
) -> Path:
    """A 2-D array (a ``vis_square`` mosaic, a neuron grid; NaN gaps drawn as the background) as
    a titled PNG with a colour bar. ``marks``: ``[(row, col, text)]`` cells outlined and
    numbered (the strongest neurons)."""
    img = np.asarray(image, np.float32)
    th = theme_for(img)
    lo, hi = _limits(img, th.symmetric)
    h, w = img.shape
    plot_w = width - 170
    plot_h = int(min(900, max(160, plot_w * h / max(w, 1))))
    fig = _figure(width, plot_h + 130, title, caption)
    ax = fig.add_axes([40 / width, 50 / (plot_h + 130), plot_w / width, plot_h / (plot_h + 130)])
    cm = get_cmap(cmap or th.cmap).with_extremes(bad=BG)
    im = ax.imshow(np.ma.masked_invalid(img), cmap=cm, vmin=lo, vmax=hi, interpolation="nearest", aspect="equal")
    _style_axes(ax)
    ax.set_xticks([])
    ax.set_yticks([])
    _colourbar(fig, im, ax, bar_label)
    for r, c, text in marks or []:
        ax.add_patch(_plt().Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="white", linewidth=1.2))
        ax.text(c, r - 0.7, text, color="white", fontsize=8, ha="center", va="bottom")
    if note:
        t = fig.text(10 / width, 12 / (plot_h + 130), note, ha="left", va="bottom", color=MUTED, fontsize=9)
        _fit(fig, t, width - 20)
    return _save(fig, path)


def neuron_figure(
    path,
    vec: np.ndarray,
    *,
    title: str,
    caption: str = "",
    bar_label: str = "activation",
    names=None,
    top: int = 5,
    cmap=None,
) -> Path:
    """A linear layer's vector as a near-square grid of neurons, the ``top`` strongest outlined
    and numbered, named in the note below (class names for the output layer)."""
    from .grid import near_square_grid, neuron_grid

    v = np.asarray(vec, np.float32).ravel()
    rows, cols = near_square_grid(v.size)
    grid = neuron_grid(v, cols=cols)
    best = np.argsort(-np.nan_to_num(v, nan=-np.inf), kind="stable")[:top]
    marks = [(int(j) // cols, int(j) % cols, str(k + 1)) for k, j in enumerate(best)]
    name = lambda j: f"{names[j]} (#{j})" if names is not None and j < len(names) else f"#{j}"
    note = (
        "strongest: "
        + ",  ".join(f"{k + 1} {name(int(j))} {v[j]:.3g}" for k, j in enumerate(best))
        + f"   ({v.size} neurons row-major on {rows} x {cols})"
    )
    return grid_figure(path, grid, title=title, caption=caption, bar_label=bar_label, cmap=cmap, note=note, marks=marks)


def weight_rows(grad: np.ndarray, max_rows: int = 16) -> tuple[np.ndarray, np.ndarray, int]:
    """The rows of a linear weight gradient ``(N_out, N_in)`` that matter: those with a non-zero
    gradient, by norm (largest first), at most ``max_rows``. Returns ``(rows, norms, n_nonzero)``;
    with no non-zero row, the first row."""
    g = np.nan_to_num(np.asarray(grad, np.float64))
    norms = np.sqrt((g**2).sum(axis=1))
    nz = np.flatnonzero(norms > 0)
    if not nz.size:
        return np.array([0]), norms[:1], 0
    order = nz[np.argsort(-norms[nz], kind="stable")][:max_rows]
    return order, norms[order], int(nz.size)


def _pool_columns(a: np.ndarray, max_cols: int) -> tuple[np.ndarray, int]:
    n = a.shape[1]
    f = -(-n // max_cols)
    if f <= 1:
        return a, 1
    pad = np.zeros((a.shape[0], f * (-(-n // f))), a.dtype)
    pad[:, :n] = a
    g = pad.reshape(a.shape[0], -1, f)
    pick = np.abs(g).argmax(axis=2)[..., None]
    return np.take_along_axis(g, pick, axis=2)[..., 0], f


def weight_rows_figure(
    path,
    grad: np.ndarray,
    *,
    title: str,
    caption: str = "",
    names=None,
    max_rows: int = 16,
    bar_label: str = "dS/dW",
    cmap=None,
) -> Path:
    """A linear layer's weight gradient ``(N_out, N_in)`` as a heatmap: one row per output that
    matters (:func:`weight_rows`), labelled with its class name, the inputs along x."""
    g = np.asarray(grad, np.float32)
    rows, norms, n_nonzero = weight_rows(g, max_rows)
    data, pooled = _pool_columns(g[rows], MAX_COLUMNS)
    th = theme_for(signed=True)
    lo, hi = _limits(data, True)
    width = 1000
    row_px = 34 if len(rows) <= 4 else 22
    plot_h = max(90, row_px * len(rows))
    height = plot_h + 180
    fig = _figure(width, height, title, caption)
    left = 330
    ax = fig.add_axes([left / width, 84 / height, (width - left - 120) / width, plot_h / height])
    im = ax.imshow(
        data,
        cmap=get_cmap(cmap or th.cmap),
        vmin=lo,
        vmax=hi,
        interpolation="nearest",
        aspect="auto",
        extent=(-0.5, g.shape[1] - 0.5, len(rows) - 0.5, -0.5),
    )
    _style_axes(ax)
    label = lambda j: f"#{j} {_short(names[j], 32)}" if names is not None and j < len(names) else f"output #{j}"
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{label(int(j))}  |g| {n:.2g}" for j, n in zip(rows, norms)])
    ax.set_xlabel(
        f"input feature (0..{g.shape[1] - 1})" + (f", {pooled} per column (largest |value|)" if pooled > 1 else "")
    )
    _colourbar(fig, im, ax, bar_label)
    if n_nonzero <= len(rows):
        what = f"{n_nonzero} of {g.shape[0]} rows are non-zero" + (
            ": the gradient of one class score reaches only its own row (dS_c/dW_k = 0 for k != c)"
            if n_nonzero == 1
            else "; all shown"
        )
    else:
        what = f"{n_nonzero} of {g.shape[0]} rows are non-zero; the {len(rows)} largest by norm shown"
    t = fig.text(10 / width, 12 / height, what, ha="left", va="bottom", color=MUTED, fontsize=9)
    _fit(fig, t, width - 20)
    return _save(fig, path)


def _short(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 3].rstrip() + "..."
