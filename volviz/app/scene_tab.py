"""The explorer's Scene preview tab: pick a ``scenes/*.toml`` movie description and scrub its
camera path and image series with a slider (:meth:`volviz.scene.PreparedScene.seek`), as
``volviz movie`` would render it, at a small size.

Preparing a scene may take a while (it captures its store when missing, builds the graph, reads
the responses of its series): that runs in a background thread (:func:`volviz.scene.load_scene_data`)
and the page stays usable; the VTK scene is then built in the server's thread. The app never
optimizes preferred inputs (minutes): layers without them show slate tiles, and the status line
says how to compute them.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import pathlib
from concurrent.futures import ThreadPoolExecutor

from volviz.app import state as S

log = logging.getLogger("volviz.app")

WINDOW = (640, 480)     # 4:3 like the shipped scenes
PLAY_STEP = 0.1         # s of movie time per preview step while playing
REPO_SCENES = pathlib.Path(__file__).resolve().parents[2] / "scenes"


def scene_files(dirs) -> list[dict]:
    """Select items for the ``*.toml`` files in ``dirs`` (each file once)."""
    seen: dict[str, str] = {}
    for d in dirs:
        d = pathlib.Path(d)
        if d.is_dir():
            for f in sorted(d.glob("*.toml")):
                seen.setdefault(str(f.resolve()), f"{d.name}/{f.name}")
    return [{"title": t, "value": v} for v, t in seen.items()]


class SceneTab:
    def __init__(self, app, scene_dirs=None):
        import pyvista as pv
        self.app, self.state = app, app.state
        self.dirs = [pathlib.Path(d) for d in (scene_dirs or [pathlib.Path("scenes"), REPO_SCENES])]
        self.plotter = pv.Plotter(off_screen=True, window_size=list(WINDOW))
        self.plotter.set_background("#0d0f14")  # GraphStyle's, also before anything is shown
        self.view = None
        self.prepared = None
        self._task = None
        self._play_task = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="volviz-scene")
        self.state[S.SC_FILES] = scene_files(self.dirs)
        st = self.state
        st.change(S.SC_FILE)(self._on_file)
        st.change(S.SC_T)(self._on_t)
        st.change(S.SC_PLAYING)(self._on_playing)

    # ------------------------------------------------------------------ loading
    def _scene(self, path: str):
        from volviz.scene import load_scene
        return dataclasses.replace(load_scene(path), optimize=None)  # never minutes of optimizing here

    def load(self, path: str) -> None:
        """Prepare scene file ``path``: in a background thread under the server, at once otherwise."""
        st = self.state
        st[S.SC_PLAYING] = False
        try:
            scene = self._scene(path)
        except Exception as exc:  # noqa: BLE001 - bad TOML, unknown keys: say so
            st[S.SC_STATUS] = f"cannot read {path}: {exc}"
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            from volviz.scene import load_scene_data
            try:
                self._show(load_scene_data(scene, progress=False))
            except Exception as exc:  # noqa: BLE001
                st[S.SC_STATUS] = f"cannot prepare {pathlib.Path(path).name}: {exc}"
            return
        st[S.SC_BUSY] = True  # the scene select is disabled until this one is ready
        missing = not (pathlib.Path(scene.store) / "plan.json").exists()
        st[S.SC_STATUS] = (f"preparing {pathlib.Path(path).name}: " + (f"capturing {scene.store} first (once), "
                           if missing else "") + "building the graph, reading the responses ...")
        self._task = loop.create_task(self._load_async(scene, path))

    async def _load_async(self, scene, path: str) -> None:
        from volviz.scene import load_scene_data
        st = self.state
        try:
            data = await asyncio.get_running_loop().run_in_executor(self._executor, load_scene_data, scene, False)
            with st:
                if st[S.SC_FILE] == path:  # still the one asked for
                    self._show(data)
        except Exception as exc:  # noqa: BLE001
            log.warning("scene %s: %s", path, exc)
            with st:
                st[S.SC_STATUS] = f"cannot prepare {pathlib.Path(path).name}: {exc}"
        finally:
            with st:
                st[S.SC_BUSY] = False

    def _show(self, data) -> None:
        from volviz.scene import build_prepared
        if self.prepared is not None:
            self.prepared.graph_scene.close()
        self.prepared = p = build_prepared(data, width=WINDOW[0], height=WINDOW[1], plotter=self.plotter)
        st = self.state
        st[S.SC_DURATION] = round(p.duration, 2)
        missing = [d["name"] for d in data.graph.graph["layers"]
                   if d["kind"] != "input" and d["name"] not in data.thumbnails]
        st[S.SC_STATUS] = (f"{data.scene.title or data.scene.path.name}: {len(p.indices)} images, "
                           f"{p.duration:.1f} s, store {data.store.path}"
                           + (f"; slate tiles for {', '.join(missing)}: `volviz movie {data.scene.path}` "
                              "(or `volviz optimize STORE`) computes their preferred inputs" if missing else ""))
        if st[S.SC_T]:
            st[S.SC_T] = 0.0  # its handler seeks
        self.seek(0.0)

    # ------------------------------------------------------------------ time
    def seek(self, t: float) -> None:
        p = self.prepared
        if p is None:
            return
        t = min(max(float(t), 0.0), p.duration)
        p.seek(t)
        self.state[S.SC_CAPTION] = p.caption(p.step_at(t)).replace("\n", " · ")
        self.state[S.SC_SHOWN] = f"{p.scene.path.name} · t={t:.2f}"
        if self.view is not None:
            self.view.update()

    def _on_file(self, **_) -> None:
        path = self.state[S.SC_FILE]
        if path:
            self.load(path)

    def _on_t(self, **_) -> None:
        self.seek(float(self.state[S.SC_T] or 0.0))

    def _on_playing(self, **_) -> None:
        if not self.state[S.SC_PLAYING] or self.prepared is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._play_task is None or self._play_task.done():
            self._play_task = loop.create_task(self._play())

    async def _play(self) -> None:
        """Real time, as far as rendering allows; stops at the end."""
        import time
        st = self.state
        while st[S.SC_PLAYING] and self.prepared is not None and st[S.APP_TAB] == "scene":
            t0 = time.perf_counter()
            t = round(float(st[S.SC_T] or 0.0) + PLAY_STEP, 3)
            with st:
                if t > self.prepared.duration:
                    st[S.SC_PLAYING] = False
                    break
                st[S.SC_T] = t
            await asyncio.sleep(max(0.0, PLAY_STEP - (time.perf_counter() - t0)))
        with st:
            st[S.SC_PLAYING] = False

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.prepared is not None:
            self.prepared.graph_scene.close()
        self.plotter.close()
