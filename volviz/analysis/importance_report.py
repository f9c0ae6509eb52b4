"""The files of ``volviz importance``, written from an :class:`ImportanceResult` and read back.

One object for whoever writes or shows importance results, so the tables are defined once:
``per_image_<layer>.csv`` (index, image id, label, pred, target, f0..), ``class_<layer>.csv``
(class-wise relevance and image count per class), ``pairs_<layer>.csv`` (mean per (neuron, input
class) pair and the mean norm of the whole weight gradient) and ``summary.json`` (what the result
was computed from, most / least important filters per layer). Reading back uses only
``summary.json`` and the per-image tables; the grid PNGs are drawn by
:func:`volviz.views.figures.write_importance_report` from :meth:`ImportanceReport.panels`.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field

import numpy as np

from volviz.analysis.importance import ImportanceResult
from volviz.analysis.report_io import csv_text, read_inside, safe_name, write_files
from volviz.errors import AnalysisError, EmptyClassError

__all__ = ["ImportanceReport", "panels_for"]

_FIXED = ["index", "image", "label", "pred", "target"]


def panels_for(result: ImportanceResult, layer: str, classes: list[int] | None = None) -> list[tuple[str, np.ndarray]]:
    """Panels of a layer's importance grid: the class-wise relevance of every class that has
    images analysed w.r.t. its own neuron; when the gradients were taken w.r.t. ONE neuron r for
    all images (fixed target), one panel per input class: importance for r given class-c inputs
    (the "same class / different class" grids of [Jain2016])."""
    rel, counts = result.class_relevance(layer)
    wanted = list(range(result.n_classes)) if classes is None else list(classes)
    panels = [(f"class {result.class_name(r)} (n={counts[r]})", rel[r]) for r in wanted if counts[r] > 0]
    targets = np.unique(result.target)
    if len(targets) == 1 and len(panels) <= 1:
        r = int(targets[0])
        panels = []
        for c in wanted:
            sel = (result.target == r) & (result.label == c)
            if sel.any():
                panels.append(
                    (
                        f"neuron {result.class_name(r)}, input {result.class_name(c)} (n={int(sel.sum())})",
                        result.per_image[layer][sel].astype(np.float64).mean(0),
                    )
                )
    if not panels:
        raise EmptyClassError(f"no class has images analysed w.r.t. its own output neuron for {layer}")
    return panels


@dataclass
class ImportanceReport:
    """An importance result as the files of ``volviz importance --out``."""

    result: ImportanceResult
    store: str = ""  # the store it was computed for
    grids: dict[str, tuple[int, int]] = field(default_factory=dict)  # layer -> (rows, cols) of its PNG

    def panels(self, layer: str) -> list[tuple[str, np.ndarray]]:
        return panels_for(self.result, layer)

    # ---- tables ---------------------------------------------------------------------------
    def per_image_csv(self, layer: str) -> str:
        res = self.result
        imp = res._layer(layer)
        ids = res.image_ids
        return csv_text(
            _FIXED + [f"f{j}" for j in range(imp.shape[1])],
            (
                [
                    i,
                    ids[i] if i < len(ids) else str(i),
                    res.class_name(int(res.label[i])) if res.label[i] >= 0 else "",
                    res.class_name(int(res.pred[i])),
                    res.class_name(int(res.target[i])),
                ]
                + [f"{v:.6g}" for v in imp[i]]
                for i in range(res.n_images)
            ),
        )

    def class_csv(self, layer: str) -> str:
        res = self.result
        rel, counts = res.class_relevance(layer)
        return csv_text(
            ["class", "n_images"] + [f"f{j}" for j in range(rel.shape[1])],
            (
                [res.class_name(r), int(counts[r])]
                + (["" for _ in range(rel.shape[1])] if counts[r] == 0 else [f"{v:.6g}" for v in rel[r]])
                for r in range(res.n_classes)
            ),
        )

    def pairs_csv(self, layer: str) -> str:
        """Mean importance per (output neuron, input class) pair that has images, and the mean norm
        of the layer's whole weight gradient (``mean_grad_norm``)."""
        res = self.result
        imp, tot = res._layer(layer), res.total_norm(layer)
        rows = []
        for r in np.unique(res.target):
            for c in np.unique(res.label[res.target == r]):
                sel = (res.target == r) & (res.label == c)
                rows.append(
                    [
                        res.class_name(int(r)),
                        res.class_name(int(c)) if c >= 0 else "unlabelled",
                        int(sel.sum()),
                        f"{tot[sel].mean():.6g}",
                    ]
                    + [f"{v:.6g}" for v in imp[sel].astype(np.float64).mean(0)]
                )
        return csv_text(
            ["neuron", "input_class", "n_images", "mean_grad_norm"] + [f"f{j}" for j in range(imp.shape[1])], rows
        )

    def summary(self) -> dict:
        """``summary.json``: what was computed, and per layer the most / least important filters."""
        res = self.result
        out = {
            "store": self.store,
            "source": res.source,
            "n_images": res.n_images,
            "target": sorted(set(res.class_name(int(t)) for t in np.unique(res.target))),
            "class_names": res.class_names,
            "n_classes": res.n_classes,
            "layers": {},
        }
        for layer in res.layers:
            ov = res.overall(layer)
            d = {"filters": int(res.per_image[layer].shape[1])}
            if layer in self.grids:
                d["grid"] = [int(v) for v in self.grids[layer]]
            d.update(
                most_important=[int(j) for j in np.argsort(-ov)[:5]],
                least_important=[int(j) for j in np.argsort(ov)[:5]],
                zero_filters=int((ov == 0).sum()),
            )
            out["layers"][layer] = d
        return out

    # ---- files ----------------------------------------------------------------------------
    def files(self) -> dict[str, str]:
        files = {}
        for layer in self.result.layers:
            f = safe_name(layer)
            files[f"per_image_{f}.csv"] = self.per_image_csv(layer)
            files[f"class_{f}.csv"] = self.class_csv(layer)
            files[f"pairs_{f}.csv"] = self.pairs_csv(layer)
        files["summary.json"] = json.dumps(self.summary(), indent=1)
        return files

    def write(self, folder) -> list[str]:
        """The tables and ``summary.json`` into ``folder``; returns their names."""
        return write_files(folder, self.files())

    @classmethod
    def read(cls, folder) -> ImportanceReport:
        """The report a :meth:`write` left in ``folder`` (values as written: 6 significant digits)."""
        try:
            summary = json.loads(read_inside(folder, "summary.json"))
            layers = list(summary["layers"])
        except (ValueError, KeyError, TypeError):
            raise AnalysisError(
                f"{folder} holds no readable summary.json: not a `volviz importance --out` folder"
            ) from None
        names = summary.get("class_names")
        index = {n: k for k, n in enumerate(names or [])}
        to_class = lambda s: -1 if s in ("", "unlabelled") else index[s] if s in index else int(s)
        per_image, first = {}, None
        for layer in layers:
            rows = list(csv.reader(io.StringIO(read_inside(folder, f"per_image_{safe_name(layer)}.csv"))))
            body = rows[1:]
            first = first or body
            per_image[layer] = np.array([[float(v) for v in r[len(_FIXED) :]] for r in body], np.float32).reshape(
                len(body), len(rows[0]) - len(_FIXED)
            )
        body = first or []
        label, pred, target = (np.array([to_class(r[c]) for r in body], np.int64) for c in (2, 3, 4))
        n_classes = int(
            summary.get("n_classes") or max(len(names or []), int(max(pred.max(initial=0), target.max(initial=0))) + 1)
        )
        res = ImportanceResult(
            layers, per_image, label, target, pred, names, n_classes, [r[1] for r in body], summary.get("source", "")
        )
        grids = {n: tuple(d["grid"]) for n, d in summary["layers"].items() if d.get("grid")}
        return cls(res, summary.get("store", ""), grids)
