"""Smooth camera paths through key frames: overview, fly to a layer, orbit, zoom on a unit.

A :class:`CameraPath` interpolates position, focal point and up vector with a cubic Hermite
spline over time (Catmull-Rom tangents for non-uniform key times). Tangents are zero at the
first and last key and at both ends of a hold (two consecutive keys with the same pose), so the
camera eases out of and into every stop, and stands exactly still during a hold; in a run of
moving keys (an orbit) it keeps its speed through each key instead of stopping. The motion is
continuous with a continuous velocity: no jumps.

Pose helpers (:func:`overview_pose`, :func:`layer_pose`, :func:`unit_pose`, :func:`orbit_poses`)
compute where the camera must stand to frame part of a :class:`~volviz.views.graph_layout.GraphLayout`
(perspective fit of the box's corners for the window's aspect ratio).

Direction convention: ``azimuth`` 0 puts the camera upstream of the graph (at ``-x``), looking
downstream at the faces of the layer planes; 90 is the side view from ``-y`` (input on the left,
output on the right); ``elevation`` lifts the camera above the ``z = 0`` plane.

Pure numpy; :meth:`CameraPose.apply` sets any object with pyvista's camera attributes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .graph_layout import DEPTH_AXIS, V_AXIS, GraphLayout, unit_box

__all__ = [
    "CameraPose",
    "CameraPath",
    "direction",
    "fit_box",
    "overview_pose",
    "tiles_pose",
    "layer_pose",
    "unit_pose",
    "orbit_poses",
]

Z_UP = np.array([0.0, 0.0, 1.0])


@dataclass
class CameraPose:
    position: np.ndarray
    focal_point: np.ndarray
    up: np.ndarray = field(default_factory=lambda: Z_UP.copy())
    view_angle: float = 30.0  # vertical, degrees (VTK's default)
    clip: float | None = None  # hide what lies upstream of this depth (x); None: nothing
    clip_far: float | None = None  # hide what lies downstream of this depth; None: nothing

    def __post_init__(self):
        self.position = np.asarray(self.position, float)
        self.focal_point = np.asarray(self.focal_point, float)
        self.up = np.asarray(self.up, float)

    def same_as(self, other: "CameraPose", tol: float = 1e-9) -> bool:
        scale = max(1.0, float(np.linalg.norm(self.position - self.focal_point)))
        return (
            np.allclose(self.position, other.position, atol=tol * scale)
            and np.allclose(self.focal_point, other.focal_point, atol=tol * scale)
            and np.allclose(self.up, other.up, atol=tol)
            and abs(self.view_angle - other.view_angle) < 1e-9
            and all(
                a == b or (a is not None and b is not None and abs(a - b) < 1e-9 * scale)
                for a, b in ((self.clip, other.clip), (self.clip_far, other.clip_far))
            )
        )

    def apply(self, camera, renderer=None) -> None:
        """Set a pyvista / VTK-like camera (``position``, ``focal_point``, ``up``,
        ``view_angle``); reset the clipping range when a renderer is given."""
        camera.position = tuple(self.position)
        camera.focal_point = tuple(self.focal_point)
        camera.up = tuple(self.up)
        camera.view_angle = float(self.view_angle)
        if renderer is not None:
            renderer.ResetCameraClippingRange()

    def to_dict(self) -> dict:
        return {
            "position": self.position.tolist(),
            "focal_point": self.focal_point.tolist(),
            "up": self.up.tolist(),
            "view_angle": self.view_angle,
            "clip": self.clip,
            "clip_far": self.clip_far,
        }

    def replace(self, **changes) -> "CameraPose":
        d = {
            "position": self.position,
            "focal_point": self.focal_point,
            "up": self.up,
            "view_angle": self.view_angle,
            "clip": self.clip,
            "clip_far": self.clip_far,
        }
        d.update(changes)
        return CameraPose(**d)


def direction(azimuth: float, elevation: float) -> np.ndarray:
    """Unit vector from the focal point to the camera (degrees, convention in the module doc)."""
    az, el = math.radians(azimuth), math.radians(elevation)
    return np.array([-math.cos(el) * math.cos(az), -math.cos(el) * math.sin(az), math.sin(el)])


def _frame(d: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = -d / np.linalg.norm(d)
    u = up - np.dot(up, f) * f
    if np.linalg.norm(u) < 1e-6:  # looking straight along up: pick any perpendicular
        u = np.array([1.0, 0.0, 0.0]) - f[0] * f
    u /= np.linalg.norm(u)
    r = np.cross(f, u)
    return f, u, r


def fit_box(
    lo,
    hi,
    azimuth: float,
    elevation: float,
    *,
    aspect: float = 4 / 3,
    view_angle: float = 30.0,
    margin: float = 1.08,
    up=Z_UP,
    center=None,
) -> CameraPose:
    """The pose that looks from (``azimuth``, ``elevation``) at the box ``lo..hi`` and just
    fits all 8 corners in a ``aspect`` (width / height) window, times ``margin``."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    c = (lo + hi) / 2 if center is None else np.asarray(center, float)
    d = direction(azimuth, elevation)
    f, u, r = _frame(d, np.asarray(up, float))
    tv = math.tan(math.radians(view_angle) / 2)
    th = tv * aspect
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]) - c
    toward = corners @ d  # how far each corner stands out towards the camera
    need = np.maximum(np.abs(corners @ r) * margin / th, np.abs(corners @ u) * margin / tv) + toward
    dist = max(float(need.max()), 1e-6)
    return CameraPose(c + d * dist, c, u, view_angle)


