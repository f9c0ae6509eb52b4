"""Write a capture at compute speed: batches are buffered per array until a shard file's images are
all captured, then the shard is written once, on a writer thread, while the next batches compute.

Crash safety is unchanged: an image's ``done`` flag is written only after every array holding it
reached the disk (zarr writes each file atomically: a temporary file, then a rename), so a killed
capture loses at most the buffered shards, and ``--resume`` recomputes exactly those images.
Memory: at most one open shard per array (``layout.SHARD_BYTES`` each) plus two batches queued.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from volviz.store import layout


class ShardWriter:
    """Buffers rows per array key and flushes whole shards; ``close()`` flushes the rest."""

    def __init__(self, store, pending: np.ndarray, max_in_flight: int = 2):
        self.store = store
        self._root = store._root
        self.pending = np.asarray(pending, dtype=np.int64)
        self._keys: list[str] | None = None
        self._buf: dict[str, dict[int, dict[int, np.ndarray]]] = {}  # key -> shard -> row -> data
        self._flushed: dict[int, int] = {}  # row -> arrays on disk
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="volviz-writer")
        self._futures: list[Future] = []
        self._max = max_in_flight
        # rows of each shard that this run will write, per rows-per-shard value
        self._want: dict[int, dict[int, int]] = {}

    def _expected(self, per: int, shard: int) -> int:
        counts = self._want.get(per)
        if counts is None:
            ids, n = np.unique(self.pending // per, return_counts=True)
            counts = self._want[per] = dict(zip(ids.tolist(), n.tolist()))
        return counts.get(shard, 0)

    def add(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Rows ``start..start+n`` of every per-image array (already cast for the store)."""
        if self._keys is None:
            self._keys = list(arrays)
        n = len(next(iter(arrays.values())))
        for key, data in arrays.items():
            data = np.array(data, copy=True)  # capture reuses its gradient buffers batch after batch
            per = layout.rows_per_file(self.store._array(key))
            by_shard = self._buf.setdefault(key, {})
            for j in range(n):
                row = start + j
                by_shard.setdefault(row // per, {})[row] = data[j]
            for shard in sorted({(start + j) // per for j in range(n)}):
                if len(by_shard[shard]) == self._expected(per, shard):
                    self._submit(key, by_shard.pop(shard))
        self._check_errors()

    def _submit(self, key: str, rows: dict[int, np.ndarray]) -> None:
        while len([f for f in self._futures if not f.done()]) >= self._max * max(1, len(self._keys or [1])):
            self._futures[0].result()
            self._futures = [f for f in self._futures if not f.done()]
        self._futures.append(self._pool.submit(self._write, key, rows))

    def _write(self, key: str, rows: dict[int, np.ndarray]) -> None:
        """On the writer thread: one shard of one array, then the done flags it completes."""
        idx = np.fromiter(rows, dtype=np.int64, count=len(rows))
        order = np.argsort(idx)
        idx, data = idx[order], np.stack([rows[int(i)] for i in idx[order]])
        arr = self.store._array(key)
        if idx[-1] - idx[0] + 1 == len(idx):
            arr[int(idx[0]) : int(idx[-1]) + 1] = data
        else:
            arr.oindex[idx] = data
        done = []
        for i in idx.tolist():
            self._flushed[i] = self._flushed.get(i, 0) + 1
            if self._flushed[i] == len(self._keys):
                done.append(i)
                del self._flushed[i]
        if done:
            d = np.asarray(sorted(done), dtype=np.int64)
            self.store._array("done").oindex[d] = True

    def _check_errors(self) -> None:
        for f in [f for f in self._futures if f.done()]:
            f.result()  # re-raise a write error (disk full) in the capture's thread
        self._futures = [f for f in self._futures if not f.done()]

    def close(self, flush: bool = True, *, raise_errors: bool = True) -> None:
        """Flush partial shards (an interrupted or finished run) and wait for the writer; after an
        error elsewhere, ``raise_errors=False`` keeps that error the one reported."""
        try:
            if flush:
                for key, by_shard in self._buf.items():
                    for shard in sorted(by_shard):
                        self._submit(key, by_shard[shard])
                self._buf.clear()
            for f in self._futures:
                try:
                    f.result()
                except Exception:
                    if raise_errors:
                        raise
        finally:
            self._pool.shutdown(wait=True)
            self.store._done_cache = None
