"""The Dashboard tab: [Tamari2017]'s realtime view of the focused store's model, driven by the
time slider (stored images) or by live input (the browser's webcam, an uploaded image, a video
file of the store's, played in real time; :mod:`volviz.app.live`).

Every picture is made off the event loop, one at a time (:class:`~volviz.app.live.LatestOnly`):
a frame arriving meanwhile waits in one slot and replaces the one there, so a fast camera never
builds a backlog. A choice (layers, maps, rows, colour maps, view) redraws the current input.
Each session has its own live source (the tab belongs to the session's app).
"""

from __future__ import annotations

import asyncio
import logging
import pathlib

from volviz.app import dashboard_keys as K
from volviz.app import state as S
from volviz.app.live import LatestOnly, LiveError, decode_frame, video_frames
from volviz.app.wiring import bind, change, controller

log = logging.getLogger("volviz.app")

__all__ = ["DashboardTab"]

CHOICE_KEYS = (
    K.DB_VIEW,
    K.DB_CONV_A,
    K.DB_CONV_B,
    K.DB_FC,
    K.DB_SEL_A,
    K.DB_SEL_B,
    K.DB_SEL_FC,
    K.DB_ROWS_A,
    K.DB_ROWS_B,
    K.DB_ROWS_FC,
    K.DB_CMAP_A,
    K.DB_CMAP_B,
    K.DB_CMAP_FC,
    K.DB_CLASS,
)
PICTURE_SIDE = 960  # px: the dashboard's canvas width, sent as is


