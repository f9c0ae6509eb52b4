"""The dashboard movie ([Tamari2017] runs a predefined image set, e.g. the most probable 7s, into
a movie): one dashboard picture per image, as the Dashboard tab draws it. ``volviz movie --mode
dashboard`` and the tab's record button both come here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from volviz.app.dashboard_data import Choices, Dashboard

__all__ = ["dashboard_frames", "image_set", "write_dashboard_movie"]


def image_set(store, sort: str = "captured", cls: int | None = None, max_images: int | None = None) -> np.ndarray:
    """The images of the movie: with ``cls``, only the images of that class (true class; the
    predicted one where unlabelled), ordered by ``sort`` (``probability``: by the probability of
    ``cls``, highest first)."""
    from volviz.analysis.sequence import store_sequence
    from volviz.errors import UserError

    seq = store_sequence(store, sort, cls if sort == "probability" else None)
    if cls is not None:
        labels, pred = store.column("label"), store.column("pred")
        of = np.where(labels >= 0, labels, pred)
        seq = seq[of[seq] == cls]
        if not len(seq):
            raise UserError(f"no captured image of class {cls} in this store")
    return seq[:max_images]


def dashboard_frames(
    board: Dashboard, rows, choices: Choices, report: Callable[[int, int], None] | None = None
) -> Iterator[np.ndarray]:
    """One dashboard picture per stored image ``rows`` (``report(done, total)`` after each)."""
    from volviz.views.dashboard import compose

    rows = [int(i) for i in rows]
    for k, i in enumerate(rows, 1):
        yield compose(board.from_store(i, choices))
        if report is not None:
            report(k, len(rows))


def write_dashboard_movie(board: Dashboard, out, rows, choices: Choices | None = None, fps: float = 4.0):
    """Write the movie of stored images ``rows`` to ``out`` (.mp4 / .gif); returns its path."""
    from volviz.record import write_movie

    ch = choices or board.defaults()
    return write_movie(out, dashboard_frames(board, rows, ch), fps=fps, total=len(rows))
