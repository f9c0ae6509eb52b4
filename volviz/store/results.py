"""Derived results kept beside a capture (preferred inputs; later embeddings, top examples...):
``results/<kind>/<layer>/`` groups of checksummed arrays with JSON attributes.

Analysis modules write and read them through these two small classes and never name a path.
"""

from __future__ import annotations

from volviz.store import layout


class ResultGroup:
    """One layer's result arrays and attributes (a thin view of a zarr group)."""

    def __init__(self, group):
        self._g = group

    @property
    def attrs(self):
        return self._g.attrs

    def create_array(self, name: str, *, shape, chunks, dtype, fill_value):
        return layout.create_array(self._g, name, tuple(shape), tuple(chunks), dtype, fill_value)

    def create_group(self, name: str) -> ResultGroup:
        return ResultGroup(self._g.create_group(name))

    def __contains__(self, name: str) -> bool:
        return name in self._g

    def __getitem__(self, name: str):
        item = self._g[name]
        return item if hasattr(item, "shape") else ResultGroup(item)


class Results:
    """Every layer's results of one kind in one store."""

    def __init__(self, store, kind: str):
        self.store, self.kind = store, kind

    def _parent(self, create: bool = False):
        try:
            return self.store._root[f"results/{self.kind}"]
        except KeyError:
            if self.store.plan.format_version < 2 and self.kind in self.store._root:
                return self.store._root[self.kind]  # format 1 kept results at the top level
            if not create:
                return None
            return self.store._root.require_group("results").require_group(self.kind)

    def group(self, layer: str) -> ResultGroup | None:
        parent = self._parent()
        if parent is None or layer not in parent:
            return None
        return ResultGroup(parent[layer])

    def create(self, layer: str) -> ResultGroup:
        """A new, empty group for ``layer`` (an older one of this kind is replaced)."""
        parent = self._parent(create=True)
        if layer in parent:
            del parent[layer]
        return ResultGroup(parent.create_group(layer))

    def layers(self) -> dict[str, ResultGroup]:
        parent = self._parent()
        return {} if parent is None else {n: ResultGroup(g) for n, g in parent.groups()}
