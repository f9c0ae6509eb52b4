"""Which images the time slider walks: a filter over the image order, for stores of any size.

With 20,000 images a slider position is 1/20,000 of its length, so the slider alone cannot find
the misclassified 7s. The filter keeps, in the order chosen (:mod:`volviz.analysis.sequence`),
the images of one true class, one predicted class, the correct or the misclassified ones, those
whose top probability lies in a range, and those whose file name contains a text. Everything is
vectorised over columns the app already holds (label, pred, probs: a few bytes per image); the
file names are lower-cased into one numpy array only when a search first asks for them.

A search is a literal, case-insensitive substring (never a regular expression: a browser sends
it), at most :data:`MAX_SEARCH` characters; several words must all occur.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CORRECTNESS", "MAX_SEARCH", "ImageFilter", "FilterColumns", "filter_sequence", "position_in"]

CORRECTNESS = ("all", "correct", "wrong")
MAX_SEARCH = 64  # characters of a file-name search


@dataclass(frozen=True)
class ImageFilter:
    """What the slider keeps. ``-1`` / ``"all"`` / ``(0, 1)`` / ``""``: no condition."""

    true_class: int = -1
    pred_class: int = -1
    correct: str = "all"  # all | correct | wrong (unlabelled images are neither)
    prob: tuple[float, float] = (0.0, 1.0)  # top (predicted-class) probability, inclusive
    search: str = ""

    @property
    def active(self) -> bool:
        return self != ImageFilter(prob=self.prob) or tuple(self.prob) != (0.0, 1.0)

    def describe(self, class_name: Callable[[int], str] = str) -> str:
        """``true 7 · misclassified · p 0.00-0.50 · "003"``: the conditions, for the page."""
        parts = []
        if self.true_class >= 0:
            parts.append(f"true {class_name(self.true_class)}")
        if self.pred_class >= 0:
            parts.append(f"predicted {class_name(self.pred_class)}")
        if self.correct != "all":
            parts.append("correct" if self.correct == "correct" else "misclassified")
        if tuple(self.prob) != (0.0, 1.0):
            parts.append(f"p {self.prob[0]:.2f}-{self.prob[1]:.2f}")
        if self.search:
            parts.append(f'"{self.search}"')
        return " · ".join(parts)


class FilterColumns:
    """Per-image columns the filter reads: label (-1 unlabelled), predicted class, top
    probability, and the file names (``ids``: a sequence, or a function returning one, read on
    the first search only)."""

    def __init__(self, label: np.ndarray, pred: np.ndarray, probs: np.ndarray, ids: Sequence[str] | Callable):
        self.label = np.asarray(label, np.int64)
        self.pred = np.asarray(pred, np.int64)
        probs = np.asarray(probs)
        self.top = probs[np.arange(len(self.pred)), self.pred] if probs.size else np.zeros(len(self.pred))
        self._ids, self._lower = ids, None

    @classmethod
    def from_store(cls, store, columns: dict | None = None) -> FilterColumns:
        c = columns or {k: store.column(k) for k in ("probs", "label", "pred")}
        return cls(c["label"], c["pred"], c["probs"], lambda: store.images.ids)

    def __len__(self) -> int:
        return len(self.pred)

    def lower_ids(self) -> np.ndarray:
        if self._lower is None:
            ids = self._ids() if callable(self._ids) else self._ids
            self._lower = np.char.lower(np.asarray(list(ids), dtype=str))
        return self._lower

    def mask(self, f: ImageFilter) -> np.ndarray:
        """``(N,)`` bool: the images that pass ``f``."""
        keep = np.ones(len(self), bool)
        if f.true_class >= 0:
            keep &= self.label == f.true_class
        if f.pred_class >= 0:
            keep &= self.pred == f.pred_class
        if f.correct != "all":
            labelled = self.label >= 0
            keep &= labelled & ((self.label == self.pred) == (f.correct == "correct"))
        lo, hi = sorted(float(v) for v in f.prob)
        if (lo, hi) != (0.0, 1.0):
            keep &= (self.top >= lo) & (self.top <= hi)
        for word in f.search.lower().split()[:8]:
            keep &= np.char.find(self.lower_ids(), word[:MAX_SEARCH]) >= 0
        return keep


def filter_sequence(sequence: np.ndarray, columns: FilterColumns, f: ImageFilter) -> np.ndarray:
    """The images of ``sequence`` (store indices, in slider order) that pass ``f``, order kept."""
    sequence = np.asarray(sequence, np.intp)
    if not f.active or not len(sequence):
        return sequence
    return sequence[columns.mask(f)[sequence]]


def position_in(sequence: np.ndarray, image: int) -> int | None:
    """Slider position of store image ``image`` in ``sequence`` (None: not in it)."""
    hits = np.flatnonzero(np.asarray(sequence) == int(image))
    return int(hits[0]) if len(hits) else None
