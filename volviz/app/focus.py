"""What the analysis tabs (Graph, Pruning, ...) see of the app: the pane chosen in their store
select (``x_pane``; pane 0 with one store) through a narrow interface: its store, current image,
caption, chosen class and model. A tab never reaches into the panes, so a pane can change its
insides without touching the tabs.
"""

from __future__ import annotations

from volviz.app import state as S

__all__ = ["Focus"]


class Focus:
    def __init__(self, app):
        self._app, self.state = app, app.state

    @property
    def _pane(self):
        panes = self._app.panes
        return panes[min(max(int(self.state[S.X_PANE] or 0), 0), len(panes) - 1)]

    # ------------------------------------------------------------------ what a tab reads
    @property
    def store(self):
        """The focused pane's ``Store`` (None while it shows none)."""
        return self._pane.store

    @property
    def path(self) -> str | None:
        return self._pane.path

    @property
    def image(self) -> int | None:
        """Store index of the image the pane shows now (follows the time slider)."""
        return self._pane.image

    def position_of(self, image: int) -> int:
        """The time slider's position of store image ``image`` in the pane's image order."""
        return self._pane.position_of(int(image))

    def model(self):
        """The store's ``nn.Module``, loaded once with the command line's trust flags (raises a
        one-line ``ModelLoadError`` saying why it cannot be loaded)."""
        return self._pane.model()

    def memo(self, key, compute):
        """``compute()`` once per store (shared with the pane's own panels: one importance run)."""
        return self._pane.remember(key, compute)

    def chosen_class(self, image: int | None = None) -> int:
        """The pane's class select (Importance / Sorted panels); default: the predicted class."""
        pane = self._pane
        c = self.state[S.pane_key(pane.index, "sort_class")]
        image = pane.image if image is None else image
        return int(pane.columns["pred"][image]) if c is None or int(c) < 0 else int(c)

    def class_names(self) -> list[str]:
        """A name per class (the class index when the store has none)."""
        return self._pane.class_names()

    def class_name(self, c: int) -> str:
        return self._pane.class_name(c)

    def caption(self, image: int | None = None) -> str:
        """``image 3  true 7  predicted 7`` (+ the class-groups label on a second line)."""
        pane = self._pane
        image = pane.image if image is None else image
        group = pane.group_label(image)
        return pane.truth_text(image) + (f"\n{group}" if group else "")

    # ------------------------------------------------------------------ what the app calls
    def refresh_items(self) -> None:
        """Items of the analysis tabs' store select (one per pane)."""
        st = self.state
        st[S.X_PANES] = [
            {"title": st[S.pane_key(p.index, "title")] or f"pane {p.index + 1}", "value": p.index}
            for p in self._app.panes
        ]

    def store_opened(self, pane) -> None:
        self.refresh_items()
        if pane is self._pane:
            self._app.tabs_call("refresh")
