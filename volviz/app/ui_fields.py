"""How the page's selects and text fields look, in one place: compact and outlined, no hint line."""

from trame.widgets import vuetify3 as v3

FIELD = {"density": "compact", "hide_details": True, "variant": "outlined"}
#: a field stacked under another (the drawer, the filter menu): space below it
STACKED = {**FIELD, "classes": "mb-3"}


def row_select(*, width: int, **props):
    """A select in a row of controls (a tab's tool row): FIELD, at most ``width`` px, space to its right."""
    return v3.VSelect(style=f"max-width: {width}px", classes="mr-2", **FIELD, **props)
