"""The capture store: a zarr v3 directory whose per-image arrays are sharded (a few images per
chunk, many chunks per shard file: ``layout.py``), so that reading one time step of one layer
decodes one small chunk, and 20,000 images make hundreds of files, not hundreds of thousands.

Crash safety: ``plan.json`` (what to capture) is written atomically before any data; every
image's arrays are written before its ``done`` flag; ``manifest.json`` is written atomically last.
A reader trusts image i only when done[i] is set, so a chunk left half-written by a killed capture
is never read as data, and ``volviz capture --resume`` simply recomputes the images not done.
Every chunk carries a crc32c checksum; a damaged or missing chunk of a done image is an error
that names the image and how to repair it.

float16 stores keep a per-image scale next to every array (values are divided by the image's
max |value| before the cast), so small gradients do not underflow to zero.

Nothing outside ``volviz/store`` names a zarr path or a plan key: readers use this class.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import numpy as np

from volviz.errors import StoreError
from volviz.store import layout
from volviz.store.contents import projected_bytes, stored_quantities  # noqa: F401  (re-exported)
from volviz.store.folder import (  # noqa: F401  (re-exported)
    prepare_folder,
    prepare_folder_check,
    versions,
    write_json_atomic,
    write_lock,
)
from volviz.store.layout import QUANTITIES
from volviz.store.plan import FORMAT_VERSION, READABLE_FORMATS, LayerInfo, Plan, read_json

__all__ = ["Store", "StoreError", "LayerInfo", "Plan", "QUANTITIES", "FORMAT_VERSION", "write_json_atomic"]


class Store:
    """Open with ``Store.open(path)``; capture creates one with ``Store.create(path, plan)``."""

    def __init__(self, path: pathlib.Path, plan: Plan, manifest: dict | None, mode: str):
        import zarr

        self.path = path
        self.plan = plan
        self.manifest = manifest
        self.mode = mode
        self._root = zarr.open_group(str(path), mode=mode)
        self.layers = {info.name: info for info in plan.layers}
        self._done_cache: np.ndarray | None = None
        self._arrays: dict = {}  # zarr array handles: opening one reads its metadata file
        self._checked_chunks = plan.format_version >= 2  # format 1 skipped all-zero chunks
        self._plan_dict: dict = {}  # plan.json as written / read: the manifest repeats it

    # ---- creation / opening -------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, plan: Plan, *, overwrite: bool = False) -> Store:
        import zarr

        path = pathlib.Path(path)
        prepare_folder(path, overwrite)
        n, half = len(plan.images), plan.dtype == "float16"
        dt = "float16" if half else "float32"
        root = zarr.open_group(str(path), mode="w")
        root.attrs["volviz"] = {"format_version": FORMAT_VERSION}
        sh = {"sharded": True, "compress": plan.compress}
        layout.create_array(root, "done", (n,), (1,), "bool", False, **sh)
        layout.create_array(root, "probs", (n, plan.n_outputs), (1, plan.n_outputs), "float32", 0, **sh)
        for name in ("pred", "label", "target"):
            layout.create_array(root, name, (n,), (1,), "int64", -1, **sh)
        shape = plan.input_shape
        layout.create_array(root, "input", (n, *shape), (1, *shape), "float16", 0, **sh)
        for info in plan.layers:
            for q in stored_quantities(plan, info):
                keys = layout.quantity_keys(q, info.name, tuple(info.weight_parts))
                shapes = (
                    [info.act_shape]
                    if q in ("activation", "grad_activation")
                    else [info.descriptor_shape]
                    if q == "descriptor"
                    else [info.weight_shape[:1]]
                    if q == "grad_norm"
                    else list(info.weight_parts.values())
                )
                for key, sh in zip(keys, shapes):
                    small = q == "grad_norm"  # filter norms stay float32: importance is exact
                    dtype = "float32" if small else dt
                    layout.create_array(root, key, (n, *sh), (1, *sh), dtype, 0, sharded=True, compress=plan.compress)
                    if half and not small:
                        layout.create_array(
                            root, layout.scale_key(key), (n,), (1,), "float32", 0, sharded=True, compress=plan.compress
                        )
        plan.format_version = FORMAT_VERSION
        store = cls(path, plan, None, "r+")
        store._plan_dict = plan.to_dict()
        write_json_atomic(path / "plan.json", store._plan_dict)
        return store

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> Store:
        path = pathlib.Path(path)
        if not path.exists():
            raise StoreError(f"no store at {path}; create one with `volviz capture --out {path}`")
        if not path.is_dir():
            raise StoreError(f"{path} is a file, not a volviz store folder")
        plan_file, manifest_file = path / "plan.json", path / "manifest.json"
        if not plan_file.exists():
            raise StoreError(
                f"{path} is not a volviz store (no plan.json); it may be empty or the "
                "capture was killed before it started"
            )
        manifest = read_json(manifest_file) if manifest_file.exists() else None
        raw = read_json(plan_file)
        version = int((manifest or raw).get("format_version", 1))
        if version > FORMAT_VERSION:
            raise StoreError(
                f"{path} was written by a newer volviz (store format {version}, this "
                f"volviz reads up to {FORMAT_VERSION}); upgrade volviz to read it"
            )
        if version not in READABLE_FORMATS:
            raise StoreError(f"{path} has store format {version}, which this volviz cannot read; capture again")
        if mode != "r" and not os.access(path, os.W_OK):
            raise StoreError(f"{path} is read-only; copy the store somewhere writable to add to it")
        store = cls(path, Plan.from_dict(raw, str(plan_file)), manifest, mode)
        store._plan_dict = raw
        return store

    def reopen(self, mode: str = "r+") -> Store:
        return Store.open(self.path, mode)

    # ---- writing (the rows themselves: batch_rows.py, writer.py) ------------------------
    def finalize(self, summary: dict) -> None:
        """The manifest: plan.json's dict as written or read (not rebuilt from the Plan: an old
        store's manifest stays in its own format), the summary, the versions."""
        plan = self._plan_dict or self.plan.to_dict()
        manifest = dict(plan, summary=summary, versions=versions(), complete=True)
        write_json_atomic(self.path / "manifest.json", manifest)
        self.manifest = manifest

    def mark_not_done(self, rows) -> None:
        """Forget images (damaged chunks) so that a resume captures them again."""
        arr = self._root["done"]
        try:
            done = np.asarray(arr[:], dtype=bool)
        except ValueError:  # the done flags themselves are damaged: keep every flag still readable
            done = np.zeros(self.n_images, bool)
            for i in range(self.n_images):
                try:
                    done[i] = bool(arr[i])
                except ValueError:
                    pass
            del self._root["done"]  # damaged shards would be read back by a write: make it anew
            self._arrays.pop("done", None)
            arr = layout.create_array(
                self._root, "done", (self.n_images,), (1,), "bool", False, sharded=True, compress=self.plan.compress
            )
        done[np.asarray(rows, dtype=np.int64)] = False
        arr[:] = done
        self._done_cache = None
        (self.path / "manifest.json").unlink(missing_ok=True)
        self.manifest = None

    # ---- what the store holds -------------------------------------------------------------
    @property
    def n_images(self) -> int:
        return len(self.plan.images)

    @property
    def images(self):
        return self.plan.images

    @property
    def class_names(self) -> list[str] | None:
        return self.plan.class_names

    @property
    def preprocess(self):
        return self.plan.preprocess

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.plan.input_shape

    @property
    def summary(self) -> dict:
        return (self.manifest or {}).get("summary", {})

    @property
    def complete(self) -> bool:
        return self.manifest is not None and self.manifest.get("complete", False)

    @property
    def done(self) -> np.ndarray:
        if self._done_cache is None:
            try:
                self._done_cache = np.asarray(self._root["done"][:], dtype=bool)
            except ValueError as exc:
                raise StoreError(
                    f"the done flags of {self.path} are damaged ({str(exc)[:60]}); run "
                    f"`volviz capture --repair {self.path}`"
                ) from None
        return self._done_cache

    def model(self, *, trust_pickle: bool = False, trust_factory: bool = False):
        """The model this store was captured from, in eval mode. The store cannot switch on code
        execution by itself: the caller passes the user's flags for THIS command."""
        from volviz.sources.models import load_model

        spec = self.plan.model
        if spec.needs_code() and not trust_factory:
            raise StoreError(
                f"the model of {self.path} is {spec.spec!r}, which loading would import and run; "
                "pass --trust-factory if you trust this store's model spec"
            )
        loaded = load_model(spec.spec, spec.weights, trust_pickle=trust_pickle)
        loaded.module.eval()
        return loaded

    def has(self, quantity: str, layer: str) -> bool:
        if layer not in self.layers or quantity not in QUANTITIES:
            return False
        key = layout.quantity_keys(quantity, layer, tuple(self.layers[layer].weight_parts))[0]
        try:
            self._array(key)
        except KeyError:
            return False
        return True

    def _array(self, key: str):
        arr = self._arrays.get(key)
        if arr is None:
            arr = self._arrays[key] = layout.open_array(self._root, key)
        return arr

    def has_filter_norms(self, layer: str) -> bool:
        """Whether importance (per-filter weight-gradient norms) can be read for ``layer``."""
        return self.has("grad_norm", layer) or self.has("grad_weight", layer)

    # ---- reading ------------------------------------------------------------------------
    def _check(self, layer: str | None, rows) -> None:
        if layer is not None and layer not in self.layers:
            raise StoreError(f"layer {layer!r} is not in this store. Layers: {', '.join(self.layers)}")
        rows = np.atleast_1d(rows)
        bad = rows[(rows < 0) | (rows >= self.n_images)]
        if len(bad):
            raise StoreError(f"image index {int(bad[0])} out of range (store has {self.n_images} images)")
        undone = rows[~self.done[rows]]
        if len(undone):
            raise StoreError(
                f"image {int(undone[0])} was not captured yet (interrupted capture); run "
                f"`volviz capture --resume --out {self.path}`"
            )

    def _rows(self, key: str, rows: np.ndarray) -> np.ndarray:
        """Rows of one array as float32, float16 scale undone, every chunk checked."""
        arr = self._array(key)
        if self._checked_chunks:
            per = layout.rows_per_file(arr)
            for first in np.unique(rows // per):
                if not layout.chunk_file(self.path, key, int(first * per), arr).exists():
                    raise StoreError(self._damage(key, int(rows[rows // per == first][0]), "is missing"))
        contiguous = len(rows) and rows[-1] - rows[0] + 1 == len(rows)
        pick = (lambda a: a[rows[0] : rows[-1] + 1]) if contiguous else (lambda a: a.oindex[rows])
        try:
            out = np.asarray(pick(arr))
            if arr.dtype == np.float16 and key != "input":
                scale = np.asarray(pick(self._array(layout.scale_key(key))), dtype=np.float32)
                out = out.astype(np.float32) * scale.reshape(-1, *([1] * (out.ndim - 1)))
        except ValueError as exc:  # crc32c mismatch, undecodable chunk
            if "checksum" not in str(exc) and "ecompress" not in str(exc):
                raise
            raise StoreError(self._damage(key, int(rows[0]) if len(rows) == 1 else None, "is damaged")) from None
        return out.astype(np.float32, copy=False)

    def _damage(self, key: str, row: int | None, what: str) -> str:
        where = f"image {row} ({self.images[row].id})" if row is not None else "one of the images read"
        return (
            f"the stored {key.split('/')[0]} of {'/'.join(key.split('/')[1:-1]) or key} for {where} {what}; "
            f"run `volviz capture --repair {self.path}` to capture it again"
        )

    def read_batch(self, quantity: str, layer: str, rows) -> np.ndarray:
        """Images ``rows`` of one quantity of one layer, ``(len(rows), *shape)`` float32."""
        if quantity not in QUANTITIES:
            raise StoreError(f"unknown quantity {quantity!r}; valid: {', '.join(QUANTITIES)}")
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        self._check(layer, rows)
        if not self.has(quantity, layer):
            raise StoreError(self._missing(quantity, layer))
        if quantity == "grad_weight" and self.layers[layer].weight_factors:
            u, v = self.read_factors(layer, rows)
            return np.einsum("ni,nj->nij", u, v)
        if quantity == "grad_weight" and self.layers[layer].weight_input:
            return self._conv_weight_grad(layer, rows)
        return self._rows(layout.quantity_keys(quantity, layer)[0], rows)

    def _missing(self, quantity: str, layer: str) -> str:
        info = self.layers[layer]
        if quantity == "descriptor":
            return (
                f"{self.path} has no descriptors of {layer!r}; capture them with `volviz capture --descriptors "
                f"{layer} ...` (or use its activations where they are stored)"
            )
        if quantity == "grad_weight" and info.weight_shape and self.plan.gradients and not info.weight_grad:
            return (
                f"{self.path} keeps only the filter norms of {layer!r}'s weight gradients (its per-image tensor "
                f"is over the capture's per-image budget); capture with `--weight-grads {layer}` to store it"
            )
        if quantity == "grad_activation" and self.plan.gradients and info.activation and not info.gradient:
            return (
                f"{self.path} keeps no activation-gradient volumes of {layer!r} (over the capture's per-image "
                "budget; its filter norms are kept); capture with `--image-budget-mb 0` to store them"
            )
        if quantity == "activation" and not info.activation:
            return f"{self.path} keeps only descriptors of {layer!r}, not its activations (a descriptor capture)"
        return (
            f"{self.path} has no {quantity} for layer {layer!r} (captured without gradients, or the layer "
            "has no weights)"
        )

    def read(self, quantity: str, layer: str, i: int) -> np.ndarray:
        """One image's activation / gradient of one layer as float32."""
        return self.read_batch(quantity, layer, [int(i)])[0]

    def _conv_weight_grad(self, layer: str, rows: np.ndarray) -> np.ndarray:
        """A conv's per-image weight gradient rebuilt from its stored input and output gradient,
        by the capture's own exact routine (``conv_per_sample``) on a weightless copy of the conv."""
        import torch

        from volviz.capture.persample import conv_per_sample

        info = self.layers[layer]
        geometry = info.conv or {}
        if info.module_type not in layout.CONV_TYPES or set(geometry) != set(layout.CONV_GEOMETRY):
            raise StoreError(f"{self.path}: the conv geometry of {layer!r} is damaged; capture the store again")
        conv_type = getattr(torch.nn, info.module_type)  # one of three names: plan.json is data
        g = {k: tuple(v) if isinstance(v, list) else v for k, v in geometry.items()}
        conv = conv_type(**g, bias=False, device="meta")
        x = torch.from_numpy(self._rows(layout.quantity_keys("grad_weight", layer, ("x",))[0], rows))
        go = torch.from_numpy(self._rows(layout.quantity_keys("grad_activation", layer)[0], rows))
        with torch.no_grad():
            return conv_per_sample(conv, x, go).numpy()

    def read_factors(self, layer: str, rows) -> tuple[np.ndarray, np.ndarray]:
        """A Linear layer's per-image weight gradient as its outer-product factors (u, v)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        self._check(layer, rows)
        ku, kv = layout.quantity_keys("grad_weight", layer, ("u", "v"))
        return self._rows(ku, rows), self._rows(kv, rows)

    def read_inputs(self, rows) -> np.ndarray:
        """Preprocessed model inputs (normalization undone), ``(n, C, H, W)`` float32."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        self._check(None, rows)
        return self._rows("input", rows)

    def read_input(self, i: int) -> np.ndarray:
        return self.read_inputs([int(i)])[0]

    def column(self, name: str, row: int | None = None) -> np.ndarray:
        """probs / pred / label / target for every image (rows of images not done are filler), or
        for image ``row`` only (one chunk read: a caption need not read 20,000 rows)."""
        if name not in ("probs", "pred", "label", "target"):
            raise StoreError(f"unknown column {name!r}; valid: probs, pred, label, target")
        if row is not None:
            if not 0 <= int(row) < self.n_images:
                raise StoreError(f"image index {int(row)} out of range (store has {self.n_images} images)")
            return np.asarray(self._array(name)[int(row)])
        return np.asarray(self._array(name)[:])

    def iter_batches(self, batch_size: int, rows=None) -> Iterator[np.ndarray]:
        """Done images (or ``rows``) in batches of at most ``batch_size``: memory bounded by the batch."""
        rows = np.flatnonzero(self.done) if rows is None else np.asarray(rows, dtype=np.int64)
        for s in range(0, len(rows), max(1, int(batch_size))):
            yield rows[s : s + batch_size]

    def results(self, kind: str):
        """Derived results (preferred inputs, ...) kept beside the capture, one group per layer."""
        from volviz.store.results import Results

        return Results(self, kind)

    # used by volviz.store.verify and volviz.store.results only
    def _array_keys(self) -> list[str]:
        keys = list(layout.PER_IMAGE)
        for info in self.layers.values():
            for q in QUANTITIES:
                if self.has(q, info.name):
                    keys += layout.quantity_keys(q, info.name, tuple(info.weight_parts))
        if self.plan.dtype == "float16":
            keys += [layout.scale_key(k) for k in keys if "/" in k and self._array(k).dtype == np.float16]
        return keys