def overview_pose(
    layout: GraphLayout,
    *,
    azimuth: float = 62.0,
    elevation: float = 22.0,
    aspect: float = 4 / 3,
    zoom: float = 1.0,
    view_angle: float = 30.0,
) -> CameraPose:
    """The whole graph, seen obliquely from the input side (input left, output right)."""
    lo, hi = layout.bounds()
    pose = fit_box(lo, hi, azimuth, elevation, aspect=aspect, view_angle=view_angle)
    return _zoomed(pose, zoom).replace(clip=_no_clip(layout), clip_far=_no_clip_far(layout))


def tiles_pose(
    tiles,
    *,
    aspect: float = 4 / 3,
    azimuth: float = 0.0,
    elevation: float = 0.0,
    view_angle: float = 20.0,
    top: float = 0.0,
    bottom: float = 0.0,
    zoom: float = 1.0,
    margin: float = 1.04,
) -> CameraPose:
    """Every tile of a :class:`~volviz.views.graph_layout.LayerTiles` in view (face on by default),
    with the fractions ``top`` / ``bottom`` of the window height left free for corner texts."""
    lo, hi = tiles.bounds()
    height = float((hi - lo) @ np.abs(V_AXIS))
    free = max(0.05, 1.0 - top - bottom)
    lo = lo - np.abs(V_AXIS) * height * bottom / free
    hi = hi + np.abs(V_AXIS) * height * top / free
    pose = fit_box(lo, hi, azimuth, elevation, aspect=aspect, view_angle=view_angle, margin=margin)
    return _zoomed(pose, zoom)


def layer_pose(
    layout: GraphLayout,
    layer: str,
    *,
    azimuth: float = 18.0,
    elevation: float = 10.0,
    aspect: float = 4 / 3,
    zoom: float = 1.0,
    view_angle: float = 30.0,
    isolate: bool = True,
) -> CameraPose:
    """One layer's plane, nearly face on (from the input side). The layers in front of it are
    always cut away (they would hide it); with ``isolate`` the layers behind it too, leaving the
    plane and its incoming edges."""
    if layer not in layout.planes:
        raise ValueError(f"no layer {layer!r} in the layout; layers: {', '.join(layout.planes)}")
    lo, hi = layout.bounds([layer])
    pose = fit_box(lo, hi, azimuth, elevation, aspect=aspect, view_angle=view_angle, margin=1.12)
    far = _clip_after(layout, layer) if isolate else _no_clip_far(layout)
    return _zoomed(pose, zoom).replace(clip=_clip_before(layout, layer), clip_far=far)


