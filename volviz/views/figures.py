"""Matplotlib figures of the gradient analyses, and the report folders with their pictures.

The analyses return numbers and write their tables (:mod:`volviz.analysis.prune_report`,
:mod:`volviz.analysis.importance_report`, :class:`volviz.analysis.class_groups.GroupsReport`); the
pictures are drawn here, so that ``analysis`` never needs matplotlib. ``write_*_report`` write a
report's files and its PNGs into one folder and return the names: what ``volviz prune`` /
``importance`` / ``groups`` and the app's Pruning tab leave behind. Agg backend, no display.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np

from volviz.analysis.report_io import safe_name

__all__ = [
    "importance_figure",
    "sweep_figure",
    "groups_figure",
    "saliency_figure",
    "gradient_mosaic",
    "write_importance_report",
    "write_prune_report",
    "write_groups_report",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> pathlib.Path:
    path = pathlib.Path(path)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


# ---- importance ---------------------------------------------------------------------------------
def importance_figure(
    panels: list[tuple[str, np.ndarray]], path, layout: tuple[int, int], *, title: str = "", cmap: str = "inferno"
):
    """One panel per (title, importance vector): the filters on a ``layout`` grid (rows x cols,
    filter j at (j // cols, j % cols)), one colour scale [0, max] shared by all panels."""
    plt = _pyplot()
    rows, cols = layout
    n_f = len(panels[0][1])
    if rows * cols < n_f:
        raise ValueError(f"a {rows} x {cols} grid cannot hold {n_f} filters")
    vmax = float(max(np.nanmax(v) for _, v in panels)) or 1.0
    k = len(panels)
    pc = min(k, 5)
    pr = math.ceil(k / pc)
    aspect = rows / cols
    fig, axes = plt.subplots(
        pr,
        pc,
        figsize=(2.4 * pc + 1.0, (2.4 * max(aspect, 0.3) + 0.35) * pr + 0.5),
        squeeze=False,
        layout="constrained",
    )
    cm = plt.get_cmap(cmap).with_extremes(bad="white")
    im = None
    for ax in axes.flat:
        ax.axis("off")
    for a, (name, vec) in zip(axes.flat, panels):
        grid = np.full(rows * cols, np.nan)
        grid[:n_f] = vec
        im = a.imshow(grid.reshape(rows, cols), cmap=cm, vmin=0, vmax=vmax, interpolation="nearest")
        a.set_title(name, fontsize=8)
    fig.suptitle(title or f"filter importance ({n_f} filters as {rows} x {cols})", fontsize=10)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.9, label="mean ||dS/dW_j||")
    return _save(fig, path)


def write_importance_report(report, folder) -> list[str]:
    """An :class:`~volviz.analysis.importance_report.ImportanceReport`'s tables and summary, and
    one grid PNG per layer (``views.grid.near_square_grid`` of its filter count)."""
    from volviz.views.grid import near_square_grid

    res = report.result
    for layer in res.layers:
        report.grids.setdefault(layer, near_square_grid(res.per_image[layer].shape[1]))
    names = report.write(folder)
    for layer in res.layers:
        n_f = res.per_image[layer].shape[1]
        rows, cols = report.grids[layer]
        name = f"importance_{safe_name(layer)}.png"
        importance_figure(
            report.panels(layer),
            pathlib.Path(folder) / name,
            (rows, cols),
            title=f"{layer}: mean ||dS/dW_j|| ({n_f} filters as {rows} x {cols}, {res.source})",
        )
        names.append(name)
    return names


# ---- pruning ------------------------------------------------------------------------------------
def sweep_figure(sweep, path, highlight: int | None = None):
    """Two panels: error rate vs threshold, and vs fraction of filters removed; one thin line per
    class, the overall error thick black, the reference class (``highlight``) thick red, and (right
    panel) the control: the same number of filters removed most important first, dashed."""
    plt = _pyplot()
    K = sweep.error.shape[1]
    names = sweep.class_names or [str(c) for c in range(K)]
    cmap = plt.get_cmap("tab10" if K <= 10 else "tab20")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, xs, xl in (
        (axes[0], sweep.thresholds, "importance threshold (filters below it zeroed)"),
        (axes[1], sweep.fraction_removed, "fraction of filters removed"),
    ):
        for c in range(K):
            if not np.isfinite(sweep.error[:, c]).any():  # no image of the class
                continue
            hl = c == highlight
            ax.plot(
                xs,
                100 * sweep.error[:, c],
                color="crimson" if hl else cmap(c % cmap.N),
                lw=2.4 if hl else 0.9,
                alpha=1 if hl else 0.7,
                drawstyle="steps-post",
                label=f"class {names[c]}" + (" (reference)" if hl else ""),
                zorder=3 if hl else 2,
            )
        ax.plot(xs, 100 * sweep.overall, color="black", lw=2.4, drawstyle="steps-post", label="overall", zorder=4)
        if sweep.overall_most_first is not None and ax is axes[1]:
            ax.plot(
                xs,
                100 * sweep.overall_most_first,
                color="black",
                lw=1.6,
                ls="--",
                drawstyle="steps-post",
                label="overall, most important\nremoved first (control)",
                zorder=4,
            )
            if highlight is not None and sweep.error_most_first is not None:
                ax.plot(
                    xs,
                    100 * sweep.error_most_first[:, highlight],
                    color="crimson",
                    lw=1.6,
                    ls="--",
                    drawstyle="steps-post",
                    label=f"class {names[highlight]}, most\nimportant first (control)",
                    zorder=3,
                )
        ax.set_xlabel(xl)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("error rate (%)")
    axes[1].legend(fontsize=7, ncol=2, loc="upper left")
    ref = "mean over all images (each w.r.t. its own class)" if sweep.reference == "all" else f"class {sweep.reference}"
    fig.suptitle(f"{sweep.layer}: {len(sweep.importance)} filters ranked by importance for {ref}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def write_prune_report(report, folder) -> list[str]:
    """A :class:`~volviz.analysis.prune_report.PruneReport`'s CSV and Markdown, and one
    ``sweep_<layer>.png`` per sweep."""
    names = report.write(folder)
    for s in report.sweeps:
        name = f"sweep_{safe_name(s.layer)}.png"
        sweep_figure(s, pathlib.Path(folder) / name, highlight=report.highlight)
        names.append(name)
    return names


# ---- class groups -------------------------------------------------------------------------------
def gradient_mosaic(arr, quantity: str) -> np.ndarray:
    """One step's gradient as a 2-D picture of magnitudes: a weight gradient per filter (L2 over
    the input channels), a Linear layer's per output neuron; an activation gradient per map."""
    from volviz.views.grid import neuron_grid, vis_square

    a = np.asarray(arr, dtype=np.float64)
    if quantity == "grad_weight":
        if a.ndim >= 3:  # (C_out, C_in, kh, kw): per filter, the L2 over input channels
            tiles = np.sqrt((a**2).sum(1))
            if tiles.ndim == 2:
                tiles = tiles[:, None, :]
            return vis_square(tiles, normalize=None)
        if a.ndim == 2:  # Linear: per output neuron, the norm of its row
            return neuron_grid(np.linalg.norm(a, axis=1))
        return neuron_grid(np.abs(a))
    if a.ndim == 3:
        return vis_square(np.abs(a), normalize=None)
    return neuron_grid(np.abs(a).ravel())


def groups_figure(
    groups,
    mosaics: list[np.ndarray],
    clim: float,
    path,
    *,
    title: str = "",
    norms: np.ndarray | None = None,
    cmap: str = "inferno",
):
    """The sequence as a strip of panels (one per time step), all on ONE colour scale [0, clim].
    ``mosaics``: one 2-D array per item (e.g. :func:`gradient_mosaic`; NaN = gap, drawn white)."""
    from volviz.errors import AnalysisError

    plt = _pyplot()
    n = len(mosaics)
    if n == 0:
        raise AnalysisError("the sequence is empty")
    cols = min(n, 6)
    rows = math.ceil(n / cols)
    h, w = mosaics[0].shape[:2]
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.4 * cols + 1.0, (2.4 * h / w + 0.75) * rows + 0.5), squeeze=False, layout="constrained"
    )
    cm = plt.get_cmap(cmap).with_extremes(bad="white")
    im = None
    for ax in axes.flat:
        ax.axis("off")
    for s, (ax, it, m) in enumerate(zip(axes.flat, groups.items, mosaics)):
        im = ax.imshow(m, cmap=cm, vmin=0, vmax=clim or 1.0, interpolation="nearest")
        lab = it.label.replace(" · ", "\n", 1)
        if norms is not None:
            lab += f"\n||grad|| = {norms[s]:.3g}"
        ax.set_title(f"t={s}: {lab}", fontsize=7.5, color="black" if it.correct else "crimson")
    fig.suptitle(title or f"gradients of neuron {groups.name(groups.reference)}: shared scale", fontsize=10)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    return _save(fig, path)


