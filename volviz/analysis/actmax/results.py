"""Preferred inputs in the store: layout, chunked resumable writing, and the reader API.

Layout (next to the capture's arrays, in the same zarr group)::

  preferred/<layer>/
    images           float16 (U, S, C, H, W)  pixel images, chunk (k, S, C, H, W): k units per chunk
    activation       float32 (U, S)           objective reached by each image (NaN until written)
    activation_init  float32 (U, S)           objective of its start image
    done             bool    (n_chunks,)      True once chunk i's arrays are written
    real_top         float32 (U,)             top objective over the store's real images
    real_top_image   int64   (U,)             which image that was
    real_mean        float32 (U,)             mean objective over the real images
    scale            float32 (U,)             real_top - real_mean (1 where that is ~0): the unit of z
    search/          score, z, hf, beats_real (N,), units (k,), unit_scores (N, k); attrs: configs,
                     best, steps, hf_weight
    attrs: format, layer, objective, n_units, seeds, steps, image_shape, chunk_units, settings,
           config (the setting used), prepared, complete, summary

Units are conv channels or linear neurons in the layer's own order. A chunk's ``done`` flag is set
after its arrays, ``complete`` after every chunk: readers trust only done chunks / complete layers.

Reader API (all take a :class:`~volviz.store.store.Store` or a path)::

  preferred_layers(store)            -> [layer, ...] with complete results
  load_preferred(store, layer)       -> float32 (U, S, C, H, W)
  best_preferred(store, layer)       -> float32 (U, C, H, W), per unit the seed that reached most
  preferred_info(store, layer)       -> PreferredInfo (activations, references, settings, search)
  thumbnails(store, layer, size=64)  -> uint8 (U, size, size, 3), for the network graph's atlas
"""
from __future__ import annotations

from volviz.errors import PreferredError  # noqa: F401  (re-exported)
import math
import os
from dataclasses import dataclass, field

import numpy as np

from volviz.store.store import Store

__all__ = ["GROUP", "FORMAT", "PreferredError", "PreferredInfo", "preferred_layers", "preferred_info",
           "load_preferred", "best_preferred", "thumbnails", "layer_state", "prepare_layer",
           "pending_chunks", "chunk_units_range", "write_chunk", "finalize_layer"]

GROUP = "preferred"
FORMAT = 1




def _store(store, mode: str = "r") -> Store:
    return store if isinstance(store, Store) else Store.open(os.fspath(store), mode)


def _group(store: Store, layer: str):
    return store.results(GROUP).group(layer)


def layer_state(store, layer: str) -> dict | None:
    """The attrs of ``preferred/<layer>`` (None when absent)."""
    g = _group(_store(store), layer)
    return None if g is None else g.attrs.asdict()


# ---- writing (run.py) ------------------------------------------------------------------------
def prepare_layer(store: Store, layer: str, *, meta: dict, n_units: int, n_seeds: int,
                  image_shape: tuple[int, int, int], chunk_units: int, real_top: np.ndarray,
                  real_top_image: np.ndarray, real_mean: np.ndarray, scale: np.ndarray, search=None,
                  config: dict) -> object:
    """(Re)create ``preferred/<layer>`` with empty result arrays; ``prepared`` is set last."""
    g = store.results(GROUP).create(layer)
    g.attrs.update(dict(meta, format=FORMAT, layer=layer, n_units=int(n_units), n_seeds=int(n_seeds),
                        image_shape=list(image_shape), chunk_units=int(chunk_units), prepared=False,
                        complete=False))
    n_chunks = math.ceil(n_units / chunk_units)
    g.create_array("images", shape=(n_units, n_seeds, *image_shape), chunks=(chunk_units, n_seeds, *image_shape),
                   dtype="float16", fill_value=np.nan)
    for name in ("activation", "activation_init"):
        g.create_array(name, shape=(n_units, n_seeds), chunks=(chunk_units, n_seeds), dtype="float32",
                       fill_value=np.nan)
    g.create_array("done", shape=(n_chunks,), chunks=(1,), dtype="bool", fill_value=False)
    for name, arr, dt in (("real_top", real_top, "float32"), ("real_top_image", real_top_image, "int64"),
                          ("real_mean", real_mean, "float32"), ("scale", scale, "float32")):
        a = g.create_array(name, shape=(n_units,), chunks=(n_units,), dtype=dt, fill_value=0)
        a[:] = np.asarray(arr).astype(dt)
    if search is not None:
        s = g.create_group("search")
        for name in ("score", "z", "hf", "beats_real"):
            a = s.create_array(name, shape=(len(search.configs),), chunks=(len(search.configs),),
                               dtype="float64", fill_value=np.nan)
            a[:] = getattr(search, name)
        a = s.create_array("units", shape=(len(search.units),), chunks=(len(search.units),), dtype="int64",
                           fill_value=0)
        a[:] = search.units
        a = s.create_array("unit_scores", shape=search.unit_scores.shape, chunks=search.unit_scores.shape,
                           dtype="float64", fill_value=np.nan)
        a[:] = search.unit_scores
        s.attrs.update({"configs": [c.to_dict() for c in search.configs], "best": search.best,
                        "steps": search.steps, "hf_weight": search.hf_weight})
    g.attrs.update({"config": config, "prepared": True})
    return g


def pending_chunks(g) -> list[int]:
    return [int(i) for i in np.flatnonzero(~np.asarray(g["done"][:], dtype=bool))]


def chunk_units_range(g, i: int) -> tuple[int, int]:
    k, n = int(g.attrs["chunk_units"]), int(g.attrs["n_units"])
    return i * k, min(n, (i + 1) * k)


