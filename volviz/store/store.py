"""The capture store: a zarr directory with one chunk per image per layer, so that reading one time
step of one layer touches one small file.

Crash safety: ``plan.json`` (what to capture) is written atomically before any data; every
image's arrays are written before its ``done`` flag; ``manifest.json`` is written atomically last.
A reader trusts image i only when done[i] is set, so a chunk left half-written by a killed capture
is never read as data, and ``volviz capture --resume`` simply recomputes the images not done.

float16 stores keep a per-image scale next to every array (values are divided by the image's
max |value| before the cast), so small gradients do not underflow to zero.
"""
from __future__ import annotations

from volviz.errors import StoreError  # noqa: F401  (re-exported)
import json
import os
import pathlib
import platform
from dataclasses import dataclass

import numpy as np

FORMAT_VERSION = 1
QUANTITIES = ("activation", "grad_activation", "grad_weight")
_GROUP = {"activation": "act", "grad_activation": "grad_act", "grad_weight": "grad_weight"}




def write_json_atomic(path: pathlib.Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=_json_default)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (tuple, set)):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def versions() -> dict:
    import torch, zarr  # noqa: E401
    from volviz import __version__
    return {"volviz": __version__, "torch": torch.__version__, "zarr": zarr.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str                       # conv, linear, ... (layer_kind)
    module_type: str
    act_shape: tuple[int, ...]      # per image: (C, H, W) for conv, (N,) for linear
    weight_shape: tuple[int, ...] | None
    weight_factors: bool = False    # grad_weight stored as outer-product factors (Linear)

    @classmethod
    def from_dict(cls, d: dict) -> "LayerInfo":
        return cls(d["name"], d["kind"], d["module_type"], tuple(d["act_shape"]),
                   tuple(d["weight_shape"]) if d.get("weight_shape") else None,
                   bool(d.get("weight_factors", False)))

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "module_type": self.module_type,
                "act_shape": list(self.act_shape),
                "weight_shape": list(self.weight_shape) if self.weight_shape else None,
                "weight_factors": self.weight_factors}


