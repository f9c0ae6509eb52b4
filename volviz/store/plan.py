"""The typed plan of a capture: what was captured, from which model and images, how.

``plan.json`` is written before any data and is everything a resume needs. It is data a user may
have been sent: nothing in it is trusted to switch on pickle loading or code import (see
:meth:`ModelSpec.needs_trust`); the command line that reads it decides.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
from dataclasses import asdict, dataclass, field, fields

from volviz.errors import StoreError
from volviz.sources.images import ImageRecord
from volviz.sources.preprocess import Preprocess
from volviz.store.image_list import ImageList

FORMAT_VERSION = 3
#: store formats this volviz reads (1: before checksums and fingerprints; 2: the image list as
#: one dict per image, 3: as columns, see ``image_list.py``)
READABLE_FORMATS = (1, 2, 3)


@dataclass(frozen=True)
class LayerInfo:
    """One captured layer: its activation shape per image and how its weight gradient is kept."""

    name: str
    kind: str  # conv, linear, ... (layer_kind)
    module_type: str
    act_shape: tuple[int, ...]  # per image: (C, H, W) for conv, (N,) for linear
    weight_shape: tuple[int, ...] | None
    weight_factors: bool = False  # grad_weight stored as outer-product factors (Linear)
    weight_grad: bool = True  # per-image weight gradient stored (else only its filter norms)
    activation: bool = True  # per-image activation stored (else only its descriptor)
    descriptor: str | None = None  # pooled descriptor kept per image: meanmax, mean, max, full
    # a conv whose per-image input is smaller than its weight: the weight gradient is stored as
    # that input and rebuilt from it and the stored output gradient (exact; LeNet conv2: 8.7x fewer
    # bytes); ``conv`` is the geometry that rebuild needs (layout.CONV_GEOMETRY)
    weight_input: tuple[int, ...] | None = None
    conv: dict | None = None
    gradient: bool = True  # per-image activation-gradient volume stored (see store/keep.py)

    @property
    def weight_parts(self) -> dict[str, tuple[int, ...]]:
        """One image's weight gradient as stored: the conv's input, a Linear's outer-product
        factors, or the full tensor (the leaf names of its arrays, see ``layout.quantity_keys``)."""
        if self.weight_input:
            return {"x": self.weight_input}
        if self.weight_factors:
            return {"u": self.weight_shape[:1], "v": self.weight_shape[1:]}
        return {"w": self.weight_shape}

    @property
    def weight_values(self) -> int:
        """Values one image's stored weight gradient takes (0 for a layer without weights)."""
        return sum(math.prod(s) for s in self.weight_parts.values()) if self.weight_shape else 0

    @classmethod
    def from_dict(cls, d: dict) -> LayerInfo:
        return cls(
            d["name"],
            d["kind"],
            d["module_type"],
            tuple(d["act_shape"]),
            tuple(d["weight_shape"]) if d.get("weight_shape") else None,
            bool(d.get("weight_factors", False)),
            bool(d.get("weight_grad", True)),
            bool(d.get("activation", True)),
            d.get("descriptor"),
            tuple(d["weight_input"]) if d.get("weight_input") else None,
            dict(d["conv"]) if d.get("conv") else None,
            bool(d.get("gradient", True)),
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "module_type": self.module_type,
            "act_shape": list(self.act_shape),
            "weight_shape": list(self.weight_shape) if self.weight_shape else None,
            "weight_factors": self.weight_factors,
            "weight_grad": self.weight_grad,
            "activation": self.activation,
            "descriptor": self.descriptor,
            "weight_input": list(self.weight_input) if self.weight_input else None,
            "conv": self.conv,
            "gradient": self.gradient,
        }

    @property
    def descriptor_shape(self) -> tuple[int, ...]:
        """One image's descriptor: conv maps pooled over space (mean, max or both), else as is."""
        if self.descriptor == "full" or len(self.act_shape) != 3:
            return (int(math.prod(self.act_shape)),)
        return ((2 if self.descriptor == "meanmax" else 1) * self.act_shape[0],)


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild the model: the spec the user typed and the weights file (absolute)."""

    spec: str
    weights: str | None = None
    type: str = ""
    input_size: tuple[int, ...] | None = None
    class_names: list[str] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def needs_code(self) -> bool:
        """True when loading runs code named by the spec: a ``module:callable`` factory or a
        TorchScript file. A store is data; the user must allow this on the command line."""
        return spec_runs_code(self.spec)

    def describe(self) -> str:
        return f"{self.spec}  weights={self.weights}"


def spec_runs_code(spec: str) -> bool:
    """A factory (``pkg.mod:fn``) or a model file (TorchScript) runs code on load; a demo name or
    a torchvision architecture name does not.

    >>> [spec_runs_code(s) for s in ("digits", "resnet18", "os:getpid", "/tmp/model.pt")]
    [False, False, True, True]
    """
    from volviz.sources import demo

    if spec in demo.DEMO_NAMES:
        return False
    return ":" in spec or "/" in spec or pathlib.Path(spec).suffix != "" or os.path.exists(spec)


@dataclass
class Plan:
    """What a store holds and how it was made. ``settings`` is the capture's full recipe (for
    resume); the typed fields are what readers use."""

    model: ModelSpec
    preprocess: Preprocess
    layers: list[LayerInfo]
    images: ImageList  # a list of ImageRecord is turned into one
    n_outputs: int
    batch_size: int = 32
    dtype: str = "float32"
    gradients: bool = True
    weight_gradients: bool = True
    target: str = "true"
    class_names: list[str] | None = None
    label_names: list[str] | None = None
    skipped: list[dict] = field(default_factory=list)
    bytes_per_image: int = 0
    settings: dict = field(default_factory=dict)
    fingerprints: dict = field(default_factory=dict)  # weights / image list hashes (resume check)
    compress: bool = False  # zstd on the per-image arrays
    memory: object = field(default=None, repr=False, compare=False)  # the capture's MemoryPlan (not saved)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.images = ImageList.from_records(self.images)

    # ---- (de)serialization --------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format_version": self.format_version,
            "model": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.model).items()},
            "preprocess": self.preprocess.to_dict(),
            "layers": [info.to_dict() for info in self.layers],
            "images": self.images.to_dict(),
            "n_outputs": self.n_outputs,
            "batch_size": self.batch_size,
            "dtype": self.dtype,
            "gradients": self.gradients,
            "weight_gradients": self.weight_gradients,
            "target": self.target,
            "class_names": self.class_names,
            "label_names": self.label_names,
            "skipped": self.skipped,
            "bytes_per_image": self.bytes_per_image,
            "settings": self.settings,
            "fingerprints": self.fingerprints,
            "compress": self.compress,
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "plan.json") -> Plan:
        try:
            settings = d.get("settings", {})
            return cls(
                model=ModelSpec.from_dict(d["model"]),
                preprocess=preprocess_from_dict(d["preprocess"]),
                layers=[LayerInfo.from_dict(x) for x in d["layers"]],
                images=ImageList.from_dict(d["images"]),
                n_outputs=int(d["n_outputs"]),
                batch_size=int(d.get("batch_size", 32)),
                dtype=d.get("dtype", "float32"),
                gradients=bool(d.get("gradients", True)),
                weight_gradients=bool(d.get("weight_gradients", True)),
                target=str(d.get("target", settings.get("target", "true"))),
                class_names=d.get("class_names"),
                label_names=d.get("label_names"),
                skipped=list(d.get("skipped", [])),
                bytes_per_image=int(d.get("bytes_per_image", 0)),
                settings=dict(settings),
                fingerprints=dict(d.get("fingerprints", {})),
                compress=bool(d.get("compress", False)),
                format_version=int(d.get("format_version", 1)),
            )
        except KeyError as exc:
            raise StoreError(
                f"{source} has no {exc.args[0]!r} entry: the store is damaged or was not "
                "written by volviz; capture it again with `volviz capture --out NEW`"
            ) from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise StoreError(
                f"{source} has an invalid entry ({str(exc)[:120]}): the store is damaged; "
                "capture it again with `volviz capture --out NEW`"
            ) from None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.preprocess.channels, *self.preprocess.size)


def preprocess_from_dict(p: dict) -> Preprocess:
    """Preprocess from its stored dict; keys a newer preprocessing adds are passed through."""
    p = dict(p)
    for k in ("size", "mean", "std"):
        if p.get(k) is not None:
            p[k] = tuple(p[k])
    known = {f.name for f in fields(Preprocess)}
    return Preprocess(**{k: v for k, v in p.items() if k in known})


def read_json(path: pathlib.Path) -> dict:
    """A store's JSON file; a damaged one is named in a one-line error."""
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(
            f"{path} is not valid JSON ({exc.__class__.__name__} at {str(exc)[:80]}): the store "
            "is damaged; capture it again, or restore the file from a backup"
        ) from None
    if not isinstance(obj, dict):
        raise StoreError(f"{path} does not hold a JSON object: the store is damaged")
    return obj


