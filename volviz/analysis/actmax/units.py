"""Which units of a layer to optimize: ``--units 0:64``, ``--units 3,7,285``, ``--units tabby,goldfish``.

A spec is one string or a list of strings (the command line's words); every word is split at
commas, and every piece is one of

* an index, ``7`` (negative counts from the end: ``-1`` is the last unit);
* a range ``a:b`` (``b`` excluded, as in Python; either end may be left out: ``:64``, ``900:``)
  or ``a:b:step``;
* a class name (only for the layer whose output is the model's class scores), matched exactly,
  else ignoring case (``Cardigan`` and ``cardigan`` are two ImageNet classes; ``CARDIGAN`` selects
  both).

The result is sorted and without repeats. Anything that selects no unit, an index out of range,
or an unknown name raises :class:`~volviz.errors.PreferredError` naming the layer (the CLI prints
it as one line).
"""

from __future__ import annotations

import difflib
import re

import numpy as np

from volviz.errors import PreferredError

__all__ = ["parse_units", "split_spec"]

_INT = re.compile(r"^[+-]?\d+$")
_RANGE = re.compile(r"^([+-]?\d*):([+-]?\d*)(?::([+-]?\d+))?$")


def split_spec(spec) -> list[str]:
    """The pieces of a spec: words split at commas, blanks dropped."""
    if spec is None:
        return []
    words = [spec] if isinstance(spec, str) else list(spec)
    out = []
    for w in words:
        out += [p.strip() for p in str(w).split(",") if p.strip()]
    return out


def _names(piece: str, class_names: list[str]) -> list[int]:
    exact = [i for i, n in enumerate(class_names) if n == piece]
    if exact:
        return exact
    folded = piece.casefold()
    return [i for i, n in enumerate(class_names) if n.casefold() == folded]


def parse_units(spec, n_units: int, *, layer: str = "", class_names: list[str] | None = None) -> np.ndarray:
    """Unit indices ``int64 (k,)`` (sorted, unique) of a layer with ``n_units`` units.

    ``class_names``: the model's class names when the layer produces the class scores (names are
    refused otherwise). ``spec=None`` selects every unit.

    >>> parse_units("0:3,7", 10).tolist(), parse_units(["-1", "2:9:3"], 10).tolist()
    ([0, 1, 2, 7], [2, 5, 8, 9])
    >>> parse_units("goldfish", 3, class_names=["tench", "goldfish", "shark"]).tolist()
    [1]
    """
    where = f" of layer {layer}" if layer else ""
    if spec is None:
        return np.arange(n_units, dtype=np.int64)
    pieces = split_spec(spec)
    if not pieces:
        raise PreferredError("--units is empty; give indices (3,7), ranges (0:64) or class names")
    picked: list[int] = []
    for piece in pieces:
        if _INT.match(piece):
            i = int(piece)
            if not -n_units <= i < n_units:
                raise PreferredError(f"unit {i} out of range{where}: it has {n_units} units (0..{n_units - 1})")
            picked.append(i % n_units)
            continue
        m = _RANGE.match(piece)
        if m:
            a, b, step = (int(g) if g not in (None, "", "+", "-") else None for g in m.groups())
            if step == 0:
                raise PreferredError(f"--units {piece}: the step of a range cannot be 0")
            got = list(range(n_units))[slice(a, b, step)]
            if not got:
                raise PreferredError(f"--units {piece} selects no unit{where} ({n_units} units)")
            picked += got
            continue
        if not class_names:
            raise PreferredError(
                f"--units {piece!r} is not an index or a range, and{where or ' this layer'} has no class "
                "names (names select class units of the model's output layer)"
            )
        hits = _names(piece, class_names)
        if not hits:
            close = difflib.get_close_matches(piece, class_names, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise PreferredError(f"no class named {piece!r}{where}{hint}")
        picked += [h for h in hits if h < n_units]
    return np.unique(np.asarray(picked, dtype=np.int64))
