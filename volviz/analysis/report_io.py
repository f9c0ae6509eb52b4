"""Reading and writing the files of an analysis report folder.

A report folder may come from someone else (the app shows any folder typed into it), so a file
is read only when its real path stays inside the folder and is a regular file: a ``table.csv``
linked to ``/etc/passwd``, a FIFO that would block, or a link out of the folder is refused.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import os
import pathlib
import stat

from volviz.errors import AnalysisError

__all__ = ["safe_name", "report_folder", "read_inside", "list_inside", "csv_text", "write_files"]


def safe_name(name: str) -> str:
    """A layer name as part of a file name (``layer1.0.conv1`` stays, ``a/b`` -> ``a_b``)."""
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)


def report_folder(folder) -> pathlib.Path:
    """The real path of an existing report folder (an empty name is not the current folder)."""
    if not str(folder).strip():
        raise AnalysisError("no folder given")
    path = pathlib.Path(folder).expanduser()
    if not path.is_dir():
        raise AnalysisError(f"no folder at {path}")
    return path.resolve()


def _inside(root: pathlib.Path, name: str) -> pathlib.Path:
    real = (root / name).resolve()
    if real == root or not real.is_relative_to(root):
        raise AnalysisError(f"{name} in {root} points outside the folder ({real}); not read")
    return real


def read_inside(folder, name: str, *, binary: bool = False) -> str | bytes:
    """The contents of ``folder/name`` when it really is a regular file inside ``folder``."""
    root = report_folder(folder)
    real = _inside(root, name)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(real, flags)
    except OSError as exc:
        raise AnalysisError(f"cannot read {name} in {root}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise AnalysisError(f"{name} in {root} is not a regular file; not read")
        data = f.read()
    return data if binary else data.decode("utf-8")


def list_inside(folder, pattern: str) -> list[str]:
    """Names of the entries of ``folder`` matching ``pattern``, sorted; a match that leads out
    of the folder or is not a regular file raises (nothing of it is read)."""
    root = report_folder(folder)
    names = sorted(n for n in os.listdir(root) if fnmatch.fnmatchcase(n, pattern))
    for n in names:
        if not _inside(root, n).is_file():
            raise AnalysisError(f"{n} in {root} is not a regular file; not read")
    return names


def csv_text(header: list, rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def write_files(folder, files: dict[str, str]) -> list[str]:
    """Write ``{name: text}`` into ``folder`` (the caller makes the folder appear atomically)."""
    folder = pathlib.Path(folder)
    for name, text in files.items():
        (folder / name).write_text(text)
    return list(files)
