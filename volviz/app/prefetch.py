"""Keeping the time slider fast: a small cache of loaded chunks, a prefetcher that fills it ahead
of the play head in a background thread, and a coalescer that drops stale slider positions.

Nothing here knows trame or VTK: values are whatever a loader returns (the app caches
:class:`~volviz.views.source.LayerVolume` objects: one store chunk, plus its filter order when
orders are fitted per image).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger("volviz.app")


def _nbytes(value) -> int:
    """Size of a cached value: numpy arrays and objects holding them (``.volume``)."""
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
    total = 0
    for v in getattr(value, "__dict__", {}).values():
        if hasattr(v, "nbytes"):
            total += int(v.nbytes)
    return max(total, 1)


class ChunkCache:
    """A thread-safe LRU cache bounded by bytes.

    ``get_or_load(key, loader)`` returns the cached value or calls ``loader()`` (in the calling
    thread) and keeps the result. ``hits`` / ``misses`` count lookups (the benchmark and the tests
    read them).
    """

    def __init__(self, max_bytes: int = 256 << 20):
        self.max_bytes = int(max_bytes)
        self._data: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key, default=None):
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return default
            self._data.move_to_end(key)
            return item[0]

    def put(self, key, value) -> None:
        size = _nbytes(value)
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._data[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._data) > 1:
                _, (_, s) = self._data.popitem(last=False)
                self._bytes -= s

    def get_or_load(self, key, loader: Callable[[], object]):
        value = self.get(key, _MISSING)
        if value is not _MISSING:
            self.hits += 1
            return value
        self.misses += 1
        value = loader()
        self.put(key, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0


_MISSING = object()


class Prefetcher:
    """Load the chunks just ahead of the play head in one background thread.

    ``schedule([(key, loader), ...])`` replaces the previous wish list: loads not started yet are
    dropped (the slider moved on), loads of keys already cached are skipped. Errors are logged
    and otherwise ignored (the foreground load reports them to the user).
    """

    def __init__(self, cache: ChunkCache, workers: int = 1):
        self.cache = cache
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="volviz-prefetch")
        self._pending: list[Future] = []
        self._generation = 0
        self.loaded = 0

    def schedule(self, jobs: Iterable[tuple[Hashable, Callable[[], object]]]) -> None:
        self._generation += 1
        gen = self._generation
        for f in self._pending:
            f.cancel()
        self._pending = [
            self._pool.submit(self._load, gen, key, loader) for key, loader in jobs if key not in self.cache
        ]

    def _load(self, gen: int, key, loader) -> None:
        if gen != self._generation or key in self.cache:
            return
        try:
            self.cache.put(key, loader())
            self.loaded += 1
        except Exception as exc:  # noqa: BLE001 - the foreground load reports it
            log.debug("prefetch of %r failed: %s", key, exc)

    def wait(self, timeout: float | None = 10.0) -> None:
        """Block until the scheduled loads are done (tests, benchmarks)."""
        for f in list(self._pending):
            if not f.cancelled():
                try:
                    f.result(timeout)
                except Exception:  # noqa: BLE001
                    pass

    def shutdown(self) -> None:
        for f in self._pending:
            f.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


class Coalescer:
    """Apply only the latest of rapidly requested values (slider positions).

    Inside a running asyncio loop (the trame server), ``request(v)`` stores ``v`` and makes sure
    one drain task runs: it waits ``delay`` seconds so that slider messages queued behind a slow
    render arrive first, then applies the latest value; positions overtaken meanwhile are never
    drawn (``skipped`` counts them). Without a running loop (in-process tests, scripts) the value
    is applied at once. ``prepare(value)``, when given, runs in a worker thread before each
    ``apply`` under the loop (reading what the step needs, so the loop only draws).
    """

    def __init__(
        self, apply: Callable[[object], None], delay: float = 0.005, prepare: Callable[[object], None] | None = None
    ):
        self._apply = apply
        self._prepare = prepare
        self.delay = delay
        self._pending = _MISSING
        self._task: asyncio.Task | None = None
        self.applied = 0
        self.skipped = 0

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    def request(self, value) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._run(value)
            return
        if self._pending is not _MISSING:
            self.skipped += 1
        self._pending = value
        if not self.busy:
            self._task = loop.create_task(self._drain())

    def _run(self, value) -> None:
        self.applied += 1
        self._apply(value)

    async def _drain(self) -> None:
        while self._pending is not _MISSING:
            await asyncio.sleep(self.delay)
            value, self._pending = self._pending, _MISSING
            if self._prepare is not None:
                try:
                    await asyncio.get_running_loop().run_in_executor(None, self._prepare, value)
                except Exception:  # noqa: BLE001 - the step itself reports what failed
                    log.debug("preparing slider position %r failed", value, exc_info=True)
            try:
                self._run(value)
            except Exception:  # noqa: BLE001 - never kill the drain loop
                log.exception("applying slider position %r failed", value)
