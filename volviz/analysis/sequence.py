"""Orders of the captured images for the time slider and for movies (a time series of images)."""

from __future__ import annotations

import numpy as np

SORTS = ("captured", "probability", "class", "misclassified")


def image_sequence(
    done: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    pred: np.ndarray,
    by: str = "captured",
    cls: int | None = None,
) -> np.ndarray:
    """Indices of the captured images in the order to play them.

    captured: as captured; probability: by the probability of ``cls`` (default: each image's
    predicted class), highest first; class: by true class, then probability of it;
    misclassified: wrong predictions first (most confident mistakes first), then the rest.
    """
    if by not in SORTS:
        raise ValueError(f"unknown image order {by!r}; valid: {', '.join(SORTS)}")
    idx = np.flatnonzero(done)
    if by == "captured" or not len(idx):
        return idx
    p_pred = probs[idx, pred[idx]]
    if by == "probability":
        p = probs[idx, cls] if cls is not None else p_pred
        return idx[np.argsort(-p, kind="stable")]
    if by == "class":
        lab = labels[idx]
        p_true = np.where(lab >= 0, probs[idx, np.clip(lab, 0, None)], 0.0)
        return idx[np.lexsort((-p_true, lab))]
    wrong = (labels[idx] >= 0) & (labels[idx] != pred[idx])
    return idx[np.lexsort((-p_pred, ~wrong))]


def store_sequence(store, by: str = "captured", cls: int | None = None) -> np.ndarray:
    return image_sequence(store.done, store.column("probs"), store.column("label"), store.column("pred"), by, cls)
