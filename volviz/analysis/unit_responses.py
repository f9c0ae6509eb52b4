"""How strongly each unit of the graph responds to an image, read from a store's activations.

The network graph and scene movies colour units by these numbers; they need only the store,
not the model, so they live apart from the graph builder.
"""

from __future__ import annotations

import numpy as np

__all__ = ["unit_responses", "series_responses"]


def _response(a: np.ndarray) -> np.ndarray:
    """A unit's response to one image: ReLU of its output, averaged over spatial positions
    (conv channels) or as is (linear neurons)."""
    a = np.maximum(np.asarray(a, np.float32), 0.0)
    return a.reshape(a.shape[0], -1).mean(axis=1) if a.ndim > 1 else a


def unit_responses(store, i: int, layers=None) -> dict[str, np.ndarray]:
    """Per layer, every unit's response to image ``i`` (layers the store lacks are left out)."""
    names = [n for n in (layers or store.layers) if n in store.layers]
    return {n: _response(store.read("activation", n, i)) for n in names}


def series_responses(store, indices, layers=None) -> dict[str, np.ndarray]:
    """Per layer, ``(len(indices), n_units)`` responses for a series of images."""
    names = [n for n in (layers or store.layers) if n in store.layers]
    return {n: np.stack([_response(store.read("activation", n, int(i))) for i in indices]) for n in names}
