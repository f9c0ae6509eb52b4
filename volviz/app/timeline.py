"""The time bar: the slider over the images (every pane, and the analysis tabs, follow it), step
buttons, play / pause and the image order.

Slider moves are coalesced (:class:`~volviz.app.prefetch.Coalescer`): a drag sends many positions;
only the latest is drawn, so positions overtaken while a frame renders never pile up. While the
slider moves or plays the volumes are ray-cast coarser, and drawn again at full quality a moment
after the last step. Playback waits for each frame, so no image is skipped while playing.
"""

from __future__ import annotations

import asyncio
import logging
import time

from volviz.app import state as S
from volviz.app.prefetch import Coalescer
from volviz.app.volume_view import REFINE_AFTER_S
from volviz.app.wiring import bind, change, controller

log = logging.getLogger("volviz.app")

__all__ = ["Timeline"]


class Timeline:
    def __init__(self, app):
        self.app, self.state = app, app.state
        self.coalescer = Coalescer(self._show_guarded, prepare=self._prepare)
        self.fast_steps = True  # coarser renders while the slider moves (VolumeView.set_step_quality)
        self._play_task = None
        self._refine_handle = None
        self._shown_sort = self._sort_key()
        bind(self, app.server)

    def refresh(self) -> None:
        """The slider's length: the longest sequence of all panes (a shorter one stays on its last image)."""
        lengths = [len(p.sequence) for p in self.app.panes if p.store is not None]
        tmax = max(max(lengths) - 1 if lengths else 0, 0)
        self.state[S.T_MAX] = tmax
        if self.state[S.T_INDEX] > tmax:
            self.state[S.T_INDEX] = tmax

    # ------------------------------------------------------------------ the slider
    @change(S.T_INDEX)
    def _on_index(self, **_) -> None:
        self.coalescer.request(int(self.state[S.T_INDEX]))

    def _prepare(self, position) -> None:
        self.app.volume.preload(int(position))

    def _show_guarded(self, position) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None  # in-process use: full quality at once
        with self.state:  # flush captions / images to the browsers after an async drain
            try:
                self.app.volume.show_position(int(position), fast=loop is not None and self.fast_steps)
            except Exception as exc:  # noqa: BLE001
                log.exception("slider step failed")
                self.state[S.APP_MESSAGE] = f"slider step failed: {exc}"
        if loop is not None and self.fast_steps:
            if self._refine_handle is not None:
                self._refine_handle.cancel()
            self._refine_handle = loop.call_later(REFINE_AFTER_S, self._refine)

    def _refine(self) -> None:
        self._refine_handle = None
        if not self.coalescer.busy:
            self.app.volume.refine()

    # ------------------------------------------------------------------ image order
    def _sort_key(self) -> tuple:
        st = self.state
        return (st[S.T_SORT], st[S.T_GROUP_CLASS], st[S.T_GROUP_N]) if st[S.T_SORT] == S.GROUPS else (st[S.T_SORT],)

    @change(S.T_SORT, S.T_GROUP_CLASS, S.T_GROUP_N)
    def _on_sort(self, **_) -> None:
        """A new image order (or another reference class / group size for "class groups")."""
        if self._sort_key() == self._shown_sort:
            return  # only the class-groups settings changed, and another order plays
        self._shown_sort = self._sort_key()
        changed = {}
        for pane in self.app.panes:
            if pane.store is not None:
                changed[pane.index] = pane.set_sequence(self.state[S.T_SORT])
                pane.image = None  # redraw even when the first image is the same
        self.refresh()
        self.state[S.T_INDEX] = 0  # its handler finds everything drawn
        for pane in self.app.panes:
            if changed.get(pane.index) and (pane.scene is not None or self.app.volume.preparing(pane)):
                self.app.volume.rebuild(pane, *self.app.volume.target(pane))  # other volumes, one colour scale
        self.app.volume.show_position(0)

    # ------------------------------------------------------------------ step and play
    def step(self, delta: int = 1) -> int:
        """Move the slider by ``delta`` (wrapping when looping, else stopping playback at the end)."""
        st = self.state
        tmax, pos = int(st[S.T_MAX]), int(st[S.T_INDEX]) + int(delta)
        if pos > tmax or pos < 0:
            if st[S.T_LOOP]:
                pos %= tmax + 1
            else:
                pos = min(max(pos, 0), tmax)
                st[S.T_PLAYING] = False
        st[S.T_INDEX] = pos
        return pos

    @controller("step_forward")
    def step_forward(self) -> int:
        return self.step(1)

    @controller("step_back")
    def step_back(self) -> int:
        return self.step(-1)

    @controller("toggle_play")
    def toggle_play(self) -> None:
        self.state[S.T_PLAYING] = not self.state[S.T_PLAYING]

    @change(S.T_PLAYING)
    def _on_playing(self, **_) -> None:
        if not self.state[S.T_PLAYING]:
            self.state[S.T_ACTUAL] = ""
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no server loop (in-process use): call step() yourself
            return
        if self._play_task is None or self._play_task.done():
            self._play_task = loop.create_task(self._play())

    async def _play(self) -> None:
        """Advance one image per 1/speed s; waits for each frame, so no image is skipped. The
        rate reached is shown next to the one asked for (``t_actual``) when it falls short."""
        starts: list[float] = []
        while self.state[S.T_PLAYING]:
            t0 = time.perf_counter()
            with self.state:
                self.step(1)
            await asyncio.sleep(0)
            while self.coalescer.busy:
                await asyncio.sleep(0.005)
            speed = max(float(self.state[S.T_SPEED] or 1), 0.1)
            await asyncio.sleep(max(0.0, 1.0 / speed - (time.perf_counter() - t0)))
            starts = [*starts[-7:], t0]
            if len(starts) >= 3:
                rate = (len(starts) - 1) / (starts[-1] - starts[0])
                text = (
                    f"reaching {rate:.1f} images/s (the server cannot draw {speed:g}/s)"
                    if rate < 0.85 * speed
                    else f"{rate:.1f} images/s"
                )
                if text != self.state[S.T_ACTUAL] and self.state[S.T_PLAYING]:
                    with self.state:
                        self.state[S.T_ACTUAL] = text
        with self.state:
            self.state[S.T_ACTUAL] = ""

    def close(self) -> None:
        self.state[S.T_PLAYING] = False
