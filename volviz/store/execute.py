"""Run the planned capture over image rows: read, preprocess, ``capture_batch``, hand the arrays to
the shard writer; then the summary and the manifest (written last: its presence = complete).

``capture_rows`` is what one process does, alone (:func:`execute`) or as one Dask task of a
sharded capture (:mod:`volviz.store.distributed`): it touches only its own rows' shard files.
"""

from __future__ import annotations

import errno
import logging
import time

import numpy as np
import torch
from tqdm import tqdm

from volviz.capture.engine import capture_batch
from volviz.errors import CaptureError
from volviz.store.batch_rows import batch_rows
from volviz.store.decoded import DecodedImages
from volviz.store.folder import write_lock
from volviz.store.store import Store
from volviz.store.writer import ShardWriter

log = logging.getLogger("volviz.capture")


def capture_module(
    module, x, layers, target, labels, class_names, gradients, weight_gradients, workspace, keep_inputs=()
):
    """``capture_batch`` with a one-line error for a layer the output does not depend on
    differentiably (the message names the option that avoids it)."""
    try:
        return capture_batch(
            module,
            x,
            layers,
            target=target,
            labels=labels,
            class_names=class_names,
            gradients=gradients,
            weight_gradients=weight_gradients,
            workspace=workspace,
            keep_inputs=keep_inputs,
        )
    except RuntimeError as exc:
        if "does not require grad" in str(exc) or "differentiable" in str(exc):
            raise CaptureError(
                f"the model is not differentiable between the output and a selected layer "
                f"({str(exc).splitlines()[0][:160]}); capture with --no-grads"
            ) from None
        raise


def runs(indices, batch: int):
    """Contiguous runs of pending image indices, cut to at most ``batch`` long."""
    start = prev = None
    for i in list(indices) + [None]:
        if start is not None and (i is None or i != prev + 1 or prev + 1 - start >= batch):
            yield start, prev + 1
            start = None
        if i is not None and start is None:
            start = i
        prev = i


def unnormalize(x: torch.Tensor, prep) -> np.ndarray:
    x = x.clone()
    if prep.std is not None:
        x = x * torch.tensor(prep.std).view(1, -1, 1, 1)
    if prep.mean is not None:
        x = x + torch.tensor(prep.mean).view(1, -1, 1, 1)
    return x.clamp(0, 1).numpy()


def capture_rows(
    store: Store, module, prep, rows: np.ndarray, bar=None, decoded: DecodedImages | None = None
) -> dict[str, int]:
    """Capture image ``rows`` (the not-done ones among them) into ``store``; returns the NaN/Inf
    activation counts per layer. Batches never cross a range boundary, so a run split over
    processes forms the same batches as one process and gives the same bytes. ``decoded``: the
    planning pass's preprocessed images (none kept: every image is decoded here)."""
    decoded = decoded if decoded is not None else DecodedImages(budget=0)
    plan = store.plan
    records = plan.images
    layers = [info.name for info in plan.layers]
    conv_inputs = {info.name for info in plan.layers if info.weight_grad and info.weight_input}
    pending = np.asarray(rows, dtype=np.int64)
    pending = pending[~store.done[pending]]
    workspace: dict = {}  # per-image weight gradient buffers reused batch after batch
    nonfinite: dict[str, int] = {}
    labels_all = records.labels
    writer = ShardWriter(store, pending)
    try:
        for start, stop in runs(pending, plan.batch_size):
            x = torch.stack([decoded.take(r, prep) for r in records[start:stop]])
            labels = torch.from_numpy(np.array(labels_all[start:stop]))
            res = capture_module(
                module,
                x,
                layers,
                plan.target,
                labels,
                plan.class_names,
                plan.gradients,
                plan.weight_gradients,
                workspace,
                conv_inputs,
            )
            for name, bad in res.nonfinite.items():
                nonfinite[name] = nonfinite.get(name, 0) + bad
                log.warning("layer %s: %d NaN/Inf activation values in images %d-%d", name, bad, start, stop - 1)
            writer.add(start, batch_rows(store, res, labels.numpy(), unnormalize(x, prep)))
            if bar is not None:
                bar.update(stop - start)
        writer.close()
    except OSError as exc:
        writer.close(flush=False, raise_errors=False)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CaptureError(
                f"the disk is full: {int(store.done.sum())} of {len(records)} images are "
                f"safely in {store.path}; free some space and run "
                f"`volviz capture --resume --out {store.path}` to continue"
            ) from None
        raise
    except BaseException:
        writer.close(flush=True, raise_errors=False)  # keep what was computed: resume does the rest
        raise
    return nonfinite


def finalize(store: Store, nonfinite: dict[str, int], seconds: float) -> Store:
    """Summary (accuracy, NaN/Inf counts) and the manifest, written last."""
    store._done_cache = None
    done = store.done
    label, pred = store.column("label"), store.column("pred")
    has_label = done & (label >= 0)
    merged = dict(store.summary.get("nonfinite", {}))
    for k, v in nonfinite.items():
        merged[k] = merged.get(k, 0) + v
    store.finalize(
        {
            "n_images": int(done.sum()),
            "seconds": round(seconds, 3),
            "accuracy": float((label[has_label] == pred[has_label]).mean()) if has_label.any() else None,
            "nonfinite": merged,  # layer -> NaN/Inf activation values seen (rendered, flagged)
        }
    )
    return store


def execute(store: Store, loaded, prep, progress: bool = True, decoded=None) -> Store:
    """The whole capture in this process, holding the store's write lock."""
    with write_lock(store.path):
        t0 = time.perf_counter()
        n, left = store.n_images, int((~store.done).sum())
        bar = tqdm(total=n, initial=n - left, desc="capturing", unit="img", disable=not progress)
        try:
            nonfinite = capture_rows(store, loaded.module, prep, np.arange(n), bar, decoded)
        finally:
            bar.close()
        return finalize(store, nonfinite, time.perf_counter() - t0)
