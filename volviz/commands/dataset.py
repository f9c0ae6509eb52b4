"""The dataset view on the command line: embed, neighbours, top-examples, occlusion, deconv, invert,
fool, diagnose. Each reads a store made by ``volviz capture``; the ones that run the model load it
only with this command line's --trust-* flags. The work is done in
``volviz.commands.dataset_run``."""

from __future__ import annotations

import argparse

from volviz.commands import dataset_run as R
from volviz.commands.common import add_dask_args, add_trust_args

__all__ = ["register"]

EPILOG = """\
examples (on the digits demo store: volviz capture --out stores/digits):
  volviz embed stores/digits --layer fc1 --method tsne --out fc1_tsne.png
  volviz embed stores/digits --layer conv2 --method umap --dims 3 --colour wrong --out c2.png
  volviz neighbours stores/digits --layer fc1 --image 17 -k 16 --out n17.png
  volviz neighbours stores/digits --image 17 --table
  volviz top-examples stores/digits --layer conv2 -k 9 --out top/
  volviz occlusion stores/digits --image 17 --out occ17.png
  volviz deconv stores/digits --layer conv2 --unit 3 --out deconv3.png
  volviz invert stores/digits --layer conv2 --image 17 --out inv17.png
  volviz fool stores/digits --image 17 --class 3 --out fool17.png
  volviz diagnose stores/digits --out diag/
many images: volviz capture --descriptors fc1 conv2 --descriptors-only --images DIR --out stores/big
(embed and neighbours then read the pooled descriptors; see docs/dataset.md)
"""


