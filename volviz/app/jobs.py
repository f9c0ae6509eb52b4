"""One helper for the app's background work (recording a movie, a pruning run, preparing a scene):
the work runs in a worker thread so the server keeps answering browsers; progress, the result and
errors come back on the server's main loop (where trame state and VTK live), inside ``with state``
so that they reach the browsers; a stop button sets a flag that the work sees at its next
progress report.

Without a running event loop (in-process tests, scripts) the work runs at once, in the caller's
thread, with the same callbacks.

The worker thread runs at a lower CPU priority (``nice`` +10 on Linux, where a thread has its own):
on a machine with few cores, a slider step of any session comes before a k-means fit or a pruning
run, which only take what is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("volviz.app")

__all__ = ["BackgroundJob", "JobCancelled"]

BACKGROUND_NICE = 10


def _lower_priority() -> None:
    """Make the calling (worker) thread yield the CPU to the server's own thread."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except (AttributeError, OSError):  # not Linux, or not allowed: the same priority then
        pass


class JobCancelled(Exception):
    """The user pressed stop (or the server is closing); the work leaves nothing behind."""


class BackgroundJob:
    """At most one run at a time of one kind of work.

    Parameters
    ----------
    state : the trame state the job reports to.
    name : what the job is called in messages ("pruning", "recording").
    busy, progress, status : state keys for "running" (bool), the progress (0..100) and a status
        line; any may be None.
    poll : seconds between progress updates in the page.
    """

    def __init__(
        self,
        state,
        name: str,
        *,
        busy: str | None = None,
        progress: str | None = None,
        status: str | None = None,
        poll: float = 0.25,
    ):
        self.state, self.name = state, name
        self.keys = {"busy": busy, "progress": progress, "status": status}
        self.poll = poll
        self.task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"volviz-{name.split()[0]}", initializer=_lower_priority
        )
        self._cancel = False
        self._done_total = (0, 0)

    # ------------------------------------------------------------------ what the work calls
    def report(self, done: int, total: int) -> None:
        """Progress from the work (any thread); raises :class:`JobCancelled` once stop was pressed."""
        self._done_total = (int(done), int(total))
        if self._cancel:
            raise JobCancelled(f"{self.name} cancelled")

    @property
    def cancelled(self) -> bool:
        return self._cancel

    # ------------------------------------------------------------------ what the app calls
    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def cancel(self) -> None:
        self._cancel = True

    def start(
        self,
        work: Callable[[Callable[[int, int], None]], object],
        *,
        done: Callable[[object], None],
        describe: Callable[[int, int], str] | None = None,
        failed: Callable[[BaseException], str] | None = None,
        feed: Callable[[], Iterator] | None = None,
        now: Callable[[Callable[[int, int], None]], object] | None = None,
        abort: Callable[[BaseException], None] | None = None,
    ) -> bool:
        """Run ``work(report)`` in the worker thread and ``done(result)`` on the main loop.

        describe(done, total) : the status line while it runs.
        failed(exc) : the status line after an error or a stop (default: "NAME failed: ..." /
            "NAME stopped").
        feed : an iterator made on the main loop and stepped there between polls (work that
            must stay in the main thread, e.g. rendering frames for a writer thread); it yields
            ``(done, total)`` or None, and is closed when the job ends.
        abort(exc) : called on the main loop when the job fails or stops, before waiting for the
            worker (to unblock it, e.g. a frame queue).
        now(report) : what runs instead of ``work`` when there is no event loop (default: work).

        Returns False (and says so in the status line) when a run is going already.
        """
        if self.running:
            self._set("status", f"a {self.name} run is already going")
            return False
        self._cancel, self._done_total = False, (0, 0)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._run_now(now or work, done, failed)
            return True
        self._set("busy", True)
        self._set("progress", 0)
        self.task = loop.create_task(self._run(loop, work, done, describe, failed, feed, abort))
        return True

    async def wait(self):
        """Await the current run (tests)."""
        if self.task is not None:
            await self.task

    def close(self) -> None:
        self._cancel = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ internals
    def _set(self, key: str, value) -> None:
        if self.keys[key]:
            self.state[self.keys[key]] = value

    def _fail_text(self, exc: BaseException, failed) -> str:
        if failed is not None:
            return failed(exc)
        return f"{self.name} stopped" if isinstance(exc, JobCancelled) else f"{self.name} failed: {exc}"

    def _run_now(self, work, done, failed) -> None:
        try:
            result = work(self.report)
        except Exception as exc:  # noqa: BLE001 - shown in the page, the app goes on
            self._set("status", self._fail_text(exc, failed))
            return
        done(result)

    async def _run(self, loop, work, done, describe, failed, feed, abort) -> None:
        st = self.state
        fut = loop.run_in_executor(self._pool, work, self.report)
        steps = feed() if feed is not None else None
        try:
            while not fut.done():
                if steps is not None:
                    try:
                        item = next(steps)
                    except StopIteration:
                        steps = None
                        item = None
                    if item is not None:
                        self._done_total = item
                    if self._cancel:
                        raise JobCancelled(f"{self.name} cancelled")
                    await asyncio.sleep(0)  # the page, the slider and other clients go on meanwhile
                else:
                    await asyncio.sleep(self.poll)
                self._publish(describe)
            result = await fut
            with st:
                self._set("progress", 100)
                done(result)
        except Exception as exc:  # noqa: BLE001 - stopped, ffmpeg failed, disk full, k too large
            if abort is not None:
                abort(exc)
            try:
                await fut
            except Exception:  # noqa: BLE001 - the same error, reported below
                pass
            if not isinstance(exc, JobCancelled):
                log.warning("%s failed: %s", self.name, exc)
            with st:
                self._set("status", self._fail_text(exc, failed))
        finally:
            if steps is not None:
                steps.close()
            with st:
                self._set("busy", False)

    def _publish(self, describe) -> None:
        k, total = self._done_total
        if not total:
            return
        with self.state:
            self._set("progress", round(100 * k / total))
            if describe is not None:
                self._set("status", describe(k, total))
