"""The whole capture: plan (model, images, layers, settings) -> batches -> store, resumable.

Everything a resume needs is in the store's plan.json, so ``resume_capture(path)`` needs only the
user's trust flags and recomputes exactly the images whose ``done`` flag is not set. Everything
that can be checked is checked before the store is created (a wrong ``--target`` leaves nothing
behind), and a resume is refused when the weights or the images changed since the start.
"""

from __future__ import annotations

import logging
import math
import os
import pathlib
from dataclasses import dataclass, field

import torch

from volviz.capture.engine import model_logits
from volviz.capture.layers import layer_kind, select_layers, type_name
from volviz.capture.memory import fmt_bytes
from volviz.capture.tap import LayerTap
from volviz.errors import CaptureError, StoreError
from volviz.sources.images import ImageRecord, discover_images, read_image
from volviz.sources.models import LoadedModel, load_model
from volviz.sources.preprocess import Preprocess
from volviz.store.decoded import DecodedImages, check_images
from volviz.store.execute import capture_module, execute
from volviz.store.keep import IMAGE_BUDGET, choose_kept, fit_image_budget
from volviz.store.plan import LayerInfo, ModelSpec, Plan, check_fingerprints, fingerprints
from volviz.store.store import Store

log = logging.getLogger("volviz.capture")


@dataclass
class CaptureSettings:
    model: str = "digits"
    weights: str | None = None
    images: list[str] = field(default_factory=list)  # empty: the demo model's shipped test images
    layers: list[str] | None = None
    layer_types: list[str] | None = None
    target: str = "true"
    batch_size: int = 32
    dtype: str = "auto"  # float32, float16, or auto: float32 unless over image_budget (store/keep.py)
    gradients: bool = True
    weight_gradients: bool = True
    size: tuple[int, int] | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: str | None = None  # None: the model's preset (torchvision weights), else plain resize
    layout: str = "auto"  # folders: auto (class folders or flat), flat, classes
    class_names_file: str | None = None
    trust_pickle: bool = False  # applies to THIS command only; never read back from a store
    video_stride: int = 1
    max_images: int | None = None
    memory_budget: int | None = None  # bytes one batch may use; None: half the available RAM
    # what the store keeps: full per-image weight gradients only for these layers (None: the
    # first layers that fit weight_grad_budget per image; ["all"]: every layer), filter norms of
    # every layer's; pooled descriptors of ``descriptors`` (``descriptors_only``: nothing else)
    weight_grad_layers: list[str] | None = None
    weight_grad_budget: int = 1 << 20
    descriptors: list[str] | None = None
    pool: str = "meanmax"
    descriptors_only: bool = False
    store_budget: int | None = None  # bytes the whole store may take; None: 90% of the free disk
    image_budget: int | None = IMAGE_BUDGET  # bytes one image may take (store/keep.py); None: no limit
    compress: bool = False  # zstd on the arrays: a third smaller, half the write rate


def build_preprocess(loaded: LoadedModel, s: CaptureSettings) -> Preprocess:
    c = s.channels or (loaded.input_size[0] if loaded.input_size else None)
    size = s.size or (tuple(loaded.input_size[1:]) if loaded.input_size else None)
    if c is None or size is None:
        raise CaptureError(
            f"model {s.model!r} does not say which input it expects; pass --size H W "
            "and --channels C (and --mean/--std for its normalization)"
        )
    if getattr(loaded, "preprocess", None) is not None:  # torchvision weights' own transforms
        return loaded.preprocess.with_overrides(size=s.size, channels=s.channels, mean=s.mean, std=s.std, mode=s.resize)
    return Preprocess(tuple(size), c, s.mean or loaded.mean, s.std or loaded.std, s.resize or "resize")