class DashboardTab:
    def __init__(self, ctx):
        self.ctx, self.state = ctx, ctx.state
        for key, value in K.DEFAULTS.items():
            self.state.setdefault(key, value)
        self.job = ctx.job("dashboard", busy=K.DB_BUSY)
        self.job.poll = 0.005  # the latency of every live frame: poll often
        self.frames = LatestOnly(self.job, done=self._show, failed=self._refused)
        self.record_job = ctx.job("dashboard movie", busy=K.DB_R_BUSY, progress=K.DB_R_PROGRESS, status=K.DB_R_STATUS)
        self.visible = False
        self.board = None  # volviz.app.dashboard_data.Dashboard of the focused store
        self.last = None  # (rgb, caption) of the last live frame: redrawn when a choice changes
        self._videos: list[pathlib.Path] = []
        self._player: asyncio.Task | None = None
        self._n = 0
        bind(self, ctx.server)

    # ------------------------------------------------------------------ the app's hooks
    def refresh(self) -> None:
        """The focused pane opened another store: its layers, classes, videos and model."""
        from volviz.app.dashboard_data import Dashboard, layer_items

        st, store = self.state, self.ctx.focus.store
        self.board, self.last = None, None
        self._stop_video()
        if store is None:
            return
        convs, fcs = layer_items(store)
        st[K.DB_CONVS], st[K.DB_FCS] = convs, fcs
        names = self.ctx.focus.class_names()
        st[K.DB_CLASSES] = [{"title": "predicted class", "value": -1}] + [
            {"title": n, "value": k} for k, n in enumerate(names)
        ]
        self._videos = sorted({pathlib.Path(p) for p in store.images.video_paths()})
        st[K.LV_VIDEOS] = [{"title": p.name, "value": k} for k, p in enumerate(self._videos)]
        st[K.LV_VIDEO] = 0 if self._videos else None
        try:
            self.board = Dashboard(store, self.ctx.focus.model())
        except Exception as exc:  # noqa: BLE001 - refused by the trust flags, weights gone
            st[K.DB_ERROR] = self.ctx.redact(f"the dashboard needs the store's model: {exc}")
            return
        d = self.board.defaults()
        keep = lambda key, items, default: st[key] if st[key] in items else default  # noqa: E731
        st[K.DB_CONV_A] = keep(K.DB_CONV_A, convs, d.conv_a)
        st[K.DB_CONV_B] = keep(K.DB_CONV_B, convs, d.conv_b)
        st[K.DB_FC] = keep(K.DB_FC, fcs, d.fc)
        st[K.DB_CLASS] = -1
        if self.visible:
            self.redraw()

    def shown(self) -> None:
        self.visible = True
        self.redraw()

    def hidden(self) -> None:
        self.visible = False

    def follow(self) -> None:
        """The time slider moved."""
        if self.visible and self.state[K.DB_SOURCE] == "slider":
            self.redraw()

    def close(self) -> None:
        self._stop_video()

    # ------------------------------------------------------------------ choices
    def choices(self):
        from volviz.app.dashboard_data import Choices

        st = self.state
        return Choices(
            view=st[K.DB_VIEW],
            conv_a=st[K.DB_CONV_A],
            conv_b=st[K.DB_CONV_B],
            fc=st[K.DB_FC],
            sel_a=st[K.DB_SEL_A] or "",
            sel_b=st[K.DB_SEL_B] or "",
            sel_fc=st[K.DB_SEL_FC] or "",
            rows_a=int(st[K.DB_ROWS_A] or 0),
            rows_b=int(st[K.DB_ROWS_B] or 0),
            rows_fc=int(st[K.DB_ROWS_FC] or 0),
            cmap_a=st[K.DB_CMAP_A],
            cmap_b=st[K.DB_CMAP_B],
            cmap_fc=st[K.DB_CMAP_FC],
            sort_class=int(st[K.DB_CLASS] if st[K.DB_CLASS] is not None else -1),
        )

    @change(*CHOICE_KEYS)
    def _on_choice(self, **_) -> None:
        if self.visible:
            self.redraw()

    @change(K.DB_SOURCE)
    def _on_source(self, **_) -> None:
        if self.state[K.DB_SOURCE] != "video":
            self._stop_video()
        if self.state[K.DB_SOURCE] == "slider":  # live sources draw when their frames come
            self.last = None
            self.redraw()

    def redraw(self) -> None:
        """Draw the current input again: the slider's image, or the last live frame."""
        if self.board is None or self.ctx.focus.image is None:
            return
        if self.state[K.DB_SOURCE] == "slider" or self.last is None:
            i, board, ch = int(self.ctx.focus.image), self.board, self.choices()
            self.frames.offer(lambda: self._picture(board.from_store(i, ch)))
        else:
            self.offer_rgb(*self.last)

    # ------------------------------------------------------------------ live input
    def offer_url(self, url: str, caption: str) -> None:
        """A data URL from the page: decoded, run and drawn in the worker (or dropped)."""
        board, ch = self.board, self.choices()
        if board is None:
            self.state[K.DB_ERROR] = "no store with a loadable model is focused"
            return

        def work():
            rgb = decode_frame(url)
            self.last = (rgb, caption)
            return self._picture(board.from_frame(rgb, ch, caption))

        self.frames.offer(work)

    def offer_rgb(self, rgb, caption: str) -> None:
        board, ch = self.board, self.choices()
        if board is None:
            return
        self.last = (rgb, caption)
        self.frames.offer(lambda: self._picture(board.from_frame(rgb, ch, caption)))

    @change(K.LV_FRAME)
    def _on_frame(self, **_) -> None:
        url = self.state[K.LV_FRAME]
        if not url:
            return
        if self.state[K.DB_SOURCE] != "camera":
            self.state[K.DB_SOURCE] = "camera"
        self._n += 1
        self.offer_url(url, f"camera frame {self._n}")

    @change(K.LV_UPLOAD)
    def _on_upload(self, **_) -> None:
        url = self.state[K.LV_UPLOAD]
        if not url:
            return
        self.state[K.DB_SOURCE] = "upload"
        self.offer_url(url, "uploaded image")

    @change(K.LV_CLIENT_ERROR)
    def _on_client_error(self, **_) -> None:
        from volviz.app.security import client_text

        text = self.state[K.LV_CLIENT_ERROR]
        if text:
            self.state[K.DB_ERROR] = client_text(text, 160)

    def _picture(self, frame):
        """In the worker: the dashboard picture as a PNG data URL, and the predicted class."""
        import numpy as np

        from volviz.app.panels import png_data_url
        from volviz.views.dashboard import compose

        rgb = compose(frame)
        p = int(np.argmax(frame.probs))
        name = frame.names[p] if p < len(frame.names) else str(p)
        return png_data_url(rgb, max_side=PICTURE_SIDE), f"{name} ({frame.probs[p] * 100:.1f}%)"

    def _show(self, result) -> None:
        st = self.state
        st[K.DB_IMAGE], st[K.DB_PRED] = result
        st[K.DB_SHOWN] = int(st[K.DB_SHOWN] or 0) + 1
        st[K.DB_ERROR] = ""
        st[K.LV_STATS] = self.frames.summary()

    def _refused(self, exc: BaseException) -> None:
        from volviz.errors import VolvizError

        if not isinstance(exc, VolvizError):
            log.warning("dashboard: %s", exc)
        self.state[K.DB_ERROR] = self.ctx.redact(f"{'refused' if isinstance(exc, LiveError) else 'cannot draw'}: {exc}")
        self.state[K.LV_STATS] = self.frames.summary()

    # ------------------------------------------------------------------ a video, in real time
    @change(K.LV_PLAYING, K.LV_VIDEO)
    def _on_play(self, **_) -> None:
        self._stop_video()
        st = self.state
        if not st[K.LV_PLAYING] or st[K.LV_VIDEO] is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            st[K.DB_ERROR] = "playing a video needs the served app"
            st[K.LV_PLAYING] = False
            return
        st[K.DB_SOURCE] = "video"
        self._player = loop.create_task(self._play(self._videos[int(st[K.LV_VIDEO])]))

    def _stop_video(self) -> None:
        if self._player is not None and not self._player.done():
            self._player.cancel()
        self._player = None

    async def _play(self, path: pathlib.Path) -> None:
        """Frames at the video's own rate; a frame whose time has passed is skipped, one that
        comes while the model is busy is dropped (:class:`LatestOnly`)."""
        loop, st = asyncio.get_running_loop(), self.state
        try:
            fps, frames = await asyncio.to_thread(video_frames, str(path))
            t0, k = loop.time(), 0
            while True:
                rgb = await asyncio.to_thread(next, frames, None)
                if rgb is None:
                    break
                k += 1
                wait = t0 + k / fps - loop.time()
                if wait < -1.0 / fps:
                    continue  # late: real time goes on without it
                if wait > 0:
                    await asyncio.sleep(wait)
                with st:
                    self.offer_rgb(rgb, f"{path.name} frame {k}")
        except LiveError as exc:
            with st:
                st[K.DB_ERROR] = str(exc)
        finally:
            with st:
                st[K.LV_PLAYING] = False

    # ------------------------------------------------------------------ the dashboard movie
    @controller("dashboard_record")
    def record(self) -> None:
        """The record button: the dashboard over the slider's images from its position on."""
        from volviz.analysis.sequence import SORTS, store_sequence
        from volviz.app.dashboard_movie import dashboard_frames
        from volviz.app.recorder import movie_path
        from volviz.record import write_movie

        st, board, rec = self.state, self.board, self.ctx.recorder
        if board is None or rec is None:
            st[K.DB_R_STATUS] = "nothing to record: no store with a loadable model"
            return
        seq = store_sequence(board.store, st[S.T_SORT] if st[S.T_SORT] in SORTS else "captured")
        start = min(int(st[S.T_INDEX] or 0), max(0, len(seq) - 1))
        rows = [int(i) for i in seq[start : start + int(st[K.DB_R_IMAGES] or 1)]]
        path = movie_path(rec.record_dir, pathlib.Path(board.store.path).name, "dashboard", st[K.DB_VIEW])
        ch, fps = self.choices(), float(st[S.R_FPS] or 8)
        st[K.DB_R_URL] = ""

        def work(report):
            return write_movie(
                path, dashboard_frames(board, rows, ch, report), fps=fps, total=len(rows), progress=False
            )

        def done(written):
            rec.add_file(written)  # the session's downloads: served only to this session
            st[K.DB_R_URL] = st[S.R_URL]
            st[K.DB_R_STATUS] = f"wrote {written.name} ({len(rows)} images)"

        self.record_job.start(work, done=done, describe=lambda k, n: f"dashboard movie: {k}/{n} images")
