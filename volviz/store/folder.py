"""The store's folder on disk: created only where nothing of the user's would be lost, one writer
at a time, JSON written atomically. Nothing here knows what the arrays hold."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import platform

import numpy as np

from volviz.errors import StoreError
from volviz.store import layout
from volviz.store.plan import FORMAT_VERSION


def write_json_atomic(path: pathlib.Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=_json_default)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (tuple, set)):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def versions() -> dict:
    import torch
    import zarr

    from volviz import __version__

    return {
        "volviz": __version__,
        "torch": torch.__version__,
        "zarr": zarr.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def prepare_folder_check(path: pathlib.Path, overwrite: bool) -> bool:
    """Whether a new store may go into ``path`` (True: an old store there will be replaced);
    a clear error otherwise. Deletes nothing."""
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path} is a file, not a folder; pass --out a new folder name")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise StoreError(f"cannot create {path}: {parent} is a file; choose another --out")
    if path.is_dir() and any(path.iterdir()):
        owned, foreign = layout.is_volviz_folder(path)
        if not owned:
            shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
            raise StoreError(
                f"{path} holds files volviz did not create ({shown}); volviz never deletes "
                "them: pass --out an empty or new folder"
            )
        if not overwrite:
            raise StoreError(
                f"{path} exists and holds a store; use --resume to complete it or --overwrite to replace it"
            )
        _check_not_newer(path)
        return True
    return False


def prepare_folder(path: pathlib.Path, overwrite: bool) -> None:
    """Make ``path`` ready for a new store without ever deleting what volviz did not create."""
    if prepare_folder_check(path, overwrite):
        with write_lock(path):
            import shutil

            for p in path.iterdir():
                if p.name == ".lock":
                    continue
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    path.mkdir(parents=True, exist_ok=True)


def _check_not_newer(path: pathlib.Path) -> None:
    for name in ("manifest.json", "plan.json"):
        f = path / name
        if f.exists():
            try:
                version = int(json.loads(f.read_text()).get("format_version", 0))
            except (ValueError, AttributeError, TypeError):
                return
            if version > FORMAT_VERSION:
                raise StoreError(
                    f"{path} was written by a newer volviz (store format {version}, this volviz "
                    f"reads up to {FORMAT_VERSION}); upgrade volviz to read it"
                )
            return


@contextlib.contextmanager
def write_lock(path: pathlib.Path):
    """One writer per store: a second capture, resume or overwrite is refused while one runs."""
    import fcntl

    path.mkdir(parents=True, exist_ok=True)
    f = open(path / ".lock", "a")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(
                f"another volviz process is writing {path}; wait for it to finish (or stop it) and try again"
            ) from None
        yield
    finally:
        f.close()
