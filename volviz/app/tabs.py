"""The ONE place that lists what the explorer shows: its main tabs and the modules that register
2-D panels.

* A main tab is a :class:`TabSpec`: a key, a title, a class made with a :class:`TabContext`, a
  layout function ``layout(tab, ctx)`` (trame widgets only) and the drawer's help text. The tab
  object may define ``shown()`` / ``hidden()`` (the user switched tabs; a hidden tab's view is not
  in the page), ``follow()`` (the focused pane's image or scene changed: the time slider moved),
  ``refresh()`` (the focused pane opened another store) and ``close()``. It sees the app only
  through the context (state, controller, the focused pane, background jobs, the trust flags).
* A 2-D panel (a tab beside every pane's 3-D view) is ``register_panel(key, title, fn)`` in one of
  :data:`PANEL_MODULES` (see :mod:`volviz.app.panels`).
"""

from __future__ import annotations

import importlib
import pathlib
from collections.abc import Callable
from dataclasses import dataclass, field

from volviz.app.jobs import BackgroundJob

__all__ = ["PANEL_MODULES", "TabContext", "TabSpec", "main_tabs", "load_panels"]

#: modules whose import registers 2-D panels (``register_panel``), in tab order
PANEL_MODULES = (
    "volviz.app.panels",
    "volviz.app.analysis_panels",
    "volviz.app.dataset_panels",
    "volviz.app.slice_panel",
)


@dataclass
class TabContext:
    """What a main tab may use of the app."""

    server: object
    focus: object  # volviz.app.focus.Focus: the analysed pane's store, image, model
    trust: dict  # the command line's --trust-pickle / --trust-factory
    n_panes: int
    prune_dir: pathlib.Path  # where the Pruning tab writes its result folders
    scene_dirs: list | None = None
    allow_outside: bool = False  # scene files may name a store outside their folder
    catalog: object = None  # volviz.app.catalog.Catalog: what a browser may choose (ids)
    recorder: object = None  # volviz.app.recorder.Recorder: where a tab's movie goes (its downloads)
    notify: Callable[[str], None] | None = None  # one line in the page's footer
    jobs: list = field(default_factory=list)

    def redact(self, text) -> str:
        """``text`` as the page may show it (no absolute server paths)."""
        return self.catalog.redact(text) if self.catalog is not None else str(text)

    @property
    def state(self):
        return self.server.state

    @property
    def ctrl(self):
        return self.server.controller

    def job(self, name: str, **keys) -> BackgroundJob:
        """A background job reporting to ``keys`` (busy / progress / status), closed with the app."""
        job = BackgroundJob(self.state, name, **keys)
        self.jobs.append(job)
        return job


@dataclass(frozen=True)
class TabSpec:
    key: str
    title: str
    make: Callable[[TabContext], object] | None  # None: the Volume tab (the panes themselves)
    layout: Callable[[object, TabContext], None] | None
    help: str = ""  # the drawer while the tab is shown
    time_bar: bool = False  # the time slider shows on this tab


def _graph(ctx):
    from volviz.app.graph_tab import GraphTab

    return GraphTab(ctx)


def _embedding(ctx):
    from volviz.app.embedding_tab import EmbeddingTab

    return EmbeddingTab(ctx)


def _embedding_layout(tab, ctx):
    from volviz.app.ui_embedding import embedding_tab

    return embedding_tab(tab, ctx)


def _dashboard(ctx):
    from volviz.app.dashboard_tab import DashboardTab

    return DashboardTab(ctx)


def _dashboard_layout(tab, ctx):
    from volviz.app.ui_dashboard import dashboard_tab

    return dashboard_tab(tab, ctx)


def _scene(ctx):
    from volviz.app.scene_tab import SceneTab

    return SceneTab(ctx)


def _prune(ctx):
    from volviz.app.prune_tab import PruneTab

    return PruneTab(ctx)


def _layout(name: str):
    def layout(tab, ctx):
        from volviz.app import ui_tabs

        return getattr(ui_tabs, name)(tab, ctx)

    return layout


def main_tabs() -> list[TabSpec]:
    """The app bar's tabs, in order (the page opens on the first)."""
    return [
        TabSpec("volume", "Volume", None, None, time_bar=True),
        TabSpec(
            "graph",
            "Graph",
            _graph,
            _layout("graph_tab"),
            time_bar=True,
            help=(
                "The store's network: a plane per layer, a node per unit with its preferred input "
                "(volviz optimize) or its top dataset example, edges from the weights; a big network opens "
                "as one tile per layer (choose a layer to see its units). The time slider, the image order and the "
                "pane's class (Importance tab) apply here too."
            ),
        ),
        TabSpec(
            "embedding",
            "Embedding",
            _embedding,
            _embedding_layout,
            time_bar=True,
            help=(
                "The images as a 3-D cloud of thumbnails at their coordinates in one layer's descriptor space "
                "(volviz embed; a PCA made here when the store keeps none). The time slider's image is drawn "
                "large with its nearest neighbours; click a thumbnail to make it the current image."
            ),
        ),
        TabSpec(
            "dashboard",
            "Dashboard",
            _dashboard,
            _dashboard_layout,
            time_bar=True,
            help=(
                "[Tamari2017]'s realtime view: the input with the model's crop, the class bars, two conv layers "
                "and a linear layer at once (or the FC-only sorted view). It follows the time slider, or live "
                "input: the webcam, an uploaded or dropped image, a video of the store's, in real time."
            ),
        ),
        TabSpec(
            "scene",
            "Scene",
            _scene,
            _layout("scene_tab"),
            help=(
                "A scenes/*.toml movie as volviz movie renders it: the slider is the movie's time. Scenes "
                "name their own store (captured first when missing)."
            ),
        ),
        TabSpec(
            "prune",
            "Pruning",
            _prune,
            _layout("prune_tab"),
            help=(
                "[Jain2016]'s analysis: filters ranked by importance (the norm of the class score's gradient "
                "w.r.t. their weights), removed least / most important first. Results are folders like "
                "those of volviz prune --out, under out/prune."
            ),
        ),
    ]


def load_panels() -> None:
    """Import the panel modules (each registers its panels once)."""
    for name in PANEL_MODULES:
        importlib.import_module(name)
