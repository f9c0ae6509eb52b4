"""The explorer's "class groups" image order [Jain2016, §3.2.2]: for a reference class, images of
that class, of the most similar and of the most dissimilar class, each correctly classified and
misclassified where such images exist (:func:`~volviz.analysis.class_groups.class_groups_from_store`),
played on the time slider with a group label per step and ONE colour scale over the sequence.

The gradients shown must be those of the reference neuron for every image. A store captured with
the default ``--target true`` holds, for an image of class 7, the gradient of neuron 7: then the
gradients of the sequence's images are computed from the model
(:func:`~volviz.analysis.class_groups.group_gradients`, a few images: milliseconds) and served
through :class:`OverrideStore` in place of the stored ones. No trame, no VTK.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from volviz.analysis.class_groups import ClassGroups, class_groups_from_store, group_gradients

__all__ = ["GroupPlay", "OverrideStore", "make_group_play"]

GRADIENTS = ("grad_activation", "grad_weight")


class OverrideStore:
    """A store whose ``read(quantity, layer, i)`` returns ``overrides[(quantity, layer, i)]``
    where given and the store's array otherwise; everything else is the store's."""

    def __init__(self, store, overrides: dict | None = None):
        self._store = store
        self.overrides = dict(overrides or {})

    def read(self, quantity: str, layer: str, i: int) -> np.ndarray:
        hit = self.overrides.get((quantity, layer, int(i)))
        return hit if hit is not None else self._store.read(quantity, layer, i)

    def __getattr__(self, name):
        return getattr(self._store, name)


@dataclass
class GroupPlay:
    """One pane's class-groups sequence and what its gradients come from."""

    groups: ClassGroups
    sequence: np.ndarray  # store indices, in playing order
    labels: list[str]  # group label per step
    computed: dict = field(default_factory=dict)  # (layer, quantity) -> GroupGradients

    @property
    def reference(self) -> int:
        return self.groups.reference

    @property
    def from_model(self) -> bool:
        """True when the store's gradients are not those of the reference neuron."""
        return not self.groups.store_has_reference_gradients

    def label_at(self, image: int) -> str:
        hits = np.flatnonzero(self.sequence == image)
        return self.labels[int(hits[0])] if len(hits) else ""

    def note(self) -> str:
        g = self.groups
        where = (
            "gradients of neuron {0} computed from the model (the store holds each image's own class)"
            if self.from_model
            else "gradients of neuron {0} from the store"
        ).format(g.name(g.reference))
        missing = f"; missing: {'; '.join(g.missing)}" if g.missing else ""
        return (
            f"reference {g.name(g.reference)} · most similar {g.name(g.similar)} · most dissimilar "
            f"{g.name(g.dissimilar)} (by {g.by}) · {where} · one colour scale{missing}"
        )

    def overrides(self, model_fn, store, layer: str, quantity: str) -> dict:
        """``{(quantity, layer, image): array}`` of the reference neuron's gradients, computed
        once per layer and quantity (empty when the store already holds them, or for
        activations)."""
        if quantity not in GRADIENTS or not self.from_model:
            return {}
        if quantity == "grad_weight" and not store.layers[layer].weight_shape:
            return {}
        key = (layer, quantity)
        if key not in self.computed:
            import torch

            from volviz.app.analysis_panels import model_input

            x = torch.cat([model_input(store, int(i))[0] for i in self.sequence])
            self.computed[key] = group_gradients(model_fn(), x, self.reference, layer, quantity=quantity)
        gg = self.computed[key]
        return {(quantity, layer, int(i)): a for i, a in zip(self.sequence, gg.arrays)}


def make_group_play(store, reference: int, per_group: int = 2) -> GroupPlay:
    """The class-groups sequence of ``store`` for ``reference`` (by soft confusion)."""
    groups = class_groups_from_store(store, int(reference), per_group=max(1, int(per_group)))
    seq = groups.sequence()
    return GroupPlay(groups, np.array([i for i, _ in seq], np.intp), [lab for _, lab in seq])
