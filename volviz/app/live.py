"""Live input for the dashboard ([Tamari2017]'s realtime visualizer): frames from the browser's
webcam or an uploaded image (a data URL the page sends through a checked state key), or a video
file the server already knows, played in real time. The model runs in the server on each frame
as it arrives, with the store's own preprocessing and the capture engine, and nothing is written.

A frame that arrives while the model is busy is dropped, never queued: :class:`LatestOnly` runs
one frame at a time and keeps at most the newest one waiting (an older waiting frame is dropped
and counted), so the picture is never behind by more than one frame.
"""

from __future__ import annotations

import base64
import binascii
import collections
import io
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from volviz.errors import VolvizError

__all__ = [
    "LIVE_MAX_PIXELS",
    "MAX_FRAME_CHARS",
    "LatestOnly",
    "LiveError",
    "LiveResult",
    "crop_box",
    "decode_frame",
    "run_model",
    "video_frames",
]

MAX_FRAME_CHARS = 60_000  # one data URL from the page (under the guard's 64 KiB per value)
LIVE_MAX_PIXELS = 16_000_000  # decoded frame: refused above this before decoding (a bomb guard)
FRAME_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp")
MODES = {"1": "L", "L": "L", "LA": "LA", "P": "RGBA", "PA": "RGBA", "RGB": "RGB", "RGBA": "RGBA"}


class LiveError(VolvizError, ValueError):
    """A live frame the server does not take (not an image, too large, an odd channel layout)."""


def decode_frame(url: str, max_pixels: int = LIVE_MAX_PIXELS) -> np.ndarray:
    """A ``data:image/...;base64,`` URL from the page as ``uint8 (H, W, C)``, C in 1..4.

    Raises :class:`LiveError` with one line for everything a browser may send wrong.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not isinstance(url, str) or not url.startswith("data:"):
        raise LiveError("a live frame must be an image sent by the page (a data URL)")
    if len(url) > MAX_FRAME_CHARS:
        raise LiveError(f"the frame is {len(url) // 1024} KiB; at most {MAX_FRAME_CHARS // 1024} KiB")
    head, _, body = url.partition(",")
    kind = head[5:].split(";")[0].lower()
    if kind not in FRAME_TYPES or ";base64" not in head:
        raise LiveError(f"{kind[:40] or 'that file'} is not an image (PNG, JPEG, WebP, GIF or BMP)")
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise LiveError("the frame's data is not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise LiveError(
                    f"the image is {w}x{h} = {w * h / 1e6:.1f} megapixels; the live view takes at most "
                    f"{max_pixels / 1e6:.0f} MP: downscale it first"
                )
            if im.mode not in MODES:
                bands = len(im.getbands())
                raise LiveError(
                    f"the image has {bands} channel{'s' * (bands != 1)} ({im.mode}); the live view takes "
                    "grey, grey + alpha, RGB or RGBA images"
                )
            im.seek(0)
            im = ImageOps.exif_transpose(im).convert(MODES[im.mode])
            a = np.asarray(im)
    except LiveError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError):
        raise LiveError("the data is not an image volviz can decode (truncated, or another kind of file)") from None
    return a[:, :, None] if a.ndim == 2 else a


def crop_box(pre, h: int, w: int) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the part of an ``h x w`` image the model sees after
    ``pre`` (a :class:`~volviz.sources.preprocess.Preprocess`): the whole image for ``resize``,
    the centre crop for the crop modes."""
    if pre.mode == "resize":
        return 0, 0, h, w
    (nh, nw), top, left = pre._geometry(h, w)  # the crop, in the scaled image's pixels
    H, W = pre.size
    sy, sx = h / nh, w / nw
    return round(top * sy), round(left * sx), max(1, round(H * sy)), max(1, round(W * sx))


@dataclass
class LiveResult:
    source: np.ndarray  # uint8 (H, W, C) as decoded
    x: np.ndarray  # (C, H, W) the model input (normalized as a capture would)
    probs: np.ndarray  # (K,)
    act: dict[str, np.ndarray]  # layer -> activation of this frame (no batch axis)


