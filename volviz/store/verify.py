"""Check every chunk of a store (``volviz info --verify``) and capture the damaged images again
(``volviz capture --repair``).

A chunk is damaged when its file is missing or its crc32c checksum does not match; either way the
image it belongs to is no longer trusted. Repair forgets those images (their ``done`` flag) and
resumes the capture, which recomputes exactly them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from volviz.errors import StoreError
from volviz.store import layout
from volviz.store.store import Store

#: rows read at once while verifying (one array at a time): memory bounded by this many chunks
BLOCK = 256


@dataclass
class VerifyReport:
    store: Store
    damaged: dict[int, list[str]] = field(default_factory=dict)  # image -> arrays
    checked_images: int = 0
    checked_arrays: int = 0

    @property
    def ok(self) -> bool:
        return not self.damaged

    def text(self) -> str:
        if self.ok:
            return (
                f"verify      OK: {self.checked_images} images x {self.checked_arrays} arrays, every chunk "
                "present and its checksum correct"
            )
        lines = [f"verify      DAMAGED: {len(self.damaged)} images have missing or corrupted chunks"]
        for i, keys in list(self.damaged.items())[:10]:
            lines.append(
                f"  image {i} ({self.store.images[i].id}): {', '.join(keys[:4])}" + (" ..." if len(keys) > 4 else "")
            )
        if len(self.damaged) > 10:
            lines.append(f"  ... and {len(self.damaged) - 10} more")
        lines.append(f"repair with: volviz capture --repair --out {self.store.path}")
        return "\n".join(lines)


def _bad_rows(store: Store, key: str, rows: np.ndarray) -> list[int]:
    arr = store._root[key]
    missing = [int(i) for i in rows if not layout.chunk_file(store.path, key, int(i), arr).exists()]
    present = np.setdiff1d(rows, missing)
    bad = list(missing)
    for s in range(0, len(present), BLOCK):
        block = present[s : s + BLOCK]
        try:
            arr.oindex[block]
        except ValueError:  # a checksum mismatch somewhere in the block: find which rows
            for i in block:
                try:
                    arr[int(i)]
                except ValueError:
                    bad.append(int(i))
    return bad


def verify_store(store: Store, progress: bool = True) -> VerifyReport:
    """Read every chunk of every done image; memory is bounded by ``BLOCK`` chunks of one array."""
    if store.plan.format_version < 2:
        raise StoreError(
            f"{store.path} was written before volviz kept checksums (store format "
            f"{store.plan.format_version}); capture it again to be able to verify it"
        )
    report = VerifyReport(store)
    try:
        done = store.done
    except StoreError:
        done = np.zeros(store.n_images, bool)
        report.damaged.update({i: ["done"] for i in _bad_rows(store, "done", np.arange(store.n_images))})
        done[np.setdiff1d(np.arange(store.n_images), list(report.damaged))] = True
    rows = np.flatnonzero(done)
    if store.complete and len(rows) < store.n_images:
        missing = np.setdiff1d(np.arange(store.n_images), rows)
        for i in missing:
            report.damaged.setdefault(int(i), []).append("done flag lost")
    keys = [k for k in store._array_keys() if k != "done"]
    for key in tqdm(keys, desc="verifying", unit="array", disable=not progress):
        for i in _bad_rows(store, key, rows):
            report.damaged.setdefault(i, []).append(key)
    report.checked_images, report.checked_arrays = len(rows), len(keys)
    return report


def repair_store(
    path: str | os.PathLike, *, trust_pickle: bool = False, trust_factory: bool = False, progress: bool = True
) -> Store:
    """Verify, forget the damaged images, and capture them again (the rest is kept as is)."""
    from volviz.store.capture import resume_capture

    store = Store.open(path, "r+")
    report = verify_store(store, progress)
    if report.ok and store.complete:
        print(report.text())
        return store
    print(f"repairing {len(report.damaged)} images of {path}")
    store.mark_not_done(sorted(report.damaged))
    return resume_capture(path, progress, trust_pickle=trust_pickle, trust_factory=trust_factory)
