"""The Dashboard tab's state keys (``db_`` the dashboard, ``lv_`` live input), their defaults, and
the checks on what a browser may set (merged into :func:`volviz.app.rules.client_rules`).

Live frames and uploads arrive as data URLs in ``lv_frame`` / ``lv_upload``: a string of at most
:data:`~volviz.app.live.MAX_FRAME_CHARS` that starts ``data:``; what it holds is checked when it
is decoded (:func:`volviz.app.live.decode_frame`).
"""

from __future__ import annotations

from volviz.app import state as S
from volviz.app.live import MAX_FRAME_CHARS
from volviz.app.security import Refused

# ---- what drives the dashboard, and the live input -------------------------------------------
DB_SOURCE = "db_source"  # slider | camera | upload | video
LV_FRAME = "lv_frame"  # a webcam frame from the page (data URL)
LV_UPLOAD = "lv_upload"  # an uploaded image from the page (data URL)
LV_CLIENT_ERROR = "lv_client_error"  # what the page could not do (camera refused, unreadable file)
LV_RATE = "lv_rate"  # webcam frames per second the page sends (at most)
LV_VIDEO = "lv_video"  # the video to play (an index of lv_videos)
LV_VIDEOS = "lv_videos"  # items: the videos behind the store's images (server's files)
LV_PLAYING = "lv_playing"
LV_STATS = "lv_stats"  # frames/s reached, latency, shown / dropped

# ---- the dashboard's choices -------------------------------------------------------------------
DB_VIEW = "db_view"  # generic | fc
DB_CONV_A, DB_CONV_B, DB_FC = "db_conv_a", "db_conv_b", "db_fc"
DB_CONVS, DB_FCS = "db_convs", "db_fcs"  # layer items
DB_SEL_A, DB_SEL_B, DB_SEL_FC = "db_sel_a", "db_sel_b", "db_sel_fc"  # "0-15", "3, 7"
DB_ROWS_A, DB_ROWS_B, DB_ROWS_FC = "db_rows_a", "db_rows_b", "db_rows_fc"  # 0: near square
DB_CMAP_A, DB_CMAP_B, DB_CMAP_FC = "db_cmap_a", "db_cmap_b", "db_cmap_fc"
DB_CLASS = "db_class"  # FC-only view: sort by this class (-1: the predicted one)
DB_CLASSES = "db_classes"

# ---- what the server shows -----------------------------------------------------------------------
DB_IMAGE = "db_image"  # the dashboard picture (PNG data URL)
DB_PRED = "db_pred"  # "7 (99.8%)": the predicted class of the picture shown (tests wait for it)
DB_SHOWN = "db_shown"  # pictures made so far
DB_ERROR = "db_error"  # the last refused frame or choice (one line)
DB_BUSY = "db_busy"

# ---- the dashboard movie -----------------------------------------------------------------------
DB_R_IMAGES = "db_r_images"  # images of the movie, from the slider position on
DB_R_BUSY, DB_R_PROGRESS, DB_R_STATUS, DB_R_URL = "db_r_busy", "db_r_progress", "db_r_status", "db_r_url"

SOURCES = ["slider", "camera", "upload", "video"]
VIEWS = [{"title": "generic", "value": "generic"}, {"title": "FC only, sorted", "value": "fc"}]
MAX_ROWS = 64
MAX_SELECTION_CHARS = 120
MAX_RATE = 15

DEFAULTS = {
    DB_SOURCE: "slider",
    LV_FRAME: "",
    LV_UPLOAD: "",
    LV_CLIENT_ERROR: "",
    LV_RATE: 8,
    LV_VIDEO: None,
    LV_VIDEOS: [],
    LV_PLAYING: False,
    LV_STATS: "",
    DB_VIEW: "generic",
    DB_CONV_A: None,
    DB_CONV_B: None,
    DB_FC: None,
    DB_CONVS: [],
    DB_FCS: [],
    DB_SEL_A: "",
    DB_SEL_B: "",
    DB_SEL_FC: "",
    DB_ROWS_A: 0,
    DB_ROWS_B: 0,
    DB_ROWS_FC: 0,
    DB_CMAP_A: "auto",
    DB_CMAP_B: "auto",
    DB_CMAP_FC: "auto",
    DB_CLASS: -1,
    DB_CLASSES: [],
    DB_IMAGE: "",
    DB_PRED: "",
    DB_SHOWN: 0,
    DB_ERROR: "",
    DB_BUSY: False,
    DB_R_IMAGES: 20,
    DB_R_BUSY: False,
    DB_R_PROGRESS: 0,
    DB_R_STATUS: "",
    DB_R_URL: "",
}


def _data_url(value, _state):
    if value == "":
        return value
    if not isinstance(value, str) or not value.startswith("data:") or len(value) > MAX_FRAME_CHARS:
        raise Refused(f"a frame must be a data URL of at most {MAX_FRAME_CHARS // 1024} KiB")
    return value


def _selection(value, _state):
    ok = set("0123456789,- ;")
    if not isinstance(value, str) or len(value) > MAX_SELECTION_CHARS or not set(value) <= ok:
        raise Refused(f"a selection is indices and ranges such as 0-15, 20 (at most {MAX_SELECTION_CHARS} chars)")
    return value


def _client_text(value, _state):
    if not isinstance(value, str):
        raise Refused("expected a line of text")
    return value[:200]


def dashboard_rules() -> dict:
    """``{key: check}`` for the Dashboard tab's controls."""
    from volviz.app.rules import MAX_RECORD_FRAMES, boolean, integer, item_of, one_of

    cmap = one_of(S.CMAPS)
    return {
        DB_SOURCE: one_of(SOURCES),
        LV_FRAME: _data_url,
        LV_UPLOAD: _data_url,
        LV_CLIENT_ERROR: _client_text,
        LV_RATE: integer(1, MAX_RATE),
        LV_VIDEO: item_of(LV_VIDEOS, nullable=True),
        LV_PLAYING: boolean,
        DB_VIEW: one_of([v["value"] for v in VIEWS]),
        DB_CONV_A: item_of(DB_CONVS, nullable=True),
        DB_CONV_B: item_of(DB_CONVS, nullable=True),
        DB_FC: item_of(DB_FCS, nullable=True),
        DB_SEL_A: _selection,
        DB_SEL_B: _selection,
        DB_SEL_FC: _selection,
        DB_ROWS_A: integer(0, MAX_ROWS),
        DB_ROWS_B: integer(0, MAX_ROWS),
        DB_ROWS_FC: integer(0, MAX_ROWS),
        DB_CMAP_A: cmap,
        DB_CMAP_B: cmap,
        DB_CMAP_FC: cmap,
        DB_CLASS: item_of(DB_CLASSES),
        DB_R_IMAGES: integer(1, MAX_RECORD_FRAMES),
    }
