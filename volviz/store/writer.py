"""Write a capture at compute speed: on a writer thread, while the next batches compute, each
array's rows are copied once into the buffer of the shard file they belong to, and a shard whose
images are all captured is written once.

Crash safety: an image's ``done`` flag is written only after every array holding it reached the
disk, so a killed capture loses at most the buffered shards, and ``--resume`` recomputes exactly
those images. zarrs writes a shard file in place (fast; O_DIRECT where the file system has it), so
a kill mid-write tears that file: that is safe only for a shard none of whose images is done yet
(resume rewrites it whole). A shard that already holds done images (a resume completing a shard an
interrupted run flushed half-full) and the ``done`` flags themselves go through zarr-python, which
writes a temporary file and renames it: either the old file or the new one, never a torn one.
Memory: at most one open shard per array (``layout.SHARD_BYTES`` each) plus the batches waiting
for the writer thread (:data:`IN_FLIGHT_BYTES`).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from volviz.store import layout

#: bytes of captured batches that may wait for the writer thread (one batch always may): enough to
#: ride out a slow write (O_DIRECT waits for the disk) without stalling the capture
IN_FLIGHT_BYTES = 256 << 20


class ShardBuffer:
    """The rows of one shard file of one array that this run captures, in place."""

    def __init__(self, first: int, per: int, row_shape: tuple, dtype):
        self.first = first
        self.data = np.empty((per, *row_shape), dtype=dtype)
        self.filled = np.zeros(per, dtype=bool)

    def put(self, row: int, rows: np.ndarray) -> None:
        lo = row - self.first
        self.data[lo : lo + len(rows)] = rows
        self.filled[lo : lo + len(rows)] = True

    @property
    def count(self) -> int:
        return int(self.filled.sum())

    def rows(self) -> np.ndarray:
        return self.first + np.flatnonzero(self.filled)


class ShardWriter:
    """Buffers rows per array key and flushes whole shards; ``close()`` flushes the rest."""

    def __init__(self, store, pending: np.ndarray, max_in_flight_bytes: int = IN_FLIGHT_BYTES):
        self.store = store
        self.pending = np.asarray(pending, dtype=np.int64)
        self._keys: list[str] | None = None
        self._open: dict[str, dict[int, ShardBuffer]] = {}  # key -> shard index -> buffer
        self._flushed: dict[int, int] = {}  # row -> arrays on disk
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="volviz-writer")
        self._futures: list[tuple[Future, int]] = []  # (writer task, bytes it holds)
        self._max_bytes = max_in_flight_bytes
        self._want: dict[int, dict[int, int]] = {}  # rows per shard -> shard -> rows this run writes
        self._in_place: dict = {}  # key -> the array opened to write in place (zarrs)
        self._direct_io = layout.direct_io_supported(store.path)
        self._done_before = np.array(store.done, dtype=bool)  # images on disk before this run

    def _expected(self, per: int, shard: int) -> int:
        counts = self._want.get(per)
        if counts is None:
            ids, n = np.unique(self.pending // per, return_counts=True)
            counts = self._want[per] = dict(zip(ids.tolist(), n.tolist()))
        return counts.get(shard, 0)

    def add(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Rows ``start..start+n`` of every per-image array (already cast for the store, aliasing
        nothing the capture reuses: :func:`batch_rows.batch_rows`). The rows are copied into their
        shards on the writer thread, while the next batches compute (as many as fit in the
        in-flight budget; the capture waits beyond it)."""
        if self._keys is None:
            self._keys = list(arrays)
        self._submit(self._add, start, arrays, nbytes=sum(a.nbytes for a in arrays.values()))

    def _add(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """On the writer thread: copy the rows into their shard buffers, write the full shards."""
        for key, data in arrays.items():
            arr = self.store._array(key)
            per = layout.rows_per_file(arr)
            shards = self._open.setdefault(key, {})
            row, stop = start, start + len(data)
            while row < stop:
                shard = row // per
                end = min(stop, (shard + 1) * per)
                buf = shards.get(shard)
                if buf is None:
                    buf = shards[shard] = ShardBuffer(shard * per, per, arr.shape[1:], arr.dtype)
                buf.put(row, data[row - start : end - start])
                if buf.count == self._expected(per, shard):
                    self._write(key, shards.pop(shard))
                row = end

    def _flush_open(self) -> None:
        """On the writer thread: the partial shards (an interrupted or finished run)."""
        for key, shards in self._open.items():
            for shard in sorted(shards):
                self._write(key, shards[shard])
        self._open.clear()

    def _submit(self, fn, *args, nbytes: int = 0) -> None:
        self._check_errors()
        while self._futures and sum(n for _, n in self._futures) + nbytes > self._max_bytes:
            self._futures[0][0].result()
            self._check_errors()
        self._futures.append((self._pool.submit(fn, *args), nbytes))

    def _write(self, key: str, buf: ShardBuffer) -> None:
        """On the writer thread: one shard of one array, then the done flags it completes."""
        idx = buf.rows()
        arr = self._for_writing(key, in_place=not self._done_before[buf.first : buf.first + len(buf.data)].any())
        if idx[-1] - idx[0] + 1 == len(idx):
            lo = int(idx[0]) - buf.first
            arr[int(idx[0]) : int(idx[-1]) + 1] = buf.data[lo : lo + len(idx)]
        else:
            arr.oindex[idx] = buf.data[idx - buf.first]
        done = []
        for i in idx.tolist():
            self._flushed[i] = self._flushed.get(i, 0) + 1
            if self._flushed[i] == len(self._keys):
                done.append(i)
                del self._flushed[i]
        if done:
            self._for_writing("done", in_place=False).oindex[np.asarray(sorted(done), dtype=np.int64)] = True

    def _for_writing(self, key: str, in_place: bool):
        if not in_place:
            return self.store._array(key)  # zarr-python: a temporary file, then a rename
        arr = self._in_place.get(key)
        if arr is None:
            arr = self._in_place[key] = layout.array_for_writing(self.store._root, key, self._direct_io)
        return arr

    def _check_errors(self) -> None:
        for f, _ in [t for t in self._futures if t[0].done()]:
            f.result()  # re-raise a write error (disk full) in the capture's thread
        self._futures = [t for t in self._futures if not t[0].done()]

    def close(self, flush: bool = True, *, raise_errors: bool = True) -> None:
        """Wait for the writer, flushing the partial shards first (an interrupted or finished
        run); after an error elsewhere, ``raise_errors=False`` keeps that error the one reported."""
        try:
            if flush:
                self._futures.append((self._pool.submit(self._flush_open), 0))
            for f, _ in self._futures:
                try:
                    f.result()
                except Exception:
                    if raise_errors:
                        raise
        finally:
            self._pool.shutdown(wait=True)
            self.store._done_cache = None
