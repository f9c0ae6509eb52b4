"""The time bar (Volume and Graph tabs): play / pause, step, the slider over the images, speed,
loop, image order (+ class groups), and the filter / search / go-to menu over the image order."""

from __future__ import annotations

from trame.widgets import html
from trame.widgets import vuetify3 as v3

from volviz.app import state as S
from volviz.app.image_filter import MAX_SEARCH
from volviz.app.ui_fields import STACKED


def _filter_menu() -> None:
    """The filter over the image order and "go to image" (volviz.app.image_filter), in a menu so
    the time bar keeps one line; the note under the bar says what the slider walks."""
    with v3.VMenu(close_on_content_click=False, location="top"):
        with v3.Template(v_slot_activator="{ props }"):
            v3.VBtn(
                icon="mdi-filter-variant",
                v_bind="props",
                size="small",
                variant=(f"{S.T_F_NOTE} ? 'tonal' : 'text'",),
                color=(f"{S.T_F_NOTE} ? 'primary' : undefined",),
                classes="ml-1",
                id="filter-btn",
            )
        with v3.VCard(style="width: 340px", classes="pa-3", id="filter-card"):
            v3.VSelect(v_model=(S.T_F_TRUE,), items=(S.T_F_CLASSES,), label="true class", id="filter-true", **STACKED)
            v3.VSelect(
                v_model=(S.T_F_PRED,), items=(S.T_F_CLASSES,), label="predicted class", id="filter-pred", **STACKED
            )
            v3.VSelect(
                v_model=(S.T_F_CORRECT,),
                items=(S.ITEMS_CORRECT, S.CORRECT_ITEMS),
                label="correct / misclassified",
                id="filter-correct",
                **STACKED,
            )
            html.Div(f"top probability {{{{ {S.T_F_PROB}[0] }}}}-{{{{ {S.T_F_PROB}[1] }}}} %", classes="text-caption")
            v3.VRangeSlider(
                v_model=(S.T_F_PROB,), min=0, max=100, step=1, hide_details=True, density="compact", id="filter-prob"
            )
            v3.VTextField(
                model_value=(S.T_F_SEARCH,),
                label="file name contains (Enter)",
                keydown_enter=f"{S.T_F_SEARCH} = $event.target.value.slice(0, {MAX_SEARCH})",
                maxlength=MAX_SEARCH,
                clearable=True,
                click_clear=f"{S.T_F_SEARCH} = ''",
                id="filter-search",
                **STACKED,
            )
            v3.VTextField(
                label="go to image index (Enter)",
                type="number",
                min=0,
                max=(S.T_JUMP_MAX,),
                keydown_enter=(
                    f"{S.T_JUMP} = Math.min(Math.max(parseInt($event.target.value) || 0, 0), {S.T_JUMP_MAX})"
                ),
                id="filter-jump",
                **STACKED,
            )
            v3.VBtn(
                "clear filter",
                click=f"{S.T_F_TRUE} = -1; {S.T_F_PRED} = -1; {S.T_F_CORRECT} = 'all'; "
                f"{S.T_F_PROB} = [0, 100]; {S.T_F_SEARCH} = ''",
                variant="tonal",
                size="small",
                id="filter-clear",
            )


def time_bar(ctrl) -> None:
    with v3.VSheet(classes="d-flex align-center px-2 mb-2", rounded=True, border=True):
        with v3.VBtn(click=ctrl.toggle_play, icon=True, size="small", variant="text", id="play-btn"):
            v3.VIcon(f"{{{{ {S.T_PLAYING} ? 'mdi-pause' : 'mdi-play' }}}}")
        v3.VBtn(icon="mdi-skip-previous", click=ctrl.step_back, size="small", variant="text")
        v3.VBtn(icon="mdi-skip-next", click=ctrl.step_forward, size="small", variant="text")
        v3.VSlider(
            v_model=(S.T_INDEX,),
            min=0,
            max=(S.T_MAX,),
            step=1,
            hide_details=True,
            density="compact",
            thumb_label=True,
            classes="mx-3",
            id="time-slider",
            color="primary",
        )
        html.Span(
            f"{{{{ {S.T_INDEX} + 1 }}}} / {{{{ {S.T_MAX} + 1 }}}}",
            classes="text-body-2 mr-3",
            style="min-width: 5em",
            id="time-label",
        )
        html.Span(
            "{{ %s }}" % S.T_ACTUAL,
            v_if=(S.T_ACTUAL,),
            classes="text-caption mr-2",
            id="time-actual",
            style=(
                f"{{color: {S.T_ACTUAL}.startsWith('reaching') ? '#f5b041' : 'inherit', "
                "maxWidth: '11em', lineHeight: '1.1'}",
            ),
        )
        v3.VSelect(
            v_model=(S.T_SPEED,),
            items=(S.ITEMS_SPEED, S.SPEEDS),
            label="images/s",
            density="compact",
            hide_details=True,
            variant="outlined",
            style="max-width: 110px",
            classes="mr-2",
        )
        v3.VCheckbox(v_model=(S.T_LOOP,), label="loop", hide_details=True, density="compact", style="max-width: 90px")
        v3.VSelect(
            v_model=(S.T_SORT,),
            items=(S.ITEMS_SORT, S.SORT_ITEMS),
            label="image order",
            density="compact",
            hide_details=True,
            variant="outlined",
            style="max-width: 210px",
            id="sort-select",
        )
        _filter_menu()
        html.Span(
            "{{ %s }}" % S.T_F_NOTE,
            v_if=(S.T_F_NOTE,),
            classes="text-caption ml-1",
            id="filter-note",
            style="max-width: 14em; line-height: 1.1",
        )
        with html.Div(v_if=f"{S.T_SORT} === '{S.GROUPS}'", classes="d-flex align-center ml-2"):
            v3.VSelect(
                v_model=(S.T_GROUP_CLASS,),
                items=(S.ITEMS_GROUP_CLASSES,),
                label="reference",
                density="compact",
                hide_details=True,
                variant="outlined",
                style="min-width: 110px",
                id="group-class-select",
            )
            v3.VTextField(
                v_model_number=(S.T_GROUP_N,),
                type="number",
                min=1,
                max=10,
                label="per group",
                density="compact",
                hide_details=True,
                variant="outlined",
                style="max-width: 90px",
                classes="ml-2",
            )
