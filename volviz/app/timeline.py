"""The time bar: the slider over the images (every pane, and the analysis tabs, follow it), step
buttons, play / pause, the image order, the filter over it and "go to image".

The filter (:mod:`volviz.app.image_filter`) is a view over each pane's image order: the slider
walks only the images that pass it (a filter that matches nothing in a pane is not applied there,
and the note says so). It is computed from columns the pane already holds, so a store of 20,000
images filters as fast as one of 200; the image shown stays shown when it still passes.

Slider moves are coalesced (:class:`~volviz.app.prefetch.Coalescer`): a drag sends many positions;
only the latest is drawn, so positions overtaken while a frame renders never pile up. While the
slider moves or plays the volumes are ray-cast coarser, and drawn again at full quality a moment
after the last step. Playback waits for each frame, so no image is skipped while playing.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from volviz.app import state as S
from volviz.app.image_filter import FilterColumns, ImageFilter, filter_sequence, position_in
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
        self._counts: dict[int, tuple[int, int]] = {}  # pane -> (images passing, images in the order)
        bind(self, app.server)

    def refresh(self) -> None:
        """The slider's length: the longest sequence of all panes (a shorter one stays on its last
        image); the bound of "go to image", the filter's class items and its note."""
        panes = [p for p in self.app.panes if p.store is not None]
        lengths = [len(p.sequence) for p in panes]
        tmax = max(max(lengths) - 1 if lengths else 0, 0)
        self.state[S.T_MAX] = tmax
        if self.state[S.T_INDEX] > tmax:
            self.state[S.T_INDEX] = tmax
        self.state[S.T_JUMP_MAX] = max([p.store.n_images - 1 for p in panes] or [0])
        names = panes[0].class_names() if panes else []
        self.state[S.T_F_CLASSES] = [{"title": "any", "value": -1}] + [
            {"title": f"class {n}", "value": k} for k, n in enumerate(names)
        ]
        self._note()

    # ------------------------------------------------------------------ the filter
    def image_filter(self) -> ImageFilter:
        """The filter the page asks for now (bounds already checked by the rules)."""
        st = self.state
        lo, hi = sorted(float(v) / 100.0 for v in (st[S.T_F_PROB] or [0, 100]))
        return ImageFilter(
            int(st[S.T_F_TRUE] if st[S.T_F_TRUE] is not None else -1),
            int(st[S.T_F_PRED] if st[S.T_F_PRED] is not None else -1),
            st[S.T_F_CORRECT] or "all",
            (lo, hi),
            str(st[S.T_F_SEARCH] or "").strip(),
        )

    def filtered(self, pane, sequence: np.ndarray) -> np.ndarray:
        """``sequence`` (a pane's image order) through the filter; unchanged when the filter is
        off or nothing in it passes. Pane.set_sequence calls this for every order but class groups."""
        f = self.image_filter()
        if not f.active:
            self._counts.pop(pane.index, None)
            return sequence
        cols = pane.remember("filter_columns", lambda: FilterColumns.from_store(pane.store, pane.columns))
        kept = filter_sequence(sequence, cols, f)
        self._counts[pane.index] = (len(kept), len(sequence))
        return kept if len(kept) else sequence

    def _note(self) -> None:
        f, st = self.image_filter(), self.state
        if not f.active:
            st[S.T_F_NOTE] = ""
            return
        if st[S.T_SORT] == S.GROUPS:
            st[S.T_F_NOTE] = "the filter does not apply to class groups"
            return
        panes = [p for p in self.app.panes if p.store is not None and p.index in self._counts]
        if not panes:
            st[S.T_F_NOTE] = ""
            return
        what = f.describe(panes[0].class_name)
        parts = []
        for p in panes:
            kept, total = self._counts[p.index]
            who = f"pane {p.index + 1}: " if len(self.app.panes) > 1 else ""
            parts.append(f"{who}no image matches; showing all {total:,}" if not kept else f"{who}{kept:,} of {total:,}")
        st[S.T_F_NOTE] = f"{' · '.join(parts)} images · {what}"

    @change(S.T_F_TRUE, S.T_F_PRED, S.T_F_CORRECT, S.T_F_PROB, S.T_F_SEARCH)
    def _on_filter(self, **_) -> None:
        """A new filter: every pane's list again (no scene rebuild: the volumes' source is the
        same), the image shown kept where it still passes, else the first one."""
        if self.state[S.T_SORT] == S.GROUPS:
            self._note()
            return
        first = next((p for p in self.app.panes if p.store is not None), None)
        keep = first.image if first is not None else None
        for pane in self.app.panes:
            if pane.store is not None:
                pane.set_sequence(self.state[S.T_SORT])
                pane.image = None  # captions say "k / n": redraw them
        self.refresh()
        pos = position_in(first.sequence, keep) if first is not None and keep is not None else None
        self.state[S.T_INDEX] = pos or 0
        self.app.volume.show_position(pos or 0)

    @change(S.T_JUMP)
    def _on_jump(self, **_) -> None:
        """Go to store image ``t_jump`` (in the first pane's list); the key is put back to -1."""
        image = int(self.state[S.T_JUMP] if self.state[S.T_JUMP] is not None else -1)
        if image < 0:
            return
        self.state[S.T_JUMP] = -1
        first = next((p for p in self.app.panes if p.store is not None), None)
        pos = position_in(first.sequence, image) if first is not None else None
        if pos is None:
            self.state[S.APP_MESSAGE] = f"image {image} is not in the list the slider walks (order / filter)"
            return
        self.state[S.T_INDEX] = pos

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
