"""Scene files (TOML): a fly-through movie of the network graph, declared, not programmed.

A scene names its store (captured from an embedded default model when it does not exist yet),
the graph settings, camera key frames with durations, and the series of images whose
activations play along the way, speeding up. ``volviz movie scenes/X.toml --out x.mp4`` renders
it off screen (:func:`movie_from_scene`); the app previews the same scene through
:func:`prepare_scene`. Format reference and examples: ``docs/graph.md`` and ``scenes/``.

::

    title = "faces net: responses to 50 faces and 50 non-faces"
    [store]
    model = "faces"             # embedded default; captured into stores/faces when missing
    # path = "../stores/faces"  # or a store (relative paths: to this file)
    [graph]
    k = 8                       # strongest incoming edges per unit
    threshold = 0.0             # and/or: drop edges below this fraction of the layer's strongest
    mode = "relu"               # relu (seed 000) | abs
    [view]
    width = 1024
    height = 768
    fps = 24
    edges_per_node = 4          # draw fewer edges than the graph keeps
    [series]
    order = "probability"       # captured | probability | class | misclassified
    class = "face"              # probability of this class (name or index)
    per_class = 50              # at most this many images per true class
    start = 1.0                 # seconds into the movie
    first = 0.6                 # seconds per image at the start ...
    last = 0.06                 # ... and at the end (the series speeds up)
    [[keyframes]]
    view = "overview"           # overview | layer | orbit | unit | pose
    hold = 2.0
    [[keyframes]]
    view = "layer"
    layer = "conv1"
    duration = 3.0              # seconds to get there from the previous key frame
    hold = 1.0                  # seconds to stay
"""
from __future__ import annotations

from volviz.errors import SceneError  # noqa: F401  (re-exported)
import dataclasses
import logging
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("volviz.scene")

__all__ = ["SceneError", "Scene", "SeriesSpec", "load_scene", "ensure_store", "load_thumbnails",
           "PreparedScene", "SceneData", "load_scene_data", "build_prepared", "prepare_scene",
           "camera_path_for", "series_timeline", "movie_from_scene", "scene_frames"]

VIEWS = ("overview", "layer", "orbit", "unit", "pose")
_KEY_FIELDS = {"view", "layer", "unit", "duration", "hold", "azimuth", "elevation", "zoom", "degrees",
               "position", "focal_point", "up", "view_angle", "clip", "clip_far", "radius"}




@dataclass
class SeriesSpec:
    order: str = "probability"
    cls: str | int | None = None
    per_class: int | None = None
    count: int | None = None
    start: float = 0.0
    first: float = 0.5
    last: float = 0.08


@dataclass
class Scene:
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


def load_scene(path: str | os.PathLike | None = None, *, text: str | None = None,
               allow_outside: bool = False) -> Scene:
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
            raise _err(path, f"[store] path {st['path']!r} leaves the scene's folder; move the store next to "
                       "the scene, or pass --allow-outside if you trust this scene file")
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

    v = _take(dict(d.get("view", {})), {"width", "height", "fps", "edges_per_node", "thumbnails", "size_exponent",
                                        "layer_gap", "gap_factor", "stack", "background", "edge_cmap",
                                        "node_cmap", "line_width", "fire_threshold", "label_size", "max_edges",
                                        "thumbnail_px"}, "[view]", path)
    for key in ("width", "height"):
        if key in v:
            setattr(sc, key, _number(v[key], key, path, 16, True))
    if "fps" in v:
        sc.fps = _number(v["fps"], "fps", path, 1e-3)
    if "edges_per_node" in v:
        sc.edges_per_node = _number(v["edges_per_node"], "edges_per_node", path, 1, True)
    sc.thumbnails = bool(v.get("thumbnails", True))
    sc.layout = {k: v[k] for k in ("size_exponent", "layer_gap", "gap_factor", "stack") if k in v}
    sc.style = {k: v[k] for k in ("background", "edge_cmap", "node_cmap", "line_width", "fire_threshold",
                                  "label_size", "thumbnail_px", "max_edges") if k in v}

    if "optimize" in d:
        o = _take(dict(d["optimize"]), {"layers", "seeds", "steps", "search", "search_steps", "search_units",
                                        "param", "conv_objective", "init"}, "[optimize]", path)
        sc.optimize = o

    if "series" in d:
        s = _take(dict(d["series"]), {"order", "class", "per_class", "count", "start", "first", "last"},
                  "[series]", path)
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


