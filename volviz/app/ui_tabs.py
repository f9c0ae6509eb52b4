"""Layout of the explorer's Graph, Scene preview and Pruning tabs (layout only; the handlers are
in :mod:`volviz.app.graph_tab`, :mod:`volviz.app.scene_tab`, :mod:`volviz.app.prune_tab`).
Each is ``layout(tab, ctx)`` of a :class:`~volviz.app.tabs.TabSpec`, put inside a ``v-if`` on the
main tab, so a hidden tab's view is not in the page."""

from __future__ import annotations

from trame.widgets import html
from trame.widgets import vtk as vtk_widgets
from trame.widgets import vuetify3 as v3

from volviz.app import state as S
from volviz.app.ui_fields import FIELD, row_select


def pane_select() -> None:
    """Which pane's store the analysis tabs show (only with two stores side by side)."""
    row_select(
        v_if=f"{S.APP_N_PANES} > 1",
        v_model=(S.X_PANE,),
        items=(S.X_PANES,),
        label="store",
        width=260,
    )


def remote_view(plotter, ref: str, **events):
    """A tab's server-rendered view (the same image quality for every tab); ``events``: the
    interactor events it forwards (the Embedding tab's clicks)."""
    return vtk_widgets.VtkRemoteView(
        plotter.ren_win, ref=ref, interactive_ratio=0.5, interactive_quality=60, still_quality=92, **events
    )


def pane_picture(ctx, prefix: str) -> None:
    """The analysed pane's image and caption (pane 0, or pane 1 when chosen), ids ``prefix-...``."""
    two = ctx.n_panes > 1
    pick = (lambda f: f"{S.X_PANE} === 1 ? p1_{f} : p0_{f}") if two else (lambda f: f"p0_{f}")
    html.Img(
        src=(pick("input"),),
        id=f"{prefix}-input",
        style="width: 100%; max-width: 160px; image-rendering: pixelated; border: 1px solid #555;",
    )
    html.Div("{{ %s }}" % pick("caption"), classes="text-caption mt-1", id=f"{prefix}-caption")


def graph_tab(tab, ctx) -> None:
    with v3.VCard(classes="pa-2", variant="outlined", id="graph-pane"):
        with html.Div(classes="d-flex align-center flex-wrap"):
            pane_select()
            row_select(
                v_model=(S.G_COLOR,),
                items=(S.ITEMS_G_COLOR, S.G_COLOR_ITEMS),
                label="node colour",
                id="graph-color",
                width=250,
            )
            row_select(
                v_model=(S.G_THUMBS,),
                items=(S.ITEMS_G_THUMBS, S.G_THUMB_ITEMS),
                label="thumbnails",
                id="graph-thumbs",
                width=210,
            )
            v3.VSwitch(
                v_model=(S.G_SIZE,),
                label="node size = importance",
                color="primary",
                classes="mr-4",
                style="flex: 0 0 auto;",
                id="graph-size",
                hide_details=True,
                density="compact",
            )
            row_select(
                v_model=(S.G_FOCUS,),
                items=(S.G_LAYERS,),
                label="camera",
                id="graph-focus",
                width=180,
            )
            v3.VBtn(
                "Reset camera",
                click=ctx.ctrl.graph_reset_camera,
                prepend_icon="mdi-camera-retake",
                variant="tonal",
                size="small",
            )
        with v3.VRow(dense=True, classes="mt-1"):
            with v3.VCol(cols=12, lg=9):
                with html.Div(
                    style="height: 64vh; min-height: 320px; position: relative;",
                    id="graph-view",
                    __properties=[("data_shown", "data-shown")],
                    data_shown=(S.G_SHOWN,),
                ):
                    tab.view = remote_view(tab.plotter, "graphview")
            with v3.VCol(cols=12, lg=3):
                pane_picture(ctx, "graph")
                html.Div(
                    "Nodes: one per unit (conv channel, linear neuron), on one plane per layer, with "
                    "its preferred input; edges: each unit's strongest incoming weights. The time "
                    "slider plays the images through the graph. Drag: rotate · wheel: zoom.",
                    classes="text-caption text-grey mt-2",
                )
        html.Div("{{ %s }}" % S.G_NOTE, classes="text-caption text-grey mt-1", id="graph-note")


