"""The explorer's page: layout only. Every widget is bound to a state key of
:mod:`volviz.app.state` or to a controller method of :class:`volviz.app.explorer.Explorer`.

```
app bar:   title · main tabs (Volume, Graph, Embedding, Dashboard, Scene, Pruning) · record (Volume tab)
drawer:    volume look: quantity, filter order, colour map, opacity preset + range, density,
           slice planes, outline, reset camera
content:   time bar (tabs with time_bar=True): play/pause, step, slider over the images, speed,
           loop, image order (+ class groups), filter / search / go to (volviz.app.ui_timebar)
           Volume tab: one column per pane: store picker, layer, 3-D view (mouse: rotate /
           zoom / pan), input image (+ saliency switch) + true/predicted class + probability
           bars, 2-D panel tabs (maps, neurons, sorted, importance, preferred inputs)
           Graph / Scene / Pruning tabs: volviz.app.ui_tabs; Embedding: ui_embedding;
           Dashboard: ui_dashboard; the app bar's record controls: ui_record
footer:    app messages
```
A tab's content is in the page only while the tab is chosen (``v-if``): a hidden 3-D view is
never rendered. The main tabs and the 2-D panels come from their registries
(:mod:`volviz.app.tabs`, :func:`volviz.app.panels.register_panel`).
"""

from __future__ import annotations

from trame.ui.vuetify3 import SinglePageWithDrawerLayout
from trame.widgets import html
from trame.widgets import vtk as vtk_widgets
from trame.widgets import vuetify3 as v3

from volviz.app import state as S
from volviz.app.panels import PANELS
from volviz.app.ui_fields import STACKED
from volviz.app.ui_record import record_controls
from volviz.app.ui_timebar import time_bar

pk = S.pane_key
VIEW_MARGIN = 252  # px above and below a lone pane's view: app bar, time bar, pane header, footer


def _js_list(names) -> str:
    """``['a', 'b']``: a list for a template expression (single quotes: it sits in an attribute)."""
    return "[" + ", ".join(f"'{n}'" for n in names) + "]"


