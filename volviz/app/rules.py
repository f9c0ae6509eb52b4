"""The state keys a browser may set (the controls of the page) and what each accepts.

Everything else in the state is the server's: images, captions, URLs, lists, statuses. A check
is ``check(value, state) -> value`` raising :class:`~volviz.app.security.Refused`; choices are
read from the state's own item lists (a layer of ``p0_layers``, an id of the store picker), so a
client can only pick what the server offered.
"""

from __future__ import annotations

import math

from volviz.app import state as S
from volviz.app.image_filter import MAX_SEARCH
from volviz.app.security import Refused

__all__ = ["client_rules", "MAX_RECORD_FRAMES", "MAX_RECORD_SECONDS", "MAX_PRUNE_STEPS", "MAX_PRUNE_K"]

MAX_RECORD_FRAMES = 900  # frames of one recording (images or rotation)
MAX_RECORD_SECONDS = 300.0  # and its length at the chosen frames per second
MAX_PRUNE_STEPS = 100  # thresholds of one pruning sweep
MAX_PRUNE_K = 256
MAX_GROUP_N = 20
MAX_EMBED_K = 32  # neighbours the Embedding tab shows


def boolean(value, _state):
    if not isinstance(value, bool):
        raise Refused("expected true or false")
    return value


def integer(lo: int, hi: int | str):
    """An integer in ``lo..hi`` (``hi`` a number or a state key holding it)."""

    def check(value, state):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or int(value) != value
        ):
            raise Refused("expected a whole number")
        top = int(state[hi]) if isinstance(hi, str) else hi
        if not lo <= int(value) <= top:
            raise Refused(f"{int(value)} is out of range {lo}..{top}")
        return int(value)

    return check


def number(lo: float, hi: float | str):
    def check(value, state):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise Refused("expected a number")
        top = float(state[hi] or 0) if isinstance(hi, str) else hi
        if not lo <= value <= top:
            raise Refused(f"{value} is out of range {lo}..{top}")
        return value

    return check


def text(max_len: int):
    """A string of at most ``max_len`` printable characters (used literally, never as a pattern)."""

    def check(value, _state):
        if not isinstance(value, str):
            raise Refused("expected text")
        if len(value) > max_len or not value.isprintable():
            raise Refused(f"at most {max_len} printable characters")
        return value

    return check


def pair(lo: float, hi: float):
    one = number(lo, hi)

    def check(value, state):
        if not isinstance(value, list) or len(value) != 2:
            raise Refused("expected two numbers")
        return [one(v, state) for v in value]

    return check


def one_of(values, nullable: bool = False):
    allowed = list(values)

    def check(value, _state):
        if value is None and nullable:
            return None
        if isinstance(value, bool) or value not in allowed:
            raise Refused(f"{str(value)[:40]!r} is not one of the choices")
        return value

    return check


def item_of(items_key: str, nullable: bool = False, extra=()):
    """A ``value`` of the select items the server put in ``state[items_key]``."""

    def check(value, state):
        if value is None and nullable:
            return None
        items = state[items_key] or []
        values = [it.get("value") if isinstance(it, dict) else it for it in items]
        if isinstance(value, bool) or (value not in values and value not in extra):
            raise Refused(f"{str(value)[:40]!r} is not one of the choices the server offered")
        return value

    return check


def _values(items) -> list:
    return [it["value"] if isinstance(it, dict) else it for it in items]


def client_rules(n_panes: int, tabs, panels) -> dict:
    """``{key: check}`` for the controls of a page with ``n_panes`` panes, the main ``tabs`` and the
    2-D ``panels`` (keys)."""
    rules = {
        S.APP_TAB: one_of(tabs),
        S.T_INDEX: integer(0, S.T_MAX),
        S.T_SPEED: one_of(S.SPEEDS),
        S.T_LOOP: boolean,
        S.T_SORT: one_of(_values(S.SORT_ITEMS)),
        S.T_GROUP_CLASS: item_of(S.ITEMS_GROUP_CLASSES),
        S.T_GROUP_N: integer(1, MAX_GROUP_N),
        S.T_F_TRUE: item_of(S.T_F_CLASSES),
        S.T_F_PRED: item_of(S.T_F_CLASSES),
        S.T_F_CORRECT: one_of(_values(S.CORRECT_ITEMS)),
        S.T_F_PROB: pair(0, 100),
        S.T_F_SEARCH: text(MAX_SEARCH),
        S.T_JUMP: integer(-1, S.T_JUMP_MAX),
        S.V_QUANTITY: one_of(_values(S.QUANTITY_ITEMS)),
        S.V_ORDER: one_of(_values(S.ORDER_ITEMS)),
        S.V_FIT: one_of(_values(S.FIT_ITEMS)),
        S.V_CLUSTERS: integer(0, 20),
        S.V_CMAP: one_of(S.CMAPS),
        S.V_OPACITY: one_of(S.OPACITIES),
        S.V_RANGE: pair(0, 100),
        S.V_DENSITY: number(0.1, 4.0),
        S.V_SLICES: boolean,
        S.V_SLICE_X: number(0.0, 1.0),
        S.V_SLICE_Y: number(0.0, 1.0),
        S.V_SLICE_Z: number(0.0, 1.0),
        S.V_OUTLINE: boolean,
        S.V_SLICE_ROW: integer(0, S.V_SLICE_ROW_MAX),
        S.PANEL_TAB: one_of(panels),
        S.SAL_ON: boolean,
        S.SAL_METHOD: one_of(_values(S.SAL_ITEMS)),
        S.X_PANE: integer(0, max(0, n_panes - 1)),
        S.G_COLOR: one_of(_values(S.G_COLOR_ITEMS)),
        S.G_SIZE: boolean,
        S.G_FOCUS: item_of(S.G_LAYERS, extra=("",)),
        S.G_THUMBS: one_of(_values(S.G_THUMB_ITEMS)),
        S.E_LAYER: item_of(S.E_LAYERS, nullable=True),
        S.E_COLOR: one_of(_values(S.E_COLOR_ITEMS)),
        S.E_UNIT: integer(0, S.E_UNIT_MAX),
        S.E_K: integer(0, MAX_EMBED_K),
        S.SC_FILE: item_of(S.SC_FILES, nullable=True),
        S.SC_T: number(0.0, S.SC_DURATION),
        S.SC_PLAYING: boolean,
        S.PR_LAYER: item_of(S.PR_LAYERS, nullable=True),
        S.PR_K: integer(1, MAX_PRUNE_K),
        S.PR_REFERENCE: item_of(S.PR_REFERENCES),
        S.PR_STEPS: integer(1, MAX_PRUNE_STEPS),
        S.PR_FOLDER: item_of(S.PR_FOLDERS, nullable=True),
        S.R_MODE: one_of(_values(S.RECORD_MODES)),
        S.R_MAX_IMAGES: integer(1, MAX_RECORD_FRAMES),
        S.R_FRAMES: integer(2, MAX_RECORD_FRAMES),
    }
    from volviz.app.dashboard_keys import dashboard_rules

    rules.update(dashboard_rules())
    for i in range(n_panes):
        rules[S.pane_key(i, "store")] = item_of(S.APP_STORES)
        rules[S.pane_key(i, "layer")] = item_of(S.pane_key(i, "layers"))
        rules[S.pane_key(i, "fc_layer")] = item_of(S.pane_key(i, "fc_layers"), nullable=True)
        rules[S.pane_key(i, "sort_class")] = item_of(S.pane_key(i, "classes"))
    return rules