# ---- fingerprints: refuse a resume whose inputs changed ---------------------------------
def file_sha256(path: str | os.PathLike | None) -> str | None:
    """Content hash of a weights file (None for no file). Streaming: memory stays flat."""
    if not path or not os.path.isfile(path):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def images_fingerprint(records: ImageList | list[ImageRecord]) -> str:
    """Hash of the image list: path, frame, label, and each file's size and mtime (cheap for
    100k files; a re-encoded or replaced image changes it). Read from the columns, no record
    built; the bytes hashed are those of every earlier volviz, so old stores still resume."""
    images = ImageList.from_records(records)
    h = hashlib.sha256()
    seen: dict[str, tuple] = {}
    for path, frame, label in zip(images.paths, images.frames, images.labels.tolist()):
        stat = seen.get(path)
        if stat is None:
            try:
                st = os.stat(path)
                stat = seen[path] = (st.st_size, st.st_mtime_ns)
            except OSError:
                stat = seen[path] = (-1, -1)
        h.update(f"{path}\0{frame}\0{label}\0{stat}\n".encode())
    return h.hexdigest()


def fingerprints(weights: str | None, records: ImageList | list[ImageRecord]) -> dict:
    return {
        "weights_path": weights,
        "weights_sha256": file_sha256(weights),
        "images_sha256": images_fingerprint(records),
    }


def check_fingerprints(plan: Plan, store_path: pathlib.Path) -> None:
    """Before a resume: the weights and the images must be those the store started with."""
    if not plan.fingerprints:
        return  # written before fingerprints existed
    now = fingerprints(plan.fingerprints.get("weights_path", plan.model.weights), plan.images)
    changed = [
        what
        for what, key in (("the weights file", "weights_sha256"), ("the image files", "images_sha256"))
        if plan.fingerprints.get(key) != now[key]
    ]
    if changed:
        raise StoreError(
            f"cannot resume {store_path}: {' and '.join(changed)} changed since the capture started, "
            "so the store would mix two inputs; capture into a new folder (or restore them)"
        )
