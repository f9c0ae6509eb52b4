"""`volviz render --slice-row N` / `--slice-col N`: [Jain2016]'s slice figure of one layer and
image (raw, 10-means, 7-means with bars, 20 x 5 means, PCA) and the agreement of that slice's
orders with every other slice's, ``OUT.png`` and ``OUT_agreement.png``."""

from __future__ import annotations

import pathlib

__all__ = ["add_slice_args", "cmd_slices", "wants_slices"]


def add_slice_args(p) -> None:
    """The slice-figure options of `volviz render`."""
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--slice-row",
        type=int,
        metavar="N",
        help="2-D figure of the C x W slice at row N, once per filter order, and OUT_agreement.png",
    )
    g.add_argument("--slice-col", type=int, metavar="N", help="the same for the C x H slice at column N")
    p.add_argument(
        "--slice-agreement",
        default="spearman",
        choices=["spearman", "kendall"],
        help="rank correlation of the agreement plot (default spearman)",
    )


def wants_slices(a) -> bool:
    return getattr(a, "slice_row", None) is not None or getattr(a, "slice_col", None) is not None


def _maps(store, layer: str, quantity: str, image: int):
    """The layer's ``(C, H, W)`` maps for one image, or a one-line error naming the conv layers."""
    from volviz.analysis.slice_orders import SliceError

    if layer not in store.layers:
        raise SliceError(f"layer {layer!r} is not in this store. Layers: {', '.join(store.layers)}")
    shape = tuple(store.layers[layer].act_shape or ())
    maps = [n for n, info in store.layers.items() if len(info.act_shape or ()) == 3]
    if len(shape) != 3:
        raise SliceError(
            f"layer {layer!r} has shape {shape}: a slice figure needs a layer of maps (C x H x W); "
            f"layers with maps: {', '.join(maps) or 'none'}"
        )
    if quantity == "grad_weight":
        raise SliceError("slice figures show activations or grad_activation, not grad_weight")
    return store.read(quantity, layer, image)


def cmd_slices(store, a, layer: str, image: int, out: pathlib.Path) -> list[pathlib.Path]:
    """Write the slice figure and its agreement plot; returns both paths."""
    from volviz.analysis.slice_orders import order_agreement, slice_orders, slice_size
    from volviz.commands.common import check_output
    from volviz.commands.render import caption, target_name
    from volviz.views.colors import QUANTITY_LABELS
    from volviz.views.slice_figures import agreement_figure, agreement_path, slice_figure

    axis, index = ("row", a.slice_row) if a.slice_row is not None else ("col", a.slice_col)
    second = check_output(agreement_path(out), (".png",))  # written next to OUT: fail before any work
    vol = _maps(store, layer, a.quantity, image)
    slice_size(vol.shape, axis)
    so = slice_orders(vol, axis, index)
    what = "row" if axis == "row" else "column"
    C, L = so.matrix.shape
    q = a.quantity + (f" of {target_name(store, image)}" if a.quantity != "activation" else "")
    head = f"{store.plan.model.spec}  {layer}  {q}  {what} {index}: {C} filters x {L}"
    cap = caption(store, image)
    slice_figure(out, so, title=head, caption=cap, bar_label=QUANTITY_LABELS[a.quantity], cmap=a.cmap)
    ag = order_agreement(vol, axis, index, stat=a.slice_agreement)
    agreement_figure(
        second,
        ag,
        title=f"{store.plan.model.spec}  {layer}: do other {what}s give slice {index}'s order?",
        caption=f"{cap};  each {what}'s order fitted on its own slice, compared by rank correlation",
    )
    return [pathlib.Path(out), second]
