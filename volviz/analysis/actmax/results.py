"""Preferred inputs in the store: layout, chunked resumable writing, and the reader API.

Layout (next to the capture's arrays, in the same zarr group)::

  preferred/<layer>/
    images           float16 (U, S, C, H, W)  pixel images, chunk (k, S, C, H, W): k units per chunk
    activation       float32 (U, S)           objective reached by each image (NaN until written)
    activation_init  float32 (U, S)           objective of its start image
    done             bool    (U,)             True once unit u's arrays are written (format 1: per chunk)
    real_top         float32 (U,)             top objective over the store's real images
    real_top_image   int64   (U,)             which image that was
    real_mean        float32 (U,)             mean objective over the real images
    scale            float32 (U,)             real_top - real_mean (1 where that is ~0): the unit of z
    search/          score, z, hf, beats_real (N,), units (k,), unit_scores (N, k); attrs: configs,
                     best, steps, hf_weight
    attrs: format, layer, objective, n_units, seeds, steps, image_shape (optimized), input_shape
           (the model's), chunk_units, settings, config (the setting used), prepared, complete,
           units_done, summary

Units are conv channels or linear neurons in the layer's own order. A unit's ``done`` flag is set
after its arrays; ``complete`` once every unit the last run asked for (``--units``; default all)
is done. Readers trust only done units (others read as NaN) and complete layers. ``images`` may be
smaller than the model input (``--size``): :func:`as_model_input` shows them as the model saw them.

Reader API (all take a :class:`~volviz.store.store.Store` or a path)::

  preferred_layers(store)            -> [layer, ...] with complete results
  load_preferred(store, layer)       -> float32 (U, S, C, H, W) (NaN for units never optimized)
  best_preferred(store, layer)       -> float32 (U, C, H, W), per unit the seed that reached most
  preferred_info(store, layer)       -> PreferredInfo (activations, references, settings, search)
  thumbnails(store, layer, size=64)  -> uint8 (U, size, size, 3), for the network graph's atlas
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from volviz.errors import PreferredError  # noqa: F401  (re-exported)
from volviz.store.store import Store

__all__ = [
    "GROUP",
    "FORMAT",
    "PreferredError",
    "PreferredInfo",
    "preferred_layers",
    "preferred_info",
    "load_preferred",
    "best_preferred",
    "thumbnails",
    "as_model_input",
    "layer_state",
    "prepare_layer",
    "units_done",
    "pending_units",
    "write_units",
    "chunk_units_for",
    "finalize_layer",
]

GROUP = "preferred"
FORMAT = 2  # 2: done per unit (1: per chunk of units); both are read
#: images chunk of about this many bytes (uncompressed): a few units of 224 x 224 x 3 x seeds
CHUNK_BYTES = 8 << 20


def _store(store, mode: str = "r") -> Store:
    return store if isinstance(store, Store) else Store.open(os.fspath(store), mode)


def _group(store: Store, layer: str):
    return store.results(GROUP).group(layer)


def layer_state(store, layer: str) -> dict | None:
    """The attrs of ``preferred/<layer>`` (None when absent)."""
    g = _group(_store(store), layer)
    return None if g is None else g.attrs.asdict()


# ---- writing (run.py) ------------------------------------------------------------------------
def prepare_layer(
    store: Store,
    layer: str,
    *,
    meta: dict,
    n_units: int,
    n_seeds: int,
    image_shape: tuple[int, int, int],
    chunk_units: int,
    real_top: np.ndarray,
    real_top_image: np.ndarray,
    real_mean: np.ndarray,
    scale: np.ndarray,
    search=None,
    config: dict,
) -> object:
    """(Re)create ``preferred/<layer>`` with empty result arrays; ``prepared`` is set last."""
    g = store.results(GROUP).create(layer)
    chunk_units = max(1, min(int(chunk_units), int(n_units)))
    g.attrs.update(
        dict(
            meta,
            format=FORMAT,
            layer=layer,
            n_units=int(n_units),
            n_seeds=int(n_seeds),
            image_shape=list(image_shape),
            chunk_units=chunk_units,
            prepared=False,
            complete=False,
            units_done=0,
        )
    )
    g.create_array(
        "images",
        shape=(n_units, n_seeds, *image_shape),
        chunks=(chunk_units, n_seeds, *image_shape),
        dtype="float16",
        fill_value=np.nan,
    )
    for name in ("activation", "activation_init"):
        g.create_array(
            name, shape=(n_units, n_seeds), chunks=(chunk_units, n_seeds), dtype="float32", fill_value=np.nan
        )
    g.create_array("done", shape=(n_units,), chunks=(chunk_units,), dtype="bool", fill_value=False)
    for name, arr, dt in (
        ("real_top", real_top, "float32"),
        ("real_top_image", real_top_image, "int64"),
        ("real_mean", real_mean, "float32"),
        ("scale", scale, "float32"),
    ):
        a = g.create_array(name, shape=(n_units,), chunks=(n_units,), dtype=dt, fill_value=0)
        a[:] = np.asarray(arr).astype(dt)
    if search is not None:
        s = g.create_group("search")
        for name in ("score", "z", "hf", "beats_real"):
            a = s.create_array(
                name, shape=(len(search.configs),), chunks=(len(search.configs),), dtype="float64", fill_value=np.nan
            )
            a[:] = getattr(search, name)
        a = s.create_array(
            "units", shape=(len(search.units),), chunks=(len(search.units),), dtype="int64", fill_value=0
        )
        a[:] = search.units
        a = s.create_array(
            "unit_scores",
            shape=search.unit_scores.shape,
            chunks=search.unit_scores.shape,
            dtype="float64",
            fill_value=np.nan,
        )
        a[:] = search.unit_scores
        s.attrs.update(
            {
                "configs": [c.to_dict() for c in search.configs],
                "best": search.best,
                "steps": search.steps,
                "hf_weight": search.hf_weight,
            }
        )
    g.attrs.update({"config": config, "prepared": True})
    return g


def chunk_units_for(n_seeds: int, image_shape, limit: int) -> int:
    """Units per ``images`` chunk: about :data:`CHUNK_BYTES` of float16 images, at most ``limit``."""
    per_unit = 2 * int(n_seeds) * int(np.prod(image_shape))
    return int(max(1, min(int(limit), CHUNK_BYTES // max(per_unit, 1))))


def units_done(g) -> np.ndarray:
    """``bool (U,)``: which units' arrays are written (format 1 groups kept one flag per chunk)."""
    n = int(g.attrs["n_units"])
    done = np.asarray(g["done"][:], dtype=bool)
    if int(g.attrs.get("format", 1)) < 2:
        done = np.repeat(done, int(g.attrs["chunk_units"]))[:n]
    return done


