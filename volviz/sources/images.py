"""Find and decode the images a user points at.

Accepted: an ImageFolder tree (one subfolder per class), a flat folder of unlabelled images,
single image files, and video files (read frame by frame). Unreadable files are reported and
skipped by the caller; discovery itself never decodes still images, so it is fast on large folders
(a video is opened once to count its frames, and skipped here when it cannot be read).

Still images are decoded with Pillow: CMYK/YCbCr/palette images become RGB(A), the EXIF
orientation is applied, an animated file gives its first frame only, and a file of more than
``MAX_PIXELS`` pixels is refused before decoding (a decompression-bomb guard per file).
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from volviz.errors import ImageSourceError  # noqa: F401  (re-exported)
from volviz.sources.classes import compact_names, folder_labels

log = logging.getLogger("volviz.sources")

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
MAX_PIXELS = 64_000_000  # per image or video frame: 192 MB as uint8 RGB, 768 MB as float32
LAYOUTS = ("auto", "flat", "classes")


class ImageTooLargeError(ImageSourceError):
    """An image has more pixels than ``MAX_PIXELS``."""


@dataclass(frozen=True)
class ImageRecord:
    id: str  # unique, stable id: relative path, plus "#frame" for video frames
    path: str
    label: int = -1  # -1 = unlabelled
    frame: int | None = None

    def to_dict(self) -> dict:
        return {"id": self.id, "path": self.path, "label": self.label, "frame": self.frame}


@dataclass
class ImageSet:
    records: list[ImageRecord]
    class_names: list[str] | None  # the names the labels index; None for unlabelled sets
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}: videos that cannot be read

    def __len__(self) -> int:
        return len(self.records)


def _first_line(exc: BaseException) -> str:
    s = str(exc).strip()
    return s.splitlines()[0][:200] if s else type(exc).__name__


def _image_suffixes() -> set[str]:
    from PIL import Image

    Image.init()
    return {k.lower() for k in Image.registered_extensions()} | {".npy", ".exr", ".hdr"}


def _suffix(name: str) -> str:
    """``pathlib.PurePath(name).suffix`` without the Path: a leading or trailing dot is no suffix."""
    i = name.rfind(".")
    return name[i:] if 0 < i < len(name) - 1 else ""


def _prefix(folder: str) -> str:
    """What goes before a name inside ``folder`` so that ``_prefix(folder) + name`` is
    ``str(pathlib.Path(folder) / name)`` for the folder strings pathlib writes ("." included)."""
    return "" if folder in (".", "") else os.path.join(folder, "")


def _join(folder: str, name: str) -> str:
    return _prefix(folder) + name


def _visible_entries(folder: str) -> list[os.DirEntry]:
    """A folder's entries not starting with a dot, in pathlib's order (by name, case-folded on
    Windows); an unreadable folder has none, as ``Path.rglob`` skips it."""
    try:
        with os.scandir(folder) as it:
            entries = [e for e in it if not e.name.startswith(".")]
    except PermissionError:
        return []
    entries.sort(key=lambda e: os.path.normcase(e.name))
    return entries


def _files_below(folder: str, below: str = "") -> Iterator[str]:
    """The visible files below ``folder`` (paths relative to it), as
    ``sorted(f for f in Path(folder).rglob("*") if f.is_file() and no part is hidden)`` gives them:
    symlinked files taken, symlinked sub-folders not entered. One ``scandir`` per folder and no
    Path per file: 10,000 files took half a second with pathlib."""
    prefix = _prefix(below)
    for e in _visible_entries(folder):
        if e.is_dir(follow_symlinks=False):
            yield from _files_below(e.path, prefix + e.name)
        elif e.is_file():
            yield prefix + e.name


def _video_frame_count(path: pathlib.Path) -> int:
    import imageio.v2 as iio

    reader = iio.get_reader(str(path), "ffmpeg")
    try:
        n = reader.count_frames()
        if n > 0:
            reader.get_data(0)  # a header without decodable frames fails here, not mid-capture
    finally:
        reader.close()
    return n


def _video_records(
    path: pathlib.Path, vid_id: str, label: int, stride: int, max_frames: int | None
) -> list[ImageRecord]:
    try:
        n = _video_frame_count(path)
    except Exception as exc:  # truncated, not a video, unknown codec: ffmpeg says why
        raise ImageSourceError(f"cannot read video ({_first_line(exc)}); is it truncated or not a video?") from None
    if n == 0:
        raise ImageSourceError("the video has no frames")
    frames = list(range(0, n, max(1, stride)))[:max_frames]
    return [ImageRecord(f"{vid_id}#{k}", str(path), label, k) for k in frames]


def _folder_layout(p: pathlib.Path, layout: str, media: set[str]):
    """('classes', {name: folder}) or ('flat', [files relative to ``p``]), warning when something
    is left out."""
    folder = str(p)
    entries = _visible_entries(folder)
    files = [e.name for e in entries if e.is_file()]
    loose = [f for f in files if _suffix(f).lower() in media]
    subdirs = [e.name for e in entries if e.is_dir()]
    if layout == "flat":
        return "flat", list(_files_below(folder))
    full = [d for d in subdirs if next(_files_below(_join(folder, d)), None) is not None]
    if layout == "classes" or len(full) > len(loose):  # more class folders than loose images: an ImageFolder
        if loose:
            log.warning(
                "%s has %d class sub-folders and %d images of its own (%s): read it as an ImageFolder and "
                "ignored those images; pass --layout flat to take every image below it",
                p,
                len(full),
                len(loose),
                compact_names(loose, 3),
            )
        empty = [d for d in subdirs if d not in full]
        if empty:
            log.warning("ignoring the empty sub-folder(s) %s of %s", compact_names(empty, 6), p)
        return "classes", {d: _join(folder, d) for d in full}
    if full:
        n_sub = sum(1 for d in full for f in (p / d).rglob("*") if f.is_file())
        log.warning(
            "%s holds %d images and the sub-folder(s) %s (%d files): took the images directly in it as "
            "one unlabelled set and ignored the sub-folders; pass --layout classes to read the "
            "sub-folders as classes, --layout flat to take every image below %s, or name a sub-folder "
            "in --images",
            p,
            len(loose),
            compact_names([d + "/" for d in full], 4),
            n_sub,
            p.name,
        )
    return "flat", files


def discover_images(
    paths: list[str | pathlib.Path],
    *,
    class_names: list[str] | None = None,
    wordnet_ids: list[str] | None = None,
    video_stride: int = 1,
    max_frames: int | None = None,
    layout: str = "auto",
) -> ImageSet:
    """Turn user paths into records.

    layout 'auto': a folder with more sub-folders than images of its own is an ImageFolder (one
    class per sub-folder); otherwise it is a flat, unlabelled set of its own images (a stray
    ``backup/`` is ignored). Whatever is left out is named in a warning with the option to take
    it. 'classes' / 'flat' force one reading ('flat' takes every image below the folder). Class
    folders are matched to ``class_names`` by name (``classes.folder_labels``); without class
    names, by sorted position. A video that cannot be read is skipped (``skipped``).
    """
    if layout not in LAYOUTS:
        raise ImageSourceError(f"unknown folder layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    media = _image_suffixes() | VIDEO_SUFFIXES
    # ("classes", root, {name: folder}) | ("file", path, id); ids are relative to the folder's parent
    plan: list[tuple] = []
    class_dirs: set[str] = set()
    for raw in paths:
        p = pathlib.Path(raw)
        if not p.exists():
            raise ImageSourceError(f"no such file or folder: {p}")
        if p.is_dir():
            kind, found = _folder_layout(p, layout, media)
            if kind == "classes":
                plan.append(("classes", p, found))
                class_dirs |= set(found)
            else:
                at, prefix = _prefix(str(p)), _prefix(p.name)
                plan.extend(("file", at + f, prefix + f) for f in found)
        else:
            plan.append(("file", str(p), p.name))
    index: dict[str, int] = {}
    found_classes: list[str] | None = None
    if class_dirs:
        index, found_classes = folder_labels(sorted(class_dirs), class_names, wordnet_ids)
    records: list[ImageRecord] = []
    skipped: list[dict] = []

    def add(f: str, rel: str, label: int) -> None:
        if _suffix(f.rpartition(os.sep)[2]).lower() in VIDEO_SUFFIXES:
            try:
                records.extend(_video_records(pathlib.Path(f), rel, label, video_stride, max_frames))
            except ImageSourceError as exc:
                log.warning("skipping %s: %s", f, exc)
                skipped.append({"path": f, "reason": str(exc)})
        else:
            records.append(ImageRecord(rel, f, label))

    for item in plan:
        if item[0] == "classes":
            _, root, dirs = item
            for name, folder in sorted(dirs.items()):
                label, at, prefix = index.get(name, -1), _prefix(folder), _prefix(_join(root.name, name))
                for rel in _files_below(folder):
                    add(at + rel, prefix + rel, label)
        else:
            _, f, rel = item
            add(f, rel, -1)
    if not records:
        if skipped:
            raise ImageSourceError(f"no readable images: {skipped[0]['path']}: {skipped[0]['reason']}")
        raise ImageSourceError(f"no image files found in {', '.join(map(str, paths))}")
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        raise ImageSourceError("two inputs give the same image id; pass each file or folder once")
    return ImageSet(records, found_classes, skipped)


def _too_large(w: int, h: int, limit: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"{w}x{h} is {w * h / 1e6:.1f} megapixels, more than the {limit / 1e6:.1f} MP "
        "volviz decodes per image (volviz.sources.images.MAX_PIXELS); downscale it first"
    )


def _pil_array(im) -> np.ndarray:
    """A Pillow image as a uint8/uint16/float array with 1-4 channels, colours as RGB."""
    mode = im.mode
    if mode == "1":
        im = im.convert("L")
    elif mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    elif mode in ("RGBa", "La"):
        im = im.convert(mode[0] + "A" if mode == "La" else "RGBA")
    elif mode not in ("L", "LA", "RGB", "RGBA", "F") and not mode.startswith("I"):
        im = im.convert("RGB")  # CMYK (K is not alpha), YCbCr, LAB, HSV, RGBX
    return np.asarray(im)


#: formats whose orientation tag may live outside ``info['exif']`` (TIFF tags, JPEG APP1)
EXIF_FORMATS = ("JPEG", "MPO", "TIFF", "WEBP")


def _read_still(path: str, limit: int) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > limit:
                raise _too_large(w, h, limit)
            im.seek(0)  # animated GIF / multi-page TIFF: the first frame, decoded once
            im.load()
            if "exif" in im.info or im.format in EXIF_FORMATS:  # a copy otherwise: 1/3 of a PNG's read
                im = ImageOps.exif_transpose(im)
            return _pil_array(im)
    except ImageSourceError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"refused as a decompression bomb ({_first_line(exc)})") from None
    except UnidentifiedImageError:
        pass  # a format Pillow does not know: imageio's other plugins below
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageSourceError(f"cannot decode the image ({_first_line(exc)}); is it truncated?") from None
    import imageio.v3 as iio

    try:
        arr = np.asarray(iio.imread(path, index=0))
    except Exception as exc:
        raise ImageSourceError(f"not an image file volviz can read ({_first_line(exc)})") from None
    if arr.ndim >= 2 and arr.shape[0] * arr.shape[1] > limit:
        raise _too_large(arr.shape[1], arr.shape[0], limit)
    return arr


def _read_frame(path: str, frame: int, limit: int) -> np.ndarray:
    import imageio.v2 as iio2

    try:
        reader = iio2.get_reader(path, "ffmpeg")
    except Exception as exc:
        raise ImageSourceError(f"cannot read video {path} ({_first_line(exc)})") from None
    try:
        w, h = reader.get_meta_data().get("size", (0, 0))
        if w * h > limit:
            raise _too_large(w, h, limit)
        return np.asarray(reader.get_data(frame))
    except ImageSourceError:
        raise
    except Exception as exc:
        raise ImageSourceError(f"cannot decode frame {frame} of {path} ({_first_line(exc)})") from None
    finally:
        reader.close()


def read_image(record: ImageRecord, max_pixels: int | None = None) -> np.ndarray:
    """Decode one image to uint8 HxWxC (C = 1, 3 or 4 as stored; 2 for grey+alpha).
    Raises ImageSourceError (ImageTooLargeError above ``max_pixels``, default MAX_PIXELS)."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if record.frame is not None:
        arr = _read_frame(record.path, record.frame, limit)
    else:
        arr = _read_still(record.path, limit)
    if arr.ndim == 4:  # a multi-frame array from imageio: first frame
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageSourceError(f"not an image: array of shape {arr.shape}")
    if arr.dtype != np.uint8:
        a = arr.astype(np.float64)
        hi = 65535.0 if arr.dtype == np.uint16 else (a.max() if a.max() > 1.0 else 1.0)
        arr = np.clip(a / max(hi, 1e-12) * 255.0, 0, 255).astype(np.uint8)
    return arr
