"""Playing a scene: key frames -> a camera path, :class:`SceneData` -> a :class:`PreparedScene`
that shows any moment of the movie, and the movie itself.

The fast, VTK half of preparing a scene (the app runs it in its render thread, after
:func:`~volviz.scene.data.load_scene_data` in the background); ``volviz movie`` runs both.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volviz.errors import SceneError

from .data import SceneData, class_index, load_scene_data
from .file import Scene, load_scene

__all__ = ["PreparedScene", "build_prepared", "camera_path_for", "movie_from_scene", "prepare_scene", "scene_frames"]


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
                poses = [
                    cp.unit_pose(
                        layout,
                        kf["layer"],
                        int(kf["unit"]),
                        aspect=aspect,
                        radius_cells=float(kf.get("radius", 2.0)),
                        **angles,
                    )
                ]
            elif view == "pose":
                poses = [
                    cp.CameraPose(
                        kf["position"],
                        kf["focal_point"],
                        kf.get("up", (0, 0, 1)),
                        float(kf.get("view_angle", 30.0)),
                        kf.get("clip"),
                        kf.get("clip_far"),
                    )
                ]
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
        cls = class_index(st, self.scene.series.cls) if self.scene.series else None
        c = pred if cls is None else cls
        cname = names[c] if c < len(names) else str(c)
        true = names[label] if 0 <= label < len(names) else ("?" if label < 0 else str(label))
        return f"image {step + 1}/{len(self.indices)}  [{st.images[i].id}]\ntrue {true}   P({cname}) = {probs[c]:.2f}"

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


def build_prepared(
    data: SceneData, *, width: int | None = None, height: int | None = None, plotter=None
) -> PreparedScene:
    """The graph scene (in ``plotter``, or an off-screen one) and the camera path of ``data``,
    showing the series' first image."""
    from volviz.views.graph_scene import GraphScene, GraphStyle

    scene, store = data.scene, data.store
    w, h = int(width or scene.width), int(height or scene.height)
    style_kw = dict(scene.style)
    style = dataclasses.replace(
        GraphStyle(),
        edges_per_node=scene.edges_per_node,
        missing_thumbnail="grey" if scene.thumbnails else "none",
        **style_kw,
    )
    gs = GraphScene(
        data.graph,
        data.layout,
        data.thumbnails,
        input_image=store.read_input(int(data.indices[0])),
        style=style,
        title=scene.title,
        window_size=(w, h),
        plotter=plotter,
    )
    gs.set_scales(data.scales)
    path = camera_path_for(scene.keyframes, data.layout, w / h)
    prepared = PreparedScene(
        scene, store, data.graph, data.layout, gs, path, data.indices, data.times, data.responses, data.scales
    )
    prepared.show_step(0)
    return prepared


def prepare_scene(
    scene: Scene,
    *,
    width: int | None = None,
    height: int | None = None,
    plotter=None,
    progress: bool = True,
    trust: dict | None = None,
) -> PreparedScene:
    """Store (captured if needed), graph, layout, thumbnails, responses, camera path:
    :func:`load_scene_data` then :func:`build_prepared`."""
    return build_prepared(load_scene_data(scene, progress, trust), width=width, height=height, plotter=plotter)


def scene_frames(prepared: PreparedScene, fps: float):
    """Yield one rendered frame per ``1 / fps`` seconds: camera on its path, the series'
    image of that moment (activations updated only when the image changes)."""
    for f in range(prepared.n_frames(fps)):
        prepared.seek(f / fps)
        yield prepared.graph_scene.screenshot()


def movie_from_scene(
    scene_path: str | os.PathLike,
    out: str | os.PathLike,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    progress: bool = True,
    trust: dict | None = None,
    allow_outside: bool = False,
) -> Path:
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
