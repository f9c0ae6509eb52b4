"""The explorer's state keys (shared by the UI layout and the handlers) and their defaults.

Each browser tab has a session of its own (its own state: slider, layer, order, camera, recordings;
:mod:`volviz.app.sessions`); ``volviz serve --shared`` gives every browser the same one (teaching).
A browser may only set the keys of the page's controls, each checked (:mod:`volviz.app.rules`);
the state never holds an absolute server path: stores, scenes and report folders are ids of the
server's :class:`~volviz.app.catalog.Catalog`, shown by name.

Keys of the whole app have a prefix per concern (``t_`` time slider, ``v_`` volume look, ``r_``
recording, ``panel_`` 2-D panels, ``sal_`` saliency overlay, ``g_`` graph tab, ``sc_`` scene
preview tab, ``pr_`` pruning tab, ``x_`` analysis tabs, ``app_`` status). Keys of one pane (one
store in one column) are ``p{i}_{name}``, made by :func:`pane_key`.
"""

from __future__ import annotations

from volviz.analysis.reorder import REORDERINGS
from volviz.analysis.saliency import SALIENCY_METHODS
from volviz.analysis.sequence import SORTS
from volviz.store.store import QUANTITIES
from volviz.views.colors import OPACITY_PRESETS

# ---- app status -------------------------------------------------------------------------
APP_READY = "app_ready"  # True once the first scene is built: the page shows a marker
APP_MESSAGE = "app_message"  # one line for the whole app (recording errors, ...)
APP_N_PANES = "app_n_panes"
APP_STORES = "app_stores"  # store picker items [{title, value: catalog id}]
APP_SESSION = "app_session"  # a line saying whose session this is (own / shared)
APP_TAB = "app_tab"  # main tab: volume | graph | scene | prune (hidden tabs never render)

# ---- time slider over the images ---------------------------------------------------------
T_INDEX = "t_index"  # position in the image sequence (the slider)
T_MAX = "t_max"  # last position (longest sequence of all panes - 1)
T_PLAYING = "t_playing"
T_SPEED = "t_speed"  # images per second while playing (asked)
T_ACTUAL = "t_actual"  # images per second reached while playing ("" when not playing)
T_LOOP = "t_loop"
T_SORT = "t_sort"  # captured / probability / class / misclassified / groups
T_GROUP_CLASS = "t_group_class"  # class groups order: the reference class (index)
T_GROUP_N = "t_group_n"  # class groups order: images per group (correct / misclassified each)
# the filter over the image order (volviz.app.image_filter): what the slider walks
T_F_TRUE = "t_f_true"  # true class (-1: any)
T_F_PRED = "t_f_pred"  # predicted class (-1: any)
T_F_CORRECT = "t_f_correct"  # all | correct | wrong
T_F_PROB = "t_f_prob"  # [lo, hi] top probability in percent
T_F_SEARCH = "t_f_search"  # file-name text (literal, case-insensitive)
T_F_NOTE = "t_f_note"  # server: "312 of 20,000 images · true 7 · misclassified"
T_F_CLASSES = "t_f_classes"  # server: class select items [{title, value}], "any" = -1 first
T_JUMP = "t_jump"  # store image index to show (-1: none; the server puts it back to -1)
T_JUMP_MAX = "t_jump_max"  # server: the largest store image index of the panes

# ---- layer volume look (applies to every pane) -------------------------------------------
V_QUANTITY = "v_quantity"
V_ORDER = "v_order"
V_FIT = "v_fit"  # "set": one order over the image set; "image": per image
V_CLUSTERS = "v_clusters"  # k-means clusters (0 = automatic)
V_CMAP = "v_cmap"  # "auto" = inferno for activations, RdBu_r for gradients
V_OPACITY = "v_opacity"  # preset name or "auto"
V_RANGE = "v_range"  # [lo, hi] % of the layer's colour range spanned by the transfer functions
V_DENSITY = "v_density"
V_SLICES = "v_slices"
V_SLICE_X = "v_slice_x"
V_SLICE_Y = "v_slice_y"
V_SLICE_Z = "v_slice_z"
V_OUTLINE = "v_outline"
V_SLICE_ROW = "v_slice_row"  # the row of the slice orders and the Slice panel ([Jain2016] §3.1.3)
V_SLICE_ROW_MAX = "v_slice_row_max"  # its bound: the tallest shown layer's height - 1 (set by the server)

