"""The plan's image list as columns (ids, paths, labels, frames) instead of one object per image.

A store of 100,000 images holds 100,000 records. As a list of :class:`ImageRecord` (and a list of
per-image dicts in ``plan.json``) they took a second to write at capture and to read back at every
open, the one part of opening a store that grew with the number of images. Here the columns are
the lists ``json`` reads, an :class:`ImageRecord` is made only for the image asked for, and a
caller that wants one column (every id, every label) reads it without a loop over records.

``plan.json`` holds ``{"id": [...], "path": [...], "label": [...], "frame": [...] or null}``
(format 3; ``frame`` is null when no image is a video frame). Formats 1 and 2 stored a list of
per-image dicts: :meth:`ImageList.from_dict` reads both.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from volviz.sources.images import ImageRecord


class ImageList(Sequence):
    """An immutable sequence of :class:`ImageRecord` kept as columns; ``[i]`` builds one record,
    a slice gives another ``ImageList``."""

    __slots__ = ("_ids", "_paths", "_labels", "_frames", "_label_array")

    def __init__(
        self, ids: list[str], paths: list[str], labels: list[int], frames: list[int | None] | None = None
    ) -> None:
        n = len(ids)
        if len(paths) != n or len(labels) != n or (frames is not None and len(frames) != n):
            lengths = f"{n} ids, {len(paths)} paths, {len(labels)} labels" + (
                f", {len(frames)} frames" if frames is not None else ""
            )
            raise ValueError(f"image columns of different lengths ({lengths})")
        self._ids, self._paths, self._labels = ids, paths, labels
        self._frames = frames if frames is not None and any(f is not None for f in frames) else None
        self._label_array: np.ndarray | None = None

    # ---- building and (de)serializing ---------------------------------------------------------
    @classmethod
    def from_records(cls, records: Iterable[ImageRecord]) -> ImageList:
        """Columns of ``records`` (an ``ImageList`` is returned as is: it is immutable)."""
        if isinstance(records, ImageList):
            return records
        records = list(records)
        return cls(
            [r.id for r in records],
            [r.path for r in records],
            [int(r.label) for r in records],
            [r.frame for r in records],
        )

    @classmethod
    def from_dict(cls, d: dict | list) -> ImageList:
        """The ``images`` entry of a plan: columns (format 3) or a list of per-image dicts (formats
        1 and 2). A damaged entry raises KeyError / TypeError / ValueError for the caller to name."""
        if isinstance(d, list):
            return cls(
                [r["id"] for r in d],
                [r["path"] for r in d],
                [r.get("label", -1) for r in d],
                [r.get("frame") for r in d],
            )
        if not isinstance(d, dict):
            raise TypeError(f"images is a {type(d).__name__}, not columns")
        columns = [d["id"], d["path"], d["label"], d.get("frame")]
        if not all(isinstance(c, list) for c in columns[:3]) or not isinstance(columns[3], (list, type(None))):
            raise TypeError("an image column is not a list")
        return cls(*columns)

    def to_dict(self) -> dict:
        """The columns for ``plan.json`` (copies: the dict may be changed without changing this)."""
        return {
            "id": list(self._ids),
            "path": list(self._paths),
            "label": list(self._labels),
            "frame": None if self._frames is None else list(self._frames),
        }

    # ---- columns ------------------------------------------------------------------------------
    @property
    def ids(self) -> Sequence[str]:
        """Every image's id, in store order (the column itself, not a copy: do not change it)."""
        return self._ids

    @property
    def paths(self) -> Sequence[str]:
        return self._paths

    @property
    def labels(self) -> np.ndarray:
        """Every image's label as int64 (-1: unlabelled); one array, made once."""
        if self._label_array is None:
            self._label_array = np.asarray(self._labels, dtype=np.int64).reshape(-1)
            self._label_array.flags.writeable = False
        return self._label_array

    @property
    def frames(self) -> Sequence[int | None]:
        """Every image's video frame (None for a still image)."""
        return self._frames if self._frames is not None else [None] * len(self._ids)

    def video_paths(self) -> list[str]:
        """The distinct video files among the images, sorted."""
        if self._frames is None:
            return []
        return sorted({p for p, f in zip(self._paths, self._frames) if f is not None})

    def position(self, image_id: str) -> int | None:
        """Where the image with id ``image_id`` is (None when no image has it)."""
        try:
            return self._ids.index(image_id)
        except ValueError:
            return None

    # ---- the sequence -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            frames = None if self._frames is None else self._frames[i]
            return ImageList(self._ids[i], self._paths[i], self._labels[i], frames)
        i = int(i)  # numpy integers index too
        frame = None if self._frames is None else self._frames[i]
        return ImageRecord(self._ids[i], self._paths[i], int(self._labels[i]), frame)

    def __iter__(self) -> Iterator[ImageRecord]:
        frames = self._frames if self._frames is not None else (None for _ in self._ids)
        for image_id, path, label, frame in zip(self._ids, self._paths, self._labels, frames):
            yield ImageRecord(image_id, path, int(label), frame)

    def __eq__(self, other) -> bool:
        if isinstance(other, ImageList):
            return (
                self._ids == other._ids
                and self._paths == other._paths
                and list(self._labels) == list(other._labels)
                and list(self.frames) == list(other.frames)
            )
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # like a list

    def __repr__(self) -> str:
        first = f", first {self._ids[0]!r}" if self._ids else ""
        return f"ImageList({len(self)} images{first})"