# ------------------------------------------------------------------------------ data
def ensure_store(scene: Scene, progress: bool = True, trust: dict | None = None):
    """Open the scene's store; capture it from ``scene.model`` first if it does not exist (or
    resume it when a capture was interrupted). ``trust``: the command line's --trust-* flags; a
    scene never imports a ``module:callable`` model by itself."""
    from volviz.store.capture import CaptureSettings, open_or_capture
    from volviz.store.plan import spec_runs_code

    trust = trust or {}
    path = Path(scene.store)
    if not (path / "plan.json").exists():
        if not scene.model:
            raise SceneError(f"{scene.path}: no store at {path} and no [store] model to capture it from")
        if spec_runs_code(scene.model) and not trust.get("trust_factory"):
            raise SceneError(f"{scene.path}: [store] model {scene.model!r} would import and run code; use a demo "
                             "or torchvision model name, or pass --trust-factory if you trust this scene file")
        if path.exists() and any(path.iterdir()):
            raise SceneError(f"{path} exists but is not a volviz store; point [store] path elsewhere")
    s = CaptureSettings(model=scene.model or "digits", images=list(scene.images), max_images=scene.max_images)
    return open_or_capture(path, s, progress=progress)


def load_thumbnails(store, layers, optimize: dict | None = None, progress: bool = True,
                    trust: dict | None = None) -> dict[str, np.ndarray]:
    """``{layer: uint8 (n, H, W, 3)}`` preferred-input thumbnails from the store (``volviz
    optimize``); layers without results are left out (the scene draws neutral tiles). With
    ``optimize`` (a dict of ``PreferredSettings`` fields, plus ``layers``), the missing layers
    are optimized into the store first."""
    try:
        from volviz.analysis.actmax import results as R
    except Exception as exc:  # pragma: no cover - never let the movie fail for thumbnails
        log.warning("preferred inputs unavailable (%s); neutral tiles", exc)
        return {}
    wanted = [n for n in layers if n in store.layers]
    if optimize is not None:
        opt = dict(optimize)
        todo = opt.pop("layers", None) or wanted
        have = set(R.preferred_layers(store))
        todo = [n for n in todo if n not in have]
        if todo:
            from volviz.analysis.actmax.run import PreferredSettings, run_preferred
            from volviz.store.store import Store
            log.warning("optimizing the preferred inputs of %s into %s (once)", ", ".join(todo), store.path)
            try:
                run_preferred(Store.open(store.path, "r+"), todo, PreferredSettings(**opt), progress=progress,
                              trust=trust)
            except R.PreferredError as exc:  # e.g. an interrupted run made with other settings
                log.warning("cannot optimize: %s; those layers show neutral tiles", exc)
    out = {}
    for name in wanted:
        try:
            out[name] = R.thumbnails(store, name, size=None)
        except R.PreferredError as exc:
            log.info("no preferred inputs for %s (neutral tiles): %s", name, exc)
        except Exception as exc:  # a damaged group must not stop the movie
            log.warning("cannot read the preferred inputs of %s (neutral tiles): %s", name, exc)
    return out


def _class_index(store, cls) -> int | None:
    if cls is None:
        return None
    if isinstance(cls, int):
        return cls
    names = store.class_names or []
    if str(cls) in names:
        return names.index(str(cls))
    try:
        return int(cls)
    except ValueError:
        raise SceneError(f"[series] class {cls!r} is not a class of this store ({', '.join(names)})") from None


