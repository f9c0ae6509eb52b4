"""Preferred inputs (activation maximization) for every unit of a layer, batched.

Unlike the rest of ``volviz.analysis`` this subpackage uses torch: it runs the model. It never
imports views. One concept per module, in the shape of lucent's optvis:

=================  ==============================================================================
``param``          how an image is parameterized: pixels, or a decorrelated Fourier spectrum
``objectives``     what is maximized (conv channel mean / centre, linear neuron, class score) and
                   the penalties (L1, total variation); the truncated forward pass
``transforms``     jitter, Gaussian blur, start noise, per-element random generators
``optimize``       the batched loop: one unit (and seed, and setting) per batch element
``search``         random search of the regularization per layer over a documented score
``results``        the store layout ``preferred/<layer>/`` and the reader API
``units``          which units: ``--units 0:64,3,7`` or class names
``reference``      the store's real images as the reference (top / mean activation, mean pixel)
``speed``          batch-norm folding, the CPU batch size, the timed first step
``progress``       the projected time and the per-unit progress bar
``run``            whole layers of a store's model into the store, resumable
``display``        preferred images -> RGB tiles (per-unit normalization, channel mapping)
=================  ==============================================================================

Readers (for the graph's thumbnails and the app): :func:`load_preferred`, :func:`best_preferred`,
:func:`thumbnails`, :func:`preferred_info`, :func:`preferred_layers`. See docs/preferred-inputs.md.
"""

from volviz.analysis.actmax.optimize import BatchResult, Config, Problem, optimize_batch, optimize_units
from volviz.analysis.actmax.results import (
    PreferredError,
    PreferredInfo,
    as_model_input,
    best_preferred,
    load_preferred,
    preferred_info,
    preferred_layers,
    thumbnails,
)
from volviz.analysis.actmax.run import PreferredSettings, run_preferred
from volviz.analysis.actmax.search import SearchResult, random_search
from volviz.analysis.actmax.units import parse_units

__all__ = [
    "BatchResult",
    "Config",
    "Problem",
    "optimize_batch",
    "optimize_units",
    "PreferredError",
    "PreferredInfo",
    "best_preferred",
    "load_preferred",
    "preferred_info",
    "preferred_layers",
    "thumbnails",
    "as_model_input",
    "PreferredSettings",
    "run_preferred",
    "SearchResult",
    "random_search",
    "parse_units",
]