class Store:
    """Open with ``Store.open(path)``; create with ``Store.create(path, plan)`` (capture does)."""

    def __init__(self, path: pathlib.Path, plan: dict, manifest: dict | None, mode: str):
        import zarr
        self.path = path
        self.plan = plan
        self.manifest = manifest
        self.root = zarr.open_group(str(path), mode=mode)
        self.layers = {d["name"]: LayerInfo.from_dict(d) for d in plan["layers"]}
        self._done_cache: np.ndarray | None = None

    # ---- creation / opening -------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, plan: dict, *, n_classes: int, input_shape: tuple[int, ...],
               overwrite: bool = False) -> "Store":
        import zarr
        path = pathlib.Path(path)
        if path.exists() and any(path.iterdir()):
            if not overwrite:
                raise StoreError(f"{path} exists and is not empty; use --resume to complete it or "
                                 "--overwrite to replace it")
            import shutil
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        plan = dict(plan, format_version=FORMAT_VERSION)
        n = len(plan["images"])
        half = plan.get("dtype") == "float16"
        dt = "float16" if half else "float32"
        root = zarr.open_group(str(path), mode="w")
        root.create_array("done", shape=(n,), chunks=(1,), dtype="bool", fill_value=False)
        root.create_array("probs", shape=(n, n_classes), chunks=(1, n_classes), dtype="float32", fill_value=0)
        for name in ("pred", "label", "target"):
            root.create_array(name, shape=(n,), chunks=(1,), dtype="int64", fill_value=-1)
        root.create_array("input", shape=(n, *input_shape), chunks=(1, *input_shape), dtype="float16", fill_value=0)
        grads = plan.get("gradients", True)
        for d in plan["layers"]:
            info = LayerInfo.from_dict(d)
            groups = ["act"] + (["grad_act"] if grads else [])
            for g in groups:
                cls._create_quantity(root, f"{g}/{info.name}", n, info.act_shape, dt, half)
            if grads and plan.get("weight_gradients", True) and info.weight_shape:
                if info.weight_factors:
                    out_f, in_f = info.weight_shape
                    cls._create_quantity(root, f"grad_weight/{info.name}/u", n, (out_f,), dt, half)
                    cls._create_quantity(root, f"grad_weight/{info.name}/v", n, (in_f,), dt, half)
                else:
                    cls._create_quantity(root, f"grad_weight/{info.name}/w", n, info.weight_shape, dt, half)
        write_json_atomic(path / "plan.json", plan)
        return cls(path, plan, None, "r+")

    @staticmethod
    def _create_quantity(root, key: str, n: int, shape: tuple[int, ...], dt: str, half: bool) -> None:
        if key.startswith("act/") or key.startswith("grad_act/"):
            key = key + "/data"
        root.create_array(key, shape=(n, *shape), chunks=(1, *shape), dtype=dt, fill_value=0)
        if half:
            root.create_array(key.rsplit("/", 1)[0] + "/scale_" + key.rsplit("/", 1)[1],
                              shape=(n,), chunks=(1,), dtype="float32", fill_value=1)

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> "Store":
        path = pathlib.Path(path)
        if not path.exists():
            raise StoreError(f"no store at {path}; create one with `volviz capture --out {path}`")
        plan_file, manifest_file = path / "plan.json", path / "manifest.json"
        if not plan_file.exists():
            raise StoreError(f"{path} is not a volviz store (no plan.json); it may be empty or the "
                             "capture was killed before it started")
        manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else None
        plan = json.loads(plan_file.read_text())
        version = (manifest or plan).get("format_version", 0)
        if version > FORMAT_VERSION:
            raise StoreError(f"{path} was written by a newer volviz (store format {version}, this "
                             f"volviz reads up to {FORMAT_VERSION}); upgrade volviz to read it")
        return cls(path, plan, manifest, mode)

    # ---- writing ------------------------------------------------------------------------
    def _put(self, key: str, sl: slice, data: np.ndarray) -> None:
        arr = self.root[key]
        if arr.dtype == np.float16:
            flat = np.abs(np.nan_to_num(data.reshape(data.shape[0], -1), nan=0, posinf=0, neginf=0))
            scale = flat.max(axis=1) if flat.size else np.ones(data.shape[0])
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            parent, leaf = key.rsplit("/", 1)
            self.root[f"{parent}/scale_{leaf}"][sl] = scale
            data = data / scale.reshape(-1, *([1] * (data.ndim - 1)))
        arr[sl] = data.astype(arr.dtype)

    def write_batch(self, start: int, result, labels: np.ndarray, inputs: np.ndarray) -> None:
        """Write one BatchResult for images start..start+len; done flags last."""
        n = len(result.pred)
        sl = slice(start, start + n)
        self.root["probs"][sl] = result.probs
        self.root["pred"][sl] = result.pred
        self.root["target"][sl] = result.target
        self.root["label"][sl] = labels
        self.root["input"][sl] = inputs.astype(np.float16)
        for name, a in result.act.items():
            self._put(f"act/{name}/data", sl, a)
        for name, a in result.grad_act.items():
            self._put(f"grad_act/{name}/data", sl, a)
        for name, a in result.grad_weight.items():
            self._put(f"grad_weight/{name}/w", sl, a)
        for name, (u, v) in result.grad_weight_factors.items():
            self._put(f"grad_weight/{name}/u", sl, u)
            self._put(f"grad_weight/{name}/v", sl, v)
        self.root["done"][sl] = True
        self._done_cache = None

    def finalize(self, summary: dict) -> None:
        manifest = dict(self.plan, summary=summary, versions=versions(), complete=True)
        write_json_atomic(self.path / "manifest.json", manifest)
        self.manifest = manifest

    # ---- reading ------------------------------------------------------------------------
    @property
    def n_images(self) -> int:
        return len(self.plan["images"])

    @property
    def images(self) -> list[dict]:
        return self.plan["images"]

    @property
    def class_names(self) -> list[str] | None:
        return self.plan.get("class_names")

    @property
    def complete(self) -> bool:
        return self.manifest is not None and self.manifest.get("complete", False)

    @property
    def done(self) -> np.ndarray:
        if self._done_cache is None:
            self._done_cache = np.asarray(self.root["done"][:], dtype=bool)
        return self._done_cache

    def _check(self, layer: str | None, i: int) -> None:
        if layer is not None and layer not in self.layers:
            raise StoreError(f"layer {layer!r} is not in this store. Layers: {', '.join(self.layers)}")
        if not 0 <= i < self.n_images:
            raise StoreError(f"image index {i} out of range (store has {self.n_images} images)")
        if not self.done[i]:
            raise StoreError(f"image {i} was not captured yet (interrupted capture); run "
                             f"`volviz capture --resume --out {self.path}`")

    def read_rows(self, key: str, rows: np.ndarray) -> np.ndarray:
        """Rows (images) of one stored array as float32, float16 scale undone. One zarr selection
        for the whole batch (a slice when the rows are contiguous). Callers check ``done``."""
        rows = np.asarray(rows, dtype=np.int64)
        arr = self.root[key]
        contiguous = len(rows) and rows[-1] - rows[0] + 1 == len(rows)
        pick = (lambda a: a[rows[0]:rows[-1] + 1]) if contiguous else (lambda a: a.oindex[rows])
        out = np.asarray(pick(arr))
        if arr.dtype == np.float16:
            parent, leaf = key.rsplit("/", 1)
            scale = np.asarray(pick(self.root[f"{parent}/scale_{leaf}"]), dtype=np.float32)
            out = out.astype(np.float32) * scale.reshape(-1, *([1] * (out.ndim - 1)))
        return out.astype(np.float32, copy=False)

    def _get(self, key: str, i: int) -> np.ndarray:
        return self.read_rows(key, np.array([i]))[0]

    def has(self, quantity: str, layer: str) -> bool:
        group = _GROUP[quantity]
        try:
            self.root[f"{group}/{layer}"]
        except KeyError:
            return False
        return True

    def read(self, quantity: str, layer: str, i: int) -> np.ndarray:
        """One image's activation / gradient of one layer as float32."""
        if quantity not in QUANTITIES:
            raise StoreError(f"unknown quantity {quantity!r}; valid: {', '.join(QUANTITIES)}")
        self._check(layer, i)
        if not self.has(quantity, layer):
            raise StoreError(f"this store has no {quantity} for layer {layer!r} (captured without "
                             "gradients, or the layer has no weights)")
        if quantity == "grad_weight":
            if self.layers[layer].weight_factors:
                u = self._get(f"grad_weight/{layer}/u", i)
                v = self._get(f"grad_weight/{layer}/v", i)
                return np.outer(u, v)
            return self._get(f"grad_weight/{layer}/w", i)
        return self._get(f"{_GROUP[quantity]}/{layer}/data", i)

    def read_input(self, i: int) -> np.ndarray:
        """The preprocessed model input of image i, (C, H, W) float32 (normalization undone)."""
        self._check(None, i)
        x = np.asarray(self.root["input"][i], dtype=np.float32)
        return x

    def column(self, name: str) -> np.ndarray:
        """probs / pred / label / target for every image (rows of images not done are filler)."""
        return np.asarray(self.root[name][:])
