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
from volviz.analysis.actmax.progress import UnitBar, project
from volviz.analysis.actmax.reference import (  # noqa: F401  (old paths)
    TOP_K_MEAN,
    RealStats,
    _base_images,
    logits_layer,
    real_statistics,
    real_values,
)
from volviz.analysis.actmax.search import high_frequency_fraction, random_search, sample_configs, search_units
from volviz.analysis.actmax.speed import fold_batchnorm
from volviz.analysis.actmax.units import parse_units
from volviz.store.store import Store

log = logging.getLogger("volviz.actmax")

__all__ = ["PreferredSettings", "run_preferred", "default_layers", "real_statistics", "build_problem", "prepare_model"]

CONV_OBJECTIVES = ("channel", "centre")
INITS = ("noise", "mean")


@dataclass
class PreferredSettings:
    """What ``volviz optimize`` computes. ``signature()`` (all but the last three fields) must match
    for a resume; batch size, device and precision may change between runs."""

    conv_objective: str = "channel"  # channel | centre (flat layers: neuron, or class for the logits)
    seeds: int = 3
    steps: int = 256
    search: int = 16  # random-search candidates per layer; 0 = use `config`
    search_units: int = 8
    search_steps: int | None = None  # default: steps
    hf_weight: float = 1.0
    param: str = "auto"  # auto (the search tries both) | pixel | fourier
    config: dict = field(default_factory=dict)  # fixed setting / the search's candidate 0
    init: str = "noise"  # noise (blurred Gaussian) | mean (class mean / top-9 mean)
    init_std: float = 0.1
    init_blur: float = 1.0
    size: tuple[int, int] | None = None  # optimize at (h, w) below the model input, upsampled for it
    batch_size: int = 0  # elements per batched run; 0: automatic (speed.auto_batch)
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
        for name in ("seeds", "steps", "search_units"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 0:
            raise ValueError(f"batch_size must be >= 1 (0: automatic), got {self.batch_size}")
        if self.size is not None:
            size = (int(self.size), int(self.size)) if np.ndim(self.size) == 0 else tuple(int(v) for v in self.size)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"size must be (h, w) >= 1, got {self.size}")
            self.size = size
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
        if d["size"] is None:  # as before --size existed: older results stay resumable
            d.pop("size")
        return json.loads(json.dumps(d))

    def batch_for(self, input_shape) -> int:
        """Elements per batched run: ``batch_size``, or automatic for the model's input size (the
        forward pass runs at the input size even when ``size`` is smaller)."""
        from volviz.analysis.actmax.speed import auto_batch

        return self.batch_size or auto_batch(input_shape, self.device)


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


def default_layers(store: Store) -> list[str]:
    """The store's captured conv and linear layers."""
    return [info.name for info in store.plan.layers if info.kind in ("conv", "linear")]


def build_problem(
    model, layer: str, settings: PreferredSettings, store: Store, stats: RealStats, logits: str | None
) -> Problem:
    """The optimization problem of one layer: unit kind, pixel range, colour matrix, the size the
    images are optimized at; batch norms upstream of the layer are folded (``speed.py``)."""
    shape, mean, std = _input_spec(store)
    probe = Problem(model, layer, "neuron", shape, mean, std, device=settings.device)
    out = probe.out_shape()
    kind = settings.conv_objective if len(out) == 3 else ("class" if layer == logits else "neuron")
    if len(out) not in (1, 3):
        raise R.PreferredError(f"layer {layer} has output shape {out}; preferred inputs need (C, H, W) or (N,) outputs")
    if settings.size is not None and (settings.size[0] > shape[1] or settings.size[1] > shape[2]):
        raise R.PreferredError(
            f"--size {settings.size[0]} {settings.size[1]} is larger than the model input "
            f"{shape[1]} x {shape[2]}; images are optimized at or below the input size"
        )
    folded, _ = fold_batchnorm(model, keep={layer})
    colour = colour_matrix(shape[0], stats.cov) if shape[0] > 1 else None
    return Problem(
        folded,
        layer,
        kind,
        shape,
        mean,
        std,
        centre=tuple(stats.centre.tolist()),
        lo=tuple(np.minimum(stats.lo, 0.0).tolist()),
        hi=tuple(np.maximum(stats.hi, 1.0).tolist()),
        colour=colour,
        device=settings.device,
        precision=settings.precision,
        image_size=settings.size,
    )


def _summary(
    info_act: np.ndarray,
    act_init: np.ndarray,
    top: np.ndarray,
    mean: np.ndarray,
    scale: np.ndarray,
    images_best: np.ndarray,
    seconds: float,
) -> dict:
    """Fidelity over the units with results (arrays already restricted to them)."""
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