def series_indices(store, spec: SeriesSpec) -> np.ndarray:
    """The images of the series, in playing order."""
    from volviz.analysis.sequence import image_sequence

    done = store.done.copy()
    labels = store.column("label")
    if spec.per_class:
        keep = np.zeros_like(done)
        for c in np.unique(labels[done]):
            idx = np.flatnonzero(done & (labels == c))[: spec.per_class]
            keep[idx] = True
        done &= keep
    order = image_sequence(done, store.column("probs"), labels, store.column("pred"), spec.order,
                           _class_index(store, spec.cls))
    if spec.count:
        order = order[: spec.count]
    if not len(order):
        raise SceneError(f"the series of {store.path} is empty (no captured images)")
    return order


def series_timeline(n: int, spec: SeriesSpec) -> np.ndarray:
    """Start time of each of ``n`` images: dwell times go geometrically from ``first`` to
    ``last`` seconds (the movie speeds up, as seed 000's); returns ``n + 1`` times (the last is
    the end of the series)."""
    if n == 1:
        dwell = np.array([spec.first])
    else:
        dwell = spec.first * (spec.last / spec.first) ** (np.arange(n) / (n - 1))
    return spec.start + np.concatenate([[0.0], np.cumsum(dwell)])


# ------------------------------------------------------------------------------ camera
def camera_path_for(keyframes: list[dict], layout, aspect: float):
    """Turn scene key frames into a :class:`~volviz.views.camera_path.CameraPath`."""
    from volviz.views import camera_path as cp

    keys = []
    t = 0.0
    prev = None
    for i, kf in enumerate(keyframes):
        view = kf["view"]
        angles = {k: float(kf[k]) for k in ("azimuth", "elevation") if k in kf}
        try:
            if view == "overview":
                poses = [cp.overview_pose(layout, aspect=aspect, zoom=float(kf.get("zoom", 1.0)), **angles)]
            elif view == "layer":
                poses = [cp.layer_pose(layout, kf["layer"], aspect=aspect, zoom=float(kf.get("zoom", 1.0)), **angles)]
            elif view == "unit":
                poses = [cp.unit_pose(layout, kf["layer"], int(kf["unit"]), aspect=aspect,
                                      radius_cells=float(kf.get("radius", 2.0)), **angles)]
            elif view == "pose":
                poses = [cp.CameraPose(kf["position"], kf["focal_point"], kf.get("up", (0, 0, 1)),
                                       float(kf.get("view_angle", 30.0)), kf.get("clip"), kf.get("clip_far"))]
            else:  # orbit about the layer's centre (or the graph's), from where the camera is
                if "layer" in kf:
                    if kf["layer"] not in layout.planes:
                        raise ValueError(f"no layer {kf['layer']!r}; layers: {', '.join(layout.planes)}")
                    center = layout.planes[kf["layer"]].center
                    at_layer = prev is not None and np.allclose(prev.focal_point, center)
                    start = prev if at_layer else cp.layer_pose(layout, kf["layer"], aspect=aspect, **angles)
                else:
                    center = layout.center()
                    start = prev if prev is not None else cp.overview_pose(layout, aspect=aspect, **angles)
                poses = cp.orbit_poses(start, center, float(kf.get("degrees", 360.0)))
                if prev is not None and poses[0].same_as(prev):
                    poses = poses[1:]  # already there; otherwise the first part flies to the start
        except ValueError as exc:
            raise SceneError(f"keyframe {i + 1}: {exc}") from None
        duration = float(kf.get("duration", 0.0 if prev is None else 2.0))
        if view == "orbit":
            first = 1 if keys else 0  # the very first key of a path sits at t = 0
            step = duration / max(len(poses) - 1 + first, 1)
            for j, pose in enumerate(poses):
                keys.append((t + step * (j + first), pose))
            t = keys[-1][0]
        else:
            t = t + (duration if keys else 0.0)
            keys.append((t, poses[0]))
        prev = keys[-1][1]
        hold = float(kf.get("hold", 0.0))
        if hold > 0:
            t += hold
            keys.append((t, prev))
    try:
        return cp.CameraPath(keys)
    except ValueError as exc:
        raise SceneError(f"camera key frames: {exc}") from None


