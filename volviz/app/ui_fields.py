"""How the page's selects and text fields look, in one place: compact and outlined, no hint line."""

FIELD = {"density": "compact", "hide_details": True, "variant": "outlined"}
#: a field stacked under another (the drawer, the filter menu): space below it
STACKED = {**FIELD, "classes": "mb-3"}
