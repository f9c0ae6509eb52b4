"""PNG figures of ``volviz diagnose`` (volviz.analysis.dataset.diagnostics results in, files out):
first-layer filters as colour tiles, the probe curve, dead units and sparsity, filter
correlation, the confusion table with its *uncertain* column."""

from __future__ import annotations

import pathlib

import numpy as np

from .colors import DIVERGING_CMAP
from .dataset_figures import pyplot, save_figure, signed_rgb
from .grid import near_square_grid, save_png, tile_mosaic

__all__ = ["filters_figure", "probe_figure", "dead_sparsity_figure", "correlation_figure", "confusion_figure"]


def filters_figure(weight: np.ndarray, path, *, title: str = "") -> pathlib.Path:
    """A first conv layer's filters ``(U, C, k, k)`` as colour tiles: RGB filters in their own
    colours (0 = grey), others by their channel mean on the diverging colormap."""
    w = np.asarray(weight, np.float64)
    m = float(np.abs(w).max()) or 1.0
    tiles = np.stack([signed_rgb(f, m) for f in w])
    r, c = near_square_grid(len(tiles))
    img = np.round(np.nan_to_num(tile_mosaic(tiles, r, c, gap=1, fill=0.25), nan=0.25) * 255).astype(np.uint8)
    return save_png(path, img, min_size=512)


def probe_figure(diag, path) -> pathlib.Path:
    plt = pyplot()
    layers = [d for d in diag.layers if d.probe_accuracy is not None]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = np.arange(len(layers))
    ax.plot(x, [d.probe_accuracy for d in layers], "o-", label="held-out")
    ax.plot(x, [d.probe_train_accuracy for d in layers], "o--", alpha=0.6, label="train")
    if diag.chance is not None:
        ax.axhline(diag.chance, color="0.5", lw=0.8, ls=":", label="most common class")
    ax.set_xticks(x, [d.layer for d in layers], rotation=30, fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("linear probe accuracy")
    ax.legend(fontsize=8)
    ax.set_title("how linearly separable the classes are at each layer", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def dead_sparsity_figure(diag, path) -> pathlib.Path:
    plt = pyplot()
    ls = diag.layers
    x = np.arange(len(ls))
    fig, ax = plt.subplots(figsize=(6, 3.4))
    dead = [np.mean(d.dead) if d.dead is not None else np.nan for d in ls]
    sp = [np.mean(d.sparsity) if d.sparsity is not None else np.nan for d in ls]
    ax.bar(x - 0.2, dead, 0.4, label="dead units (share)", color="0.35")
    ax.bar(x + 0.2, sp, 0.4, label="activations <= 0 (share)", color="tab:blue")
    for i, d in enumerate(ls):
        if d.dead is not None:
            ax.text(i - 0.2, dead[i] + 0.02, f"{int(d.dead.sum())}/{d.n_units}", ha="center", fontsize=7)
    ax.set_xticks(x, [d.layer for d in ls], rotation=30, fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def correlation_figure(corr: np.ndarray, layer: str, dup: float, path) -> pathlib.Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    im = ax.imshow(corr, cmap=DIVERGING_CMAP, vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, label="Pearson r of the weights")
    ax.set_title(f"{layer}: filter correlation, {dup:.0%} near-duplicates", fontsize=9)
    ax.set_xlabel("unit", fontsize=8)
    ax.set_ylabel("unit", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def confusion_figure(diag, path) -> pathlib.Path:
    plt = pyplot()
    conf = diag.confusion
    k = len(conf)
    fig, ax = plt.subplots(figsize=(0.5 * k + 2.5, 0.45 * k + 1.8))
    shown = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    ax.imshow(shown, cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        for i in range(k):
            for j in range(k + 1):
                if conf[i, j]:
                    ax.text(
                        j,
                        i,
                        str(conf[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if shown[i, j] > 0.5 else "black",
                    )
    ax.axvline(k - 0.5, color="black", lw=1.5)
    names = diag.class_names
    ax.set_xticks(range(k + 1), names + ["uncertain"], rotation=90 if k > 10 else 45, fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    ax.set_xlabel(f"predicted (uncertain: top probability < {diag.threshold:g})", fontsize=8)
    ax.set_ylabel("true class", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