def pending_units(g, units=None) -> np.ndarray:
    """The units of ``units`` (default all) whose results are not written yet, sorted."""
    want = np.arange(int(g.attrs["n_units"])) if units is None else np.asarray(units, dtype=np.int64)
    return np.sort(want[~units_done(g)[want]])


def _runs(units: np.ndarray):
    """``(start, stop, first, last)``: runs of consecutive unit indices and their positions."""
    breaks = np.flatnonzero(np.diff(units) != 1) + 1
    for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(units)]):
        yield int(units[a]), int(units[b - 1]) + 1, int(a), int(b)


def write_units(g, units, images: np.ndarray, activation: np.ndarray, activation_init: np.ndarray) -> None:
    """Arrays of ``units`` (sorted, ``images (k, S, C, H, W)``), then their done flags."""
    units = np.asarray(units, dtype=np.int64)
    if int(g.attrs.get("format", 1)) < 2:
        raise PreferredError(
            f"preferred/{g.attrs.get('layer')} was written by an older volviz; pass --overwrite to recompute it"
        )
    for u0, u1, a, b in _runs(units):
        g["images"][u0:u1] = images[a:b].astype(np.float16)
        g["activation"][u0:u1] = activation[a:b].astype(np.float32)
        g["activation_init"][u0:u1] = activation_init[a:b].astype(np.float32)
    for u0, u1, _, _ in _runs(units):
        g["done"][u0:u1] = True


def finalize_layer(g, summary: dict) -> None:
    g.attrs.update({"summary": summary, "complete": True, "units_done": int(units_done(g).sum())})


# ---- reading ---------------------------------------------------------------------------------
@dataclass
class PreferredInfo:
    layer: str
    objective: str
    n_units: int
    seeds: list[int]
    image_shape: tuple[int, int, int]
    activation: np.ndarray  # (U, S)
    activation_init: np.ndarray  # (U, S)
    real_top: np.ndarray  # (U,)
    real_top_image: np.ndarray  # (U,)
    real_mean: np.ndarray  # (U,)
    scale: np.ndarray  # (U,) real_top - real_mean
    config: dict
    settings: dict
    complete: bool
    summary: dict = field(default_factory=dict)
    search: dict | None = None  # {configs, best, steps, hf_weight, score, z, hf, beats_real, units, unit_scores}
    done: np.ndarray | None = None  # (U,) bool: units with results (all of them unless --units chose some)
    input_shape: tuple[int, int, int] | None = None  # the model's input (image_shape may be smaller)

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
        raise PreferredError(
            f"no preferred inputs for layer {layer!r} in {store.path}; run `volviz "
            f"optimize {store.path} --layers {layer}`" + (f" (layers with results: {', '.join(have)})" if have else "")
        )
    if not partial and not g.attrs.get("complete", False):
        raise PreferredError(
            f"preferred inputs of layer {layer!r} are incomplete (interrupted run); "
            f"resume with `volviz optimize {store.path} --layers {layer}`"
        )
    return g