# ---- 2-D panels and the saliency overlay on the input image ------------------------------
PANEL_TAB = "panel_tab"
SAL_ON = "sal_on"  # show the saliency map over the input image
SAL_METHOD = "sal_method"  # saliency | integrated-gradients | guided-backprop

# ---- analysis tabs (graph, pruning): which pane's store they show -------------------------
X_PANE = "x_pane"
X_PANES = "x_panes"  # items [{title, value: pane index}]

# ---- graph tab ---------------------------------------------------------------------------
G_COLOR = "g_color"  # node colour: response | importance-class | importance-image
G_SIZE = "g_size"  # node size from importance
G_FOCUS = "g_focus"  # camera: "" (overview) or a layer name
G_LAYERS = "g_layers"  # focus items
G_NOTE = "g_note"  # a line under the graph (thumbnails, importance class, errors)
G_SHOWN = "g_shown"  # what the graph view shows now (tests wait for it)
G_THUMBS = "g_thumbs"  # unit thumbnails: preferred (inputs) | top (dataset examples)

# ---- embedding tab -----------------------------------------------------------------------
E_LAYER = "e_layer"  # layer whose descriptors are embedded
E_LAYERS = "e_layers"  # its items (stored embeddings first)
E_COLOR = "e_color"  # point colour: true | pred | prob | unit
E_UNIT = "e_unit"  # the unit of "unit" colouring
E_UNIT_MAX = "e_unit_max"  # its last index (the layer's units - 1)
E_K = "e_k"  # neighbours of the current image shown
E_NOTE = "e_note"
E_SHOWN = "e_shown"  # what the view shows now (tests wait for it)

# ---- scene preview tab -------------------------------------------------------------------
SC_FILES = "sc_files"  # items: scenes/*.toml listed at launch (values: catalog ids)
SC_FILE = "sc_file"  # the scene shown (its id)
SC_T = "sc_t"  # time in the movie (s)
SC_DURATION = "sc_duration"
SC_PLAYING = "sc_playing"
SC_BUSY = "sc_busy"  # preparing (capture / graph / responses) in a background thread
SC_STATUS = "sc_status"
SC_CAPTION = "sc_caption"
SC_SHOWN = "sc_shown"

# ---- pruning tab -------------------------------------------------------------------------
PR_LAYER = "pr_layer"
PR_LAYERS = "pr_layers"
PR_K = "pr_k"  # filters removed in the least / most table
PR_REFERENCE = "pr_reference"  # sweep ranking: "all" or a class index (as a string)
PR_REFERENCES = "pr_references"
PR_STEPS = "pr_steps"  # thresholds of the sweep (at most)
PR_BUSY = "pr_busy"
PR_PROGRESS = "pr_progress"
PR_STATUS = "pr_status"
PR_FOLDER = "pr_folder"  # the result folder to show (a catalog id)
PR_FOLDERS = "pr_folders"  # its items: folders listed at launch and those this session wrote
PR_TEXT = "pr_text"  # the text above the table
PR_HEAD = "pr_head"  # table header cells
PR_ROWS = "pr_rows"  # table rows (lists of cells)
PR_IMAGES = "pr_images"  # [{title, src}] the sweep plots
PR_SHOWN = "pr_shown"  # the folder shown (its name)

# ---- recording ---------------------------------------------------------------------------
R_MODE = "r_mode"  # images / rotate
R_FRAMES = "r_frames"  # frames of a rotation
R_MAX_IMAGES = "r_max_images"  # images of a time series (from the slider position on)
R_FPS = "r_fps"
R_BUSY = "r_busy"
R_PROGRESS = "r_progress"  # 0..100
R_URL = "r_url"  # download link of the last movie (made by the server)
R_STATUS = "r_status"  # one line: "writing 12/60", "wrote ...", errors

