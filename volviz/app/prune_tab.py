"""The explorer's Pruning tab [Jain2016, §3.2.3]: the least / most important filters table and
the threshold sweep of one layer, computed on demand in a background thread with progress, or read
from a ``volviz prune --out DIR`` folder.

A computed run is the same :class:`~volviz.analysis.prune_report.PruneReport` as ``volviz prune``'s,
written the same way (``table.csv``, ``table.md``, ``sweep_<layer>.csv``, ``sweep_<layer>.png``) into
``out/prune/STORE-LAYER-...`` (a temporary folder, renamed when complete); then the tab shows that
folder: what is shown is always a result folder, read back from its CSV files, whichever way it
came. The page chooses among folders the server owns, by id: those in ``out/prune`` at launch and
those this session wrote (never a path typed in the page), and a folder is only read inside:
links out of it (a ``table.md`` linked to a file elsewhere) are refused.
"""

from __future__ import annotations

import base64
import copy
import logging
import os
import pathlib
import shutil
import time

from volviz.app import state as S
from volviz.app.jobs import JobCancelled

log = logging.getLogger("volviz.app")

__all__ = ["PruneTab", "PruneCancelled", "read_prune_folder", "markdown_table", "run_prune"]


PruneCancelled = JobCancelled  # the stop button (kept for importers)


def markdown_table(md: str) -> tuple[str, list[str], list[list[str]]]:
    """``(text, header cells, rows of cells)`` of the first Markdown table in ``md``; the text
    is every line that is not part of a table. The tab never parses Markdown (it reads the CSV);
    this is for checking that ``table.md`` says what the tab shows."""
    text, head, rows = [], [], []
    for line in md.splitlines():
        s = line.strip()
        if not (s.startswith("|") and s.endswith("|")):
            if s:
                text.append(s)
            continue
        cells = [c.strip() for c in s[1:-1].split("|")]
        if all(set(c) <= set("-: ") and c for c in cells):
            continue  # the |---|---| line
        if not head:
            head = cells
        else:
            rows.append(cells)
    return "\n".join(text), head, rows


def read_prune_folder(folder) -> dict:
    """What the tab shows from a ``volviz prune --out`` folder: the text and table of its report,
    read back from ``table.csv`` and ``sweep_*.csv``, and the ``sweep_*.png`` plots as data URLs.
    Only regular files inside the folder are read."""
    from volviz.analysis.prune_report import PruneReport
    from volviz.analysis.report_io import list_inside, read_inside
    from volviz.errors import AnalysisError

    pngs = list_inside(folder, "sweep_*.png")
    has_csv = list_inside(folder, "table.csv") or list_inside(folder, "sweep_*.csv")
    if not has_csv and not pngs:
        raise AnalysisError(
            f"{folder} holds no table.csv, sweep_*.csv or sweep_*.png: not a `volviz prune --out` folder"
        )
    text, head, rows = "", [], []
    if has_csv:
        report = PruneReport.read(folder)
        text, (head, rows) = report.text, report.cells()
    images = [
        {
            "title": p[: -len(".png")].replace("sweep_", "sweep of "),
            "src": "data:image/png;base64," + base64.b64encode(read_inside(folder, p, binary=True)).decode("ascii"),
        }
        for p in pngs
    ]
    return {"text": text, "head": head, "rows": rows, "images": images}


def run_prune(
    store,
    layer: str,
    out_dir,
    *,
    k: int = 1,
    reference: str = "all",
    steps: int = 20,
    importance=None,
    model=None,
    progress=None,
) -> pathlib.Path:
    """``volviz prune``'s report for one layer of ``store``, written into a new folder under
    ``out_dir``; returns it. ``importance``: an ``ImportanceResult`` of the layer (else computed
    from the store); ``model``: the store's ``nn.Module``, loaded by the caller with its trust
    flags (default: ``store.model()``, which refuses pickles and factories); ``progress(done,
    total)`` is called after every evaluation and may raise to stop."""
    from volviz.analysis.importance import importance_from_store
    from volviz.analysis.inputs import inputs_from_store
    from volviz.analysis.prune_report import PruneReport
    from volviz.analysis.report_io import safe_name
    from volviz.views.figures import write_prune_report

    res = importance if importance is not None else importance_from_store(store, [layer], progress=False)
    model = model if model is not None else store.model().module
    inputs, _ = inputs_from_store(store)
    report = PruneReport.compute(
        model, inputs, res, [layer], k=k, reference=reference, steps=steps, progress=False, on_step=progress
    )
    name = (
        f"{pathlib.Path(str(store.path)).name}-{safe_name(layer)}-k{k}-{report.reference}-"
        f"{time.strftime('%Y%m%d-%H%M%S')}"
    )
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{name}.tmp"
    tmp.mkdir()
    try:
        write_prune_report(report, tmp)
        final = out_dir / name
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


