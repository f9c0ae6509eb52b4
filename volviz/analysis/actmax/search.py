"""Random search of the regularization per layer (Bergstra & Bengio 2012, as in [PreferredInputs2016]).

The score of a setting, for a layer (documented in ``docs/preferred-inputs.md``)::

    z_u   = (a_u - mean_u) / (top_u - mean_u)
    score = mean_u slog(z_u)  -  hf_weight * mean_u HF(x_u),      slog(z) = sign(z) log(1 + |z|)

over a fixed subset of the layer's units, one seed each, where ``a_u`` is the activation the final
image reaches and ``mean_u`` / ``top_u`` the unit's mean and top activation over the real images in
the store: ``z = 0`` is an average real image, ``z = 1`` the best one, ``z > 1`` beats every real
image. ``HF(x)`` is the fraction of the image's (mean-removed) spectral energy above half the
Nyquist frequency: about 0.80 for white noise, near 0 for smooth images. The log makes gains far
above the real images' top count less and less, so the search cannot buy a little more activation
with a lot of pixel noise; ``hf_weight = 1`` by default. ``slog`` is monotone everywhere, so a
setting still wins by raising a unit that stays below its real images.

Every candidate setting is evaluated on the same units with the same seeds (common random numbers,
so differences come from the settings, not from the noise), and all candidates run together, one
(setting, unit) pair per batch element: ``n_configs x n_units`` elements in one or a few batched
runs (one group per parameterization). Candidate 0 is always the default :class:`Config`. With
16 candidates scored on a few units, the top score is biased upward by noise (the winner's curse),
so a candidate replaces the default only when it beats it *significantly*: its mean paired score
difference over the evaluated units exceeds twice that difference's standard error. Among those,
the highest score wins; when none qualifies, the default is kept (and the table says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from volviz.analysis.actmax.optimize import Config, Problem, optimize_batch
from volviz.analysis.actmax.param import PARAM_KINDS

__all__ = [
    "SearchResult",
    "high_frequency_fraction",
    "slog",
    "score_images",
    "sample_configs",
    "random_search",
    "search_units",
]


def high_frequency_fraction(images: np.ndarray, cutoff: float = 0.25) -> np.ndarray:
    """``(B,)`` fraction of each image's spectral energy at radial frequency > ``cutoff`` cycles per
    pixel (0.25 = half Nyquist), channel means removed; 0 for a constant image."""
    x = np.asarray(images, dtype=np.float64)
    x = x - x.mean(axis=(-2, -1), keepdims=True)
    h, w = x.shape[-2:]
    p = np.abs(np.fft.rfft2(x)) ** 2  # (B, C, H, W//2+1)
    weight = np.full(p.shape[-1], 2.0)
    weight[0] = 1.0
    if w % 2 == 0:
        weight[-1] = 1.0
    f = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2)
    total = (p * weight).sum(axis=(-3, -2, -1))
    high = (p * weight * (f > cutoff)).sum(axis=(-3, -2, -1))
    return np.where(total > 0, high / np.maximum(total, 1e-30), 0.0)


def slog(z):
    """Signed log: ``sign(z) * log(1 + |z|)``."""
    z = np.asarray(z, dtype=np.float64)
    return np.sign(z) * np.log1p(np.abs(z))


def score_images(
    activation: np.ndarray, offset: np.ndarray, scale: np.ndarray, images: np.ndarray, hf_weight: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-element ``(score, z, hf)``: ``z = (activation - offset) / scale`` (offset = the real
    images' mean, scale = top - mean) and ``score = slog(z) - hf_weight * hf``."""
    z = (np.asarray(activation, dtype=np.float64) - np.asarray(offset, dtype=np.float64)) / np.asarray(
        scale, dtype=np.float64
    )
    hf = high_frequency_fraction(images)
    return slog(z) - hf_weight * hf, z, hf


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_configs(
    n: int, rng: np.random.Generator, image_size: tuple[int, int], params=PARAM_KINDS, base: Config | None = None
) -> list[Config]:
    """``n`` settings: ``base`` (default :class:`Config`) first, then draws from the prior.

    Prior (independent): param uniform over ``params``; lr log-uniform [0.01, 0.3]; l2_decay 0 with
    probability 1/3, else log-uniform [1e-4, 3e-2]; l1 0 w.p. 1/2, else log-uniform [1e-3, 1]; tv
    0 w.p. 1/3, else log-uniform [1e-3, 1]; blur_every uniform over {0, 2, 4, 8, 16}; blur_sigma
    log-uniform [0.3, 1.5] pixels; jitter uniform over 0 .. max(1, round(min(H, W) / 16)) pixels
    (0-2 at 28 x 28, 0-8 at 128 x 128: shifts scale with the input, unlike lucent's fixed ones).
    """
    base = base or Config(param=params[0])
    if base.param not in params:
        base = base.replace(param=params[0])
    jmax = max(1, round(min(image_size) / 16))
    out = [base]
    while len(out) < n:
        out.append(
            Config(
                param=str(params[rng.integers(len(params))]),
                lr=_loguniform(rng, 0.01, 0.3),
                l2_decay=0.0 if rng.random() < 1 / 3 else _loguniform(rng, 1e-4, 3e-2),
                l1=0.0 if rng.random() < 1 / 2 else _loguniform(rng, 1e-3, 1.0),
                tv=0.0 if rng.random() < 1 / 3 else _loguniform(rng, 1e-3, 1.0),
                blur_every=int(rng.choice([0, 2, 4, 8, 16])),
                blur_sigma=_loguniform(rng, 0.3, 1.5),
                jitter=int(rng.integers(0, jmax + 1)),
                clip=base.clip,
            )
        )
    return out[:n]