def write_groups_report(report, folder) -> list[str]:
    """A :class:`~volviz.analysis.class_groups.GroupsReport`'s ``sequence.json`` and
    ``groups.png``: per step the gradient magnitude, one scale for the whole strip."""
    gg = report.gradients
    names = report.write(folder)
    mosaics = [gradient_mosaic(a, gg.quantity) for a in gg.arrays]
    if mosaics:
        mclim = float(max(np.nanmax(m) for m in mosaics))
        groups_figure(
            report.groups,
            mosaics,
            mclim,
            pathlib.Path(folder) / "groups.png",
            norms=gg.norms,
            title=f"{gg.layer} {gg.quantity} of {report.differentiated} "
            f"(per-filter magnitude, one scale [0, {mclim:.3g}])",
        )
        names.append("groups.png")
    return names


# ---- saliency -----------------------------------------------------------------------------------
def saliency_figure(
    image: np.ndarray, sal: np.ndarray, path, *, title: str = "", method: str = "saliency", cmap: str = "inferno"
):
    """PNG with three panels: the input, the map, the overlay."""
    from volviz.analysis.saliency import overlay

    plt = _pyplot()
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = img.transpose(1, 2, 0)
    grey = img.ndim == 2 or img.shape[2] == 1
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
    axes[0].imshow(
        img.squeeze() if grey else np.clip(img, 0, 1),
        cmap="gray" if grey else None,
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    axes[0].set_title("input", fontsize=9)
    im = axes[1].imshow(sal, cmap=cmap, vmin=0, interpolation="nearest")
    axes[1].set_title(f"{method}: max_c |A_c|", fontsize=9)
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    axes[2].imshow(overlay(img, sal, cmap=cmap), interpolation="nearest")
    axes[2].set_title("overlay", fontsize=9)
    for a in axes:
        a.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
