"""The explorer's Pruning tab (seed 004): the least / most important filters table and the
threshold sweep of one layer, computed on demand in a background thread with progress, or read
from a ``volviz prune --out DIR`` folder.

A computed run writes the same files as ``volviz prune`` (``table.csv``, ``table.md``,
``sweep_<layer>.csv``, ``sweep_<layer>.png``) into ``out/prune/STORE-LAYER-...`` (written into a
temporary folder, renamed when complete), then the tab shows that folder: what is shown is always
a result folder, whichever way it came.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import os
import pathlib
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from volviz.app import state as S

log = logging.getLogger("volviz.app")

__all__ = ["PruneTab", "PruneCancelled", "read_prune_folder", "markdown_table", "run_prune"]


class PruneCancelled(RuntimeError):
    pass


def markdown_table(md: str) -> tuple[str, list[str], list[list[str]]]:
    """``(text, header cells, rows of cells)`` of the first Markdown table in ``md``; the text
    is every line that is not part of a table."""
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


def _png_url(path: pathlib.Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def read_prune_folder(folder) -> dict:
    """What the tab shows from a ``volviz prune --out`` folder: the text and table of
    ``table.md``, and the ``sweep_*.png`` plots as data URLs."""
    folder = pathlib.Path(folder).expanduser()
    if not folder.is_dir():
        raise ValueError(f"no folder at {folder}")
    md = folder / "table.md"
    pngs = sorted(folder.glob("sweep_*.png"))
    if not md.is_file() and not pngs:
        raise ValueError(f"{folder} holds no table.md or sweep_*.png: not a `volviz prune --out` folder")
    text, head, rows = markdown_table(md.read_text()) if md.is_file() else ("", [], [])
    return {"text": text, "head": head, "rows": rows,
            "images": [{"title": p.stem.replace("sweep_", "sweep of "), "src": _png_url(p)} for p in pngs]}


def run_prune(store, layer: str, out_dir, *, k: int = 1, reference: str = "all", steps: int = 20,
              importance=None, progress=None) -> pathlib.Path:
    """``volviz prune``'s table and sweep for one layer of ``store``, written into a new folder
    under ``out_dir``; returns it. ``importance``: an ``ImportanceResult`` of the layer (else
    computed from the store); ``progress(done, total)`` is called after every evaluation and
    may raise to stop."""
    from volviz.analysis import pruning
    from volviz.analysis.importance import class_index, importance_from_store, inputs_from_store, model_from_store

    res = importance if importance is not None else importance_from_store(store, [layer], progress=False)
    model = model_from_store(store).module
    inputs, _ = inputs_from_store(store)
    K, names = res.n_classes, store.class_names
    rel = {layer: res.class_relevance(layer)[0]}
    counts = np.bincount(inputs.labels[inputs.labels >= 0], minlength=K)
    classes = [c for c in range(K) if counts[c] > 0 and np.all(np.isfinite(rel[layer][c]))]
    if reference == "all":
        ref_name, highlight, ranking = "all", None, res.overall(layer)
    else:
        r = class_index(reference, names, K)
        ref_name, highlight, ranking = res.class_name(r), r, res.mean(layer, r)[0]
    total = len(classes) + len(pruning.sweep_thresholds(ranking, steps))
    done = [0]

    def step():
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    rows = pruning.least_most_table(model, inputs, rel, classes, k=k, class_names=names, progress=False,
                                    on_step=step)
    sweep = pruning.threshold_sweep(model, inputs, layer, ranking, steps=steps, n_classes=K, reference=ref_name,
                                    class_names=names, progress=False, on_step=step)
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in layer)
    name = f"{pathlib.Path(str(store.path)).name}-{safe}-k{k}-{ref_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{name}.tmp"
    tmp.mkdir()
    try:
        (tmp / "table.csv").write_text(pruning.table_csv(rows))
        (tmp / "table.md").write_text(
            f"Error rate = misclassified / images of the class, over {len(inputs)} images (the store); filters "
            f"ranked by class-wise relevance ({res.source}); k = {k}.\n\n" + pruning.table_markdown(rows))
        (tmp / f"sweep_{safe}.csv").write_text(sweep.to_csv())
        pruning.sweep_figure(sweep, tmp / f"sweep_{safe}.png", highlight=highlight)
        final = out_dir / name
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


class PruneTab:
    def __init__(self, app, out_dir):
        self.app, self.state = app, app.state
        self.out_dir = pathlib.Path(out_dir)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="volviz-prune")
        self._task = None
        self._cancel = False
        self._progress = (0, 0)
        st, ctrl = self.state, app.ctrl
        st.change(S.X_PANE)(self.refresh)
        ctrl.prune_compute = self.start
        ctrl.prune_cancel = self.cancel
        ctrl.prune_load = self.load_from_state

    @property
    def pane(self):
        panes = self.app.panes
        return panes[min(max(int(self.state[S.X_PANE] or 0), 0), len(panes) - 1)]

    def refresh(self, **_) -> None:
        """Layer and class choices of the pane's store."""
        st, pane = self.state, self.pane
        if pane.store is None:
            st[S.PR_LAYERS], st[S.PR_REFERENCES], st[S.PR_LAYER] = [], [], None
            return
        store = pane.store
        layers = [n for n, i in store.layers.items() if i.weight_shape and store.has("grad_weight", n)]
        st[S.PR_LAYERS] = [{"title": n, "value": n} for n in layers]
        if st[S.PR_LAYER] not in layers:
            convs = [n for n in layers if store.layers[n].kind == "conv"]
            st[S.PR_LAYER] = (convs or layers or [None])[0]
        names = store.class_names or [str(c) for c in range(pane.columns["probs"].shape[1])]
        st[S.PR_REFERENCES] = [{"title": "mean over all images (each its own class)", "value": "all"}] + \
            [{"title": f"class {n}", "value": str(c)} for c, n in enumerate(names)]
        if st[S.PR_REFERENCE] not in [it["value"] for it in st[S.PR_REFERENCES]]:
            st[S.PR_REFERENCE] = "all"

    # ------------------------------------------------------------------ compute
    def compute(self, progress=None) -> pathlib.Path:
        """Run the pruning analysis of the chosen layer now (blocking); returns its folder."""
        from volviz.app.analysis_panels import layer_importance
        st, pane = self.state, self.pane
        if pane.store is None:
            raise ValueError("no store is shown")
        layer = st[S.PR_LAYER]
        if not layer:
            raise ValueError("this store has no layer with weight gradients to prune")
        res, _ = layer_importance(pane.store, layer, pane.remember)
        return run_prune(pane.store, layer, self.out_dir, k=int(st[S.PR_K] or 1),
                         reference=str(st[S.PR_REFERENCE] or "all"), steps=max(1, int(st[S.PR_STEPS] or 20)),
                         importance=res, progress=progress)

    def _report(self, done: int, total: int) -> None:  # in the worker thread
        self._progress = (done, total)
        if self._cancel:
            raise PruneCancelled("cancelled")

    def start(self) -> None:
        """The Compute button: a background job (progress in the page); at once without a loop."""
        st = self.state
        if self._task is not None and not self._task.done():
            st[S.PR_STATUS] = "a pruning run is already going"
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            try:
                self.show(self.compute())
            except Exception as exc:  # noqa: BLE001
                st[S.PR_STATUS] = f"pruning failed: {exc}"
            return
        self._cancel, self._progress = False, (0, 0)
        st[S.PR_BUSY], st[S.PR_PROGRESS] = True, 0
        st[S.PR_STATUS] = f"pruning {st[S.PR_LAYER]}: loading the model and the images ..."
        self._task = loop.create_task(self._run(loop))

    async def _run(self, loop) -> None:
        st = self.state
        fut = loop.run_in_executor(self._executor, self.compute, self._report)
        try:
            while not fut.done():
                await asyncio.sleep(0.25)
                done, total = self._progress
                if total:
                    with st:
                        st[S.PR_PROGRESS] = round(100 * done / total)
                        st[S.PR_STATUS] = f"pruning {st[S.PR_LAYER]}: {done}/{total} evaluations"
            folder = await fut
            with st:
                self.show(folder)
        except Exception as exc:  # noqa: BLE001 - cancelled, k too large, no images of a class
            if not isinstance(exc, PruneCancelled):
                log.warning("pruning failed: %s", exc)
            with st:
                st[S.PR_STATUS] = "pruning stopped" if isinstance(exc, PruneCancelled) else f"pruning failed: {exc}"
        finally:
            with st:
                st[S.PR_BUSY] = False

    def cancel(self) -> None:
        self._cancel = True

    # ------------------------------------------------------------------ show
    def show(self, folder) -> None:
        st = self.state
        d = read_prune_folder(folder)
        st[S.PR_TEXT], st[S.PR_HEAD], st[S.PR_ROWS], st[S.PR_IMAGES] = d["text"], d["head"], d["rows"], d["images"]
        st[S.PR_SHOWN] = st[S.PR_DIR] = str(folder)
        st[S.PR_STATUS] = f"showing {folder}"
        st[S.PR_PROGRESS] = 100

    def load_from_state(self) -> None:
        """The Load button: show the folder typed in the page."""
        try:
            self.show(self.state[S.PR_DIR] or "")
        except Exception as exc:  # noqa: BLE001
            self.state[S.PR_STATUS] = f"cannot show it: {exc}"

    def close(self) -> None:
        self._cancel = True
        self._executor.shutdown(wait=False, cancel_futures=True)
