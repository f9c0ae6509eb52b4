"""``volviz prune``'s results as one object: computed, written and read back the same way by the
command and by the app's Pruning tab [Jain2016, §3.2.3].

A report folder holds ``table.csv`` (the least / most important filters removed, per class and
layer), ``table.md`` (the same for people), ``sweep_<layer>.csv`` (the threshold sweep) and, drawn by
:func:`volviz.views.figures.write_prune_report`, ``sweep_<layer>.png``. Reading back uses the CSV
files only: Markdown is not parsed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import nn

from volviz.analysis.importance import class_index
from volviz.analysis.inputs import InputSet
from volviz.analysis.pruning import (
    PruneRow,
    SweepResult,
    least_most_table,
    sweep_thresholds,
    table_cells,
    table_csv,
    table_from_csv,
    table_markdown,
    threshold_sweep,
)
from volviz.analysis.report_io import list_inside, read_inside, safe_name, write_files
from volviz.errors import AnalysisError, ThresholdError

__all__ = ["PruneReport"]


@dataclass
class PruneReport:
    """The least / most table and the sweeps of some layers: what ``volviz prune`` writes and the
    app's Pruning tab shows. :meth:`write` leaves CSV and Markdown, :meth:`read` gets the report
    back from the CSV alone (the Markdown is for people); the PNGs are
    :func:`volviz.views.figures.write_prune_report`'s."""

    rows: list[PruneRow]
    sweeps: list[SweepResult]
    k: int
    n_images: int | None  # evaluation images (None: not in the files read)
    evaluated_on: str = "the store"  # or "--images"
    importance_from: str = "store"  # ImportanceResult.source: "store" | "model"

    @property
    def reference(self) -> str:
        """Whose importance ranked the sweeps' filters: "all" or a class name."""
        return self.sweeps[0].reference if self.sweeps else "all"

    @property
    def highlight(self) -> int | None:
        """The sweeps' reference class index (drawn in red), None when ranked over all images."""
        if self.reference == "all" or not self.sweeps:
            return None
        names = self.sweeps[0].class_names or []
        return names.index(self.reference) if self.reference in names else int(self.reference)

    @classmethod
    def compute(
        cls,
        model: nn.Module,
        inputs: InputSet,
        importance,
        layers: list[str],
        *,
        classes: list | None = None,
        k: int = 1,
        reference: str = "all",
        thresholds=None,
        steps: int = 50,
        zero_bias: bool = True,
        evaluated_on: str = "the store",
        progress: bool = True,
        on_step: Callable[[int, int], None] | None = None,
        dask=None,
        store=None,
    ) -> PruneReport:
        """Rank ``layers``' filters by ``importance`` (an ImportanceResult), prune them on ``inputs``.

        ``classes``: reference classes of the table (names or indices; default every class with
        images and an importance of its own); ``reference``: the sweep's ranking, "all" (mean over
        all images) or a class. Thresholds are checked before any pruning. ``on_step(done, total)``
        is called after every evaluation (raising in it stops the run). ``dask`` / ``store``:
        the evaluations on Dask workers that load ``store``'s model (``volviz prune --workers``)."""
        res, names = importance, importance.class_names
        K = res.n_classes
        rel = {n: res.class_relevance(n)[0] for n in layers}
        counts = np.bincount(inputs.labels[inputs.labels >= 0], minlength=K)
        if classes is None:
            classes = [c for c in range(K) if counts[c] > 0 and all(np.isfinite(rel[n][c]).all() for n in layers)]
        else:
            classes = [class_index(c, names, K) for c in classes]
        if reference == "all":
            ref_name, ranking = "all", {n: res.overall(n) for n in layers}
        else:
            r = class_index(reference, names, K)
            ref_name, ranking = res.class_name(r), {n: res.mean(n, r)[0] for n in layers}
        for n in layers if thresholds is not None else []:
            hi = float(np.max(ranking[n]))
            bad = [t for t in thresholds if not 0 <= t <= hi]
            if bad:
                raise ThresholdError(
                    f"threshold(s) {', '.join(f'{t:g}' for t in bad)} outside the range of "
                    f"{n}'s importance [0, {hi:.4g}]"
                )
        total = len(classes) * len(layers) + sum(
            len(thresholds) if thresholds is not None else len(sweep_thresholds(ranking[n], steps)) for n in layers
        )
        done = [0]

        def step():
            done[0] += 1
            if on_step is not None:
                on_step(done[0], total)

        rows = least_most_table(
            model,
            inputs,
            rel,
            classes,
            k=k,
            class_names=names,
            zero_bias=zero_bias,
            progress=progress,
            on_step=step,
            dask=dask,
            store=store,
        )
        sweeps = [
            threshold_sweep(
                model,
                inputs,
                n,
                ranking[n],
                thresholds=thresholds,
                steps=steps,
                n_classes=K,
                reference=ref_name,
                class_names=names,
                zero_bias=zero_bias,
                progress=progress,
                on_step=step,
                dask=dask,
                store=store,
            )
            for n in layers
        ]
        return cls(rows, sweeps, k, len(inputs), evaluated_on, res.source)

    # ---- text -----------------------------------------------------------------------------
    @property
    def text(self) -> str:
        """The sentence above the table: what the error rates are and where they come from."""
        n = f"{self.n_images} images" if self.n_images is not None else "the images"
        return (
            f"Error rate = misclassified / images of the class, over {n} ({self.evaluated_on}); filters "
            f"ranked by class-wise relevance ({self.importance_from}); k = {self.k}."
        )

    def markdown(self) -> str:
        return self.text + "\n\n" + table_markdown(self.rows)

    def cells(self) -> tuple[list[str], list[list[str]]]:
        return table_cells(self.rows)

    # ---- files ----------------------------------------------------------------------------
    def _run(self) -> dict:
        return {
            "evaluation_images": "" if self.n_images is None else self.n_images,
            "evaluated_on": self.evaluated_on,
            "importance_from": self.importance_from,
        }

    def write(self, folder) -> list[str]:
        """``table.csv``, ``table.md`` and ``sweep_<layer>.csv`` into ``folder``; their names."""
        files = {"table.csv": table_csv(self.rows, self._run()), "table.md": self.markdown()}
        files.update({f"sweep_{safe_name(s.layer)}.csv": s.to_csv() for s in self.sweeps})
        return write_files(folder, files)

    @classmethod
    def read(cls, folder) -> PruneReport:
        """The report a :meth:`write` left in ``folder``, from its CSV files only; files that lead
        out of the folder or are not regular files are refused."""
        sweeps = list_inside(folder, "sweep_*.csv")
        has_table = bool(list_inside(folder, "table.csv"))
        if not has_table and not sweeps:
            raise AnalysisError(f"{folder} holds no table.csv or sweep_*.csv: not a `volviz prune --out` folder")
        rows, run = table_from_csv(read_inside(folder, "table.csv")) if has_table else ([], {})
        read = [SweepResult.from_csv(read_inside(folder, n), n[len("sweep_") : -len(".csv")]) for n in sweeps]
        order = list(dict.fromkeys(r.layer for r in rows))  # the layers in the order they were pruned
        read.sort(key=lambda s: order.index(s.layer) if s.layer in order else len(order))
        n = run.get("evaluation_images", "")
        return cls(
            rows,
            read,
            rows[0].k if rows else 1,
            int(n) if n else None,
            run.get("evaluated_on", "the store"),
            run.get("importance_from", "store"),
        )