def preferred_layers(store, complete_only: bool = True) -> list[str]:
    """Layers with preferred inputs (complete ones only, by default), in the model's layer order."""
    st = _store(store)
    names = [
        n
        for n, g in st.results(GROUP).layers().items()
        if g.attrs.get("prepared", False) and (g.attrs.get("complete", False) or not complete_only)
    ]
    order = {n: i for i, n in enumerate(st.layers)}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def preferred_info(store, layer: str, partial: bool = False) -> PreferredInfo:
    st = _store(store)
    g = _checked(st, layer, partial)
    at = g.attrs.asdict()
    search = None
    if "search" in g:
        s = g["search"]
        search = dict(
            s.attrs.asdict(),
            **{k: np.asarray(s[k][:]) for k in ("score", "z", "hf", "beats_real", "units", "unit_scores") if k in s},
        )
    done = units_done(g)
    act, act0 = np.asarray(g["activation"][:]), np.asarray(g["activation_init"][:])
    act[~done], act0[~done] = np.nan, np.nan
    return PreferredInfo(
        layer,
        at["objective"],
        at["n_units"],
        list(at["seeds"]),
        tuple(at["image_shape"]),
        act,
        act0,
        np.asarray(g["real_top"][:]),
        np.asarray(g["real_top_image"][:]),
        np.asarray(g["real_mean"][:]),
        np.asarray(g["scale"][:]),
        at.get("config", {}),
        at.get("settings", {}),
        bool(at.get("complete", False)),
        at.get("summary", {}),
        search,
        done,
        tuple(at.get("input_shape") or at["image_shape"]),
    )


def load_preferred(store, layer: str, partial: bool = False, units=None) -> np.ndarray:
    """float32 ``(units, seeds, C, H, W)`` pixel images (0..1 for images read from files), at the
    size they were optimized at (see :func:`as_model_input`).

    Units without results are NaN: those a ``--units`` run did not choose, and (``partial=True``,
    an interrupted layer) those not done yet. ``units``: read only these (``(k, S, C, H, W)``).
    """
    st = _store(store)
    g = _checked(st, layer, partial)
    done = units_done(g)
    if units is None:
        imgs = np.asarray(g["images"][:], dtype=np.float32)
    else:
        units = np.asarray(units, dtype=np.int64)
        imgs = np.asarray(g["images"].get_orthogonal_selection((units,)), dtype=np.float32)
        done = done[units]
    imgs[~done] = np.nan
    return imgs


def best_preferred(store, layer: str, partial: bool = False, units=None) -> np.ndarray:
    """float32 ``(units, C, H, W)``: per unit, the seed's image that reached the highest activation."""
    st = _store(store)
    imgs = load_preferred(st, layer, partial, units)
    best = preferred_info(st, layer, partial).best_seed
    if units is not None:
        best = best[np.asarray(units, dtype=np.int64)]
    return imgs[np.arange(imgs.shape[0]), best]


def as_model_input(images: np.ndarray, input_shape, max_px: int | None = None) -> np.ndarray:
    """Images optimized below the model's input size (``--size``) as the model saw them: bilinear
    upsampling to ``input_shape`` ``(C, H, W)`` (at most ``max_px`` on the longer side). Images
    already that size come back unchanged. ``images``: ``(..., C, h, w)``; NaN stays NaN."""
    import torch
    import torch.nn.functional as F

    a = np.asarray(images, dtype=np.float32)
    h, w = int(input_shape[-2]), int(input_shape[-1])
    if max_px is not None and max(h, w) > max_px:
        f = max_px / max(h, w)
        h, w = max(1, round(h * f)), max(1, round(w * f))
    if a.shape[-2:] == (h, w) or a.shape[-2] >= h:
        return a
    lead = a.shape[:-3]
    x = torch.from_numpy(np.ascontiguousarray(a.reshape(-1, *a.shape[-3:])))
    y = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return y.numpy().reshape(*lead, a.shape[-3], h, w)


def thumbnails(
    store, layer: str, size: int | None = 64, normalize: str = "per_unit", channels=None, partial: bool = False
) -> np.ndarray:
    """uint8 ``(units, h, w, 3)`` of :func:`best_preferred`, per-unit normalized (see display.py),
    enlarged by nearest neighbour to at least ``size`` pixels (an integer factor; None = as is).
    Images optimized below the model's input size are first shown as the model saw them
    (bilinear, up to ``max(size, 64)`` pixels). Units without results are mid grey."""
    from volviz.analysis.actmax.display import to_display, upscale

    st = _store(store)
    imgs = best_preferred(st, layer, partial)
    g = _group(st, layer)
    shape = g.attrs.get("input_shape")
    if shape is not None and tuple(shape[-2:]) != tuple(imgs.shape[-2:]):
        imgs = as_model_input(imgs, shape, max_px=max(int(size or 0), 64, max(imgs.shape[-2:])))
    rgb = to_display(imgs, normalize, channels)
    rgb = np.nan_to_num(rgb, nan=0.5)
    if size:
        rgb = upscale(rgb, max(1, -(-int(size) // max(rgb.shape[1:3]))))
    return np.round(rgb * 255).astype(np.uint8)