@dataclass
class _Plan:
    layer: str
    problem: Problem
    units: np.ndarray  # the units asked for
    pending: np.ndarray  # of those, the ones without results yet
    group: object | None  # the existing preferred/<layer> group (same settings) or None


def _same(stored: dict | None, sig: dict) -> list[str]:
    """Names of the settings that differ (keys an older volviz did not write count as defaults)."""
    stored = dict(stored or {})
    defaults = PreferredSettings().signature()
    return sorted(k for k in set(sig) | set(stored) if stored.get(k, defaults.get(k)) != sig.get(k, defaults.get(k)))


def _unit_spec(units, layer: str):
    return units.get(layer) if isinstance(units, dict) else units


def run_preferred(
    store: Store | str | os.PathLike,
    layers: list[str] | None = None,
    settings: PreferredSettings | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    model: torch.nn.Module | None = None,
    trust: dict | None = None,
    units=None,
    report=None,
) -> dict[str, dict]:
    """Compute and store preferred inputs of ``layers`` (default: :func:`default_layers`).

    ``units``: which units (a spec for :func:`~volviz.analysis.actmax.units.parse_units`: ``"0:64"``,
    ``"3,7,285"``, class names; or ``{layer: spec}``); default all. Units that already have results
    with the same settings are kept, so a later call with more units extends a layer.
    ``report(text)``: where the projected time goes (default: printed above the progress bar when
    ``progress``; no projection without either). Returns ``{layer: summary}`` (``summary`` as in
    ``preferred/<layer>`` attrs; skipped layers report theirs with ``"skipped": True``).
    """
    settings = settings or PreferredSettings()
    st = store if isinstance(store, Store) else Store.open(os.fspath(store), "r+")
    model = load_store_model(st, settings.device, **(trust or {})) if model is None else model
    if layers is None:
        layers = default_layers(st)
    else:
        from volviz.capture.layers import select_layers

        layers = select_layers(model, layers)
    if report is None and progress:
        report = tqdm.write
    sig = settings.signature()
    shape, _, _ = _input_spec(st)
    seeds = list(range(settings.seeds))
    out: dict[str, dict] = {}
    stats = logits = None
    plans: list[_Plan] = []
    for layer in layers:
        state = R.layer_state(st, layer)
        g = None
        if state and state.get("prepared") and not overwrite:
            diff = _same(state.get("settings"), sig)
            if diff:
                raise R.PreferredError(
                    f"layer {layer} already has preferred inputs made with other settings ({', '.join(diff)} "
                    f"differ); pass --overwrite to replace them"
                )
            g = R._group(st, layer)
        if g is not None:  # units asked for that have no results yet (none: the layer is skipped)
            sel = parse_units(
                _unit_spec(units, layer),
                int(state["n_units"]),
                layer=layer,
                class_names=st.class_names if state.get("objective") == "class" else None,
            )
            pending = R.pending_units(g, sel)
            if not len(pending) and state.get("complete"):
                out[layer] = dict(state.get("summary", {}), skipped=True)
                continue
        if stats is None:
            stats, logits = real_statistics(st), logits_layer(model, shape, settings.device)
        problem = build_problem(model, layer, settings, st, stats, logits)
        if g is None:
            sel = parse_units(
                _unit_spec(units, layer),
                problem.out_shape()[0],
                layer=layer,
                class_names=st.class_names if problem.kind == "class" else None,
            )
            pending = sel
        if g is not None and int(g.attrs.get("format", 1)) < 2:
            raise R.PreferredError(
                f"layer {layer} holds an interrupted run of an older volviz; pass --overwrite to recompute it"
            )
        plans.append(_Plan(layer, problem, sel, pending, g))
    if report is not None and plans:
        project(plans, settings, shape, report)
    bar = UnitBar(sum(len(p.pending) for p in plans), progress)
    try:
        for plan in plans:
            out[plan.layer] = _run_layer(st, plan, settings, stats, seeds, bar, shape, overwrite)
    finally:
        bar.close()
    return {n: out[n] for n in layers}