# ------------------------------------------------------------------------------ preparation
@dataclass
class PreparedScene:
    """Everything a movie or the app needs: the graph scene, the camera path, the series."""

    scene: Scene
    store: object
    graph: object
    layout: object
    graph_scene: object
    path: object  # CameraPath
    indices: np.ndarray  # images of the series, in order (one image if no series)
    times: np.ndarray  # start time of each image (+ end)
    responses: dict[str, np.ndarray]  # layer -> (len(indices), n_units)
    scales: dict[str, float]
    _shown: int = -1

    @property
    def duration(self) -> float:
        return max(self.path.times[-1], float(self.times[-1]) if self.scene.series else 0.0)

    def n_frames(self, fps: float) -> int:
        return max(1, int(math.ceil(self.duration * fps)) + 1)

    def step_at(self, t: float) -> int:
        """Which image of the series is shown at time ``t``."""
        return int(np.clip(np.searchsorted(self.times, t, side="right") - 1, 0, len(self.indices) - 1))

    def caption(self, step: int) -> str:
        st = self.store
        if not hasattr(self, "_columns"):
            self._columns = {k: st.column(k) for k in ("label", "pred", "probs")}
        i = int(self.indices[step])
        names = st.class_names or []
        label, pred = int(self._columns["label"][i]), int(self._columns["pred"][i])
        probs = self._columns["probs"][i]
        cls = _class_index(st, self.scene.series.cls) if self.scene.series else None
        c = pred if cls is None else cls
        cname = names[c] if c < len(names) else str(c)
        true = names[label] if 0 <= label < len(names) else ("?" if label < 0 else str(label))
        return (f"image {step + 1}/{len(self.indices)}  [{st.images[i].id}]\n"
                f"true {true}   P({cname}) = {probs[c]:.2f}")

    def seek(self, t: float) -> None:
        """Show the movie's moment ``t`` (seconds): camera pose and the image of that moment
        (activations are updated only when the image changes). The app's preview calls this
        from its time slider; :func:`scene_frames` calls it once per frame."""
        step = self.step_at(t)
        if step != self._shown:
            self.show_step(step)
        self.graph_scene.set_pose(self.path.pose_at(t))

    def show_step(self, step: int) -> None:
        self._shown = step
        gs = self.graph_scene
        gs.update_activations({k: v[step] for k, v in self.responses.items()})
        gs.set_input_image(self.store.read_input(int(self.indices[step])))
        gs.set_label(self.caption(step))


@dataclass
class SceneData:
    """What a scene shows, without VTK: :func:`load_scene_data` makes it (it may capture the
    store and read every response: seconds), :func:`build_prepared` turns it into a view (the
    app does the first in a background thread and the second in its render thread)."""

    scene: Scene
    store: object
    graph: object
    layout: object
    thumbnails: dict[str, np.ndarray]
    indices: np.ndarray
    times: np.ndarray
    responses: dict[str, np.ndarray]
    scales: dict[str, float]


