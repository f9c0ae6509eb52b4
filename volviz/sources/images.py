"""Find and decode the images a user points at.

Accepted: an ImageFolder tree (one subfolder per class), a flat folder of unlabelled images,
single image files, and video files (read frame by frame). Unreadable files are reported and
skipped by the caller; discovery itself never opens pixel data, so it is fast on large folders.
"""
from __future__ import annotations

from volviz.errors import ImageSourceError  # noqa: F401  (re-exported)
import pathlib
from dataclasses import dataclass, asdict

import numpy as np

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}




@dataclass(frozen=True)
class ImageRecord:
    id: str                 # unique, stable id: relative path, plus "#frame" for video frames
    path: str
    label: int = -1         # -1 = unlabelled
    frame: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ImageSet:
    records: list[ImageRecord]
    class_names: list[str] | None  # from ImageFolder subfolders; None for unlabelled sets

    def __len__(self) -> int:
        return len(self.records)


def _video_frame_count(path: pathlib.Path) -> int:
    import imageio.v2 as iio
    reader = iio.get_reader(str(path), "ffmpeg")
    try:
        n = reader.count_frames()
    finally:
        reader.close()
    return n


def discover_images(paths: list[str | pathlib.Path], *, class_names: list[str] | None = None,
                    video_stride: int = 1, max_frames: int | None = None) -> ImageSet:
    """Turn user paths into records. A folder whose subfolders hold images is an ImageFolder
    (labels = sorted subfolder names, or the index in ``class_names`` when the model names its
    classes); any other folder is a flat, unlabelled set."""
    records: list[ImageRecord] = []
    found_classes: list[str] | None = None
    for raw in paths:
        p = pathlib.Path(raw)
        if not p.exists():
            raise ImageSourceError(f"no such file or folder: {p}")
        if p.is_dir():
            subdirs = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
            if subdirs:
                names = [d.name for d in subdirs]
                if class_names is not None and all(n in class_names for n in names):
                    index = {n: class_names.index(n) for n in names}
                    found_classes = list(class_names)
                else:
                    index = {n: i for i, n in enumerate(names)}
                    found_classes = names
                for d in subdirs:
                    for f in sorted(d.rglob("*")):
                        if f.is_file() and not f.name.startswith("."):
                            records.append(ImageRecord(str(f.relative_to(p.parent)), str(f), index[d.name]))
            else:
                for f in sorted(p.iterdir()):
                    if f.is_file() and not f.name.startswith("."):
                        records.append(ImageRecord(str(f.relative_to(p.parent)), str(f)))
        elif p.suffix.lower() in VIDEO_SUFFIXES:
            n = _video_frame_count(p)
            frames = range(0, n, max(1, video_stride))
            if max_frames is not None:
                frames = list(frames)[:max_frames]
            records.extend(ImageRecord(f"{p.name}#{k}", str(p), -1, k) for k in frames)
        else:
            records.append(ImageRecord(p.name, str(p)))
    if not records:
        raise ImageSourceError(f"no image files found in {', '.join(map(str, paths))}")
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        raise ImageSourceError("two inputs give the same image id; pass each file or folder once")
    return ImageSet(records, found_classes)


def read_image(record: ImageRecord) -> np.ndarray:
    """Decode one image to uint8 HxWxC (C = 1, 3 or 4 as stored). Raises on unreadable files."""
    import imageio.v3 as iio
    if record.frame is not None:
        import imageio.v2 as iio2
        reader = iio2.get_reader(record.path, "ffmpeg")
        try:
            arr = reader.get_data(record.frame)
        finally:
            reader.close()
    else:
        arr = iio.imread(record.path)
        if arr.ndim == 4:  # animated GIF / multi-page TIFF: first frame
            arr = arr[0]
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"not an image: array of shape {arr.shape}")
    if arr.dtype != np.uint8:
        a = arr.astype(np.float64)
        hi = 65535.0 if arr.dtype == np.uint16 else (a.max() if a.max() > 1.0 else 1.0)
        arr = np.clip(a / max(hi, 1e-12) * 255.0, 0, 255).astype(np.uint8)
    return arr
