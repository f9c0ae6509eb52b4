"""The explorer's Scene preview tab: pick a ``scenes/*.toml`` movie description and scrub its
camera path and image series with a slider (:meth:`volviz.scene.PreparedScene.seek`), as
``volviz movie`` would render it, at a small size.

Preparing a scene may take a while (it captures its store when missing, builds the graph, reads
the responses of its series): that runs as a background job (:func:`volviz.scene.load_scene_data`
in a worker thread) and the page stays usable; the VTK scene is then built in the server's thread.
A scene file is data: the page chooses among the files the server listed at launch (by id, never
a path); its store's model is loaded with the ``volviz serve`` command line's trust flags, and its
store must lie in the scene's folder unless ``--allow-outside`` was given. The preview captures a
missing store only from an embedded model and its own images (never code, never a folder the
scene names); a scene that cannot be read says so in one line without its keys or paths (the
server log has the details). The app never optimizes preferred inputs (minutes): layers without
them show slate tiles, and the status line says how to compute them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pathlib

from volviz.app import state as S
from volviz.app.wiring import bind, change

log = logging.getLogger("volviz.app")

WINDOW = (640, 480)  # 4:3 like the shipped scenes
PLAY_STEP = 0.1  # s of movie time per preview step while playing
REPO_SCENES = pathlib.Path(__file__).resolve().parents[2] / "scenes"


def default_scene_dirs() -> list[pathlib.Path]:
    """Where scene files are listed from at launch: ``scenes/`` here and in the volviz checkout."""
    return [pathlib.Path("scenes"), REPO_SCENES]


def scene_files(dirs) -> list[dict]:
    """Select items for the ``*.toml`` files in ``dirs`` (each file once; values: file paths, for
    scripts; the app uses the ids of its catalog)."""
    seen: dict[str, str] = {}
    for d in dirs:
        d = pathlib.Path(d)
        if d.is_dir():
            for f in sorted(d.glob("*.toml")):
                seen.setdefault(str(f.resolve()), f"{d.name}/{f.name}")
    return [{"title": t, "value": v} for v, t in seen.items()]


def scene_problem(exc: BaseException) -> str:
    """What the page says about a scene that cannot be used: the kind of problem only (no key
    names, no paths: whether a file exists elsewhere is none of the page's business)."""
    text = str(exc)
    if "leaves the scene's folder" in text:
        return (
            "its store leaves the scene's folder; start volviz serve with --allow-outside if you trust this scene file"
        )
    if "would import and run code" in text or "--trust-factory" in text or "--trust-pickle" in text:
        flag = "--trust-pickle" if "--trust-pickle" in text else "--trust-factory"
        return f"its model would import or unpickle code; start volviz serve with {flag} if you trust it"
    if "not valid TOML" in text:
        return "not valid TOML"
    if "keyframes" in text:
        return "not a valid scene file: it needs at least one [[keyframes]] (see the server log)"
    return "not a valid scene file (see the server log for what is wrong)"


class SceneTab:
    """The Scene preview tab (see :mod:`volviz.app.tabs`)."""

    def __init__(self, ctx):
        import pyvista as pv

        self.state, self.trust, self.allow_outside = ctx.state, ctx.trust, ctx.allow_outside
        self.catalog, self.redact = ctx.catalog, ctx.redact
        self.dirs = [pathlib.Path(d) for d in (ctx.scene_dirs or default_scene_dirs())]
        self.plotter = pv.Plotter(off_screen=True, window_size=list(WINDOW))
        self.plotter.set_background("#0d0f14")  # GraphStyle's, also before anything is shown
        self.view = None
        self.prepared = None
        self.job = ctx.job("scene preview", busy=S.SC_BUSY, status=S.SC_STATUS)
        self._play_task = None
        self.state[S.SC_FILES] = self.catalog.scene_items()
        bind(self, ctx.server)

    # ------------------------------------------------------------------ loading
    def _scene(self, path: str):
        from volviz.scene import load_scene

        scene = load_scene(path, allow_outside=self.allow_outside)
        return dataclasses.replace(scene, optimize=None)  # never minutes of optimizing here

    def load(self, scene_id: str) -> None:
        """Prepare the listed scene ``scene_id``: as a background job under the server, at once otherwise."""
        from volviz.scene import load_scene_data

        st = self.state
        st[S.SC_PLAYING] = False
        choice = self.catalog.scene(scene_id)
        if choice is None:
            st[S.SC_STATUS] = "no such scene file is offered by this server"
            return
        path, title = choice.path, choice.title
        try:
            scene = self._scene(path)
            capture = self._capture_problem(scene)
        except Exception as exc:  # noqa: BLE001 - bad TOML, unknown keys, a store outside: say so
            log.warning("scene %s: %s", path, exc)
            st[S.SC_STATUS] = f"cannot read {title}: {scene_problem(exc)}"
            return
        if capture:
            log.warning("scene %s: %s", path, capture)
            st[S.SC_STATUS] = f"cannot prepare {title}: {capture}"
            return
        missing = not (pathlib.Path(scene.store) / "plan.json").exists()
        st[S.SC_STATUS] = (
            f"preparing {title}: "
            + (f"capturing {self.redact(scene.store)} first (once), " if missing else "")
            + "building the graph, reading the responses ..."
        )

        def done(data):
            if st[S.SC_FILE] == scene_id:  # still the one asked for
                self._show(data)

        def failed(exc):
            log.warning("scene %s: %s", path, exc)
            return f"cannot prepare {title}: {self.redact(scene_problem(exc))}"

        self.job.start(lambda report: load_scene_data(scene, False, self.trust), done=done, failed=failed)

    def _capture_problem(self, scene) -> str:
        """Why the preview will not capture this scene's missing store ('' when it exists or may
        be captured: an embedded model, its own images, into the scene's folder or ./stores)."""
        from volviz.store.plan import spec_runs_code

        store = pathlib.Path(scene.store)
        if (store / "plan.json").exists():
            return ""
        if scene.images:
            return (
                "its store is missing and the scene names images to capture it from; run "
                "`volviz movie` on it once (the preview never reads folders a scene names)"
            )
        if not scene.model or (spec_runs_code(scene.model) and not self.trust.get("trust_factory")):
            return (
                "its store is missing and cannot be captured here (an embedded model is needed); run "
                "`volviz movie` on it once"
            )
        base = scene.path.resolve().parent if scene.path else pathlib.Path.cwd()
        real = store.resolve()
        if not (real.is_relative_to(base) or real.is_relative_to((pathlib.Path.cwd() / "stores").resolve())):
            return "its store is missing and would be captured outside the scene's folder and ./stores"
        return ""

    def _show(self, data) -> None:
        from volviz.scene import build_prepared

        if self.prepared is not None:
            self.prepared.graph_scene.close()
        self.prepared = p = build_prepared(data, width=WINDOW[0], height=WINDOW[1], plotter=self.plotter)
        st = self.state
        st[S.SC_DURATION] = round(p.duration, 2)
        missing = [
            d["name"] for d in data.graph.graph["layers"] if d["kind"] != "input" and d["name"] not in data.thumbnails
        ]
        st[S.SC_STATUS] = self.redact(
            f"{data.scene.title or data.scene.path.name}: {len(p.indices)} images, "
            f"{p.duration:.1f} s, store {pathlib.Path(str(data.store.path)).name}"
            + (
                f"; slate tiles for {', '.join(missing)}: `volviz movie scenes/{data.scene.path.name}` "
                "(or `volviz optimize STORE`) computes their preferred inputs"
                if missing
                else ""
            )
        )
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

    @change(S.SC_FILE)
    def _on_file(self, **_) -> None:
        sid = self.state[S.SC_FILE]
        if sid:
            self.load(sid)

    @change(S.SC_T)
    def _on_t(self, **_) -> None:
        self.seek(float(self.state[S.SC_T] or 0.0))

    @change(S.SC_PLAYING)
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

    def hidden(self) -> None:
        self.state[S.SC_PLAYING] = False

    def close(self) -> None:
        if self.prepared is not None:
            self.prepared.graph_scene.close()
        self.plotter.close()
