"""Sharded capture on Dask: workers capture disjoint image ranges into their own shard files of the
same store; the coordinator creates the store first and writes the manifest last.

``dask.distributed`` does the scheduling: a ``LocalCluster`` (one worker process per core by
default) or any running scheduler (``--scheduler tcp://HOST:8786``: dask-jobqueue, Kubernetes and
friends need nothing more from volviz). A lost worker's task is re-run by Dask and recomputes only
the images of its range that are not done. Ranges are aligned to the largest shard (shard sizes
are powers of two) and to the batch size, so every shard file has one writer and the batches are
those of a one-process capture: the bytes are the same.

Each worker needs: this volviz, the model's code and weights file, and the images, at the same
paths as the coordinator (a shared file system), and write access to the store folder.
"""

from __future__ import annotations

import logging
import math
import os
import pathlib
import time

import numpy as np
from tqdm import tqdm

from volviz.errors import CaptureError
from volviz.store import layout
from volviz.store.folder import write_lock
from volviz.store.store import Store

log = logging.getLogger("volviz.capture")


def ranges(store: Store, n_tasks: int) -> list[tuple[int, int]]:
    """Image ranges, each a whole number of the largest shard and of the batch."""
    shard = max(layout.rows_per_file(store._root[k]) for k in store._array_keys())
    align = math.lcm(shard, store.plan.batch_size)
    n = store.n_images
    per = max(align, math.ceil(n / max(1, n_tasks) / align) * align)
    return [(a, min(n, a + per)) for a in range(0, n, per)]


def _capture_range(path: str, start: int, stop: int, trust: dict, threads: int) -> dict:
    """One Dask task: capture the not-done images of ``start..stop`` (runs in a worker)."""
    import torch

    from volviz.store.execute import capture_rows

    torch.set_num_threads(max(1, threads))
    store = Store.open(path, "r+")
    loaded = store.model(**trust)
    return capture_rows(store, loaded.module, store.preprocess, np.arange(start, stop))


def _client(workers: int | None, scheduler: str | None, threads: int):
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise CaptureError("--workers / --scheduler need dask.distributed: pip install 'dask[distributed]'") from None
    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except OSError as exc:
            raise CaptureError(
                f"cannot reach the Dask scheduler at {scheduler} ({exc}); start it, or use "
                "--workers N for a local cluster"
            ) from None
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
    )
    return Client(cluster), cluster


def capture_on_dask(
    store: Store,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    trust: dict | None = None,
    progress: bool = True,
) -> Store:
    """Complete ``store`` (created by the planning step, or interrupted) with Dask workers."""
    from volviz.store.execute import finalize

    n_workers = workers or max(1, (os.cpu_count() or 1))
    threads = max(1, (os.cpu_count() or 1) // n_workers) if not scheduler else 1
    path = str(pathlib.Path(store.path).absolute())
    with write_lock(store.path):
        t0 = time.perf_counter()
        client, cluster = _client(n_workers, scheduler, threads)
        try:
            if progress and client.dashboard_link:
                print(f"Dask dashboard: {client.dashboard_link}", flush=True)
            tasks = ranges(store, 4 * n_workers)
            todo = [(a, b) for a, b in tasks if not store.done[a:b].all()]
            futures = [
                client.submit(_capture_range, path, a, b, trust or {}, threads, pure=False, retries=3) for a, b in todo
            ]
            bar = tqdm(
                total=store.n_images,
                initial=int(store.done.sum()),
                desc=f"capturing ({len(todo)} ranges)",
                unit="img",
                disable=not progress,
            )
            try:
                while not all(f.done() for f in futures):
                    time.sleep(0.5)
                    store._done_cache = None
                    bar.n = int(store.done.sum())
                    bar.refresh()
                results = client.gather(futures)  # re-raises a task's error (a user error: one line)
            finally:
                bar.close()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
        nonfinite: dict[str, int] = {}
        for r in results:
            for k, v in r.items():
                nonfinite[k] = nonfinite.get(k, 0) + v
        return finalize(store, nonfinite, time.perf_counter() - t0)