def unit_pose(
    layout: GraphLayout,
    layer: str,
    unit: int,
    *,
    azimuth: float = 12.0,
    elevation: float = 6.0,
    aspect: float = 4 / 3,
    radius_cells: float = 2.0,
    view_angle: float = 30.0,
    isolate: bool = True,
) -> CameraPose:
    """A close-up of one unit and its immediate neighbours."""
    if layer not in layout.planes:
        raise ValueError(f"no layer {layer!r} in the layout; layers: {', '.join(layout.planes)}")
    n = layout.planes[layer].n
    if not 0 <= int(unit) < n:
        raise ValueError(f"unit {unit} out of range for layer {layer!r} ({n} units)")
    lo, hi = unit_box(layout, layer, unit, radius_cells)
    pose = fit_box(lo, hi, azimuth, elevation, aspect=aspect, view_angle=view_angle, margin=1.0)
    far = _clip_after(layout, layer) if isolate else _no_clip_far(layout)
    return pose.replace(clip=_clip_before(layout, layer), clip_far=far)


def _no_clip(layout: GraphLayout) -> float:
    return float(layout.bounds()[0] @ DEPTH_AXIS - layout.layer_gap)


def _no_clip_far(layout: GraphLayout) -> float:
    return float(layout.bounds()[1] @ DEPTH_AXIS + layout.layer_gap)


def _clip_after(layout: GraphLayout, layer: str, stub: float = 0.1) -> float:
    return float(layout.planes[layer].center @ DEPTH_AXIS + stub * layout.layer_gap)


def _clip_before(layout: GraphLayout, layer: str, stub: float = 0.1) -> float:
    """A little upstream of ``layer``: the layers in front of it (which would hide it from a
    camera close enough to read it) are cut away, and of its incoming edges only short stubs
    remain (whole edges would scribble across the thumbnails)."""
    return float(layout.planes[layer].center @ DEPTH_AXIS - stub * layout.layer_gap)


def _zoomed(pose: CameraPose, zoom: float) -> CameraPose:
    if zoom <= 0:
        raise ValueError(f"zoom must be > 0, got {zoom}")
    d = pose.position - pose.focal_point
    return CameraPose(pose.focal_point + d / zoom, pose.focal_point, pose.up, pose.view_angle)


def orbit_poses(
    start: CameraPose, center=None, degrees: float = 360.0, n: int | None = None, axis=Z_UP
) -> list[CameraPose]:
    """Poses turning ``start``'s camera by ``degrees`` about ``axis`` through ``center``
    (default: its focal point), first pose = ``start``; ``n`` poses (default one per 15°, +1:
    the spline through them stays within about 1 % of the circle)."""
    c = start.focal_point if center is None else np.asarray(center, float)
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    if n is None:
        n = max(2, int(math.ceil(abs(degrees) / 15.0)) + 1)
    out = []
    for a in np.linspace(0.0, math.radians(degrees), n):
        rot = _rotation(axis, a)
        out.append(
            CameraPose(
                c + rot @ (start.position - c),
                c + rot @ (start.focal_point - c),
                rot @ start.up,
                start.view_angle,
                start.clip,
                start.clip_far,
            )
        )
    return out


def _smoothstep(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3 - 2 * x)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    x, y, z = axis
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


