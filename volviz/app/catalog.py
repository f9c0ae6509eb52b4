"""What a browser may choose from: the stores, scene files and report folders the server listed
at launch (or created itself), each under a server-made id and a display name.

A client never sends a path: the store picker, the scene select and the Pruning tab's folder
select carry ids (``store-1``, ``scene-2``, ``prune-3``); an id the catalog does not hold is
refused. No absolute server path goes into the page either: titles are folder or file names,
and :meth:`Catalog.redact` replaces any absolute path left in a message (an error from the store
layer, say) by its last component.
"""

from __future__ import annotations

import os
import pathlib
import re
import threading
from dataclasses import dataclass

__all__ = ["Catalog", "Choice", "find_stores", "redact_paths"]

#: how deep ``--root DIR`` is searched for stores, and how many are listed at most
ROOT_DEPTH = 3
MAX_LISTED = 500

_ABS_PATH = re.compile(r"(?<![\w.~\-/])((?:/[^\s/'\"<>|;,()\[\]{}`]+){2,}/?)")


def redact_paths(text: str) -> str:
    """Every absolute path in ``text`` (two components or more) replaced by its last component:
    ``cannot open /home/x/stores/digits`` -> ``cannot open digits``."""
    return _ABS_PATH.sub(lambda m: m.group(1).rstrip("/").rsplit("/", 1)[-1], text)


@dataclass(frozen=True)
class Choice:
    id: str
    title: str
    path: pathlib.Path

    def item(self) -> dict:
        return {"title": self.title, "value": self.id}


def _is_store(folder: pathlib.Path) -> bool:
    try:
        return (folder / "plan.json").is_file()  # a capture started there (Store.open says more)
    except OSError:
        return False


def find_stores(root: str | os.PathLike, depth: int = ROOT_DEPTH) -> list[pathlib.Path]:
    """Store folders under ``root`` (``root`` itself included), at most ``depth`` levels down,
    hidden folders and the insides of stores skipped, links not followed."""
    root = pathlib.Path(root)
    out: list[pathlib.Path] = []

    def walk(folder: pathlib.Path, level: int) -> None:
        if len(out) >= MAX_LISTED:
            return
        if _is_store(folder):
            out.append(folder)
            return
        if level >= depth:
            return
        try:
            children = sorted(folder.iterdir())
        except OSError:
            return
        for child in children:
            if child.name.startswith(".") or child.is_symlink() or not child.is_dir():
                continue
            walk(child, level + 1)

    walk(root, 0)
    return out


class Catalog:
    """The server's lists. ``Catalog.build(stores, roots=..., scene_dirs=..., prune_dir=...)``."""

    def __init__(self):
        self.stores: dict[str, Choice] = {}
        self.scenes: dict[str, Choice] = {}
        self.folders: dict[str, Choice] = {}  # report folders listed at launch or created here
        self.first: list[str] = []  # ids of the stores given on the command line, in order
        self._lock = threading.Lock()
        self._known: list[tuple[str, str]] = []  # (absolute path, display name), longest first

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, stores, roots=(), scene_dirs=(), prune_dir=None) -> Catalog:
        cat = cls()
        for s in stores:
            cat.first.append(cat.add_store(s).id)
        for r in roots:
            for s in find_stores(r):
                cat.add_store(s)
        for f, title in _scene_files(scene_dirs):
            cat._add(cat.scenes, "scene", f, title)
        if prune_dir is not None:
            cat.list_folders(prune_dir)
        for p, name in ((pathlib.Path.cwd(), "."), (pathlib.Path.home(), "~")):
            cat._remember(p, name)
        return cat

    def _remember(self, path: pathlib.Path, name: str) -> None:
        for p in {str(path), str(path.resolve())}:
            if len(p) > 1:
                self._known.append((p, name))
        self._known.sort(key=lambda pn: -len(pn[0]))

    def _add(self, table: dict, prefix: str, path, title: str) -> Choice:
        path = pathlib.Path(path)
        real = path.resolve()
        with self._lock:
            for c in table.values():
                if c.path == real:
                    return c
            titles = {c.title for c in table.values()}
            base, k = title, 1
            while title in titles:
                k += 1
                title = f"{base} ({k})"
            choice = Choice(f"{prefix}-{len(table) + 1}", title, real)
            table[choice.id] = choice
        self._remember(path, title)
        return choice

    def add_store(self, path) -> Choice:
        p = pathlib.Path(path)
        return self._add(self.stores, "store", p, p.resolve().name or str(p))

    def add_folder(self, path) -> Choice:
        """A report folder the server wrote (a Pruning run) or listed."""
        p = pathlib.Path(path)
        return self._add(self.folders, "prune", p, p.name)

    def list_folders(self, prune_dir) -> list[Choice]:
        """The result folders already in ``prune_dir`` (``volviz prune --out`` folders there)."""
        d = pathlib.Path(prune_dir)
        out = []
        try:
            children = sorted(d.iterdir())
        except OSError:
            return out
        for child in children[:MAX_LISTED]:
            if child.name.startswith(".") or child.is_symlink() or not child.is_dir():
                continue
            out.append(self.add_folder(child))
        return out

    # ------------------------------------------------------------------ looking up
    def store(self, sid) -> Choice | None:
        return self.stores.get(sid) if isinstance(sid, str) else None

    def scene(self, sid) -> Choice | None:
        return self.scenes.get(sid) if isinstance(sid, str) else None

    def folder(self, fid) -> Choice | None:
        return self.folders.get(fid) if isinstance(fid, str) else None

    def store_id(self, path) -> str | None:
        real = pathlib.Path(path).resolve()
        return next((c.id for c in self.stores.values() if c.path == real), None)

    def store_items(self) -> list[dict]:
        return [c.item() for c in self.stores.values()]

    def scene_items(self) -> list[dict]:
        return [c.item() for c in self.scenes.values()]

    def name(self, path) -> str:
        """The display name of a path the catalog knows (else its last component)."""
        p = str(path)
        for known, name in self._known:
            if p == known:
                return name
        return pathlib.Path(p).name or p

    def redact(self, text) -> str:
        """``text`` without absolute server paths: known ones by their display names, any other
        by its last component."""
        text = str(text)
        for known, name in self._known:
            if known in text:
                text = text.replace(known + os.sep, "" if name in (".", "~") else name + "/")
                text = text.replace(known, name)
        return redact_paths(text)


def _scene_files(dirs) -> list[tuple[pathlib.Path, str]]:
    out, seen = [], set()
    for d in dirs or ():
        d = pathlib.Path(d)
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.toml"))[:MAX_LISTED]:
            real = f.resolve()
            if real in seen or not f.is_file():
                continue
            seen.add(real)
            out.append((f, f"{d.name}/{f.name}"))
    return out