def search_units(n_units: int, k: int) -> np.ndarray:
    """``k`` units spread evenly over the layer (all of them when ``k >= n_units``)."""
    if k >= n_units:
        return np.arange(n_units)
    return np.unique(np.linspace(0, n_units - 1, k).round().astype(np.int64))


@dataclass
class SearchResult:
    configs: list[Config]
    score: np.ndarray  # (N,) mean score over the evaluated units
    z: np.ndarray  # (N,) mean normalized activation (1 = the top real image)
    hf: np.ndarray  # (N,) mean high-frequency fraction
    beats_real: np.ndarray  # (N,) fraction of evaluated units whose image beat every real image
    units: np.ndarray  # the evaluated units
    steps: int
    hf_weight: float
    unit_scores: np.ndarray | None = None  # (N, k) score per candidate and evaluated unit

    def significant(self) -> np.ndarray:
        """(N,) True where candidate i beats candidate 0 by more than 2 paired standard errors."""
        if self.unit_scores is None or self.unit_scores.shape[1] < 2:
            return np.isfinite(self.score) & (self.score > self.score[0])
        d = self.unit_scores - self.unit_scores[:1]
        mean = np.nanmean(d, 1)
        se = np.nanstd(d, 1, ddof=1) / np.sqrt(np.isfinite(d).sum(1))
        return np.isfinite(mean) & (mean > 2 * se) & (mean > 0)

    @property
    def best(self) -> int:
        ok = self.significant()
        if not ok.any():
            return 0
        return int(np.argmax(np.where(ok, self.score, -np.inf)))

    @property
    def best_config(self) -> Config:
        return self.configs[self.best]

    def table(self, top: int = 5) -> str:
        order = np.argsort(-np.nan_to_num(self.score, nan=-np.inf))[:top]
        rows = [f"{'#':>3} {'score':>7} {'z':>7} {'HF':>5} {'beats':>5}  setting"]
        sig = self.significant()
        for i in order:
            c = self.configs[i]
            mark = "*" if i == self.best else ("+" if sig[i] else " ")
            rows.append(
                f"{mark}{i:>2} {self.score[i]:7.3f} {self.z[i]:7.2f} {self.hf[i]:5.2f} "
                f"{self.beats_real[i]:5.2f}  {c.param} lr={c.lr:.3g} l2={c.l2_decay:.2g} "
                f"l1={c.l1:.2g} tv={c.tv:.2g} blur={c.blur_sigma:.2g}/{c.blur_every} jit={c.jitter}"
            )
        rows.append("* chosen (+ significantly better than the default #0; without one, #0 is kept)")
        return "\n".join(rows)


def random_search(
    problem: Problem,
    units,
    configs: list[Config],
    steps: int,
    *,
    offset,
    scale,
    top=None,
    hf_weight: float = 1.0,
    seed: int = 0,
    batch_size: int = 512,
    base=None,
    **kw,
) -> SearchResult:
    """Evaluate every config on every unit in ``units`` (seed ``seed``), batched.

    ``offset``/``scale``/``top``/``base``: per evaluated unit: the real images' mean activation,
    top - mean, the top (for the ``beats_real`` column; default offset + scale), start images.
    """
    units = np.asarray(units, dtype=np.int64)
    offset = np.asarray(offset, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    top = offset + scale if top is None else np.asarray(top, dtype=np.float64)
    n, k = len(configs), len(units)
    score = np.full((n, k), np.nan)
    z, hf, beats = score.copy(), score.copy(), score.copy()
    # elements: (config i, unit j); grouped by parameterization, cut into batches
    for kind in sorted({c.param for c in configs}):
        idx = [i for i, c in enumerate(configs) if c.param == kind]
        pairs = [(i, j) for i in idx for j in range(k)]
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            ci = np.array([p[0] for p in chunk])
            uj = np.array([p[1] for p in chunk])
            res = optimize_batch(
                problem,
                units[uj],
                np.full(len(chunk), seed),
                [configs[i] for i in ci],
                steps,
                scale=scale[uj],
                base=None if base is None else np.asarray(base)[uj],
                **kw,
            )
            s, zz, h = score_images(res.activation, offset[uj], scale[uj], res.images, hf_weight)
            score[ci, uj], z[ci, uj], hf[ci, uj] = s, zz, h
            beats[ci, uj] = res.activation > top[uj]
    return SearchResult(configs, score.mean(1), z.mean(1), hf.mean(1), beats.mean(1), units, steps, hf_weight, score)
