"""Preferred inputs for whole layers of a store's model, written into the store, resumable.

Per layer: (1) run the store's real images through the model up to the layer to get every unit's
top real activation (the reference and the normalization ``scale``); (2) optionally a random search
of the regularization on a few units (``search.py``); (3) every unit x every seed, ``batch_size``
elements per batched run, each run written as one chunk (``results.py``). A killed run resumes at
the first chunk not done; since every element's random numbers depend only on its (seed, unit),
the resumed result equals an uninterrupted one. A layer already complete with the same settings is
skipped.
"""
from __future__ import annotations

import json
import logging
import os
import time
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from volviz.analysis.actmax import results as R
from volviz.analysis.actmax.optimize import PRECISIONS, Config, Problem, optimize_batch
from volviz.analysis.actmax.param import PARAM_KINDS, colour_matrix
from volviz.analysis.actmax.search import high_frequency_fraction, random_search, sample_configs, search_units
from volviz.store.store import Store

log = logging.getLogger("volviz.actmax")

__all__ = ["PreferredSettings", "run_preferred", "default_layers", "real_statistics", "build_problem",
           "prepare_model"]

CONV_OBJECTIVES = ("channel", "centre")
INITS = ("noise", "mean")
TOP_K_MEAN = 9  # init=mean for a non-class unit: mean of its top-9 real images