def _run_layer(
    st: Store, plan: _Plan, settings: PreferredSettings, stats: RealStats, seeds: list[int], bar, shape, overwrite: bool
) -> dict:
    t0 = time.perf_counter()
    layer, problem = plan.layer, plan.problem
    n_units = problem.out_shape()[0]
    bar.set_description(f"optimize {layer}")
    g = plan.group
    if g is None:
        g = _prepare(st, layer, problem, n_units, settings, stats, seeds, bar, plan.units)
    g.attrs["complete"] = False
    cfg = Config.from_dict(g.attrs["config"])
    scale = np.asarray(g["scale"][:])
    per_run = max(1, settings.batch_for(shape) // len(seeds))
    values = idx = None
    if settings.init == "mean":
        values, idx = real_values(problem, st)
    for first in range(0, len(plan.pending), per_run):
        chunk = plan.pending[first : first + per_run]
        units = np.repeat(chunk, len(seeds))
        base = (
            None
            if values is None
            else np.repeat(_base_images(problem, stats, values, idx, st, chunk), len(seeds), axis=0)
        )
        res = optimize_batch(
            problem,
            units,
            np.tile(seeds, len(chunk)),
            cfg,
            settings.steps,
            scale=scale[units],
            base=base,
            init_std=settings.init_std,
            init_blur=settings.init_blur,
            callback=bar.stepper(len(chunk), settings.steps),
        )
        s = len(seeds)
        R.write_units(
            g,
            chunk,
            res.images.reshape(len(chunk), s, *res.images.shape[1:]),
            res.activation.reshape(-1, s),
            res.activation_init.reshape(-1, s),
        )
        bar.finish_batch()
    done = R.units_done(g)
    act = np.asarray(g["activation"][:])[done]
    act0 = np.asarray(g["activation_init"][:])[done]
    imgs = np.asarray(g["images"].get_orthogonal_selection((np.flatnonzero(done),)), dtype=np.float32)
    best = imgs[np.arange(len(imgs)), np.nanargmax(act, 1)]
    summary = _summary(
        act,
        act0,
        np.asarray(g["real_top"][:])[done],
        np.asarray(g["real_mean"][:])[done],
        scale[done],
        best,
        time.perf_counter() - t0,
    )
    summary["objective"] = problem.kind
    if done.sum() < n_units:
        summary["of_units"] = int(n_units)
    R.finalize_layer(g, summary)
    return summary


def _prepare(
    st: Store,
    layer: str,
    problem: Problem,
    n_units: int,
    settings: PreferredSettings,
    stats: RealStats,
    seeds: list[int],
    bar,
    selected: np.ndarray,
) -> object:
    values, idx = real_values(problem, st)
    top, mean = values.max(0), values.mean(0)
    spread = top - mean
    scale = np.where(spread > 1e-6 * np.maximum(1.0, np.abs(top)), spread, 1.0)
    top_image = idx[values.argmax(0)]
    base_cfg = settings.base_config()
    search = None
    cfg = base_cfg
    batch = settings.batch_for(problem.input_shape)
    if settings.search > 0:
        bar.set_description(f"optimize {layer} (search)")
        params = PARAM_KINDS if settings.param == "auto" else (settings.param,)
        rng = np.random.default_rng([zlib.crc32(layer.encode()), 0])
        configs = sample_configs(settings.search, rng, problem.opt_shape[1:], params, base_cfg)
        sub = selected[search_units(len(selected), settings.search_units)]
        base = _base_images(problem, stats, values, idx, st, sub) if settings.init == "mean" else None
        steps = settings.search_steps or settings.steps
        n_batches = sum(
            -(-(len(sub) * sum(c.param == k for c in configs)) // batch) for k in {c.param for c in configs}
        )
        search = random_search(
            problem,
            sub,
            configs,
            steps,
            offset=mean[sub],
            scale=scale[sub],
            top=top[sub],
            hf_weight=settings.hf_weight,
            batch_size=batch,
            base=base,
            init_std=settings.init_std,
            init_blur=settings.init_blur,
            callback=bar.search_steps(n_batches * steps),
        )
        cfg = search.best_config
        log.info("layer %s search:\n%s", layer, search.table())
        bar.bar.set_postfix_str("")
        bar.set_description(f"optimize {layer}")
    chunk = R.chunk_units_for(len(seeds), problem.opt_shape, max(1, batch // len(seeds)))
    meta = {
        "objective": problem.kind,
        "seeds": seeds,
        "steps": settings.steps,
        "settings": settings.signature(),
        "model": st.plan.model.spec,
        "input_shape": list(problem.input_shape),
        "search_units": None if search is None else search.units.tolist(),
    }
    return R.prepare_layer(
        st,
        layer,
        meta=meta,
        n_units=n_units,
        n_seeds=len(seeds),
        image_shape=problem.opt_shape,
        chunk_units=chunk,
        real_top=top,
        real_top_image=top_image,
        real_mean=mean,
        scale=scale,
        search=search,
        config=cfg.to_dict(),
    )
