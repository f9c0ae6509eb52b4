"""Finite-difference validation of backprop gradients ([Jain2016] §3.2.1, eq. 1), done correctly.

For sampled filters of each layer, every sampled weight ``w`` is perturbed in a float64 copy of
the model and the output neuron's score ``S`` is re-evaluated on the SAME input image:

    g_fd = (S(w + h) - S(w - h)) / ((w + h) - (w - h)),   h = eps^(1/3) * max(1, |w|)

(central differences; ``eps`` = float64 machine epsilon, so ``h`` ~ 6e-6 balances the O(h^2)
truncation error against the O(eps/h) rounding error; the denominator is the step actually
representable in float64). The weight is put back to its exact original value after each
weight, and the whole weight tensor is compared bit for bit with the original at the end.

Per filter, the relative error is ``||g_fd - g_bp|| / max(||g_fd||, ||g_bp||, floor)`` over the
sampled weights, where ``floor`` is the rounding noise of the difference quotient (a filter with
no gradient at all is not a failure). Piecewise-linear networks (ReLU, max pooling) have kinks:
where the central differences with steps ``h`` and ``h/2`` disagree (by more than 1e-6 relative
plus rounding noise; for a smooth function they differ by O(h^2), about 1e-11), or the two
one-sided differences disagree by more than 1 % (a kink at the weight itself), a kink lies within
the step, no derivative exists there, and the weight is counted in ``kinks`` and left out.

Compared against the FD values:

* ``rel_error``: float64 autograd on the same float64 model (validates the backward pass of every
  op in the model, e.g. a custom autograd Function);
* ``stored_rel_error``: the gradient volviz captured (float32 or float16 store, batched per-image
  path), when given (validates what the app shows).
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from volviz.analysis.importance import check_weighted_layers
from volviz.capture.engine import model_logits
from volviz.errors import AnalysisError, NotDifferentiableError

__all__ = ["GradCheckRow", "GradCheckReport", "check_gradients", "fd_step"]

EPS64 = float(np.finfo(np.float64).eps)


def fd_step(w: float) -> float:
    """Central-difference step for a float64 weight of value ``w``."""
    return EPS64 ** (1.0 / 3.0) * max(1.0, abs(w))


@dataclass
class GradCheckRow:
    image: int
    layer: str
    filter: int
    n_weights: int
    grad_norm: float  # ||g_bp|| over the sampled weights
    rel_error: float  # float64 backprop vs FD
    max_abs_error: float
    kinks: int
    stored_rel_error: float | None = None

    def passed(self, tol: float, store_tol: float) -> bool:
        ok = self.rel_error <= tol
        if self.stored_rel_error is not None:
            ok = ok and self.stored_rel_error <= store_tol
        return ok


@dataclass
class GradCheckReport:
    rows: list[GradCheckRow]
    tol: float
    store_tol: float
    step_rule: str = "h = eps^(1/3) * max(1, |w|), eps = 2.2e-16 (float64)"
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed(self.tol, self.store_tol) for r in self.rows)

    @property
    def worst(self) -> float:
        return max((r.rel_error for r in self.rows), default=0.0)

    @property
    def worst_stored(self) -> float | None:
        v = [r.stored_rel_error for r in self.rows if r.stored_rel_error is not None]
        return max(v) if v else None

    def table(self) -> str:
        has_store = any(r.stored_rel_error is not None for r in self.rows)
        head = (
            f"{'image':>5} {'layer':<14} {'filter':>6} {'weights':>7} {'||grad||':>11} {'rel.err f64':>12} "
            f"{'max abs err':>12} {'kinks':>5}"
        )
        if has_store:
            head += f" {'rel.err store':>13}"
        lines = [head + "  ok"]
        for r in self.rows:
            line = (
                f"{r.image:>5} {r.layer:<14} {r.filter:>6} {r.n_weights:>7} {r.grad_norm:>11.4g} "
                f"{r.rel_error:>12.3e} {r.max_abs_error:>12.3e} {r.kinks:>5}"
            )
            if has_store:
                line += f" {r.stored_rel_error:>13.3e}" if r.stored_rel_error is not None else f" {'-':>13}"
            lines.append(line + ("  yes" if r.passed(self.tol, self.store_tol) else "  NO"))
        summary = (
            f"worst relative error {self.worst:.3e} (float64 backprop vs central differences, tolerance {self.tol:g})"
        )
        if has_store:
            summary += f"; stored gradients {self.worst_stored:.3e} (tolerance {self.store_tol:g})"
        lines += ["", f"step: {self.step_rule}", summary, "PASSED" if self.passed else "FAILED"]
        lines += self.notes
        return "\n".join(lines)

    def to_csv(self) -> str:
        buf = io.StringIO()
        buf.write("image,layer,filter,n_weights,grad_norm,rel_error,max_abs_error,kinks,stored_rel_error,passed\n")
        for r in self.rows:
            s = "" if r.stored_rel_error is None else f"{r.stored_rel_error:.6e}"
            buf.write(
                f"{r.image},{r.layer},{r.filter},{r.n_weights},{r.grad_norm:.6e},{r.rel_error:.6e},"
                f"{r.max_abs_error:.6e},{r.kinks},{s},{r.passed(self.tol, self.store_tol)}\n"
            )
        return buf.getvalue()


def _score(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    return model_logits(model(x))[0, target]


def _central(model, x, target: int, flat_p: torch.Tensor, j: int, i: int, w0: float, h: float):
    """Central difference of the score w.r.t. weight (j, i) with step h, its rounding noise and
    the raw values (f+, f-, w+, w-); the weight is set back to exactly ``w0``."""
    flat_p[j, i] = w0 + h
    wp = float(flat_p[j, i])
    fp = float(_score(model, x, target))
    flat_p[j, i] = w0 - h
    wm = float(flat_p[j, i])
    fm = float(_score(model, x, target))
    flat_p[j, i] = w0  # exact original value
    step = wp - wm  # the step actually representable in float64
    return (fp - fm) / step, 4 * EPS64 * max(abs(fp), abs(fm), 1e-300) / step, (fp, fm, wp, wm)


def check_gradients(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    layers: list[str] | None = None,
    *,
    filters_per_layer: int = 4,
    weights_per_filter: int = 16,
    seed: int = 0,
    stored: dict[str, np.ndarray] | None = None,
    image: int = 0,
    tol: float = 1e-3,
    store_tol: float = 1e-3,
) -> GradCheckReport:
    """Compare backprop and central differences for one image ``x`` ``(1, C, H, W)`` (already
    preprocessed) and output neuron ``target``.

    Per layer, the filter with the largest gradient and ``filters_per_layer - 1`` random others
    (preferring filters whose gradient is not exactly zero) are checked, each on ``weights_per_filter``
    random weights (all when the filter has fewer).
    ``stored[layer]``: the captured gradient of the whole weight, compared too when given.
    ``model`` itself is never modified (a float64 deep copy is perturbed).
    """
    if x.dim() == 3:
        x = x[None]
    if x.shape[0] != 1:
        raise AnalysisError("check_gradients takes one image at a time")
    layers = check_weighted_layers(model, layers)
    try:
        m64 = copy.deepcopy(model).double().eval()
    except Exception as exc:  # TorchScript and friends
        raise AnalysisError(f"cannot make a float64 copy of the model ({exc})") from None
    x64 = x.detach().double()
    modules = dict(m64.named_modules())
    params = [modules[n].weight for n in layers]
    originals = [p.detach().clone() for p in params]
    score = _score(m64, x64, target)
    if not score.requires_grad:
        raise NotDifferentiableError("the model output has no gradient graph (no_grad/detach/integer ops in forward)")
    grads = torch.autograd.grad(score, params, allow_unused=True)
    for n, g in zip(layers, grads):
        if g is None:
            raise NotDifferentiableError(f"the output does not depend differentiably on layer {n!r}")
    rng = np.random.default_rng(seed)
    rows: list[GradCheckRow] = []
    with torch.no_grad():
        f0 = float(_score(m64, x64, target))
        for name, p, g in zip(layers, params, grads):
            flat_p = p.view(p.shape[0], -1)
            g = g.view(p.shape[0], -1)
            n_f = p.shape[0]
            norms = g.norm(dim=1)
            chosen = [int(norms.argmax())]
            # random others, those with a non-zero gradient first (a zero one checks little)
            perm = [j for j in rng.permutation(n_f).tolist() if j != chosen[0]]
            others = [j for j in perm if norms[j] > 0] + [j for j in perm if norms[j] == 0]
            chosen += others[: max(0, filters_per_layer - 1)]
            st = None if stored is None or name not in stored else np.asarray(stored[name], np.float64).reshape(n_f, -1)
            for j in chosen:
                k = flat_p.shape[1]
                idx = np.sort(rng.choice(k, size=min(k, weights_per_filter), replace=False))
                fd, bp, keep = [], [], []
                noise = 0.0
                kinks = 0
                for i in idx:
                    w0 = float(flat_p[j, i])
                    h = fd_step(w0)
                    d, rnd, (fp, fm, wp, wm) = _central(m64, x64, target, flat_p, j, i, w0, h)
                    d2, rnd2, _ = _central(m64, x64, target, flat_p, j, i, w0, h / 2)
                    noise = max(noise, rnd)
                    # smooth: D(h) - D(h/2) = O(h^2) ~ 1e-11 relative; a kink within [w-h, w+h]
                    # changes D(h) by about the jump of the slope (off-centre kinks), and the
                    # one-sided slopes disagree (a kink at w itself): no derivative, leave it out
                    d_plus, d_minus = (fp - f0) / (wp - w0), (f0 - fm) / (w0 - wm)
                    if (
                        abs(d - d2) > 1e-6 * max(abs(d), abs(d2)) + 100 * max(rnd, rnd2)
                        or abs(d_plus - d_minus) > 1e-2 * (abs(d_plus) + abs(d_minus)) + 100 * rnd
                    ):
                        kinks += 1
                        continue
                    fd.append(d)
                    bp.append(float(g[j, i]))
                    keep.append(int(i))
                fd_a, bp_a = np.asarray(fd), np.asarray(bp)
                floor = 10 * noise * np.sqrt(max(len(fd), 1))
                diff = fd_a - bp_a
                denom = max(np.linalg.norm(fd_a), np.linalg.norm(bp_a), floor, 1e-300)
                rel = float(np.linalg.norm(diff) / denom) if len(fd) else 0.0
                srel = None
                if st is not None:
                    s_a = st[j, keep]
                    sd = max(np.linalg.norm(fd_a), np.linalg.norm(s_a), floor, 1e-300)
                    srel = float(np.linalg.norm(fd_a - s_a) / sd) if len(fd) else 0.0
                rows.append(
                    GradCheckRow(
                        image,
                        name,
                        j,
                        len(fd),
                        float(np.linalg.norm(bp_a)),
                        rel,
                        float(np.abs(diff).max()) if len(fd) else 0.0,
                        kinks,
                        srel,
                    )
                )
    for name, p, o in zip(layers, params, originals):
        if not torch.equal(p, o):  # pragma: no cover - guards the "every perturbation undone" rule
            raise RuntimeError(f"finite differences left {name}.weight changed")
    notes = []
    if any(r.kinks for r in rows):
        notes.append(
            f"{sum(r.kinks for r in rows)} weight(s) skipped: the step crossed a kink "
            "(ReLU / max-pool switch), where the derivative does not exist"
        )
    return GradCheckReport(rows, tol, store_tol, notes=notes)