def run_model(model, pre, layers: list[str], rgb: np.ndarray) -> LiveResult:
    """One frame through ``pre`` (the store's preprocessing) and ``model``: activations and
    probabilities from the capture engine, nothing written anywhere."""
    from volviz.capture.engine import capture_batch

    x = pre(rgb)
    res = capture_batch(model, x[None], list(layers), gradients=False)
    return LiveResult(rgb, x.numpy(), res.probs[0], {k: v[0] for k, v in res.act.items()})


# ------------------------------------------------------------------------------ dropping
class LatestOnly:
    """One run at a time on a :class:`~volviz.app.jobs.BackgroundJob`; a frame offered meanwhile
    waits in a single slot, replacing (dropping) the one there.

    ``offer(work)``: ``work()`` runs in the job's thread and returns what ``done(result)`` gets on
    the main loop; its ``LiveError`` (or any error) goes to ``failed(exc)``. Counts what arrived,
    ran and was dropped, the frames per second reached and the latency from arrival to done.
    """

    WINDOW_S = 3.0

    def __init__(self, job, done: Callable[[object], None], failed: Callable[[BaseException], None]):
        self.job, self._done, self._failed = job, done, failed
        self._waiting: tuple[Callable, float] | None = None
        self.arrived = self.ran = self.dropped = 0
        self._times: collections.deque = collections.deque(maxlen=120)
        self.latency: collections.deque = collections.deque(maxlen=200)

    @property
    def busy(self) -> bool:
        return self.job.running

    def offer(self, work: Callable[[], object]) -> None:
        self.arrived += 1
        t0 = time.perf_counter()
        if self.job.running:
            if self._waiting is not None:
                self.dropped += 1
            self._waiting = (work, t0)
            return
        self._start(work, t0)

    def _start(self, work, t0) -> None:
        def run(_report):
            try:
                return True, work()
            except Exception as exc:  # noqa: BLE001 - a bad frame: shown, the next one goes on
                return False, exc

        def finished(out):
            ok, value = out
            self.ran += 1
            now = time.perf_counter()
            self._times.append(now)
            self.latency.append(now - t0)
            (self._done if ok else self._failed)(value)
            self._next()

        self.job.start(run, done=finished)

    def _next(self) -> None:
        if self._waiting is None:
            return
        work, t0 = self._waiting
        self._waiting = None
        try:
            import asyncio

            asyncio.get_running_loop().call_soon(self._start, work, t0)  # once this job's task ended
        except RuntimeError:  # no loop (tests, scripts): now
            self._start(work, t0)

    def fps(self) -> float:
        now = time.perf_counter()
        recent = [t for t in self._times if now - t <= self.WINDOW_S]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(1e-6, recent[-1] - recent[0])

    def summary(self) -> str:
        lat = statistics.median(self.latency) * 1000 if self.latency else 0.0
        return f"{self.fps():.1f} frames/s · {lat:.0f} ms median · {self.ran} shown, {self.dropped} dropped"


def video_frames(path: str, max_pixels: int = LIVE_MAX_PIXELS):
    """``(fps, iterator of uint8 (H, W, 3))`` of a video file the server was given (ffmpeg)."""
    import imageio.v2 as iio2

    try:
        reader = iio2.get_reader(path, "ffmpeg")
        meta = reader.get_meta_data()
    except Exception as exc:  # noqa: BLE001 - one line for the page
        raise LiveError(f"cannot read the video ({str(exc).splitlines()[0][:120]})") from None
    w, h = meta.get("size", (0, 0))
    if w * h > max_pixels:
        reader.close()
        raise LiveError(f"the video is {w}x{h}; the live view takes at most {max_pixels / 1e6:.0f} MP frames")
    fps = float(meta.get("fps") or 25.0)

    def frames():
        try:
            for frame in reader:
                yield np.asarray(frame)
        finally:
            reader.close()

    return fps, frames()
