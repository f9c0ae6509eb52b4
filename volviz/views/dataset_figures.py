"""PNG figures of the dataset view (volviz.analysis.dataset results in, files out; matplotlib Agg).

Images arrive as the store keeps them, ``(C, H, W)`` pixels in ``[0, 1]``; grey images are shown
grey, RGB as is, other channel counts by their mean. Signed maps (occlusion, deconvnet, filters,
perturbations) use a diverging colormap centred on 0 so that sign reads as hue.
"""

from __future__ import annotations

import pathlib

import numpy as np

from .colors import DIVERGING_CMAP
from .grid import near_square_grid, tile_mosaic, to_rgb

__all__ = [
    "COLOUR_BY",
    "colour_values",
    "embedding_figure",
    "neighbour_strip",
    "topk_grid",
    "histogram_figure",
    "occlusion_figure",
    "deconv_figure",
    "inversion_figure",
    "fooling_figure",
    "image_rgb",
    "signed_rgb",
    "pyplot",
    "save_figure",
]

COLOUR_BY = ("auto", "true", "pred", "prob", "wrong")
DEAD_GREY = 0.55


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 110) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def image_rgb(pixels: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` pixels -> ``(H, W, 3)`` float in [0, 1] (NaN padding stays NaN)."""
    p = np.asarray(pixels, np.float32)
    if p.shape[0] == 3:
        return np.clip(p.transpose(1, 2, 0), 0, 1)
    g = np.clip(p.mean(0), 0, 1) if p.shape[0] != 1 else np.clip(p[0], 0, 1)
    return np.repeat(g[:, :, None], 3, axis=2)


def signed_rgb(a: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """A signed ``(C, H, W)`` map as RGB: channels as colour when C = 3, else the diverging colormap."""
    a = np.asarray(a, np.float64)
    m = float(np.nanmax(np.abs(a))) if vmax is None else vmax
    m = m if m > 0 else 1.0
    if a.shape[0] == 3:
        return np.clip(0.5 + 0.5 * a.transpose(1, 2, 0) / m, 0, 1)
    return to_rgb(a.mean(0), DIVERGING_CMAP, clim=(-m, m)) / 255.0


# ---- embedding ------------------------------------------------------------------------------
def colour_values(table: dict, by: str, class_names=None) -> tuple[str, np.ndarray, str]:
    """``(kind, values, title)``: kind ``class`` (ints), ``prob`` (floats) or ``wrong`` (bools).
    ``auto`` is the true class when at least two classes are labelled, else the prediction."""
    if by not in COLOUR_BY:
        raise ValueError(f"unknown colouring {by!r}; valid: {', '.join(COLOUR_BY)}")
    label, pred = table["label"], table["pred"]
    if by == "auto":
        by = "true" if len(np.unique(label[label >= 0])) >= 2 else "pred"
    if by == "true":
        return "class", label, "true class (grey: unlabelled)"
    if by == "pred":
        return "class", pred, "predicted class"
    if by == "prob":
        return "prob", table["confidence"], "top probability"
    return "wrong", (label >= 0) & (label != pred), "misclassified (red)"


def _colours(kind: str, values: np.ndarray, n_classes: int):
    from matplotlib import colormaps

    if kind == "class":
        cmap = colormaps["tab10" if n_classes <= 10 else "tab20"]
        cols = np.array([cmap(int(v) % cmap.N) if v >= 0 else (0.6, 0.6, 0.6, 1.0) for v in values])
    elif kind == "prob":
        cols = colormaps["viridis"](np.clip(values, 0, 1))
    else:
        cols = np.where(values[:, None], [[0.85, 0.1, 0.1, 1.0]], [[0.6, 0.6, 0.6, 1.0]])
    return cols


def _spread(coords: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` indices spread over the map: in each cell of a grid, the image nearest the
    cell's centre (so neighbouring thumbnails rarely overlap)."""
    side = max(1, int(np.ceil(np.sqrt(n))))
    lo, hi = coords.min(0), coords.max(0)
    t = (coords - lo) / np.where(hi > lo, hi - lo, 1) * side
    cell = np.minimum(np.floor(t).astype(int), side - 1)
    off = np.linalg.norm(t - cell - 0.5, axis=1)
    key = cell[:, 0] * side + cell[:, 1]
    order = np.lexsort((off, key))
    first = order[np.r_[True, key[order][1:] != key[order][:-1]]]
    return np.sort(first[off[first] < 0.35])[:n]


def embedding_figure(
    coords: np.ndarray,
    table: dict,
    path,
    *,
    by: str = "auto",
    pixels: np.ndarray | None = None,
    class_names=None,
    title: str = "",
    thumbs: int = 64,
) -> pathlib.Path:
    """Scatter of a 2-D / 3-D embedding coloured by ``by``; in 2-D, ``pixels`` (the images of the
    rows, or a callable ``rows -> pixels``) are drawn as thumbnails framed in their point's colour."""
    plt = pyplot()
    kind, values, ctitle = colour_values(table, by, class_names)
    k = int(table["probs"].shape[1]) if table["probs"].ndim == 2 else 1
    cols = _colours(kind, values, k)
    dims = coords.shape[1]
    fig = plt.figure(figsize=(9, 8))
    ax = fig.add_subplot(111, projection="3d" if dims == 3 else None)
    # the points that matter are drawn last, on top: misclassified ones, the least confident ones
    order = (
        np.argsort(values, kind="stable")
        if kind == "wrong"
        else (np.argsort(-values, kind="stable") if kind == "prob" else np.arange(len(coords)))
    )
    size = np.where(values[order], 40, 14) if kind == "wrong" else np.full(len(order), 14 if dims == 3 else 16)
    ax.scatter(*coords[order].T[:dims], c=cols[order], s=size, linewidths=0)
    if dims == 2 and pixels is not None and len(coords):
        from matplotlib.offsetbox import AnnotationBbox, OffsetImage

        # misclassified: show those images; otherwise images spread over the map
        pick = np.flatnonzero(values)[:thumbs] if kind == "wrong" else _spread(coords, thumbs)
        ims = pixels(table["rows"][pick]) if callable(pixels) else np.asarray(pixels)[pick]
        zoom = 0.75 * 28 / max(ims.shape[-2:])  # about 30 px on the figure, whatever the image size
        for j, i in enumerate(pick):
            box = AnnotationBbox(
                OffsetImage(image_rgb(ims[j]), zoom=zoom, interpolation="nearest"),
                coords[i],
                frameon=True,
                pad=0.15,
                bboxprops={"edgecolor": cols[i], "linewidth": 1.5},
            )
            ax.add_artist(box)
    if kind == "class":
        from matplotlib.lines import Line2D

        present = [int(v) for v in np.unique(values)]
        names = class_names or [str(i) for i in range(k)]
        handles = [
            Line2D(
                [],
                [],
                marker="o",
                ls="",
                color=_colours("class", np.array([v]), k)[0],
                label=names[v] if 0 <= v < len(names) else ("unlabelled" if v < 0 else str(v)),
            )
            for v in present
        ]
        ncol = 2 if len(handles) > 10 else 1
        ax.legend(handles=handles, title=ctitle, fontsize=8, title_fontsize=8, loc="best", ncol=ncol)
    elif kind == "prob":
        import matplotlib as mpl

        fig.colorbar(
            mpl.cm.ScalarMappable(cmap="viridis", norm=mpl.colors.Normalize(0, 1)), ax=ax, label=ctitle, fraction=0.04
        )
    else:
        ax.set_title(ctitle, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


# ---- neighbours, top examples -------------------------------------------------------------------
def neighbour_strip(
    query: np.ndarray, pixels: np.ndarray, captions: list[str], same: np.ndarray, path, *, title: str = ""
) -> pathlib.Path:
    """The query, then its neighbours nearest first; green frame: same class as the query, red: not."""
    plt = pyplot()
    n = len(pixels) + 1
    cols = min(n, 9)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.55 * rows + 0.4), squeeze=False)
    for a in axes.ravel():
        a.axis("off")
    for i, (img, cap) in enumerate(zip([query, *pixels], ["query", *captions])):
        a = axes.ravel()[i]
        a.imshow(image_rgb(img), interpolation="nearest")
        colour = "black" if i == 0 else ("tab:green" if same[i - 1] else "tab:red")
        a.add_patch(plt.Rectangle((-0.5, -0.5), img.shape[-1], img.shape[-2], fill=False, lw=3, ec=colour))
        a.set_title(cap, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def topk_grid(
    crops: list[np.ndarray], dead: np.ndarray, path, *, units=None, title: str = "", gap: int = 1
) -> pathlib.Path:
    """One cell per unit holding its top crops (a near-square block each); dead units' cells are
    grey. Cells are row-major in unit order; the unit number is written in each cell."""
    plt = pyplot()
    units = np.arange(len(crops)) if units is None else np.asarray(units)
    k = max([len(c) for c in crops] + [1])
    r, c = near_square_grid(k)
    h = max([cr.shape[-2] for cr in crops if len(cr)] + [1])
    w = max([cr.shape[-1] for cr in crops if len(cr)] + [1])
    cells = []
    for cr, d in zip(crops, dead):
        tiles = np.full((k, h, w, 3), np.nan, np.float32)
        for i, t in enumerate(cr):
            tiles[i, : t.shape[-2], : t.shape[-1]] = image_rgb(t)
        cell = tile_mosaic(tiles, r, c, gap=gap, fill=0.35)  # dark lines inside a cell, white between cells
        if d:
            cell[:] = DEAD_GREY
        cells.append(np.nan_to_num(cell, nan=0.35))
    rows, cols = near_square_grid(len(cells))
    sep = max(3, h // 3)
    big = tile_mosaic(np.stack(cells), rows, cols, gap=sep, fill=1.0)
    fig_w = min(16, max(6, big.shape[1] / 40))
    fig = plt.figure(figsize=(fig_w, fig_w * big.shape[0] / big.shape[1] + 0.5))
    ax = fig.add_axes([0, 0, 1, 0.96])
    ax.imshow(np.clip(big, 0, 1), interpolation="nearest")
    ax.axis("off")
    ch, cw = cells[0].shape[:2]
    step_y, step_x = ch + sep, cw + sep
    if len(cells) <= 144:
        for i, u in enumerate(units):
            ax.text(
                (i % cols) * step_x + 1,
                (i // cols) * step_y + 1,
                str(int(u)),
                fontsize=6,
                va="top",
                color="white",
                bbox={"facecolor": "black", "alpha": 0.6, "pad": 0.5, "lw": 0},
            )
    fig.suptitle(title or f"top {k} per unit (grey: dead)", fontsize=10)
    return save_figure(fig, path, dpi=130)


def histogram_figure(
    edges: np.ndarray, counts: np.ndarray, top_values: np.ndarray, units, path, *, title: str = ""
) -> pathlib.Path:
    """Per unit: the histogram of its score over the dataset, its top-k scores marked in red."""
    plt = pyplot()
    n = len(units)
    r, c = near_square_grid(n)
    fig, axes = plt.subplots(r, c, figsize=(2.0 * c, 1.5 * r + 0.5), squeeze=False)
    for a in axes.ravel():
        a.axis("off")
    for a, u in zip(axes.ravel(), units):
        a.axis("on")
        e = edges[u]
        a.bar(e[:-1], counts[u], width=np.diff(e), align="edge", color="0.5")
        for v in top_values[u][np.isfinite(top_values[u])]:
            a.axvline(v, color="tab:red", lw=0.6)
        a.set_title(f"unit {int(u)}", fontsize=7)
        a.tick_params(labelsize=5)
        a.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


# ---- occlusion, deconvnet, inversion, fooling ----------------------------------------------------
def occlusion_figure(res, path, *, class_names=None) -> pathlib.Path:
    """Input, then one panel per class: the drop of ``p(class)`` where the occluder covers a pixel."""
    plt = pyplot()
    names = class_names or []
    n = 1 + len(res.classes)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4))
    axes[0].imshow(image_rgb(res.pixels), interpolation="nearest")
    axes[0].set_title(f"image {res.image}", fontsize=9)
    for a, cls, kind, p, mp in zip(axes[1:], res.classes, res.kinds, res.probs, res.maps):
        m = float(np.abs(mp).max()) or 1.0  # each class its own scale: a small effect still shows
        im = a.imshow(mp, cmap=DIVERGING_CMAP, vmin=-m, vmax=m, interpolation="nearest")
        fig.colorbar(im, ax=a, fraction=0.046, pad=0.03).ax.tick_params(labelsize=7)
        grey = image_rgb(res.pixels).mean(2)
        if grey.max() > grey.min():  # the image's outline, so the map can be read against it
            a.contour(grey, levels=[0.5 * (grey.min() + grey.max())], colors="black", linewidths=0.7)
        name = names[cls] if cls < len(names) else str(cls)
        a.set_title(f"{kind} class {name}: p={p:.3f}\ndrop of p when covered (blue: rises)", fontsize=8)
    for a in axes:
        a.axis("off")
    fig.suptitle(f"occlusion, {res.window}x{res.window} window, stride {res.stride}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def deconv_figure(res, path, *, crop_boxes: bool = True) -> pathlib.Path:
    """Top row: the unit's top images cut to its receptive field; bottom: their deconvnet projections."""
    plt = pyplot()
    n = len(res.rows)
    fig, axes = plt.subplots(2, max(n, 1), figsize=(1.4 * max(n, 1), 3.3), squeeze=False)
    for i in range(n):
        y0, y1, x0, x1 = res.boxes[i] if crop_boxes else (0, res.pixels.shape[-2], 0, res.pixels.shape[-1])
        axes[0, i].imshow(image_rgb(res.pixels[i][:, y0:y1, x0:x1]), interpolation="nearest")
        axes[0, i].set_title(f"#{int(res.rows[i])}\n{res.values[i]:.2f}", fontsize=7)
        axes[1, i].imshow(signed_rgb(res.projections[i][:, y0:y1, x0:x1]), interpolation="nearest")
    for a in axes.ravel():
        a.axis("off")
    fig.suptitle(f"{res.layer} unit {res.unit}: top images (receptive field) / deconvnet", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def inversion_figure(inv, path) -> pathlib.Path:
    """Per image: the original and the reconstruction from its code, with the code distances."""
    plt = pyplot()
    n = len(inv.rows)
    fig, axes = plt.subplots(2, n, figsize=(2.0 * n, 4.3), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(image_rgb(inv.originals[i]), interpolation="nearest")
        axes[0, i].set_title(f"image {int(inv.rows[i])}", fontsize=8)
        axes[1, i].imshow(image_rgb(inv.images[i]), interpolation="nearest")
        axes[1, i].set_title(f"code dist {inv.distance_start[i]:.3f}\n-> {inv.distance_final[i]:.4f}", fontsize=7)
    for a in axes.ravel():
        a.axis("off")
    fig.suptitle(f"reconstructed from the {inv.layer} code ({inv.steps} steps)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def fooling_figure(f, path, *, class_names=None) -> pathlib.Path:
    """Per image: original, perturbation (diverging, own scale), fooled image, with probabilities."""
    plt = pyplot()
    names = class_names or []
    nm = lambda c: names[c] if c < len(names) else str(c)  # noqa: E731
    n = len(f.rows)
    fig, axes = plt.subplots(n, 3, figsize=(6.6, 2.3 * n + 0.3), squeeze=False)
    for i in range(n):
        c0 = int(f.prob_before[i].argmax())
        c1 = int(f.prob_after[i].argmax())
        axes[i, 0].imshow(image_rgb(f.originals[i]), interpolation="nearest")
        axes[i, 0].set_title(f"image {int(f.rows[i])}: {nm(c0)} p={f.prob_before[i, c0]:.3f}", fontsize=7)
        axes[i, 1].imshow(signed_rgb(f.images[i] - f.originals[i]), interpolation="nearest")
        axes[i, 1].set_title(f"perturbation L2={f.l2[i]:.2f}\nmax |d|={f.linf[i]:.2f}", fontsize=7)
        axes[i, 2].imshow(image_rgb(f.images[i]), interpolation="nearest")
        ok = "" if f.success[i] else " (goal not reached)"
        axes[i, 2].set_title(f"{nm(c1)} p={f.prob_after[i, c1]:.3f}{ok}", fontsize=7)
    for a in axes.ravel():
        a.axis("off")
    fig.suptitle(f"fooled into class {nm(f.target)}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