def count_calls(model: torch.nn.Module, layers: list[str], x: torch.Tensor) -> dict[str, int]:
    """How often each layer runs in one forward pass (a shared module, e.g. torchvision's
    BasicBlock.relu, runs more than once and has no single activation)."""
    modules = dict(model.named_modules())
    calls = {n: 0 for n in layers}
    handles = [modules[n].register_forward_hook(lambda *_, n=n: calls.__setitem__(n, calls[n] + 1)) for n in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return calls


def drop_shared(model, layers: list[str], x: torch.Tensor, exact: list[str]) -> list[str]:
    """Remove shared modules picked by a glob or type (with a warning); named exactly, they are an error."""
    calls = count_calls(model, layers, x)
    shared = [n for n in layers if calls[n] > 1]
    for n in shared:
        if n in exact:
            raise CaptureError(
                f"layer {n} runs {calls[n]} times per forward pass (a shared module), so "
                "its activation is ambiguous; select the layers around it"
            )
        log.warning("leaving out %s: it runs %d times per forward pass (shared module)", n, calls[n])
    kept = [n for n in layers if n not in shared]
    if not kept:
        raise CaptureError("every selected layer is a shared module; select other layers")
    return kept


def probe_layers(model: torch.nn.Module, layers: list[str], x: torch.Tensor) -> list[LayerInfo]:
    """Run one image to learn each layer's activation shape and whether its weight gradient can
    be stored as outer-product factors."""
    modules = dict(model.named_modules())
    with LayerTap(model, layers, keep_inputs=set(layers)) as tap, torch.no_grad():
        model(x)
    out = []
    for name in layers:
        rec = tap.records.get(name)
        if rec is None:
            raise CaptureError(f"layer {name} does not run in the model's forward pass")
        m = modules[name]
        w = getattr(m, "weight", None)
        w_shape = tuple(w.shape) if isinstance(w, torch.nn.Parameter) else None
        factors = isinstance(m, torch.nn.Linear) and rec.input is not None and rec.input.dim() == 2
        info = LayerInfo(name, layer_kind(m), type_name(m), tuple(rec.output.shape[1:]), w_shape, bool(factors))
        out.append(_stored_as_input(info, m, rec.input))
    return out


def _stored_as_input(info: LayerInfo, m: torch.nn.Module, inp: torch.Tensor | None) -> LayerInfo:
    """A plain conv whose per-image input has fewer values than its weight keeps that input in
    place of the weight gradient (rebuilt exactly on read, see ``Store.read_batch``)."""
    import dataclasses

    from volviz.capture.persample import CONV_TYPES
    from volviz.store.layout import CONV_GEOMETRY

    # exactly a torch conv (a subclass may compute something else from the same weight)
    if type(m) not in CONV_TYPES or inp is None or math.prod(inp.shape[1:]) >= math.prod(info.weight_shape):
        return info
    geometry = {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(m, k)) for k in CONV_GEOMETRY)}
    return dataclasses.replace(info, weight_input=tuple(inp.shape[1:]), conv=geometry)


def _absolute(spec: str) -> str:
    """A file spec (TorchScript) as an absolute path, so a resume from another folder finds it."""
    return str(pathlib.Path(spec).absolute()) if ":" not in spec and pathlib.Path(spec).exists() else spec


def validate_settings(s: CaptureSettings) -> None:
    if s.max_images is not None and s.max_images < 1:
        raise CaptureError(f"--max-images must be at least 1 (got {s.max_images}); leave it out to capture every image")
    if s.batch_size < 1:
        raise CaptureError(f"--batch-size must be at least 1 (got {s.batch_size})")
    if s.video_stride < 1:
        raise CaptureError(f"--video-stride must be at least 1 (got {s.video_stride})")
    from volviz.store.layout import POOLS

    if s.pool not in POOLS:
        raise CaptureError(f"--pool must be one of {', '.join(POOLS)} (got {s.pool!r})")
    if s.dtype not in ("auto", "float32", "float16"):
        raise CaptureError(f"the store's dtype must be auto, float32 or float16 (got {s.dtype!r})")
    if s.image_budget is not None and s.image_budget < 0:
        raise CaptureError(f"--image-budget-mb must be 0 (no limit) or more (got {s.image_budget / 1e6:g})")
    if s.descriptors_only and not s.descriptors:
        raise CaptureError("--descriptors-only needs --descriptors LAYER ... (the layers whose descriptors to keep)")
    if s.descriptors_only:
        s.gradients = s.weight_gradients = False