# ---- registration -----------------------------------------------------------------------------
def _parser(sub, name: str, help_: str, description: str, model: bool = True) -> argparse.ArgumentParser:
    import textwrap

    p = sub.add_parser(
        name,
        help=help_,
        description=textwrap.fill(description, 100),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store", help="a store made by `volviz capture`")
    if model:
        add_trust_args(p)
    return p


def _add_pool(p) -> None:
    p.add_argument(
        "--pool",
        default="mean",
        choices=["mean", "max", "meanmax"],
        help="a conv layer's descriptor: spatial mean (default), max, or both concatenated",
    )


def register(sub) -> None:
    p = _parser(
        sub,
        "embed",
        "map the images by a layer's descriptors: PCA, t-SNE or UMAP (PNG + store)",
        "Place every captured image on a 2-D or 3-D map so that images the layer describes alike lie "
        "close (a conv layer's maps pooled per channel; a linear layer's outputs as they are). PCA shows "
        "the main directions of variation; t-SNE and UMAP keep neighbourhoods, so classes the layer "
        "separates show as separate groups. The coordinates and their settings are kept in the store "
        "(results/embedding/<layer>) for the app.",
        model=False,
    )
    p.add_argument("--layer", required=True, help="layer whose descriptors are embedded (e.g. fc1)")
    p.add_argument("--method", choices=["pca", "tsne", "umap"], default="tsne", help="default tsne")
    p.add_argument("--dims", type=int, choices=[2, 3], default=2, help="2 (with thumbnails) or 3")
    p.add_argument("--out", required=True, help="PNG file")
    p.add_argument(
        "--colour",
        "--color",
        choices=["auto", "true", "pred", "prob", "wrong"],
        default="auto",
        help="colour by true class, predicted class, top probability, or misclassified; auto: true "
        "class when 2+ classes are labelled, else the prediction",
    )
    p.add_argument("--thumbnails", type=int, default=64, help="images drawn on a 2-D map (default 64, 0: none)")
    p.add_argument("--perplexity", type=float, help="t-SNE perplexity (default min(30, (n-1)/3))")
    p.add_argument("--neighbors", type=int, help="UMAP n_neighbors (default min(15, n-1))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-save", action="store_true", help="do not keep the coordinates in the store")
    _add_pool(p)
    p.set_defaults(func=R.cmd_embed)

    p = _parser(
        sub,
        "neighbours",
        "the images nearest to one image in a layer's descriptor space",
        "Find the k captured images whose descriptors at --layer are nearest to --image's (cosine: "
        "direction only; euclidean: also magnitude) and draw them in a strip, green-framed when they "
        "share the query's class. --table prints, per layer, the share of the k nearest with the "
        "query's class and the same share averaged over all images: where the classes separate.",
        model=False,
    )
    p.add_argument("--layer", help="layer for the strip (required with --out)")
    p.add_argument("--image", required=True, help="store image index (or file name)")
    p.add_argument("-k", type=int, default=16, help="neighbours (default 16)")
    p.add_argument("--metric", choices=["cosine", "euclidean"], default="cosine")
    p.add_argument("--out", help="PNG strip")
    p.add_argument("--table", action="store_true", help="print the per-layer class share of neighbours")
    _add_pool(p)
    p.set_defaults(func=R.cmd_neighbours)

    p = _parser(
        sub,
        "top-examples",
        "each unit's top dataset images, cut to its receptive field",
        "For every unit of --layer, the k captured images on which it fires hardest (conv: its strongest "
        "position), each cut to the input region that activation sees. The region comes from the model: "
        "the pixels where the gradient of that one activation is non-zero. Writes <layer>_top<k>.png "
        "(dead units grey), <layer>_hist.png (score histograms of the 25 strongest units) and "
        "<layer>_top.json.",
    )
    p.add_argument("--layer", required=True)
    p.add_argument("-k", type=int, default=9, help="images per unit (default 9)")
    p.add_argument("--units", type=int, nargs="+", help="only these units")
    p.add_argument("--bins", type=int, default=32, help="histogram bins (default 32)")
    p.add_argument("--out", required=True, help="output folder")
    add_dask_args(p)
    p.set_defaults(func=R.cmd_top)

    p = _parser(
        sub,
        "occlusion",
        "which parts of an image the class probability depends on",
        "Slide a square of the dataset's mean pixel over --image and map how much p(true class) and "
        "p(most probable class) drop when each pixel is covered (captum Occlusion).",
    )
    p.add_argument("--image", required=True, help="store image index (or file name)")
    p.add_argument("--class", dest="cls", help="one class (index or name) instead of true + predicted")
    p.add_argument("--window", type=int, help="square side in pixels (default a quarter of the image)")
    p.add_argument("--stride", type=int, help="step in pixels (default a third of the window)")
    p.add_argument("--out", required=True, help="PNG file")
    p.set_defaults(func=R.cmd_occlusion)

    p = _parser(
        sub,
        "deconv",
        "deconvnet projections of a unit's top activations back to the pixels",
        "For the k images that drive --unit of --layer hardest, project its strongest activation back "
        "to the input (captum Deconvolution: ReLUs pass the positive signal, max-pools route it to the "
        "winner) and show it beside the image region it came from.",
    )
    p.add_argument("--layer", required=True)
    p.add_argument("--unit", type=int, required=True)
    p.add_argument("-k", type=int, default=9, help="top images (default 9)")
    p.add_argument("--out", required=True, help="PNG file")
    p.set_defaults(func=R.cmd_deconv)

    p = _parser(
        sub,
        "invert",
        "reconstruct an image from its code at a layer",
        "Optimize an image (the preferred-input optimizer, weak total variation) until the layer's output "
        "on it matches the one on --image: what survives is what the layer keeps. Prints the relative "
        "code distance ||f(x) - f(x0)|| / ||f(x0)|| at the start and the end.",
    )
    p.add_argument("--layer", required=True)
    p.add_argument("--image", required=True, nargs="+", help="store image index(es) (or file names)")
    p.add_argument("--steps", type=int, default=300, help="optimization steps (default 300)")
    p.add_argument("--tv", type=float, help="total variation weight (default 0.002)")
    p.add_argument("--lr", type=float, help="Adam step (default 0.05)")
    p.add_argument("--param", choices=["pixel", "fourier"], help="image parameterization (default pixel)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="PNG file")
    p.set_defaults(func=R.cmd_invert)

    p = _parser(
        sub,
        "fool",
        "nudge a real image until the model calls it another class",
        "Change --image by small steps along the gradient of log p(--class) until the model gives that "
        "class at least --confidence; prints the perturbation's L2 and max norms (pixels in [0, 1]). "
        "Exit status 1 when an image did not reach the confidence.",
    )
    p.add_argument("--image", required=True, nargs="+", help="store image index(es) (or file names)")
    p.add_argument("--class", dest="cls", required=True, help="target class (index or name)")
    p.add_argument("--confidence", type=float, default=0.95, help="goal for p(class) (default 0.95)")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--step", type=float, default=0.05, help="L2 length of one step in pixels (default 0.05)")
    p.add_argument("--out", required=True, help="PNG file")
    p.set_defaults(func=R.cmd_fool)

    p = _parser(
        sub,
        "diagnose",
        "dead units, sparsity, filter correlation, linear probes, confusion",
        "Per layer: units that never fire on the dataset, the share of activations <= 0, the correlation "
        "of the layer's filters and the share of near-duplicates, and a linear probe (logistic regression "
        "from the layer's descriptors to the true class, held-out accuracy); the confusion table with an "
        "'uncertain' column for images whose top probability is below --threshold.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--layers", nargs="+", help="layers (default: every captured layer)")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="top probability below which a prediction counts as uncertain (default 0.5)",
    )
    p.add_argument(
        "--dup-threshold", type=float, default=0.9, help="filter correlation counted as a near-duplicate (default 0.9)"
    )
    _add_pool(p)
    p.set_defaults(func=R.cmd_diagnose)
