"""From a store to the arrays a view draws: one layer, one quantity, one image, one filter order.

Shared by ``volviz render``, ``volviz movie`` and the app, so all three show the same volume for
the same choice. Orders are either fitted per image (``fit="image"``: the order follows each
image) or once over the image set (``fit="set"``: fitted on up to ``max_fit_images`` images, then
fixed, so the stack does not reshuffle while the time slider moves); set orders are cached.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from volviz.analysis.reorder import ORDER_NAMES, REORDERINGS, SliceOrder
from volviz.store.store import QUANTITIES, Store, StoreError
from volviz.views.volume_data import weight_volume

FITS = ("image", "set")


@dataclass
class LayerVolume:
    volume: np.ndarray  # (C, H, W) in natural channel order, ready for LayerVolumeScene
    order: np.ndarray  # permutation: position p shows channel order[p]
    boundaries: np.ndarray  # positions where a new cluster starts
    quantity: str
    layer: str
    image: int
    kind: str  # "maps" (conv), "neurons" (1-D layer as a grid), "weights"


def to_volume(array: np.ndarray, quantity: str) -> tuple[np.ndarray, str]:
    """The array of one image as a (C, H, W) volume: conv maps as they are, a weight gradient via
    ``weight_volume`` (one slice per output filter), a linear layer's vector as one grid slice."""
    if quantity == "grad_weight":
        return weight_volume(array), "weights"
    if array.ndim == 1:
        from volviz.views.grid import neuron_grid

        return neuron_grid(array, fill=0.0)[None].astype(np.float32), "neurons"
    if array.ndim == 2:  # conv1d maps (C, L)
        return array[:, None, :].astype(np.float32), "maps"
    if array.ndim != 3:
        raise StoreError(f"cannot show an array of shape {array.shape} as a volume")
    return array.astype(np.float32, copy=False), "maps"


class LayerVolumeSource:
    def __init__(self, store: Store, max_fit_images: int = 64, random_state: int = 0):
        self.store = store
        self.max_fit_images = max_fit_images
        self.random_state = random_state
        self._set_orders: dict[tuple, object] = {}

    def check(self, layer: str, quantity: str, order: str, fit: str) -> None:
        if layer not in self.store.layers:
            raise StoreError(f"layer {layer!r} is not in this store. Layers: {', '.join(self.store.layers)}")
        if quantity not in QUANTITIES:
            raise StoreError(f"unknown quantity {quantity!r}; valid: {', '.join(QUANTITIES)}")
        if order.lower().replace("_", "-") not in ORDER_NAMES:
            raise StoreError(f"unknown order {order!r}; valid: {', '.join(ORDER_NAMES)}")
        if fit not in FITS:
            raise StoreError(f"unknown fit {fit!r}; valid: {', '.join(FITS)}")

    def _orderer(self, order: str, n_channels: int, **kw):
        """The registry's estimator with its defaults for this layer (``n_clusters``: the
        clusters, 0 / None automatic; ``n_outer`` / ``n_inner`` where the order takes them;
        ``index``: the slice orders' row)."""
        r = REORDERINGS[order]
        takes = set(r.defaults(n_channels)) | ({"index"} if r.cls is SliceOrder else set())
        params = {k: v for k, v in kw.items() if k in takes}
        return r.build(n_channels, clusters=kw.get("n_clusters"), random_state=self.random_state, **params)

    def set_order(self, layer: str, quantity: str, order: str, **kw):
        """An orderer fitted once over (up to ``max_fit_images``) captured images."""
        key = (layer, quantity, order, tuple(sorted(kw.items())))
        if key not in self._set_orders:
            done = np.flatnonzero(self.store.done)
            if not len(done):
                raise StoreError("the store has no captured image yet")
            pick = done[np.linspace(0, len(done) - 1, min(len(done), self.max_fit_images)).astype(int)]
            stack = np.stack([to_volume(self.store.read(quantity, layer, int(i)), quantity)[0] for i in pick])
            self._set_orders[key] = self._orderer(order, stack.shape[1], **kw).fit(stack, stacked=True)
        return self._set_orders[key]

    def get(
        self, layer: str, quantity: str = "activation", image: int = 0, order: str = "natural", fit: str = "image", **kw
    ) -> LayerVolume:
        order = order.lower().replace("_", "-")
        self.check(layer, quantity, order, fit)
        vol, kind = to_volume(self.store.read(quantity, layer, image), quantity)
        if kind == "neurons" or order == "natural":
            n = vol.shape[0]
            return LayerVolume(vol, np.arange(n), np.array([], int), quantity, layer, image, kind)
        orderer = (
            self.set_order(layer, quantity, order, **kw)
            if fit == "set"
            else self._orderer(order, vol.shape[0], **kw).fit(vol, stacked=False)
        )
        return LayerVolume(
            vol, np.asarray(orderer.order_), np.asarray(orderer.boundaries_, int), quantity, layer, image, kind
        )
