"""Recording the current view of every pane to an MP4: stepping through the images from the
slider position on, or one turn around the volume.

The frames are rendered in separate off-screen scenes in the server's main thread (where VTK
lives) and handed through a :class:`FrameQueue` to :func:`volviz.record.write_movie` in a worker
thread (a :class:`~volviz.app.jobs.BackgroundJob`), so the page stays usable. Recording is a
job of the session, not of a browser's connection: a tab closed mid-way does not stop it (the log
says so) and the next visit of that tab offers the file. Each session has its own recordings: its
download links (made by the server) serve only the files it wrote, and no other session can
cancel them. A recording is at most ``MAX_RECORD_FRAMES`` frames and ``MAX_RECORD_SECONDS``.
"""

from __future__ import annotations

import logging
import pathlib
import queue
import re
import time
from pathlib import Path

import numpy as np

from volviz.app import state as S
from volviz.app.jobs import BackgroundJob, JobCancelled
from volviz.app.rules import MAX_RECORD_FRAMES, MAX_RECORD_SECONDS
from volviz.app.wiring import bind, controller

log = logging.getLogger("volviz.app")

__all__ = ["FrameQueue", "RecordingCancelled", "Recorder", "composite", "movie_path", "RECORD_SIZE"]

RECORD_SIZE = (800, 608)  # multiples of 16: no padding in the MP4
RecordingCancelled = JobCancelled  # the user pressed stop: the partial movie is deleted

_END = object()


class FrameQueue:
    """An iterable of frames fed from another thread; ``fail(exc)`` makes the consumer raise
    ``exc`` (``write_movie`` then deletes its temporary file)."""

    def __init__(self, maxsize: int = 8):
        self._q: queue.Queue = queue.Queue(maxsize)

    def offer(self, frame: np.ndarray) -> bool:
        """Queue a frame without blocking; False when the writer is behind (try again)."""
        try:
            self._q.put_nowait(frame)
            return True
        except queue.Full:
            return False

    def put(self, frame: np.ndarray) -> None:
        self._q.put(frame)

    def close(self) -> None:
        self._q.put(_END)

    def fail(self, exc: BaseException) -> None:
        while True:  # make room: the writer must see the failure next
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._q.put(exc)

    def __iter__(self):
        while True:
            item = self._q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def composite(frames: list[np.ndarray], gap: int = 16) -> np.ndarray:
    """Frames of the panes side by side (same height), separated by a dark gap."""
    if len(frames) == 1:
        return frames[0]
    h = max(f.shape[0] for f in frames)
    parts = []
    for k, f in enumerate(frames):
        if f.shape[0] < h:
            f = np.pad(f, ((0, h - f.shape[0]), (0, 0), (0, 0)))
        if k:
            parts.append(np.zeros((h, gap, 3), np.uint8))
        parts.append(f)
    return np.concatenate(parts, axis=1)


def movie_path(folder: Path, *parts: str, suffix: str = ".mp4") -> Path:
    """A new file name in ``folder`` from ``parts`` and the time, safe for URLs."""
    stem = "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", p).strip("_") for p in parts if p)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(folder) / f"{stem}-{stamp}{suffix}"
    k = 1
    while path.exists():
        k += 1
        path = Path(folder) / f"{stem}-{stamp}-{k}{suffix}"
    return path


