"""The "Slice" 2-D panel: [Jain2016] section 3.1.3's slice figure of the pane's layer for the
current image, at the row chosen by the drawer's *slice row* slider (which also picks the row the
3-D view's slice-PCA / slice-k-means orders are fitted on).

Like the other panels it is pixels only (the browser scales them up with sharp pixels) and the
words go in the note under it: the five panels of ``volviz render --slice-row`` side by side, one
colour scale, white bars between the 7-means clusters. The agreement plot fits the orders of
every row (H times the work of one), so it is left to ``volviz render --slice-row``.
"""

from __future__ import annotations

from volviz.analysis.slice_orders import SliceError, slice_orders
from volviz.app.panels import PanelContext, PanelImage, register_panel

__all__ = ["slice_panel"]


def slice_panel(ctx: PanelContext) -> PanelImage:
    lv = ctx.volume
    if lv.kind != "maps" or lv.volume.ndim != 3 or lv.volume.shape[1] < 2:
        return PanelImage(
            None,
            f"{ctx.layer}: the Slice panel shows a layer of 2-D maps (C x H x W); pick a conv layer "
            "(and the activation or dS/da quantity)",
        )
    from volviz.views.slice_figures import DEFAULT_CMAP, slice_mosaic

    height = lv.volume.shape[1]
    asked = int(ctx.slice_row or 0)
    row = min(max(asked, 0), height - 1)
    try:
        so = slice_orders(lv.volume, "row", row)
    except SliceError as exc:
        return PanelImage(None, str(exc))
    rgb, spans, (lo, hi) = slice_mosaic(so, panel_width=72)
    C, W = so.matrix.shape
    clamped = f" (slider at {asked}: this layer has rows 0..{height - 1})" if asked != row else ""
    names = []
    for p in so.panels:
        if p.key == "raw":
            names.append("raw")
        elif p.bars:
            names.append(f"{p.title} with white bars between its {p.n_clusters} clusters")
        elif p.key == "pca":
            names.append("PCA")
        else:
            names.append(f"{p.title} ({p.detail})")
    note = (
        f"{ctx.layer} row {row}{clamped}: the {C} filters x {W} columns slice, rows reordered; left to "
        f"right: {' · '.join(names)}. Colour {DEFAULT_CMAP} {lo:.3g}..{hi:.3g}. Agreement across rows: "
        f"volviz render --slice-row {row}"
    )
    data = {
        "row": row,
        "orders": {p.key: p.order.tolist() for p in so.panels},
        "boundaries": {p.key: p.boundaries.tolist() for p in so.panels},
        "spans": spans,
    }
    return PanelImage(rgb, note, data)


register_panel("slice", "Slice", slice_panel)