def check_store_size(plan: Plan, out: pathlib.Path, budget: int | None) -> int:
    """The store's projected size; refused beyond ``budget`` (default: 90% of the free disk)."""
    import shutil

    from volviz.store.contents import projected_bytes

    total = projected_bytes(plan)
    where = out
    while not where.exists():
        where = where.parent
    limit = budget if budget is not None else int(shutil.disk_usage(where).free * 0.9)
    if total > limit:
        raise CaptureError(
            f"the store would take up to {fmt_bytes(total)} ({fmt_bytes(total / max(1, len(plan.images)))} per image), "
            f"over the {'--store-budget-gb of ' if budget is not None else '90% of the free disk, '}"
            f"{fmt_bytes(limit)}; "
            "keep fewer weight gradients (--weight-grads LAYER ..., --no-weight-grads), use --float16, "
            "fewer --layers, or raise --store-budget-gb"
        )
    return total


def plan_capture(
    s: CaptureSettings, progress: bool = True, keep: DecodedImages | None = None
) -> tuple[Plan, LoadedModel, Preprocess]:
    """Load, discover and check everything; nothing is written. ``keep``: where the decoded images
    are kept for the capture."""
    from volviz.sources import demo

    validate_settings(s)
    if s.weights:
        s.weights = str(pathlib.Path(s.weights).absolute())
    s.images = [str(pathlib.Path(p).absolute()) for p in s.images]
    loaded = load_model(s.model, s.weights, trust_pickle=s.trust_pickle)
    if s.class_names_file:
        from volviz.sources.classes import read_class_file

        table = read_class_file(s.class_names_file)
        loaded.class_names, loaded.wordnet_ids = table.names, table.wordnet_ids
    layers = select_layers(loaded.module, s.layers, s.layer_types)  # cheap: fail before reading images
    if s.descriptors:
        extra = select_layers(loaded.module, s.descriptors, None)
        layers = extra if s.descriptors_only else list(dict.fromkeys(layers + extra))
    paths = s.images or ([str(demo.demo_capture_dir(s.model))] if s.model in demo.DEMO_NAMES else [])
    if not paths:
        raise CaptureError("no images given: pass --images FOLDER|FILE|VIDEO ...")
    imageset = discover_images(
        paths,
        class_names=loaded.class_names,
        wordnet_ids=getattr(loaded, "wordnet_ids", None),
        video_stride=s.video_stride,
        layout=s.layout,
    )
    prep = build_preprocess(loaded, s)
    records, skipped = check_images(imageset.records, prep, progress, s.max_images, keep)
    skipped = list(getattr(imageset, "skipped", [])) + skipped
    if s.max_images:
        records = records[: s.max_images]
    if not records:
        raise CaptureError(f"none of the {len(imageset.records)} files could be read as images")
    first = prep(read_image(records[0]))[None]
    layers = drop_shared(loaded.module, layers, first, exact=list(s.layers or []))
    if loaded.extra.get("random_weights"):
        log.warning("%s has RANDOM weights (no --weights given): fine for testing, meaningless otherwise", s.model)
    layer_infos = choose_kept(probe_layers(loaded.module, layers, first), s)
    with torch.no_grad():
        n_outputs = model_logits(loaded.module(first), len(loaded.class_names) if loaded.class_names else None).shape[1]
    if s.class_names_file:
        from volviz.sources.classes import check_class_count

        check_class_count(loaded.class_names, n_outputs)
    folder_names = imageset.class_names
    class_names = loaded.class_names or (folder_names if folder_names and len(folder_names) == n_outputs else None)
    too_big = [r for r in records if r.label >= n_outputs]
    if too_big:
        log.warning(
            "%d images have labels beyond the model's %d outputs; they count as unlabelled", len(too_big), n_outputs
        )
        records = [r if r.label < n_outputs else ImageRecord(r.id, r.path, -1, r.frame) for r in records]
    _check_one_batch(loaded, first, records[0], layers, s, class_names)
    from volviz.capture.memory import plan_memory

    memory = plan_memory(
        loaded.module,
        first,
        layers,
        requested=s.batch_size,
        budget=s.memory_budget,
        gradients=s.gradients,
        weight_gradients=s.weight_gradients,
    )
    per_image, batch = memory.per_image, memory.batch_size
    if batch < s.batch_size:
        log.warning("batch size %d: %s", batch, memory.reason)
    described = dict(loaded.describe(), spec=_absolute(loaded.spec))
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(s).items() if k != "trust_pickle"}
    plan = Plan(
        model=ModelSpec.from_dict(described),
        preprocess=prep,
        layers=layer_infos,
        images=records,
        n_outputs=int(n_outputs),
        batch_size=batch,
        dtype=s.dtype,
        gradients=s.gradients,
        weight_gradients=s.weight_gradients,
        target=str(s.target),
        class_names=class_names,
        label_names=folder_names,
        skipped=skipped,
        bytes_per_image=per_image,
        settings=settings,
        fingerprints=fingerprints(s.weights or loaded.weights, records),
        compress=s.compress,
    )
    from volviz.store.contents import bytes_per_image

    fit_image_budget(plan, s)
    memory.store_per_image = bytes_per_image(plan)
    plan.memory = memory
    return plan, loaded, prep


