"""Movies from a frame source: MP4 (H.264) or GIF, written atomically.

``write_movie(path, frames)`` takes any iterable of ``uint8 (H, W, 3)`` frames, e.g. the
generators :func:`orbit_frames` (camera turns once around a layer volume) and
:func:`timeseries_frames` (one volume per time step, updated in place).

The movie is written to a hidden temporary file in the target folder and renamed onto ``path``
only when every frame is in: an exception in the frame source (or Ctrl-C) removes the temporary
file, so a half-written movie never appears under the final name.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

__all__ = ["MOVIE_SUFFIXES", "orbit_frames", "timeseries_frames", "write_movie"]

MOVIE_SUFFIXES = (".mp4", ".gif")
_BLOCK = 16  # H.264 macro block: pad frames to a multiple of this


def _check_frame(frame, shape=None) -> np.ndarray:
    f = np.asarray(frame)
    if f.ndim == 3 and f.shape[2] == 4:
        f = f[..., :3]
    if f.ndim != 3 or f.shape[2] != 3:
        raise ValueError(f"frames must be (H, W, 3) RGB, got shape {f.shape}")
    if f.dtype != np.uint8:
        raise TypeError(f"frames must be uint8, got {f.dtype}")
    if shape is not None and f.shape != shape:
        raise ValueError(f"all frames must have the same shape: {shape} then {f.shape}")
    return np.ascontiguousarray(f)


def _pad_to_block(f: np.ndarray, block: int = _BLOCK) -> np.ndarray:
    """Pad bottom/right by repeating the edge pixels up to a multiple of ``block``
    (instead of letting the encoder resample the picture)."""
    h, w = f.shape[:2]
    ph, pw = (-h) % block, (-w) % block
    if ph or pw:
        f = np.pad(f, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return f


def write_movie(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: float = 15,
    total: int | None = None,
    progress: bool = True,
    quality: int = 8,
) -> Path:
    """Write frames to an MP4 or a GIF, chosen by the suffix of ``path``.

    Parameters
    ----------
    path : ``*.mp4`` (H.264 ``libx264``, ``yuv420p``, plays everywhere) or ``*.gif`` (loops
        forever). Any other suffix raises ``ValueError`` before a frame is consumed.
    frames : iterable of ``uint8 (H, W, 3)``, all the same shape. For MP4 a size that is not a
        multiple of 16 is padded at the bottom/right by repeating the edge (use window sizes such
        as 800x608 or 1024x768 to avoid it).
    fps : frames per second.
    total : number of frames, for the progress bar only (``len(frames)`` when available).
    progress : show a tqdm progress bar (on stderr).
    quality : MP4 quality 0..10 (imageio-ffmpeg's scale; 10 = best, largest).

    Returns
    -------
    pathlib.Path
        The written file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MOVIE_SUFFIXES:
        raise ValueError(f"unknown movie format {path.suffix!r} for {path}; use one of {MOVIE_SUFFIXES}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if total is None and hasattr(frames, "__len__"):
        total = len(frames)  # type: ignore[arg-type]
    _remove_stale_partials(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial{suffix}")

    from tqdm.auto import tqdm

    bar = tqdm(frames, total=total, disable=not progress, unit="frame", desc=path.name, leave=False)
    try:
        n = _write_mp4(tmp, bar, fps, quality) if suffix == ".mp4" else _write_gif(tmp, bar, fps)
        if n == 0:
            raise ValueError("no frames to write")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    return path


def _remove_stale_partials(path: Path) -> None:
    """A movie writer killed with -9 cannot clean up: remove the partial files of ``path`` that
    volviz wrote and whose writing process is gone (a running writer's file is kept)."""
    for old in path.parent.glob(f".{path.stem}.*.partial{path.suffix.lower()}"):
        pid = old.name[len(path.stem) + 2 :].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            old.unlink(missing_ok=True)
        except PermissionError:
            pass  # another user's live process


def _write_mp4(tmp: Path, frames: Iterable[np.ndarray], fps: float, quality: int) -> int:
    import imageio_ffmpeg

    writer = None
    shape = None
    n = 0
    try:
        for frame in frames:
            f = _check_frame(frame, shape)
            shape = f.shape
            f = _pad_to_block(f)
            if writer is None:
                writer = imageio_ffmpeg.write_frames(
                    str(tmp),
                    (f.shape[1], f.shape[0]),
                    fps=fps,
                    codec="libx264",
                    pix_fmt_in="rgb24",
                    pix_fmt_out="yuv420p",
                    quality=quality,
                    macro_block_size=_BLOCK,
                    ffmpeg_log_level="error",
                )
                writer.send(None)  # start ffmpeg
            writer.send(f)
            n += 1
    finally:
        if writer is not None:
            writer.close()  # flushes and waits for ffmpeg (also on error)
    return n


def _write_gif(tmp: Path, frames: Iterable[np.ndarray], fps: float) -> int:
    import imageio.v3 as iio

    stack = []
    shape = None
    for frame in frames:
        f = _check_frame(frame, shape)
        shape = f.shape
        stack.append(f)
    if stack:
        duration_ms = max(int(round(1000.0 / fps)), 10)
        iio.imwrite(tmp, np.stack(stack), extension=".gif", duration=duration_ms, loop=0)
    return len(stack)


# ----------------------------------------------------------------------------- frame sources
def orbit_frames(
    scene,
    n_frames: int = 72,
    elevation: float | None = 35.0,
    start_azimuth: float = 30.0,
) -> Iterator[np.ndarray]:
    """Turn the camera of a :class:`~volviz.views.volume.LayerVolumeScene` once around the
    stack (about its z axis, the channel axis), yielding ``n_frames`` screenshots.

    The camera distance is fixed at the start (no zoom pumping); ``elevation=None`` keeps the
    current camera's elevation. The original camera is restored when the generator ends or is
    closed.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    cam = scene.plotter.camera
    saved = (cam.position, cam.focal_point, cam.up, cam.view_angle)
    if elevation is None:
        d = np.subtract(cam.position, cam.focal_point)
        elevation = math.degrees(math.atan2(d[2], math.hypot(d[0], d[1])))
    scene.reset_camera(azimuth=start_azimuth, elevation=elevation)
    center = np.array(cam.focal_point)
    dist = float(np.linalg.norm(np.subtract(cam.position, center)))
    el = math.radians(elevation)
    try:
        for i in range(n_frames):
            az = math.radians(start_azimuth + 360.0 * i / n_frames)
            direction = np.array([math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)])
            cam.position = tuple(center + dist * direction)
            cam.focal_point = tuple(center)
            cam.up = (0.0, 0.0, 1.0)
            scene.plotter.renderer.ResetCameraClippingRange()
            yield scene.screenshot()
    finally:
        cam.position, cam.focal_point, cam.up, cam.view_angle = saved


def timeseries_frames(
    scene,
    volumes: Iterable[np.ndarray],
    labels: Sequence[str] | None = None,
) -> Iterator[np.ndarray]:
    """For each volume (natural channel order, the scene's shape): update the scene's scalars
    in place, set the step label (``labels[i]``) and yield a screenshot.

    The colour limits stay those of the scene (build it with a ``clim`` covering every step, e.g.
    ``auto_clim(volumes)``, so magnitudes compare across steps).
    """
    for i, vol in enumerate(volumes):
        scene.update(vol)
        if labels is not None:
            scene.set_label(str(labels[i]))
        yield scene.screenshot()