def scene_tab(tab, ctx) -> None:
    with v3.VCard(classes="pa-2", variant="outlined", id="scene-pane"):
        with html.Div(classes="d-flex align-center"):
            row_select(
                v_model=(S.SC_FILE,),
                items=(S.SC_FILES,),
                label="scene file (scenes/*.toml)",
                id="scene-select",
                disabled=(S.SC_BUSY,),
                no_data_text="no scenes/*.toml found",
                width=320,
            )
            with v3.VBtn(
                click=f"{S.SC_PLAYING} = !{S.SC_PLAYING}",
                icon=True,
                size="small",
                variant="text",
                disabled=(f"!{S.SC_DURATION} || {S.SC_BUSY}",),
                id="scene-play",
            ):
                v3.VIcon(f"{{{{ {S.SC_PLAYING} ? 'mdi-pause' : 'mdi-play' }}}}")
            v3.VSlider(
                v_model=(S.SC_T,),
                min=0,
                max=(S.SC_DURATION,),
                step=0.05,
                hide_details=True,
                density="compact",
                classes="mx-3",
                id="scene-slider",
                color="primary",
                disabled=(f"!{S.SC_DURATION} || {S.SC_BUSY}",),
            )
            html.Span(
                f"{{{{ Number({S.SC_T}).toFixed(2) }}}} / {{{{ {S.SC_DURATION} }}}} s",
                classes="text-body-2",
                style="min-width: 8em",
                id="scene-time",
            )
        with html.Div(classes="d-flex align-center my-1"):
            v3.VProgressCircular(v_if=(S.SC_BUSY,), indeterminate=True, size=16, width=2, classes="mr-2")
            html.Span("{{ %s }}" % S.SC_STATUS, classes="text-caption text-grey", id="scene-status")
        with html.Div(
            style="height: 62vh; min-height: 300px; max-width: calc(62vh * 4 / 3); position: relative;",
            id="scene-view",
            __properties=[("data_shown", "data-shown")],
            data_shown=(S.SC_SHOWN,),
        ):
            tab.view = remote_view(tab.plotter, "sceneview")
            with html.Div(
                v_if=f"!{S.SC_SHOWN}",
                id="scene-hint",
                style="position: absolute; inset: 0; display: flex; align-items: center; "
                "justify-content: center; text-align: center; padding: 2em; pointer-events: none;",
                classes="text-body-2 text-grey-lighten-1",
            ):
                html.Span(
                    f"{{{{ {S.SC_BUSY} ? 'preparing the scene ...' : ({S.SC_FILES}.length ? "
                    f"'Choose a scene file above: its movie plays here, the slider is its time.' : "
                    f"'No scene files (scenes/*.toml) were found when the server started.') }}}}"
                )
        html.Div("{{ %s }}" % S.SC_CAPTION, classes="text-caption mt-1", id="scene-caption")
        html.Div(
            "The movie `volviz movie SCENE --out x.mp4` renders, scrubbed here at a small size: camera "
            "path and image series follow the slider.",
            classes="text-caption text-grey",
        )


def prune_tab(tab, ctx) -> None:
    ctrl = ctx.ctrl
    with v3.VCard(classes="pa-2", variant="outlined", id="prune-pane"):
        html.Div(
            "Remove the least / most important filters of a layer (zeroed in a copy of the model) and "
            "sweep a threshold on importance: the error rate of every class ([Jain2016]). Evaluated on the "
            "store's images.",
            classes="text-caption text-grey mb-2",
        )
        with html.Div(classes="d-flex align-center flex-wrap"):
            pane_select()
            row_select(
                v_model=(S.PR_LAYER,),
                items=(S.PR_LAYERS,),
                label="layer",
                id="prune-layer",
                width=160,
            )
            v3.VTextField(
                v_model_number=(S.PR_K,),
                type="number",
                min=1,
                label="k removed",
                style="max-width: 100px",
                classes="mr-2",
                **FIELD,
            )
            row_select(
                v_model=(S.PR_REFERENCE,),
                items=(S.PR_REFERENCES,),
                label="sweep: rank filters by",
                width=300,
            )
            v3.VTextField(
                v_model_number=(S.PR_STEPS,),
                type="number",
                min=1,
                label="thresholds",
                style="max-width: 110px",
                classes="mr-2",
                **FIELD,
            )
            v3.VBtn(
                "Compute",
                click=ctrl.prune_compute,
                disabled=(S.PR_BUSY,),
                prepend_icon="mdi-content-cut",
                variant="tonal",
                color="primary",
                id="prune-compute",
            )
            v3.VBtn(
                v_if=(S.PR_BUSY,), icon="mdi-stop", click=ctrl.prune_cancel, size="small", variant="text", title="stop"
            )
            v3.VProgressLinear(
                v_if=(S.PR_BUSY,),
                model_value=(S.PR_PROGRESS,),
                color="primary",
                height=8,
                rounded=True,
                style="max-width: 200px",
                classes="mx-2",
                id="prune-progress",
            )
        with html.Div(classes="d-flex align-center mt-2"):
            row_select(
                v_model=(S.PR_FOLDER,),
                items=(S.PR_FOLDERS,),
                label="or show a result folder (out/prune)",
                id="prune-dir",
                no_data_text="no result folders yet: press Compute",
                width=620,
            )
            v3.VBtn("Show", click=ctrl.prune_load, prepend_icon="mdi-folder-open", variant="tonal", id="prune-load")
        html.Div("{{ %s }}" % S.PR_STATUS, classes="text-caption text-grey my-1", id="prune-status")
        # the table and the sweep plot side by side on a wide window, below each other otherwise
        with v3.VRow(dense=True):
            with v3.VCol(cols=12, xl=7):
                with html.Div(v_if=f"{S.PR_HEAD}.length", id="prune-result"):
                    html.Div("{{ %s }}" % S.PR_TEXT, classes="text-body-2 mb-1")
                    with v3.VTable(
                        density="compact",
                        id="prune-table",
                        fixed_header=True,
                        height="max(200px, calc(100vh - 360px))",
                        style="font-size: 12px;",
                    ):
                        with html.Thead():
                            with html.Tr():
                                html.Th("{{ h }}", v_for=f"(h, j) in {S.PR_HEAD}", key="j")
                        with html.Tbody():
                            with html.Tr(v_for=f"(row, r) in {S.PR_ROWS}", key="r"):
                                html.Td("{{ c }}", v_for="(c, j) in row", key="j")
            with v3.VCol(cols=12, xl=5):
                with html.Div(v_for=f"(im, k) in {S.PR_IMAGES}", key="k"):
                    html.Div("{{ im.title }}", classes="text-caption")
                    html.Img(
                        src=("im.src",),
                        style="max-width: 100%; max-height: max(200px, calc(100vh - 340px)); background: white;",
                        classes="prune-plot",
                    )