def _check_one_batch(
    loaded: LoadedModel, x: torch.Tensor, record: ImageRecord, layers: list[str], s: CaptureSettings, class_names
) -> None:
    """Run the first image through the real capture: a wrong target or a layer the output does not
    depend on differentiably is found before anything is written."""
    capture_module(
        loaded.module,
        x,
        layers,
        s.target,
        torch.tensor([record.label]),
        class_names,
        s.gradients,
        s.weight_gradients,
        None,
    )


def _run(
    store: Store,
    loaded,
    prep,
    progress: bool,
    workers: int | None,
    scheduler: str | None,
    trust: dict,
    decoded: DecodedImages | None = None,
) -> Store:
    if (workers and workers > 1) or scheduler:
        from volviz.store.distributed import capture_on_dask

        return capture_on_dask(store, workers=workers, scheduler=scheduler, trust=trust, progress=progress)
    return execute(store, loaded, prep, progress, decoded)


def run_capture(
    out: str | os.PathLike,
    s: CaptureSettings,
    *,
    overwrite: bool = False,
    progress: bool = True,
    workers: int | None = None,
    scheduler: str | None = None,
) -> Store:
    """Plan (check everything), create the store, capture. Never deletes what volviz did not create."""
    from volviz.store.folder import prepare_folder_check

    prepare_folder_check(pathlib.Path(out), overwrite)  # refuse early, before minutes of planning
    distributed = bool((workers and workers > 1) or scheduler)
    decoded = None if distributed else DecodedImages()  # workers decode their own images
    plan, loaded, prep = plan_capture(s, progress, decoded)
    size = check_store_size(plan, pathlib.Path(out), s.store_budget)
    if progress:
        import sys

        print(
            f"capturing {len(plan.images)} images into {out}: at most {fmt_bytes(size)} "
            f"({fmt_bytes(size / len(plan.images))} per image), batch {plan.batch_size}",
            file=sys.stderr,
        )
    store = Store.create(out, plan, overwrite=overwrite)
    # workers load the model from the store: the user typed this spec, so it is trusted for them
    trust = {"trust_pickle": s.trust_pickle, "trust_factory": True}
    return _run(store, loaded, prep, progress, workers, scheduler, trust, decoded)


def resume_capture(
    out: str | os.PathLike,
    progress: bool = True,
    *,
    trust_pickle: bool = False,
    trust_factory: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
) -> Store:
    """Complete an interrupted capture; the trust flags are the user's, for this command."""
    store = Store.open(out, mode="r+")
    if store.complete:
        log.info("%s is already complete (%d images)", out, store.n_images)
        return store
    check_fingerprints(store.plan, store.path)
    trust = {"trust_pickle": trust_pickle, "trust_factory": trust_factory}
    loaded = store.model(**trust)
    return _run(store, loaded, store.preprocess, progress, workers, scheduler, trust)


def open_or_capture(
    path: str | os.PathLike, settings: CaptureSettings | None = None, *, progress: bool = True
) -> Store:
    """The store at ``path``: opened, completed if interrupted, or captured if the folder is new or
    empty. Anything else (a folder of the user's, a store from a newer volviz) is an error that says
    why; nothing is ever deleted. Used by ``demo``, ``serve`` and scene files alike."""
    path = pathlib.Path(path)
    if path.is_dir() and (path / "plan.json").exists():
        store = Store.open(path)
        return store if store.complete else resume_capture(path, progress)
    from volviz.store.folder import prepare_folder_check

    prepare_folder_check(path, overwrite=False)
    log.warning("capturing %s into %s", (settings or CaptureSettings()).model, path)
    return run_capture(path, settings or CaptureSettings(), progress=progress)


__all__ = [
    "CaptureSettings",
    "CaptureError",
    "StoreError",
    "run_capture",
    "resume_capture",
    "plan_capture",
    "open_or_capture",
]