# ---- items of the selects (static lists the layout registers with these keys) ------------
ITEMS_QUANTITY = "items_quantity"
ITEMS_ORDER = "items_order"
ITEMS_FIT = "items_fit"
ITEMS_CMAP = "items_cmap"
ITEMS_OPACITY = "items_opacity"
ITEMS_SPEED = "items_speed"
ITEMS_SORT = "items_sort"
ITEMS_CORRECT = "items_correct"
ITEMS_RECORD_MODES = "items_record_modes"
ITEMS_TABS = "items_tabs"
ITEMS_GROUP_CLASSES = "items_group_classes"
ITEMS_SAL = "items_sal"
ITEMS_G_COLOR = "items_g_color"
ITEMS_E_COLOR = "items_e_color"
ITEMS_G_THUMBS = "items_g_thumbs"

# ---- per pane ----------------------------------------------------------------------------
PANE_FIELDS = (
    "store",  # path of the store shown (store picker)
    "layer",  # layer shown as a volume
    "layers",  # layer select items
    "fc_layer",  # linear layer of the neuron panels
    "fc_layers",  # its items
    "sort_class",  # class the sorted-neuron view sorts by (-1 = the predicted class)
    "classes",  # its items
    "title",  # store name + model
    "caption",  # current image: index, id, true / predicted class
    "correct",  # prediction correct? (None: unlabelled)
    "input",  # current input image as a PNG data URL
    "probs",  # bar chart rows [{name, p, true, pred}]
    "panel",  # current 2-D panel as a PNG data URL
    "panel_note",  # a line under the panel
    "error",  # what went wrong in this pane (empty: nothing)
    "shown",  # what the 3-D view shows now: "layer · quantity · order · image N"
    "group",  # class groups order: the current image's group ("reference 3 · correct")
    "group_note",  # class groups order: which classes, and where the gradients come from
    "sal_note",  # saliency overlay: what the map shows
    "busy",  # a layer / quantity / order is being prepared in the background
    "panel_for",  # the 2-D panel tab the panel image was made for (the page hides a stale one)
    "panel_busy",  # a 2-D panel's slow part is being computed in the background
)


def pane_key(i: int, field: str) -> str:
    """State key of one pane's field: ``pane_key(0, "layer") == "p0_layer"``."""
    if field not in PANE_FIELDS:
        raise KeyError(f"unknown pane field {field!r}")
    return f"p{i}_{field}"


# ---- choices and defaults -----------------------------------------------------------------
QUANTITY_ITEMS = [
    {"title": "activation", "value": "activation"},
    {"title": "gradient w.r.t. activation", "value": "grad_activation"},
    {"title": "gradient w.r.t. weights", "value": "grad_weight"},
]
assert {q["value"] for q in QUANTITY_ITEMS} <= set(QUANTITIES)  # the store keeps more (norms, descriptors)

ORDER_ITEMS = [{"title": r.title, "value": name} for name, r in REORDERINGS.items()]
ORDERS_WITH_CLUSTERS = [name for name, r in REORDERINGS.items() if r.clusters]  # the clusters slider

FIT_ITEMS = [
    {"title": "fixed over the image set", "value": "set"},
    {"title": "per image", "value": "image"},
]
GROUPS = "groups"  # the class-groups image order ([Jain2016] §3.2.2), see volviz.app.groups
CORRECT_ITEMS = [
    {"title": "all", "value": "all"},
    {"title": "correct", "value": "correct"},
    {"title": "misclassified", "value": "wrong"},
]
SORT_ITEMS = [
    {"title": "as captured", "value": "captured"},
    {"title": "by class probability", "value": "probability"},
    {"title": "by true class", "value": "class"},
    {"title": "misclassified first", "value": "misclassified"},
    {"title": "class groups (reference / similar / dissimilar)", "value": GROUPS},
]
assert [s["value"] for s in SORT_ITEMS] == [*SORTS, GROUPS]

SAL_ITEMS = [{"title": m.title, "value": name} for name, m in SALIENCY_METHODS.items()]
G_COLOR_ITEMS = [
    {"title": "response to the image", "value": "response"},
    {"title": "importance, class-averaged", "value": "importance-class"},
    {"title": "importance, this image", "value": "importance-image"},
]
G_THUMB_ITEMS = [
    {"title": "preferred inputs", "value": "preferred"},
    {"title": "top dataset examples", "value": "top"},
]
E_COLOR_ITEMS = [
    {"title": "true class", "value": "true"},
    {"title": "predicted class", "value": "pred"},
    {"title": "top probability", "value": "prob"},
    {"title": "a unit's activation", "value": "unit"},
]

