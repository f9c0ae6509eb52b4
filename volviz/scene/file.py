"""Reading a scene file: TOML in, a checked :class:`Scene` out, with paths resolved.

Every mistake in a scene is reported here, with the file and the key, before anything is
captured or rendered; a scene is data someone may have sent, so it may not point its store
outside its folder unless told to (see :func:`load_scene`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from volviz.errors import SceneError

__all__ = ["VIEWS", "Scene", "SeriesSpec", "load_scene"]

VIEWS = ("overview", "layer", "orbit", "unit", "pose")
_KEY_FIELDS = {
    "view",
    "layer",
    "unit",
    "duration",
    "hold",
    "azimuth",
    "elevation",
    "zoom",
    "degrees",
    "position",
    "focal_point",
    "up",
    "view_angle",
    "clip",
    "clip_far",
    "radius",
}


@dataclass
class SeriesSpec:
    """The ``[series]`` table: which images play, in which order, and how fast."""

    order: str = "probability"
    cls: str | int | None = None
    per_class: int | None = None
    count: int | None = None
    start: float = 0.0
    first: float = 0.5
    last: float = 0.08


@dataclass
class Scene:
    """A checked scene file (see the package docstring for the format)."""

    path: Path | None
    title: str = ""
    store: Path | None = None
    model: str | None = None
    images: list[str] = field(default_factory=list)
    max_images: int | None = None
    graph: dict = field(default_factory=lambda: {"k": 8, "threshold": 0.0, "mode": "relu", "tracer": "auto"})
    width: int = 1024
    height: int = 768
    fps: float = 24.0
    edges_per_node: int | None = None
    thumbnails: bool = True
    layout: dict = field(default_factory=dict)
    style: dict = field(default_factory=dict)
    optimize: dict | None = None
    series: SeriesSpec | None = None
    image: int = 0
    keyframes: list[dict] = field(default_factory=list)


def _err(path, msg: str) -> SceneError:
    return SceneError(f"{path}: {msg}" if path else msg)


def _take(table: dict, allowed: set[str], where: str, path) -> dict:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _err(path, f"unknown key(s) {', '.join(unknown)} in {where}; valid: {', '.join(sorted(allowed))}")
    return table


def _number(v, name: str, path, lo: float | None = 0.0, integer: bool = False):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _err(path, f"{name} must be a number, got {v!r}")
    if integer and int(v) != v:
        raise _err(path, f"{name} must be an integer, got {v!r}")
    if lo is not None and v < lo:
        raise _err(path, f"{name} must be >= {lo}, got {v!r}")
    return int(v) if integer else float(v)


def load_scene(path: str | os.PathLike | None = None, *, text: str | None = None, allow_outside: bool = False) -> Scene:
    """Read and check a scene file (or TOML ``text``); paths in it are resolved here. A scene is
    data someone may have sent you: its ``[store] path`` must stay inside the scene's folder unless
    ``allow_outside`` (the command line's ``--allow-outside``)."""
    if text is None:
        path = Path(path)
        if not path.is_file():
            raise SceneError(f"no scene file at {path}")
        text = path.read_text()
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _err(path, f"not valid TOML: {exc}") from None
    _take(d, {"title", "store", "graph", "view", "series", "keyframes", "optimize", "image"}, "the scene", path)
    base = Path(path).resolve().parent if path else Path.cwd()
    sc = Scene(Path(path) if path else None, title=str(d.get("title", "")))

    st = _take(dict(d.get("store", {})), {"path", "model", "images", "max_images"}, "[store]", path)
    sc.model = st.get("model")
    if "path" in st:
        p = Path(st["path"]).expanduser()
        sc.store = p if p.is_absolute() else (base / p)
        if not allow_outside and not sc.store.resolve().is_relative_to(base):
            raise _err(
                path,
                f"[store] path {st['path']!r} leaves the scene's folder; move the store next to "
                "the scene, or pass --allow-outside if you trust this scene file",
            )
    elif sc.model:
        sc.store = Path("stores") / str(sc.model)  # the CLI's convention: under the current directory
    else:
        raise _err(path, "[store] needs a path, or a model to capture (digits, faces)")
    sc.images = [str(p if Path(p).is_absolute() else base / p) for p in st.get("images", [])]
    if "max_images" in st:
        sc.max_images = _number(st["max_images"], "max_images", path, 1, True)

    g = _take(dict(d.get("graph", {})), {"k", "threshold", "mode", "tracer"}, "[graph]", path)
    graph = {"k": 8, "threshold": 0.0, "mode": "relu", "tracer": "auto"}
    if "k" in g:
        graph["k"] = None if g["k"] in (0, "all") else _number(g["k"], "k", path, 1, True)
    if "threshold" in g:
        graph["threshold"] = _number(g["threshold"], "threshold", path, 0.0)
    for key in ("mode", "tracer"):
        if key in g:
            graph[key] = str(g[key])
    sc.graph = graph

    v = _take(
        dict(d.get("view", {})),
        {
            "width",
            "height",
            "fps",
            "edges_per_node",
            "thumbnails",
            "size_exponent",
            "layer_gap",
            "gap_factor",
            "stack",
            "background",
            "edge_cmap",
            "node_cmap",
            "line_width",
            "fire_threshold",
            "label_size",
            "max_edges",
            "thumbnail_px",
        },
        "[view]",
        path,
    )
    for key in ("width", "height"):
        if key in v:
            setattr(sc, key, _number(v[key], key, path, 16, True))
    if "fps" in v:
        sc.fps = _number(v["fps"], "fps", path, 1e-3)
    if "edges_per_node" in v:
        sc.edges_per_node = _number(v["edges_per_node"], "edges_per_node", path, 1, True)
    sc.thumbnails = bool(v.get("thumbnails", True))
    sc.layout = {k: v[k] for k in ("size_exponent", "layer_gap", "gap_factor", "stack") if k in v}
    sc.style = {
        k: v[k]
        for k in (
            "background",
            "edge_cmap",
            "node_cmap",
            "line_width",
            "fire_threshold",
            "label_size",
            "thumbnail_px",
            "max_edges",
        )
        if k in v
    }

    if "optimize" in d:
        o = _take(
            dict(d["optimize"]),
            {"layers", "seeds", "steps", "search", "search_steps", "search_units", "param", "conv_objective", "init"},
            "[optimize]",
            path,
        )
        sc.optimize = o

    if "series" in d:
        s = _take(
            dict(d["series"]), {"order", "class", "per_class", "count", "start", "first", "last"}, "[series]", path
        )
        spec = SeriesSpec(order=str(s.get("order", "probability")), cls=s.get("class"))
        for key in ("per_class", "count"):
            if key in s:
                setattr(spec, key, _number(s[key], key, path, 1, True))
        for key in ("start", "first", "last"):
            if key in s:
                setattr(spec, key, _number(s[key], key, path, 0.0 if key == "start" else 1e-3))
        from volviz.analysis.sequence import SORTS

        if spec.order not in SORTS:
            raise _err(path, f"[series] order must be one of {', '.join(SORTS)}, got {spec.order!r}")
        sc.series = spec
    if "image" in d:
        sc.image = _number(d["image"], "image", path, 0, True)

    keys = d.get("keyframes", [])
    if not isinstance(keys, list) or not keys:
        raise _err(path, "a scene needs at least one [[keyframes]] table")
    for i, kf in enumerate(keys):
        kf = _take(dict(kf), _KEY_FIELDS, f"keyframe {i + 1}", path)
        view = kf.get("view", "overview")
        if view not in VIEWS:
            raise _err(path, f"keyframe {i + 1}: view must be one of {', '.join(VIEWS)}, got {view!r}")
        if view in ("layer", "unit") and "layer" not in kf:
            raise _err(path, f"keyframe {i + 1}: view = {view!r} needs a layer")
        if view == "unit" and "unit" not in kf:
            raise _err(path, f"keyframe {i + 1}: view = 'unit' needs a unit (index)")
        if view == "pose":
            if not {"position", "focal_point"} <= set(kf):
                raise _err(path, f"keyframe {i + 1}: view = 'pose' needs position and focal_point")
            for key in ("position", "focal_point", "up"):
                v = kf.get(key, [0, 0, 1])
                if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
                    raise _err(path, f"keyframe {i + 1}: {key} must be [x, y, z], got {v!r}")
        for key in ("duration", "hold"):
            if key in kf:
                kf[key] = _number(kf[key], f"keyframe {i + 1} {key}", path, 0.0)
        kf["view"] = view
        sc.keyframes.append(kf)
    return sc