class Recorder:
    """The record controls of the app bar: ``record()`` now (blocking), ``start()`` in the background."""

    def __init__(self, app):
        self.app, self.state = app, app.state
        self.record_dir = app.record_dir
        self.job = BackgroundJob(
            self.state, "recording", busy=S.R_BUSY, progress=S.R_PROGRESS, status=S.R_STATUS, poll=0.01
        )
        self._left_logged = False
        self.files: set[str] = set()  # names of the movies this session wrote (downloads)
        self.last_file: pathlib.Path | None = None
        bind(self, app.server)

    def plan(self, mode: str):
        """(frames iterator, total, path) for the current view of every pane."""
        from volviz.record import orbit_frames
        from volviz.views.volume import LayerVolumeScene

        panes = [p for p in self.app.panes if p.scene is not None]
        if not panes:
            raise RuntimeError("nothing to record: no store is shown")
        if mode not in ("images", "rotate"):
            raise ValueError(f"unknown recording mode {mode!r}; use images or rotate")
        st = self.state
        tmax = int(st[S.T_MAX])
        fps = float(st[S.R_FPS] or 8)
        asked = int(st[S.R_MAX_IMAGES] or 1) if mode == "images" else int(st[S.R_FRAMES] or 2)
        if asked > MAX_RECORD_FRAMES or asked / fps > MAX_RECORD_SECONDS:
            raise ValueError(
                f"{asked} frames asked; a recording is at most {MAX_RECORD_FRAMES} frames and "
                f"{MAX_RECORD_SECONDS:.0f} s ({min(MAX_RECORD_FRAMES, int(MAX_RECORD_SECONDS * fps))} "
                f"frames at {fps:g} frames/s)"
            )
        if mode == "images":
            total = max(1, min(asked, tmax + 1))
            start = int(st[S.T_INDEX])
            positions = [(start + k) % (tmax + 1) for k in range(total)]
        else:
            total = max(2, asked)
        first = panes[0]
        path = movie_path(
            self.record_dir, pathlib.Path(first.path).name, first.layer, first.quantity, st[S.V_ORDER], mode
        )
        load = self.app.volume.load

        def frames():
            scenes = []
            try:
                for p in panes:
                    sc = LayerVolumeScene(
                        p.shown.volume,
                        p.shown.order,
                        p.shown.boundaries,
                        p.scene.style,
                        p.scene.title_text,
                        window_size=RECORD_SIZE,
                    )
                    sc.set_label(p.scene.label_text)
                    cam, live = sc.plotter.camera, p.plotter.camera
                    cam.position, cam.focal_point, cam.up = live.position, live.focal_point, live.up
                    cam.view_angle = live.view_angle
                    sc.plotter.renderer.ResetCameraClippingRange()
                    scenes.append((p, sc))
                if mode == "rotate":
                    for shots in zip(*[orbit_frames(sc, total) for _, sc in scenes]):
                        yield composite(list(shots))
                    return
                for pos in positions:
                    shots = []
                    for p, sc in scenes:
                        image = p.image_at(pos)
                        lv = load(p, image)
                        sc.update(lv.volume)
                        if not np.array_equal(lv.order, sc.order):
                            sc.set_order(lv.order, lv.boundaries)
                        sc.set_label(p.truth_text(image, "pred"))
                        shots.append(sc.screenshot())
                    yield composite(shots)
            finally:
                for _, sc in scenes:
                    sc.close()

        return frames(), total, path

    def record(self, mode: str | None = None) -> pathlib.Path:
        """Write a movie of the current view now (blocking). Returns the MP4's path."""
        from volviz.record import write_movie

        frames, total, path = self.plan(mode or self.state[S.R_MODE])
        done = write_movie(path, frames, fps=float(self.state[S.R_FPS]), total=total, progress=False)
        self.add_file(done)
        return done

    def add_file(self, path: pathlib.Path) -> None:
        """A finished recording (this tab's or another tab's, e.g. the dashboard movie) becomes a
        download of this session's page."""
        st = self.state
        self.files.add(path.name)
        self.last_file = path
        st[S.R_URL] = f"{self.app.record_url}{path.name}"
        st[S.R_PROGRESS] = 100
        st[S.R_STATUS] = f"wrote {path.name}"
        log.info("recording written: %s", path)

    @controller("record")
    def start(self) -> None:
        """The record button: a background job (progress in the page); at once without a loop."""
        from volviz.record import write_movie

        st = self.state
        if self.job.running:
            st[S.R_STATUS] = "a recording is already running"
            return
        mode = st[S.R_MODE]
        try:
            frames, total, path = self.plan(mode)
        except Exception as exc:  # noqa: BLE001
            st[S.R_STATUS] = self.app.redact(f"cannot record: {exc}")
            return
        fps, q = float(st[S.R_FPS]), FrameQueue()
        self._left_logged = False
        st[S.R_URL] = ""
        st[S.R_STATUS] = f"recording {mode}: 0/{total} frames"

        def feed():  # on the main loop: render a frame, hand it to the writer thread
            try:
                for k, frame in enumerate(frames, 1):
                    while not q.offer(frame):
                        yield None
                    yield k, total
                q.close()
            finally:
                frames.close()

        def failed(exc: BaseException) -> str:
            if isinstance(exc, JobCancelled):
                return f"recording stopped: {exc}"
            return self.app.redact(f"recording failed: {exc}")

        self.job.start(
            lambda report: write_movie(path, q, fps=fps, total=total, progress=False),
            now=lambda report: write_movie(path, frames, fps=fps, total=total, progress=False),
            feed=feed,
            abort=q.fail,
            done=self.add_file,
            failed=failed,
            describe=lambda k, n: f"recording {mode}: {k}/{n} frames",
        )

    @controller("cancel_record")
    def cancel(self) -> None:
        self.job.cancel()

    @controller("on_client_exited", add=True)
    def client_left(self, **_) -> None:
        if self.job.running:
            if not self._left_logged:
                self._left_logged = True
                log.warning(
                    "a browser left while a movie is being written; writing goes on, the "
                    "file will be offered for download on the next visit (folder %s)",
                    self.record_dir,
                )
        else:
            log.info("a browser left (%d connected)", len(getattr(self.app, "clients", ())))

    def close(self) -> None:
        self.job.close()