SPEEDS = [1, 2, 4, 8, 15, 30]  # images per second
CMAPS = ["auto", "inferno", "viridis", "magma", "plasma", "cividis", "gray", "hot", "RdBu_r", "coolwarm", "seismic"]
OPACITIES = ["auto", *OPACITY_PRESETS]
RECORD_MODES = [{"title": "step images", "value": "images"}, {"title": "rotate", "value": "rotate"}]

DEFAULTS = {
    APP_READY: False,
    APP_MESSAGE: "",
    APP_N_PANES: 1,
    APP_STORES: [],
    APP_SESSION: "",
    APP_TAB: "volume",
    T_INDEX: 0,
    T_MAX: 0,
    T_PLAYING: False,
    T_SPEED: 4,
    T_ACTUAL: "",
    T_LOOP: True,
    T_SORT: "captured",
    T_GROUP_CLASS: 0,
    T_GROUP_N: 2,
    T_F_TRUE: -1,
    T_F_PRED: -1,
    T_F_CORRECT: "all",
    T_F_PROB: [0, 100],
    T_F_SEARCH: "",
    T_F_NOTE: "",
    T_F_CLASSES: [{"title": "any", "value": -1}],
    T_JUMP: -1,
    T_JUMP_MAX: 0,
    V_QUANTITY: "activation",
    V_ORDER: "natural",
    V_FIT: "set",
    V_CLUSTERS: 0,
    V_CMAP: "auto",
    V_OPACITY: "auto",
    V_RANGE: [0, 100],
    V_DENSITY: 1.0,
    V_SLICES: False,
    V_SLICE_X: 0.5,
    V_SLICE_Y: 0.5,
    V_SLICE_Z: 0.5,
    V_OUTLINE: True,
    V_SLICE_ROW: 0,
    V_SLICE_ROW_MAX: 0,
    PANEL_TAB: "maps",
    ITEMS_GROUP_CLASSES: [],
    SAL_ON: False,
    SAL_METHOD: "saliency",
    X_PANE: 0,
    X_PANES: [],
    G_COLOR: "response",
    G_SIZE: False,
    G_FOCUS: "",
    G_LAYERS: [],
    G_NOTE: "",
    G_SHOWN: "",
    G_THUMBS: "preferred",
    E_LAYER: None,
    E_LAYERS: [],
    E_COLOR: "true",
    E_UNIT: 0,
    E_UNIT_MAX: 0,
    E_K: 8,
    E_NOTE: "",
    E_SHOWN: "",
    SC_FILES: [],
    SC_FILE: None,
    SC_T: 0.0,
    SC_DURATION: 0.0,
    SC_PLAYING: False,
    SC_BUSY: False,
    SC_STATUS: "",
    SC_CAPTION: "",
    SC_SHOWN: "",
    PR_LAYER: None,
    PR_LAYERS: [],
    PR_K: 1,
    PR_REFERENCE: "all",
    PR_REFERENCES: [],
    PR_STEPS: 20,
    PR_BUSY: False,
    PR_PROGRESS: 0,
    PR_STATUS: "",
    PR_FOLDER: None,
    PR_FOLDERS: [],
    PR_TEXT: "",
    PR_HEAD: [],
    PR_ROWS: [],
    PR_IMAGES: [],
    PR_SHOWN: "",
    R_MODE: "images",
    R_FRAMES: 48,
    R_MAX_IMAGES: 40,
    R_FPS: 8,
    R_BUSY: False,
    R_PROGRESS: 0,
    R_URL: "",
    R_STATUS: "",
}

PANE_DEFAULTS = {
    "store": "",
    "layer": None,
    "layers": [],
    "fc_layer": None,
    "fc_layers": [],
    "sort_class": -1,
    "classes": [],
    "title": "",
    "caption": "",
    "correct": None,
    "input": "",
    "probs": [],
    "panel": "",
    "panel_note": "",
    "error": "",
    "shown": "",
    "group": "",
    "group_note": "",
    "sal_note": "",
    "busy": False,
    "panel_for": "",
    "panel_busy": False,
}
assert set(PANE_DEFAULTS) == set(PANE_FIELDS)