def write_chunk(g, i: int, images: np.ndarray, activation: np.ndarray, activation_init: np.ndarray) -> None:
    """Arrays of chunk ``i`` (units ``chunk_units_range(g, i)``), then its done flag."""
    first, last = chunk_units_range(g, i)
    g["images"][first:last] = images.astype(np.float16)
    g["activation"][first:last] = activation.astype(np.float32)
    g["activation_init"][first:last] = activation_init.astype(np.float32)
    g["done"][i] = True


def finalize_layer(g, summary: dict) -> None:
    g.attrs.update({"summary": summary, "complete": True})


# ---- reading ---------------------------------------------------------------------------------
@dataclass
class PreferredInfo:
    layer: str
    objective: str
    n_units: int
    seeds: list[int]
    image_shape: tuple[int, int, int]
    activation: np.ndarray        # (U, S)
    activation_init: np.ndarray   # (U, S)
    real_top: np.ndarray          # (U,)
    real_top_image: np.ndarray    # (U,)
    real_mean: np.ndarray         # (U,)
    scale: np.ndarray             # (U,) real_top - real_mean
    config: dict
    settings: dict
    complete: bool
    summary: dict = field(default_factory=dict)
    search: dict | None = None    # {configs, best, steps, hf_weight, score, z, hf, beats_real, units, unit_scores}

    @property
    def z(self) -> np.ndarray:
        """(U, S) normalized activation: 0 = the mean real image, 1 = the top real image."""
        return (self.activation - self.real_mean[:, None]) / self.scale[:, None]

    @property
    def best_seed(self) -> np.ndarray:
        """(U,) index of the seed whose image reached the highest activation."""
        a = np.where(np.isfinite(self.activation), self.activation, -np.inf)
        return a.argmax(1)

    @property
    def beats_real(self) -> np.ndarray:
        """(U,) True where the best image activates the unit more than every real image."""
        with np.errstate(invalid="ignore"):
            return np.nanmax(np.where(np.isfinite(self.activation), self.activation, -np.inf), 1) > self.real_top


def _checked(store: Store, layer: str, partial: bool):
    g = _group(store, layer)
    if g is None or not g.attrs.get("prepared", False):
        have = preferred_layers(store, complete_only=False)
        raise PreferredError(f"no preferred inputs for layer {layer!r} in {store.path}; run `volviz "
                             f"optimize {store.path} --layers {layer}`"
                             + (f" (layers with results: {', '.join(have)})" if have else ""))
    if not partial and not g.attrs.get("complete", False):
        raise PreferredError(f"preferred inputs of layer {layer!r} are incomplete (interrupted run); "
                             f"resume with `volviz optimize {store.path} --layers {layer}`")
    return g


def preferred_layers(store, complete_only: bool = True) -> list[str]:
    """Layers with preferred inputs (complete ones only, by default), in the model's layer order."""
    st = _store(store)
    names = [n for n, g in st.results(GROUP).layers().items()
             if g.attrs.get("prepared", False) and (g.attrs.get("complete", False) or not complete_only)]
    order = {n: i for i, n in enumerate(st.layers)}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def preferred_info(store, layer: str, partial: bool = False) -> PreferredInfo:
    st = _store(store)
    g = _checked(st, layer, partial)
    at = g.attrs.asdict()
    search = None
    if "search" in g:
        s = g["search"]
        search = dict(s.attrs.asdict(), **{k: np.asarray(s[k][:]) for k in ("score", "z", "hf", "beats_real",
                                                                             "units", "unit_scores") if k in s})
    return PreferredInfo(layer, at["objective"], at["n_units"], list(at["seeds"]), tuple(at["image_shape"]),
                         np.asarray(g["activation"][:]), np.asarray(g["activation_init"][:]),
                         np.asarray(g["real_top"][:]), np.asarray(g["real_top_image"][:]),
                         np.asarray(g["real_mean"][:]), np.asarray(g["scale"][:]), at.get("config", {}),
                         at.get("settings", {}),
                         bool(at.get("complete", False)), at.get("summary", {}), search)


def load_preferred(store, layer: str, partial: bool = False) -> np.ndarray:
    """float32 ``(units, seeds, C, H, W)`` pixel images (0..1 for images read from files).

    ``partial=True`` also reads an interrupted layer: units of chunks not done are NaN.
    """
    st = _store(store)
    g = _checked(st, layer, partial)
    imgs = np.asarray(g["images"][:], dtype=np.float32)
    if partial:
        done = np.asarray(g["done"][:], dtype=bool)
        k = int(g.attrs["chunk_units"])
        mask = np.repeat(done, k)[: imgs.shape[0]]
        imgs[~mask] = np.nan
    return imgs


def best_preferred(store, layer: str, partial: bool = False) -> np.ndarray:
    """float32 ``(units, C, H, W)``: per unit, the seed's image that reached the highest activation."""
    st = _store(store)
    imgs = load_preferred(st, layer, partial)
    best = preferred_info(st, layer, partial).best_seed
    return imgs[np.arange(imgs.shape[0]), best]


def thumbnails(store, layer: str, size: int | None = 64, normalize: str = "per_unit",
               channels=None, partial: bool = False) -> np.ndarray:
    """uint8 ``(units, h, w, 3)`` of :func:`best_preferred`, per-unit normalized (see display.py),
    enlarged by nearest neighbour to at least ``size`` pixels (an integer factor; None = as is).
    Units not done (``partial``) are mid grey."""
    from volviz.analysis.actmax.display import to_display, upscale

    rgb = to_display(best_preferred(store, layer, partial), normalize, channels)
    rgb = np.nan_to_num(rgb, nan=0.5)
    if size:
        rgb = upscale(rgb, max(1, -(-int(size) // max(rgb.shape[1:3]))))
    return np.round(rgb * 255).astype(np.uint8)