class PruneTab:
    """The Pruning tab (see :mod:`volviz.app.tabs`): the analysed pane through ``ctx.focus``, the
    runs as a ``ctx.job``."""

    def __init__(self, ctx):
        self.focus, self.state = ctx.focus, ctx.state
        self.catalog, self.redact = ctx.catalog, ctx.redact
        self.out_dir = pathlib.Path(ctx.prune_dir)
        self.job = ctx.job("pruning", busy=S.PR_BUSY, progress=S.PR_PROGRESS, status=S.PR_STATUS)
        # the folders this page may show: listed at launch, then the ones its own runs write
        self.folder_ids = list(self.catalog.folders) if self.catalog is not None else []
        self.shown_folder: pathlib.Path | None = None
        st, ctrl = self.state, ctx.ctrl
        self._folder_items()
        st.change(S.X_PANE)(self.refresh)
        for name, fn in (
            ("prune_compute", self.start),
            ("prune_cancel", self.cancel),
            ("prune_load", self.load_from_state),
        ):
            ctrl[name] = fn
            ctrl.trigger(name)(fn)

    def _folder_items(self) -> None:
        self.state[S.PR_FOLDERS] = [self.catalog.folders[f].item() for f in reversed(self.folder_ids)]

    def refresh(self, **_) -> None:
        """Layer and class choices of the pane's store."""
        st, store = self.state, self.focus.store
        if store is None:
            st[S.PR_LAYERS], st[S.PR_REFERENCES], st[S.PR_LAYER] = [], [], None
            return
        layers = [n for n, i in store.layers.items() if i.weight_shape and store.has_filter_norms(n)]
        st[S.PR_LAYERS] = [{"title": n, "value": n} for n in layers]
        if st[S.PR_LAYER] not in layers:
            convs = [n for n in layers if store.layers[n].kind == "conv"]
            st[S.PR_LAYER] = (convs or layers or [None])[0]
        names = self.focus.class_names()
        st[S.PR_REFERENCES] = [{"title": "all images (each its own class)", "value": "all"}] + [
            {"title": f"class {n}", "value": str(c)} for c, n in enumerate(names)
        ]
        if st[S.PR_REFERENCE] not in [it["value"] for it in st[S.PR_REFERENCES]]:
            st[S.PR_REFERENCE] = "all"

    # ------------------------------------------------------------------ compute
    def compute(self, progress=None) -> pathlib.Path:
        """Run the pruning analysis of the chosen layer now (blocking); returns its folder."""
        from volviz.app.analysis_panels import layer_importance

        st, focus = self.state, self.focus
        if focus.store is None:
            raise ValueError("no store is shown")
        layer = st[S.PR_LAYER]
        if not layer:
            raise ValueError("this store has no layer with weight gradients to prune")
        res, _ = layer_importance(focus.store, layer, focus.memo)
        return run_prune(
            focus.store,
            layer,
            self.out_dir,
            k=int(st[S.PR_K] or 1),
            reference=str(st[S.PR_REFERENCE] or "all"),
            steps=max(1, int(st[S.PR_STEPS] or 20)),
            importance=res,
            model=copy.deepcopy(focus.model()),
            progress=progress,
        )

    def start(self) -> None:
        """The Compute button: a background job (progress in the page); at once without a loop."""
        st = self.state
        if not self.job.running:
            st[S.PR_STATUS] = f"pruning {st[S.PR_LAYER]}: loading the model and the images ..."
        self.job.start(
            self.compute,
            done=self.show,
            describe=lambda done, total: f"pruning {st[S.PR_LAYER]}: {done}/{total} evaluations",
            failed=lambda exc: self.redact(
                f"pruning stopped: {exc}" if isinstance(exc, JobCancelled) else f"pruning failed: {exc}"
            ),
        )

    def cancel(self) -> None:
        self.job.cancel()

    # ------------------------------------------------------------------ show
    def show(self, folder) -> None:
        """Show a result folder the server wrote or listed (a path here, from the server's side)."""
        st = self.state
        folder = pathlib.Path(folder)
        d = read_prune_folder(folder)
        choice = self.catalog.add_folder(folder)
        if choice.id not in self.folder_ids:
            self.folder_ids.append(choice.id)
            self._folder_items()
        st[S.PR_TEXT], st[S.PR_HEAD], st[S.PR_ROWS], st[S.PR_IMAGES] = d["text"], d["head"], d["rows"], d["images"]
        st[S.PR_SHOWN] = choice.title
        st[S.PR_FOLDER] = choice.id
        st[S.PR_STATUS] = f"showing {choice.title}"
        st[S.PR_PROGRESS] = 100
        self.shown_folder = folder

    def load_from_state(self) -> None:
        """The Show button: show the folder chosen in the page (an id of this page's list)."""
        fid = self.state[S.PR_FOLDER]
        choice = self.catalog.folder(fid) if fid in self.folder_ids else None
        if choice is None:
            self.state[S.PR_STATUS] = "choose one of the listed result folders"
            return
        try:
            self.show(choice.path)
        except Exception as exc:  # noqa: BLE001
            log.warning("pruning folder %s: %s", choice.path, exc)
            self.state[S.PR_STATUS] = self.redact(f"cannot show {choice.title}: {exc}")

    def close(self) -> None:
        self.job.close()
