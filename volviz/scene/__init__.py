"""Scene files (TOML): a fly-through movie of the network graph, declared, not programmed.

A scene names its store (captured from an embedded default model when it does not exist yet),
the graph settings, camera key frames with durations, and the series of images whose
activations play along the way, speeding up. ``volviz movie scenes/X.toml --out x.mp4`` renders
it off screen (:func:`movie_from_scene`); the app previews the same scene through
:func:`prepare_scene`. Format reference and examples: ``docs/graph.md`` and ``scenes/``.

This package is the public entry point (``from volviz.scene import load_scene``); its modules
do one step each: :mod:`~volviz.scene.file` reads and checks the file, :mod:`~volviz.scene.data`
gathers what the scene shows (store, graph, series, responses; no VTK), and
:mod:`~volviz.scene.playback` turns that into a camera path, a playable view and a movie.

::

    title = "faces net: responses to 50 faces and 50 non-faces"
    [store]
    model = "faces"             # embedded default; captured into stores/faces when missing
    # path = "../stores/faces"  # or a store (relative paths: to this file)
    [graph]
    k = 8                       # strongest incoming edges per unit
    threshold = 0.0             # and/or: drop edges below this fraction of the layer's strongest
    mode = "relu"               # relu ([PreferredInputs2016]) | abs
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

from volviz.errors import SceneError

from .data import (
    SceneData,
    ensure_store,
    load_scene_data,
    load_thumbnails,
    series_indices,
    series_timeline,
)
from .file import Scene, SeriesSpec, load_scene
from .playback import (
    PreparedScene,
    build_prepared,
    camera_path_for,
    movie_from_scene,
    prepare_scene,
    scene_frames,
)

__all__ = [
    "SceneError",
    "Scene",
    "SeriesSpec",
    "load_scene",
    "ensure_store",
    "load_thumbnails",
    "PreparedScene",
    "SceneData",
    "load_scene_data",
    "build_prepared",
    "prepare_scene",
    "camera_path_for",
    "series_indices",
    "series_timeline",
    "movie_from_scene",
    "scene_frames",
]
