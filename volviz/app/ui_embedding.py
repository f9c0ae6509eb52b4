"""Layout of the explorer's Embedding tab (layout only; the handlers are in
:mod:`volviz.app.embedding_tab`): layer, colour, unit and neighbour controls above the 3-D view,
the analysed pane's image and caption beside it. A click on the view (press and release at the
same place) picks the thumbnail under the mouse; a drag rotates."""

from __future__ import annotations

from trame.widgets import html
from trame.widgets import vuetify3 as v3

from volviz.app import state as S
from volviz.app.ui_fields import FIELD, row_select
from volviz.app.ui_tabs import pane_picture, pane_select, remote_view


def embedding_tab(tab, ctx) -> None:
    ctrl = ctx.ctrl
    with v3.VCard(classes="pa-2", variant="outlined", id="embedding-pane"):
        with html.Div(classes="d-flex align-center flex-wrap"):
            pane_select()
            row_select(
                v_model=(S.E_LAYER,),
                items=(S.E_LAYERS,),
                label="layer",
                id="embedding-layer",
                no_data_text="this store keeps no activations",
                width=260,
            )
            row_select(
                v_model=(S.E_COLOR,),
                items=(S.ITEMS_E_COLOR, S.E_COLOR_ITEMS),
                label="colour",
                id="embedding-color",
                width=200,
            )
            v3.VTextField(
                v_if=f"{S.E_COLOR} === 'unit'",
                v_model_number=(S.E_UNIT,),
                type="number",
                min=0,
                max=(S.E_UNIT_MAX,),
                label="unit",
                style="max-width: 90px",
                classes="mr-2",
                id="embedding-unit",
                **FIELD,
            )
            v3.VTextField(
                v_model_number=(S.E_K,),
                type="number",
                min=0,
                max=32,
                label="neighbours",
                style="max-width: 110px",
                classes="mr-2",
                **FIELD,
            )
            v3.VBtn(
                "Reset camera",
                click=ctrl.embedding_reset_camera,
                prepend_icon="mdi-camera-retake",
                variant="tonal",
                size="small",
            )
        with v3.VRow(dense=True, classes="mt-1"):
            with v3.VCol(cols=12, lg=9):
                with html.Div(
                    style="height: 64vh; min-height: 320px; position: relative;",
                    id="embedding-view",
                    __properties=[("data_shown", "data-shown")],
                    data_shown=(S.E_SHOWN,),
                ):
                    tab.view = remote_view(
                        tab.plotter,
                        "embeddingview",
                        interactor_events=("events", ["LeftButtonPress", "LeftButtonRelease"]),
                        LeftButtonPress=(ctrl.embedding_press, "[utils.vtk.event($event)]"),
                        LeftButtonRelease=(ctrl.embedding_release, "[utils.vtk.event($event)]"),
                    )
            with v3.VCol(cols=12, lg=3):
                pane_picture(ctx, "embedding")
                html.Div(
                    "One thumbnail per image at its place in the layer's map, framed in its colour. The "
                    "current image is drawn large in a white frame, its nearest neighbours in the layer "
                    "framed orange and joined to it. Click a thumbnail: it becomes the current image. "
                    "Drag: rotate · wheel: zoom.",
                    classes="text-caption text-grey mt-2",
                )
        html.Div("{{ %s }}" % S.E_NOTE, classes="text-caption text-grey mt-1", id="embedding-note")