@dataclass
class PreferredSettings:
    """What ``volviz optimize`` computes. ``signature()`` (all but the last three fields) must match
    for a resume; batch size, device and precision may change between runs."""

    conv_objective: str = "channel"   # channel | centre (flat layers: neuron, or class for the logits)
    seeds: int = 3
    steps: int = 256
    search: int = 16                  # random-search candidates per layer; 0 = use `config`
    search_units: int = 8
    search_steps: int | None = None   # default: steps
    hf_weight: float = 1.0
    param: str = "auto"               # auto (the search tries both) | pixel | fourier
    config: dict = field(default_factory=dict)  # fixed setting / the search's candidate 0
    init: str = "noise"               # noise (blurred Gaussian) | mean (class mean / top-9 mean)
    init_std: float = 0.1
    init_blur: float = 1.0
    batch_size: int = 512
    device: str = "cpu"
    precision: str = "fp32"

    def __post_init__(self):
        if self.conv_objective not in CONV_OBJECTIVES:
            raise ValueError(f"conv objective must be one of {', '.join(CONV_OBJECTIVES)}, got {self.conv_objective!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.param not in ("auto",) + PARAM_KINDS:
            raise ValueError(f"param must be auto, pixel or fourier, got {self.param!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("seeds", "steps", "batch_size", "search_units"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.search < 0:
            raise ValueError(f"search must be >= 0, got {self.search}")
        self.base_config()  # validates `config`

    def base_config(self) -> Config:
        cfg = Config.from_dict(self.config)
        if self.param != "auto":
            cfg = cfg.replace(param=self.param)
        return cfg

    def signature(self) -> dict:
        d = asdict(self)
        for k in ("batch_size", "device", "precision"):
            d.pop(k)
        return json.loads(json.dumps(d))


# ---- the store's model and real images --------------------------------------------------------
def load_store_model(store: Store, device: str = "cpu", **trust):
    """The store's model ready for optimization; ``trust`` holds the command's --trust-* flags."""
    return prepare_model(store.model(**trust).module, device)


def prepare_model(model: torch.nn.Module, device: str = "cpu") -> torch.nn.Module:
    """eval mode, on ``device``, channels-last weights (about 2x faster convs on the CPU too), no
    weight gradients (only the image's are needed)."""
    model = model.eval().to(device)
    if not isinstance(model, torch.jit.ScriptModule):
        model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _input_spec(store: Store) -> tuple[tuple[int, int, int], tuple | None, tuple | None]:
    p = store.preprocess
    return store.input_shape, (tuple(p.mean) if p.mean else None), (tuple(p.std) if p.std else None)


def _done_indices(store: Store) -> np.ndarray:
    idx = np.flatnonzero(store.done)
    if not len(idx):
        raise R.PreferredError(f"{store.path} holds no captured images; preferred inputs are compared "
                               "with the store's real images, so capture some first")
    return idx


def _iter_inputs(store: Store, idx: np.ndarray, batch: int = 256):
    for sel in store.iter_batches(batch, idx):
        yield sel, store.read_inputs(sel)


@dataclass
class RealStats:
    centre: np.ndarray        # (C,) mean pixel
    cov: np.ndarray           # (C, C) channel covariance (per pixel)
    lo: np.ndarray            # (C,)
    hi: np.ndarray
    class_means: dict         # class index -> (C, H, W)


def real_statistics(store: Store) -> RealStats:
    """One pass over the store's real images: mean pixel, channel covariance, class means."""
    idx = _done_indices(store)
    labels = store.column("label")[idx]
    preds = store.column("pred")[idx]
    cls = np.where(labels >= 0, labels, preds)
    n = 0
    s1 = s2 = None
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    lo = hi = None
    pos = 0
    for sel, x in _iter_inputs(store, idx):
        c = x.shape[1]
        flat = x.transpose(1, 0, 2, 3).reshape(c, -1).astype(np.float64)
        s1 = flat.sum(1) if s1 is None else s1 + flat.sum(1)
        s2 = flat @ flat.T if s2 is None else s2 + flat @ flat.T
        n += flat.shape[1]
        lo = flat.min(1) if lo is None else np.minimum(lo, flat.min(1))
        hi = flat.max(1) if hi is None else np.maximum(hi, flat.max(1))
        for k in np.unique(cls[pos:pos + len(sel)]):
            m = cls[pos:pos + len(sel)] == k
            sums[int(k)] = sums.get(int(k), 0) + x[m].sum(0)
            counts[int(k)] = counts.get(int(k), 0) + int(m.sum())
        pos += len(sel)
    mean = s1 / n
    cov = s2 / n - np.outer(mean, mean)
    return RealStats(mean.astype(np.float32), cov, lo, hi,
                     {k: (sums[k] / counts[k]).astype(np.float32) for k in sums})


def real_values(problem: Problem, store: Store, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Every unit's objective on every real image: ``(N, U)`` and the image indices ``(N,)``."""
    idx = _done_indices(store)
    out = []
    with torch.no_grad():
        for _, x in _iter_inputs(store, idx, batch):
            out.append(problem.values(torch.as_tensor(x, device=problem.device)).float().cpu().numpy())
    return np.concatenate(out), idx


def logits_layer(model: torch.nn.Module, input_shape, device: str = "cpu") -> str | None:
    """The module whose output IS the model's output (the class scores), if there is one."""
    from volviz.capture.layers import named_leaf_modules
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: seen.__setitem__(n, o))
             for n, m in named_leaf_modules(model).items()]
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
    for n, o in seen.items():
        if o is out:
            return n
    return None


def default_layers(store: Store) -> list[str]:
    """The store's captured conv and linear layers."""
    return [info.name for info in store.plan.layers if info.kind in ("conv", "linear")]


def build_problem(model, layer: str, settings: PreferredSettings, store: Store, stats: RealStats,
                  logits: str | None) -> Problem:
    shape, mean, std = _input_spec(store)
    probe = Problem(model, layer, "neuron", shape, mean, std, device=settings.device)
    out = probe.out_shape()
    kind = settings.conv_objective if len(out) == 3 else ("class" if layer == logits else "neuron")
    if len(out) not in (1, 3):
        raise R.PreferredError(f"layer {layer} has output shape {out}; preferred inputs need (C, H, W) "
                               "or (N,) outputs")
    colour = colour_matrix(shape[0], stats.cov) if shape[0] > 1 else None
    return Problem(model, layer, kind, shape, mean, std, centre=tuple(stats.centre.tolist()),
                   lo=tuple(np.minimum(stats.lo, 0.0).tolist()), hi=tuple(np.maximum(stats.hi, 1.0).tolist()),
                   colour=colour, device=settings.device, precision=settings.precision)


def _base_images(problem: Problem, stats: RealStats, values: np.ndarray, idx: np.ndarray,
                 store: Store) -> np.ndarray:
    """init=mean: class units start from their class's mean image, other units from the mean of
    their top-9 real images."""
    u = values.shape[1]
    if problem.kind == "class":
        overall = np.mean(list(stats.class_means.values()), axis=0)
        return np.stack([stats.class_means.get(k, overall) for k in range(u)])
    top = np.argsort(-values, axis=0)[:TOP_K_MEAN]  # (k, U) rows into idx
    need = np.unique(top)
    imgs = store.read_inputs(idx[need])
    pos = {int(j): i for i, j in enumerate(need)}
    return np.stack([imgs[[pos[int(j)] for j in top[:, k]]].mean(0) for k in range(u)])


def _summary(info_act: np.ndarray, act_init: np.ndarray, top: np.ndarray, mean: np.ndarray,
             scale: np.ndarray, images_best: np.ndarray, seconds: float) -> dict:
    best = np.nanmax(info_act, 1)
    return {
        "units": int(len(best)),
        "beats_real_fraction": float(np.mean(best > top)),
        # a tie counts here: the optimum may itself be a real image (a black crop for a unit that
        # prefers black); tolerance 1e-3 of the unit's scale
        "matches_real_fraction": float(np.mean(best >= top - 1e-3 * scale)),
        "all_seeds_beat_real_fraction": float(np.mean((info_act > top[:, None]).all(1))),
        "increased_fraction": float(np.mean(info_act > act_init)),
        "median_z": float(np.median((best - mean) / scale)),
        "mean_hf": float(high_frequency_fraction(images_best).mean()),
        "seconds": round(seconds, 3),
    }


def run_preferred(store: Store | str | os.PathLike, layers: list[str] | None = None,
                  settings: PreferredSettings | None = None, *, overwrite: bool = False,
                  progress: bool = True, model: torch.nn.Module | None = None,
                  trust: dict | None = None) -> dict[str, dict]:
    """Compute and store preferred inputs of ``layers`` (default: :func:`default_layers`).

    Returns ``{layer: summary}`` (``summary`` as in ``preferred/<layer>`` attrs; skipped layers
    report theirs with ``"skipped": True``).
    """
    settings = settings or PreferredSettings()
    st = store if isinstance(store, Store) else Store.open(os.fspath(store), "r+")
    model = load_store_model(st, settings.device, **(trust or {})) if model is None else model
    if layers is None:
        layers = default_layers(st)
    else:
        from volviz.capture.layers import select_layers
        layers = select_layers(model, layers)
    sig = settings.signature()
    todo = []
    out: dict[str, dict] = {}
    for layer in layers:
        state = R.layer_state(st, layer)
        if state and state.get("prepared") and not overwrite:
            if json.dumps(state.get("settings"), sort_keys=True) != json.dumps(sig, sort_keys=True):
                diff = sorted(k for k in set(sig) | set(state.get("settings") or {})
                              if (state.get("settings") or {}).get(k) != sig.get(k))
                raise R.PreferredError(
                    f"layer {layer} already has preferred inputs made with other settings ({', '.join(diff)} "
                    f"differ); pass --overwrite to replace them")
            if state.get("complete"):
                out[layer] = dict(state.get("summary", {}), skipped=True)
                continue
        todo.append(layer)
    if not todo:
        return {n: out[n] for n in layers}

    shape, _, _ = _input_spec(st)
    stats = real_statistics(st)
    logits = logits_layer(model, shape, settings.device)
    seeds = list(range(settings.seeds))
    total = 0
    plans = []
    for layer in todo:
        problem = build_problem(model, layer, settings, st, stats, logits)
        plans.append((layer, problem, problem.out_shape()[0]))
        total += plans[-1][2]
    bar = tqdm(total=total, desc="optimize", unit="unit", disable=not progress)
    try:
        for layer, problem, n_units in plans:
            t0 = time.perf_counter()
            bar.set_description(f"optimize {layer}")
            g = R._group(st, layer)
            if g is None or overwrite or not g.attrs.get("prepared", False):
                g = _prepare(st, layer, problem, n_units, settings, stats, seeds, bar)
            else:  # resuming: count the chunks already done
                done = [R.chunk_units_range(g, int(i)) for i in np.flatnonzero(np.asarray(g["done"][:]))]
                bar.update(sum(b - a for a, b in done))
            cfg = Config.from_dict(g.attrs["config"])
            scale = np.asarray(g["scale"][:])
            base = None
            if settings.init == "mean":
                values, idx = real_values(problem, st)
                base = _base_images(problem, stats, values, idx, st)
            for i in R.pending_chunks(g):
                first, last = R.chunk_units_range(g, i)
                units = np.repeat(np.arange(first, last), len(seeds))
                res = optimize_batch(problem, units, np.tile(seeds, last - first), cfg, settings.steps,
                                     scale=scale[units], base=None if base is None else base[units],
                                     init_std=settings.init_std, init_blur=settings.init_blur)
                s = len(seeds)
                R.write_chunk(g, i, res.images.reshape(last - first, s, *res.images.shape[1:]),
                              res.activation.reshape(-1, s), res.activation_init.reshape(-1, s))
                bar.update(last - first)
            act = np.asarray(g["activation"][:])
            act0 = np.asarray(g["activation_init"][:])
            imgs = np.asarray(g["images"][:], dtype=np.float32)
            best = imgs[np.arange(n_units), np.nanargmax(act, 1)]
            summary = _summary(act, act0, np.asarray(g["real_top"][:]), np.asarray(g["real_mean"][:]),
                               scale, best, time.perf_counter() - t0)
            summary["objective"] = problem.kind
            R.finalize_layer(g, summary)
            out[layer] = summary
    finally:
        bar.close()
    return {n: out[n] for n in layers}


def _prepare(st: Store, layer: str, problem: Problem, n_units: int, settings: PreferredSettings,
             stats: RealStats, seeds: list[int], bar) -> object:
    values, idx = real_values(problem, st)
    top, mean = values.max(0), values.mean(0)
    spread = top - mean
    scale = np.where(spread > 1e-6 * np.maximum(1.0, np.abs(top)), spread, 1.0)
    top_image = idx[values.argmax(0)]
    base_cfg = settings.base_config()
    search = None
    cfg = base_cfg
    if settings.search > 0:
        bar.set_description(f"optimize {layer} (search)")
        params = PARAM_KINDS if settings.param == "auto" else (settings.param,)
        rng = np.random.default_rng([zlib.crc32(layer.encode()), 0])
        configs = sample_configs(settings.search, rng, problem.input_shape[1:], params, base_cfg)
        sub = search_units(n_units, settings.search_units)
        base = _base_images(problem, stats, values, idx, st)[sub] if settings.init == "mean" else None
        search = random_search(problem, sub, configs, settings.search_steps or settings.steps,
                               offset=mean[sub], scale=scale[sub], top=top[sub], hf_weight=settings.hf_weight,
                               batch_size=settings.batch_size, base=base, init_std=settings.init_std,
                               init_blur=settings.init_blur)
        cfg = search.best_config
        log.info("layer %s search:\n%s", layer, search.table())
        bar.set_description(f"optimize {layer}")
    chunk = max(1, settings.batch_size // len(seeds))
    meta = {"objective": problem.kind, "seeds": seeds, "steps": settings.steps,
            "settings": settings.signature(), "model": st.plan.model.spec,
            "search_units": None if search is None else search.units.tolist()}
    return R.prepare_layer(st, layer, meta=meta, n_units=n_units, n_seeds=len(seeds),
                           image_shape=problem.input_shape, chunk_units=chunk, real_top=top,
                           real_top_image=top_image, real_mean=mean, scale=scale, search=search,
                           config=cfg.to_dict())