class CameraPath:
    """A camera path through ``(time, pose)`` keys (seconds, increasing; equal times allowed
    only for equal poses).

    Examples
    --------
    >>> path = CameraPath([(0, overview), (2, overview), (5, layer), (6, layer)])  # doctest: +SKIP
    >>> pose = path.pose_at(3.7); pose.apply(plotter.camera, plotter.renderer)     # doctest: +SKIP
    """

    def __init__(self, keys: list[tuple[float, CameraPose]]):
        if not keys:
            raise ValueError("a camera path needs at least one key")
        keys = sorted(((float(t), p) for t, p in keys), key=lambda k: k[0])
        merged: list[tuple[float, CameraPose]] = []
        for t, p in keys:
            if merged and t - merged[-1][0] < 1e-9:
                if not p.same_as(merged[-1][1]):
                    raise ValueError(
                        f"two different camera poses at the same time {t:.3f} s (give the move a duration > 0)"
                    )
                continue
            merged.append((t, p))
        self.times = np.array([t for t, _ in merged])
        self.poses = [p for _, p in merged]
        n = len(self.poses)
        self._vals = {
            "position": np.array([p.position for p in self.poses]),
            "focal_point": np.array([p.focal_point for p in self.poses]),
            "up": np.array([p.up for p in self.poses]),
            "view_angle": np.array([[p.view_angle] for p in self.poses]),
        }
        self._has = {}
        for name in ("clip", "clip_far"):
            clips = np.array([np.nan if getattr(p, name) is None else getattr(p, name) for p in self.poses])
            self._has[name] = bool(np.isfinite(clips).any())
            if self._has[name]:  # a key without a clip takes its nearest neighbour's
                ok = np.flatnonzero(np.isfinite(clips))
                clips = clips[ok[np.abs(np.arange(len(clips))[:, None] - ok[None]).argmin(axis=1)]]
                self._vals[name] = clips[:, None]
        still = np.zeros(n, bool)  # keys next to a hold, and the ends, get zero tangents
        still[0] = still[-1] = True
        for i in range(n - 1):
            if self.poses[i].same_as(self.poses[i + 1]):
                still[i] = still[i + 1] = True
        self._tangents = {k: self._catmull_rom(v, still) for k, v in self._vals.items()}

    @property
    def duration(self) -> float:
        return float(self.times[-1] - self.times[0]) if len(self.times) > 1 else 0.0

    def _catmull_rom(self, v: np.ndarray, still: np.ndarray) -> np.ndarray:
        t = self.times
        m = np.zeros_like(v)
        for i in range(1, len(t) - 1):
            if still[i]:
                continue
            h0, h1 = t[i] - t[i - 1], t[i + 1] - t[i]
            d0, d1 = (v[i] - v[i - 1]) / h0, (v[i + 1] - v[i]) / h1
            m[i] = (h1 * d0 + h0 * d1) / (h0 + h1)
        return m

    def _eval(self, name: str, t: float) -> np.ndarray:
        v, m, ts = self._vals[name], self._tangents[name], self.times
        if len(ts) == 1 or t <= ts[0]:
            return v[0].copy()
        if t >= ts[-1]:
            return v[-1].copy()
        i = int(np.searchsorted(ts, t, side="right")) - 1
        h = ts[i + 1] - ts[i]
        s = (t - ts[i]) / h
        h00, h10 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s
        h01, h11 = -2 * s**3 + 3 * s**2, s**3 - s**2
        return h00 * v[i] + h10 * h * m[i] + h01 * v[i + 1] + h11 * h * m[i + 1]

    def _eval_window(self, name: str, t: float, widest) -> float:
        """Clip depths move "widen first, then narrow": in the first half of a move the clip
        window opens to cover both ends' windows, in the second half it closes onto the
        target's (smoothstep in each half). Flying from one isolated layer to the next, the
        next appears before the first disappears, so no frame shows an empty window."""
        v, ts = self._vals[name][:, 0], self.times
        if len(ts) == 1 or t <= ts[0]:
            return float(v[0])
        if t >= ts[-1]:
            return float(v[-1])
        i = int(np.searchsorted(ts, t, side="right")) - 1
        a, b = float(v[i]), float(v[i + 1])
        m = widest(a, b)
        s = (t - ts[i]) / (ts[i + 1] - ts[i])
        if s < 0.5:
            e = _smoothstep(2 * s)
            return a + (m - a) * e
        e = _smoothstep(2 * s - 1)
        return m + (b - m) * e

    def pose_at(self, t: float) -> CameraPose:
        """The pose at time ``t`` (seconds; clamped to the path's ends)."""
        t = float(t)
        pos, foc = self._eval("position", t), self._eval("focal_point", t)
        up = self._eval("up", t)
        f = foc - pos
        nf = np.linalg.norm(f)
        if nf > 0:
            f /= nf
            up = up - np.dot(up, f) * f
        nu = np.linalg.norm(up)
        up = up / nu if nu > 1e-9 else Z_UP.copy()
        clip = self._eval_window("clip", t, min) if self._has["clip"] else None
        far = self._eval_window("clip_far", t, max) if self._has["clip_far"] else None
        return CameraPose(pos, foc, up, float(self._eval("view_angle", t)[0]), clip, far)

    def sample(self, fps: float, duration: float | None = None) -> list[CameraPose]:
        """One pose per frame at ``fps`` over ``duration`` (default the path's)."""
        total = self.duration if duration is None else float(duration)
        n = max(1, int(round(total * fps)) + 1)
        return [self.pose_at(self.times[0] + i / fps) for i in range(n)]
