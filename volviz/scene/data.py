"""What a scene shows, gathered without VTK: its store (captured when missing), the graph and its
layout, preferred-input thumbnails, the series of images and the units' responses to them.

This is the slow half of preparing a scene (it may capture a store and read every response),
kept apart so that the app can run it in a background thread; :mod:`volviz.scene.playback`
builds the view from the :class:`SceneData` it returns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volviz.errors import SceneError

from .file import Scene, SeriesSpec

log = logging.getLogger("volviz.scene")

__all__ = [
    "SceneData",
    "class_index",
    "ensure_store",
    "load_scene_data",
    "load_thumbnails",
    "series_indices",
    "series_timeline",
]


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
            raise SceneError(
                f"{scene.path}: [store] model {scene.model!r} would import and run code; use a demo "
                "or torchvision model name, or pass --trust-factory if you trust this scene file"
            )
        if path.exists() and any(path.iterdir()):
            raise SceneError(f"{path} exists but is not a volviz store; point [store] path elsewhere")
    s = CaptureSettings(model=scene.model or "digits", images=list(scene.images), max_images=scene.max_images)
    return open_or_capture(path, s, progress=progress)


def load_thumbnails(
    store, layers, optimize: dict | None = None, progress: bool = True, trust: dict | None = None
) -> dict[str, np.ndarray]:
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
                run_preferred(
                    Store.open(store.path, "r+"), todo, PreferredSettings(**opt), progress=progress, trust=trust
                )
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


def class_index(store, cls) -> int | None:
    """The index of the series' class ``cls`` (a name of the store's classes, or an index)."""
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
    order = image_sequence(
        done, store.column("probs"), labels, store.column("pred"), spec.order, class_index(store, spec.cls)
    )
    if spec.count:
        order = order[: spec.count]
    if not len(order):
        raise SceneError(f"the series of {store.path} is empty (no captured images)")
    return order


def series_timeline(n: int, spec: SeriesSpec) -> np.ndarray:
    """Start time of each of ``n`` images: dwell times go geometrically from ``first`` to
    ``last`` seconds (the movie speeds up, as [PreferredInputs2016]'s); returns ``n + 1`` times (the last is
    the end of the series)."""
    if n == 1:
        dwell = np.array([spec.first])
    else:
        dwell = spec.first * (spec.last / spec.first) ** (np.arange(n) / (n - 1))
    return spec.start + np.concatenate([[0.0], np.cumsum(dwell)])


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
    from volviz.analysis.network_graph import graph_for_store
    from volviz.analysis.unit_responses import series_responses
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
