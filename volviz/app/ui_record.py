"""The app bar's recording controls (Volume tab): mode, images / frames, Record MP4, progress,
cancel, download. Fixed widths: the main tabs give way, never these."""

from __future__ import annotations

from trame.widgets import html
from trame.widgets import vuetify3 as v3

from volviz.app import state as S


def record_controls(ctrl) -> None:
    v3.VSelect(
        v_model=(S.R_MODE,),
        items=(S.ITEMS_RECORD_MODES, S.RECORD_MODES),
        label="record",
        density="compact",
        hide_details=True,
        variant="outlined",
        style="width: 165px; flex: 0 0 auto;",
        classes="mx-2",
        disabled=(S.R_BUSY,),
    )
    v3.VTextField(
        v_if=f"{S.R_MODE} === 'images'",
        v_model_number=(S.R_MAX_IMAGES,),
        type="number",
        label="images",
        min=1,
        density="compact",
        hide_details=True,
        variant="outlined",
        style="width: 84px; flex: 0 0 auto;",  # never squeezed by the tabs
        classes="mx-1",
        id="record-count",
        disabled=(S.R_BUSY,),
    )
    v3.VTextField(
        v_if=f"{S.R_MODE} === 'rotate'",
        v_model_number=(S.R_FRAMES,),
        type="number",
        label="frames",
        min=2,
        density="compact",
        hide_details=True,
        variant="outlined",
        style="width: 84px; flex: 0 0 auto;",  # never squeezed by the tabs
        classes="mx-1",
        id="record-frames",
        disabled=(S.R_BUSY,),
    )
    with v3.VBtn(
        click=ctrl.record,
        disabled=(S.R_BUSY,),
        id="record-btn",
        variant="tonal",
        prepend_icon="mdi-record-rec",
        classes="mx-1",
    ):
        html.Span("Record MP4")
    v3.VProgressLinear(
        v_if=(S.R_BUSY,),
        model_value=(S.R_PROGRESS,),
        color="red",
        height=8,
        rounded=True,
        style="width: 120px; flex: 0 0 auto;",  # the tabs give way, not the bar
        classes="mx-2",
        id="record-progress",
    )
    v3.VBtn(
        v_if=(S.R_BUSY,),
        icon="mdi-stop",
        click=ctrl.cancel_record,
        size="small",
        variant="text",
        title="cancel the recording",
    )
    with html.A(
        v_if=f"{S.R_URL} && !{S.R_BUSY}",
        href=(S.R_URL,),
        download=True,
        id="record-download",
        classes="mx-2 text-decoration-none",
    ):
        v3.VBtn("MP4", prepend_icon="mdi-download", variant="tonal", color="green", title="download the movie")