def build_ui(app) -> SinglePageWithDrawerLayout:
    server, ctrl, specs = app.server, app.ctrl, app.tab_specs
    with SinglePageWithDrawerLayout(server, theme="dark", width=290) as layout:
        layout.title.set_text("volviz")
        layout.title.style = "flex: 0 0 auto; min-width: max-content;"  # never cut: the tabs make room
        _toolbar(layout, ctrl, specs)
        with layout.drawer:
            with html.Div(v_if=f"{S.APP_TAB} === 'volume'"):
                _volume_controls(ctrl)
            with html.Div(v_else=True, classes="pa-3 text-caption text-grey"):
                _tab_help(specs)
        with layout.content:
            with v3.VContainer(fluid=True, classes="pa-2"):
                with html.Div(v_if=f"{_js_list(s.key for s in specs if s.time_bar)}.includes({S.APP_TAB})"):
                    time_bar(ctrl)
                with v3.VRow(dense=True, v_if=f"{S.APP_TAB} === 'volume'"):
                    for pane in app.panes:
                        with v3.VCol(cols=12, md=12 // len(app.panes)):
                            _pane(pane, wide=len(app.panes) == 1)
                for spec in specs:
                    if spec.layout is not None:
                        with html.Div(v_if=f"{S.APP_TAB} === '{spec.key}'"):
                            spec.layout(app.tabs[spec.key], app.context)
            html.Div(id="volviz-ready", v_if=(S.APP_READY,), style="display: none")
        layout.footer.clear()
        with layout.footer:
            v3.VProgressCircular(indeterminate=("!!trame__busy",), color="#04a94d", size=16, width=3, classes="mr-2")
            html.Span("{{ %s }}" % S.APP_MESSAGE, classes="text-caption text-warning", id="app-message")
            html.Span("{{ %s }}" % S.APP_SESSION, classes="text-caption text-grey ml-3", id="app-session")
            v3.VSpacer()
            html.Span("{{ %s }}" % S.R_STATUS, classes="text-caption", id="record-status")
    return layout


def _toolbar(layout, ctrl, specs) -> None:
    with layout.toolbar:
        with v3.VTabs(v_model=(S.APP_TAB,), density="compact", id="main-tabs", classes="ml-4"):
            for t in specs:
                v3.VTab(t.title, value=t.key, id=f"tab-{t.key}", min_width=0, classes="px-3")
        v3.VSpacer()
        with html.Div(v_if=f"{S.APP_TAB} === 'volume'", classes="d-flex align-center"):
            record_controls(ctrl)


def _tab_help(specs) -> None:
    """The drawer on the other main tabs (their controls are on the tab)."""
    for spec in specs:
        if spec.help:
            html.Div(spec.title, classes="text-subtitle-2 text-white mb-1", v_if=f"{S.APP_TAB} === '{spec.key}'")
            html.Div(spec.help, v_if=f"{S.APP_TAB} === '{spec.key}'")


def _volume_controls(ctrl) -> None:
    with html.Div(classes="pa-3"):
        html.Div("Layer volume", classes="text-subtitle-2 mb-2")
        v3.VSelect(
            v_model=(S.V_QUANTITY,),
            items=(S.ITEMS_QUANTITY, S.QUANTITY_ITEMS),
            label="quantity",
            id="quantity-select",
            **STACKED,
        )
        v3.VSelect(
            v_model=(S.V_ORDER,),
            items=(S.ITEMS_ORDER, S.ORDER_ITEMS),
            label="filter order",
            id="order-select",
            **STACKED,
        )
        v3.VSelect(
            v_if=f"{S.V_ORDER} !== 'natural'",
            v_model=(S.V_FIT,),
            items=(S.ITEMS_FIT, S.FIT_ITEMS),
            label="order fitted",
            **STACKED,
        )
        v3.VSlider(
            v_if=f"{_js_list(S.ORDERS_WITH_CLUSTERS)}.includes({S.V_ORDER})",
            v_model=(S.V_CLUSTERS,),
            min=0,
            max=20,
            step=1,
            label="clusters",
            thumb_label=True,
            hide_details=True,
            density="compact",
            classes="mb-3",
        )
        v3.VSlider(  # the row of the slice-* orders and of the Slice panel ([Jain2016] §3.1.3)
            v_model=(S.V_SLICE_ROW,),
            min=0,
            max=(S.V_SLICE_ROW_MAX,),
            step=1,
            label="slice row",
            thumb_label=True,
            hide_details=True,
            density="compact",
            classes="mb-3",
            id="slice-row-slider",
        )
        v3.VSelect(v_model=(S.V_CMAP,), items=(S.ITEMS_CMAP, S.CMAPS), label="colour map", **STACKED)
        v3.VSelect(v_model=(S.V_OPACITY,), items=(S.ITEMS_OPACITY, S.OPACITIES), label="opacity preset", **STACKED)
        html.Div("transfer function range (% of the layer's range)", classes="text-caption")
        v3.VRangeSlider(
            v_model=(S.V_RANGE,),
            min=0,
            max=100,
            step=1,
            thumb_label=True,
            hide_details=True,
            density="compact",
            classes="mb-2",
        )
        v3.VSlider(
            v_model=(S.V_DENSITY,),
            min=0.1,
            max=4,
            step=0.1,
            label="density",
            thumb_label=True,
            hide_details=True,
            density="compact",
            classes="mb-2",
        )
        v3.VSwitch(
            v_model=(S.V_SLICES,),
            label="slice planes",
            hide_details=True,
            density="compact",
            color="primary",
            id="slices-switch",
        )
        with html.Div(v_if=(S.V_SLICES,)):
            for key, axis in ((S.V_SLICE_X, "x (columns)"), (S.V_SLICE_Y, "y (rows)"), (S.V_SLICE_Z, "z (filters)")):
                v3.VSlider(v_model=(key,), min=0, max=1, step=0.02, label=axis, hide_details=True, density="compact")
        v3.VSwitch(v_model=(S.V_OUTLINE,), label="outline", hide_details=True, density="compact", color="primary")
        v3.VBtn(
            "Reset camera",
            click=ctrl.reset_camera,
            prepend_icon="mdi-camera-retake",
            block=True,
            variant="tonal",
            classes="mt-2",
            id="reset-camera",
        )
        html.Div("Drag: rotate · wheel: zoom · shift+drag: pan", classes="text-caption mt-2 text-grey")


def _pane(pane, wide: bool) -> None:
    """One store: pickers, the 3-D view, and beside it (one pane) or below it (two panes) the
    input image, the class probabilities and the 2-D panels."""
    i = pane.index
    with v3.VCard(classes="pa-2", variant="outlined", id=f"pane-{i}"):
        with html.Div(classes="d-flex align-center"):
            v3.VSelect(
                v_model=(pk(i, "store"),),
                items=(S.APP_STORES,),
                label="store",
                density="compact",
                hide_details=True,
                variant="outlined",
                classes="mr-2",
                id=f"store-select-{i}",
            )
            v3.VSelect(
                v_model=(pk(i, "layer"),),
                items=(pk(i, "layers"),),
                label="layer",
                density="compact",
                hide_details=True,
                variant="outlined",
                id=f"layer-select-{i}",
            )
        with html.Div(classes="d-flex align-center mt-1"):
            html.Div("{{ %s }}" % pk(i, "title"), classes="text-caption text-grey")
            v3.VProgressCircular(
                v_if=(pk(i, "busy"),), indeterminate=True, size=14, width=2, classes="ml-2", id=f"pane-busy-{i}"
            )
            html.Span("preparing ...", v_if=(pk(i, "busy"),), classes="text-caption text-grey ml-1")
        with html.Div(v_if=(pk(i, "group_note"),), classes="text-caption mt-1", id=f"group-{i}"):
            v3.VChip(
                "{{ %s }}" % pk(i, "group"),
                size="small",
                label=True,
                classes="mr-2",
                color=(f"{pk(i, 'correct')} === false ? 'red' : 'amber'",),
            )
            html.Span("{{ %s }}" % pk(i, "group_note"), classes="text-grey")
        v3.VAlert(
            v_if=(pk(i, "error"),),
            text=("%s" % pk(i, "error"),),
            type="error",
            density="compact",
            variant="tonal",
            classes="my-1",
            id=f"pane-error-{i}",
        )
        # one pane: the view and the column beside it fill the window's height (the column scrolls
        # inside when a window is too low for all of it); two panes: below each other
        height = f"calc(100vh - {VIEW_MARGIN}px)" if wide else "50vh"
        with v3.VRow(dense=True, classes="mt-1"):
            with v3.VCol(cols=12, lg=8 if wide else 12):
                with html.Div(
                    style=f"height: {height}; min-height: 300px; position: relative;",
                    id=f"view-{i}",
                    __properties=[("data_shown", "data-shown")],
                    data_shown=(pk(i, "shown"),),
                ):
                    pane.view = vtk_widgets.VtkRemoteView(
                        # while the mouse turns the volume: half-size, lower-quality images
                        pane.plotter.ren_win,
                        ref=f"view{i}",
                        interactive_ratio=0.5,
                        interactive_quality=60,
                        still_quality=92,
                    )
            with v3.VCol(
                cols=12,
                lg=4 if wide else 12,
                id=f"pane-side-{i}",
                style=f"max-height: max(300px, {height}); overflow-y: auto;" if wide else "",
            ):
                with v3.VRow(dense=True):
                    with v3.VCol(cols=12 if wide else 4):
                        _image_info(i, wide)
                    with v3.VCol(cols=12 if wide else 8):
                        _panels(i, wide)


def _image_info(i: int, wide: bool) -> None:
    """The input image with its caption and the saliency switch beside it (one pane) or below it
    (two panes), then the class probabilities."""
    with html.Div(classes="d-flex align-start" if wide else ""):
        html.Img(
            src=(pk(i, "input"),),
            id=f"input-image-{i}",
            style="width: 100%; max-width: 96px; image-rendering: pixelated; border: 1px solid #555;"
            + (" flex: 0 0 96px;" if wide else ""),
            classes="mr-2" if wide else "d-block",
        )
        with html.Div(style="min-width: 0;"):
            html.Div(
                "{{ %s }}" % pk(i, "caption"),
                classes="text-caption",
                id=f"caption-{i}",
                style=(f"{{color: {pk(i, 'correct')} === false ? '#ff6b6b' : 'inherit'}}",),
            )
            v3.VSwitch(
                v_model=(S.SAL_ON,),
                label="saliency",
                hide_details=True,
                density="compact",
                color="orange",
                id=f"saliency-switch-{i}",
                style="flex: 0 0 auto;",
                classes="mr-2",
            )
    v3.VSelect(
        v_if=(S.SAL_ON,),
        v_model=(S.SAL_METHOD,),
        items=(S.ITEMS_SAL, S.SAL_ITEMS),
        label="saliency method",
        density="compact",
        hide_details=True,
        variant="outlined",
        classes="mt-2",
        style="max-width: 320px;",
    )
    html.Div(
        v_if=(pk(i, "sal_note"),),
        children=["{{ %s }}" % pk(i, "sal_note")],
        classes="text-caption text-grey",
        id=f"sal-note-{i}",
    )
    legend = "green: predicted = true · red: wrong prediction · orange: true class"
    with html.Div(classes="mt-1", id=f"probs-{i}", style="clear: both;", title=legend):
        with html.Div(
            v_for=f"(row, k) in {pk(i, 'probs')}",
            key="k",
            style="display: flex; align-items: center; font-size: 11px; height: 13px;",
        ):
            html.Div(
                "{{ row.name }}",
                style="width: 4.5em; text-align: right; padding-right: 4px; overflow: hidden; white-space: nowrap;",
                classes=("{'font-weight-bold': row.true}",),
            )
            with html.Div(style="flex: 1; background: #2a2d34; height: 9px;"):
                html.Div(
                    style=(
                        "{width: row.p + '%', height: '100%', background: row.pred ? "
                        "(row.true ? '#2ecc71' : '#e74c3c') : (row.true ? '#f5b041' : '#5dade2')}",
                    )
                )
            html.Div("{{ row.p.toFixed(1) }}%", style="width: 3.8em; text-align: right;")
        if not wide:  # one pane: the legend is the bars' tooltip (the column must fit a 720 px window)
            html.Div(legend, classes="text-caption text-grey", style="font-size: 10px !important;")


def _panels(i: int, wide: bool = True) -> None:
    # five panels in a third of the page: chips that wrap onto a second line, never cut labels
    with v3.VChipGroup(
        v_model=(S.PANEL_TAB,),
        mandatory=True,
        column=True,
        id=f"panel-tabs-{i}",
        selected_class_="text-primary",
        classes="mt-1",
    ):
        for key, panel in PANELS.items():
            v3.VChip(
                panel.title,
                value=key,
                size="x-small",
                variant="outlined",
                filter=False,
                classes="panel-tab",
                label=True,
            )
    with html.Div(classes="d-flex mt-1", v_if=f"['neurons', 'sorted'].includes({S.PANEL_TAB})"):
        v3.VSelect(
            v_model=(pk(i, "fc_layer"),),
            items=(pk(i, "fc_layers"),),
            label="linear layer",
            density="compact",
            hide_details=True,
            variant="outlined",
            classes="mr-2",
        )
        v3.VSelect(
            v_if=f"{S.PANEL_TAB} === 'sorted'",
            v_model=(pk(i, "sort_class"),),
            items=(pk(i, "classes"),),
            label="sort by weight to",
            density="compact",
            hide_details=True,
            variant="outlined",
        )
    with html.Div(classes="d-flex mt-1", v_if=f"{S.PANEL_TAB} === 'importance'"):
        v3.VSelect(
            v_model=(pk(i, "sort_class"),),
            items=(pk(i, "classes"),),
            label="class (averaged)",
            density="compact",
            hide_details=True,
            variant="outlined",
            id=f"importance-class-{i}",
        )
    fresh = f"{pk(i, 'panel_for')} === {S.PANEL_TAB}"  # never the last tab's picture under this tab's name
    with html.Div(
        v_if=f"{pk(i, 'panel_busy')} && {fresh} && !{pk(i, 'panel')}",  # its slow part, in the background
        id=f"panel-busy-{i}",
        classes="text-caption text-grey mt-2 d-flex align-center",
    ):
        v3.VProgressCircular(indeterminate=True, size=14, width=2, classes="mr-2")
        html.Span("computing in the background: the page goes on meanwhile")
    html.Img(
        v_if=f"{pk(i, 'panel')} && {fresh}",
        src=(pk(i, "panel"),),
        id=f"panel-image-{i}",
        style="width: 100%; object-fit: contain; image-rendering: pixelated; max-height: "
        + (f"max(64px, calc(100vh - {VIEW_MARGIN + 382}px));" if wide else "36vh;"),
        classes="mt-1",
    )
    html.Div("{{ %s }}" % pk(i, "panel_note"), v_if=fresh, classes="text-caption text-grey")
    with html.Div(v_else=True, classes="text-caption text-grey mt-2 d-flex align-center"):
        v3.VProgressCircular(indeterminate=True, size=14, width=2, classes="mr-2")
        html.Span("computing this panel ...")
