"""Streamed analyses on Dask: map a function over ranges of images, merge the parts in order.

An analysis that streams over a dataset (importance, the pruning evaluations, class-group
statistics, top-k examples, descriptors) is a per-range function -- picklable, top-level, given a
slice of the image list and whatever it needs to open the store and the model itself -- and a
merge of the parts, in range order. :func:`map_ranges` runs the one function over the whole list in
this process when no cluster is asked for, and over aligned ranges on ``dask.distributed``
otherwise: the same ``LocalCluster`` / ``--scheduler ADDRESS`` plumbing as the sharded capture
(:mod:`volviz.store.distributed`), no scheduler of our own.

Ranges are aligned to the analysis's batch size, so every worker computes on exactly the batches
one process would: results are the same bits, up to what a different thread count may change in
the last bits of float32 kernels (the tests state their tolerance).

Workers open the store read-only by its absolute path (a shared file system, as for the capture)
and load the model with the trust flags of the command line that started them.
"""

from __future__ import annotations

import functools
import math
import os
import pathlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tqdm import tqdm

__all__ = ["DaskOptions", "split_ranges", "map_ranges", "store_ref", "open_ref", "model_of"]


@dataclass
class DaskOptions:
    """Where a streamed analysis runs: ``workers`` local processes, or the cluster at ``scheduler``.
    ``trust`` is the command line's ``--trust-*`` flags, used by workers that load the model.
    Inside ``with options:`` one cluster serves every map (a command's several passes, and the
    workers keep the store and model they opened); outside, each map starts and stops its own."""

    workers: int | None = None
    scheduler: str | None = None
    trust: dict = field(default_factory=dict)
    progress: bool = True
    tasks_per_worker: int = 4
    _client: object = field(default=None, repr=False, compare=False)
    _cluster: object = field(default=None, repr=False, compare=False)

    @property
    def n_workers(self) -> int:
        return max(1, int(self.workers or os.cpu_count() or 1))

    @property
    def threads(self) -> int:
        """torch threads per worker: the cores shared out (1 on a remote cluster)."""
        return 1 if self.scheduler else max(1, (os.cpu_count() or 1) // self.n_workers)

    @property
    def trust_key(self) -> tuple:
        return tuple(sorted((k, bool(v)) for k, v in self.trust.items()))

    def __enter__(self) -> DaskOptions:
        if self._client is None:
            from volviz.store.distributed import _client

            self._client, self._cluster = _client(self.n_workers, self.scheduler, self.threads)
            if self.progress and getattr(self._client, "dashboard_link", None):
                print(f"Dask dashboard: {self._client.dashboard_link}", flush=True)
        return self

    def __exit__(self, *exc) -> None:
        client, cluster, self._client, self._cluster = self._client, self._cluster, None, None
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


def split_ranges(n: int, parts: int, align: int = 1) -> list[tuple[int, int]]:
    """``0..n`` cut into at most ``parts`` ranges whose starts are multiples of ``align``."""
    align = max(1, int(align))
    per = max(align, math.ceil(n / max(1, parts) / align) * align)
    return [(a, min(n, a + per)) for a in range(0, n, per)]


def store_ref(store, dask: DaskOptions | None):
    """What a range function gets to open the store: the open store in this process, its
    absolute path for workers (who open it read-only)."""
    return store if dask is None else str(pathlib.Path(store.path).absolute())


def open_ref(ref):
    """A store from :func:`store_ref`'s value."""
    if isinstance(ref, (str, os.PathLike)):
        return _open_cached(str(ref))
    return ref


@functools.lru_cache(maxsize=4)
def _open_cached(path: str):
    from volviz.store.store import Store

    return Store.open(path, "r")


def model_of(ref, trust: tuple = ()):
    """The model a range function runs: the module itself (this process), or loaded once per
    worker process from the store at path ``ref`` with ``trust`` (sorted (flag, value) pairs)."""
    if isinstance(ref, (str, os.PathLike)):
        return _model_cached(str(ref), tuple(trust))
    return ref


@functools.lru_cache(maxsize=2)
def _model_cached(path: str, trust: tuple):
    return _open_cached(path).model(**dict(trust)).module.eval()


def _run(fn: Callable, chunk, args: tuple, threads: int):
    """One Dask task (runs in a worker): the range function with the worker's torch threads."""
    import torch

    torch.set_num_threads(max(1, threads))
    return fn(chunk, *args)


def map_ranges(
    fn: Callable,
    items: Sequence,
    merge: Callable[[list], object],
    *args,
    dask: DaskOptions | None = None,
    align: int = 1,
    desc: str = "",
):
    """``merge([fn(items[a:b], *args) for each range])``: in this process over the whole of
    ``items`` when ``dask`` is None, else on Dask over ranges aligned to ``align``. A task that
    raises (a user error included) re-raises here; a lost worker's task is re-run by Dask."""
    if dask is None or not len(items):
        return merge([fn(items, *args)])
    ranges = split_ranges(len(items), dask.tasks_per_worker * dask.n_workers, align)
    owned = dask._client is None
    if owned:
        dask.__enter__()
    try:
        from distributed import as_completed

        futures = [
            dask._client.submit(_run, fn, items[a:b], args, dask.threads, pure=False, retries=2) for a, b in ranges
        ]
        size = {f.key: b - a for f, (a, b) in zip(futures, ranges)}
        with tqdm(
            total=len(items), desc=f"{desc} ({len(ranges)} ranges)", unit="img", disable=not dask.progress
        ) as bar:
            for f in as_completed(futures):
                bar.update(size[f.key])
        parts = dask._client.gather(futures)  # re-raises a task's error (a user error: one line)
    finally:
        if owned:
            dask.__exit__(None, None, None)
    return merge(parts)
