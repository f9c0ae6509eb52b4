"""Recording from the app: a frame queue between the renderer (the server's main thread, where
VTK lives) and the movie writer (a worker thread running :func:`volviz.record.write_movie`), so
the server keeps answering browsers while a movie is written.
"""
from __future__ import annotations

import queue
import re
import time
from pathlib import Path

import numpy as np

__all__ = ["FrameQueue", "RecordingCancelled", "composite", "movie_path"]


class RecordingCancelled(Exception):
    """The user pressed cancel (or the server is stopping): the partial movie is deleted."""


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