def load_scene_data(scene: Scene, progress: bool = True, trust: dict | None = None) -> SceneData:
    """Store (captured if needed), graph, layout, thumbnails (optimized first when the scene's
    ``[optimize]`` says so and ``scene.optimize`` is set), the series and its responses."""
    from volviz.analysis.network_graph import graph_for_store, series_responses
    from volviz.views.graph_layout import layered_layout

    store = ensure_store(scene, progress, trust)
    G = graph_for_store(store, **scene.graph, **(trust or {}))
    layers = G.graph["layers"]
    try:
        layout = layered_layout(layers, **scene.layout)
    except TypeError as exc:
        raise SceneError(f"{scene.path}: [view] layout settings: {exc}") from None
    unit_layers = [d["name"] for d in layers if d["kind"] != "input"]
    thumbs = load_thumbnails(store, unit_layers, scene.optimize, progress, trust) if scene.thumbnails else {}
    if scene.series is not None:
        indices = series_indices(store, scene.series)
        times = series_timeline(len(indices), scene.series)
    else:
        if not 0 <= scene.image < store.n_images or not store.done[scene.image]:
            raise SceneError(f"{scene.path}: image {scene.image} is not in the store")
        indices, times = np.array([scene.image]), np.array([0.0, 0.0])
    responses = series_responses(store, indices, unit_layers)
    scales = {k: float(v.max()) for k, v in responses.items()}
    return SceneData(scene, store, G, layout, thumbs, indices, times, responses, scales)


def build_prepared(data: SceneData, *, width: int | None = None, height: int | None = None,
                   plotter=None) -> PreparedScene:
    """The graph scene (in ``plotter``, or an off-screen one) and the camera path of ``data``,
    showing the series' first image."""
    from volviz.views.graph_scene import GraphScene, GraphStyle

    scene, store = data.scene, data.store
    w, h = int(width or scene.width), int(height or scene.height)
    style_kw = dict(scene.style)
    style = dataclasses.replace(GraphStyle(), edges_per_node=scene.edges_per_node,
                                missing_thumbnail="grey" if scene.thumbnails else "none", **style_kw)
    gs = GraphScene(data.graph, data.layout, data.thumbnails, input_image=store.read_input(int(data.indices[0])),
                    style=style, title=scene.title, window_size=(w, h), plotter=plotter)
    gs.set_scales(data.scales)
    path = camera_path_for(scene.keyframes, data.layout, w / h)
    prepared = PreparedScene(scene, store, data.graph, data.layout, gs, path, data.indices, data.times,
                             data.responses, data.scales)
    prepared.show_step(0)
    return prepared


def prepare_scene(scene: Scene, *, width: int | None = None, height: int | None = None,
                  plotter=None, progress: bool = True, trust: dict | None = None) -> PreparedScene:
    """Store (captured if needed), graph, layout, thumbnails, responses, camera path:
    :func:`load_scene_data` then :func:`build_prepared`."""
    return build_prepared(load_scene_data(scene, progress, trust), width=width, height=height, plotter=plotter)


def scene_frames(prepared: PreparedScene, fps: float):
    """Yield one rendered frame per ``1 / fps`` seconds: camera on its path, the series'
    image of that moment (activations updated only when the image changes)."""
    for f in range(prepared.n_frames(fps)):
        prepared.seek(f / fps)
        yield prepared.graph_scene.screenshot()


def movie_from_scene(scene_path: str | os.PathLike, out: str | os.PathLike, width: int | None = None,
                     height: int | None = None, fps: float | None = None, progress: bool = True,
                     trust: dict | None = None, allow_outside: bool = False) -> Path:
    """Render the scene file ``scene_path`` to ``out`` (``.mp4`` or ``.gif``), off screen.

    ``width``, ``height`` and ``fps`` override the scene's ``[view]``. Returns the written path.
    """
    from volviz.record import MOVIE_SUFFIXES, write_movie

    out = Path(out)
    if out.suffix.lower() not in MOVIE_SUFFIXES:
        raise SceneError(f"unknown movie format {out.suffix!r}; use one of {', '.join(MOVIE_SUFFIXES)}")
    scene = load_scene(scene_path, allow_outside=allow_outside)
    rate = float(fps or scene.fps)
    if not rate > 0:
        raise SceneError(f"fps must be > 0, got {rate}")
    prepared = prepare_scene(scene, width=width, height=height, progress=progress, trust=trust)
    try:
        n = prepared.n_frames(rate)
        return write_movie(out, scene_frames(prepared, rate), fps=rate, total=n, progress=progress)
    finally:
        prepared.graph_scene.close()
