"""volviz command line: one subcommand per job, each a thin layer over the library.

Run ``volviz COMMAND --help`` for the options of one command.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys

EPILOG = """\
typical session:
  volviz capture --out stores/digits            # the embedded LeNet on its 200 test digits
  volviz info stores/digits                     # what is inside
  volviz render stores/digits --out conv1.png   # first conv layer, first image, as a 3D volume
  volviz render stores/digits --layer conv2 --order kmeans --quantity grad_activation --out g.png
  volviz movie stores/digits --layer conv2 --mode images --out conv2.mp4
  volviz serve stores/digits                    # the explorer app: http://127.0.0.1:8080/
  volviz importance stores/digits --out out/imp # per-filter importance; also prune, saliency, groups
  volviz optimize stores/digits                 # preferred input of every unit, into the store
  volviz graph stores/digits --out graph.png    # the network as a node-edge graph
  volviz movie scenes/digits_flythrough.toml --out fly.mp4

your own model:
  volviz capture --model resnet18 --weights resnet18.pth --images photos/ --out stores/r18
  volviz capture --model mypkg.nets:build --weights w.safetensors --images a.png b.png --size 64 64 --channels 3 --out s
"""

from volviz.errors import UserError, VolvizError  # noqa: E402


def setup_torch_threads(n: int | None = None) -> None:
    """torch threads for a command: ``n``, or every core but one (left to rendering / the shell)."""
    import torch

    cores = os.cpu_count() or 1
    torch.set_num_threads(n or max(1, cores - 1))


# ---- capture / info ---------------------------------------------------------------------
def add_capture(sub) -> None:
    p = sub.add_parser(
        "capture",
        help="run images through a model and store activations and gradients",
        description="Run a batch of images through a model and store, per selected layer, "
        "activations, the gradient of one output neuron w.r.t. the activations and w.r.t. "
        "the weights (per image, computed batched), and class probabilities.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("--out", required=True, help="store folder to create (or to complete with --resume / --repair)")
    p.add_argument(
        "--model",
        default="digits",
        help="digits | faces (embedded), a torchvision name (resnet18), package.module:factory, "
        "or a TorchScript file (default: digits)",
    )
    p.add_argument("--weights", help="state_dict (.pt/.pth, loaded with weights_only=True) or .safetensors")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a pickled full model as weights (runs code from the file: trusted files only)",
    )
    p.add_argument(
        "--images",
        nargs="+",
        default=[],
        help="ImageFolder tree, flat folder, image files or video files (default: the demo "
        "model's shipped test images)",
    )
    p.add_argument("--layers", nargs="+", help="layer names or globs (default: every conv and linear layer)")
    p.add_argument(
        "--layer-types",
        nargs="+",
        help="keep layers of these types: conv, linear, relu, pool, bn, or a class name such as Conv2d",
    )
    p.add_argument(
        "--target",
        default="true",
        help="output neuron whose gradients are taken: true (each image's label), pred, a class "
        "index or a class name (default: true)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    precision = p.add_mutually_exclusive_group()
    precision.add_argument(
        "--float16",
        action="store_true",
        help="store the volumes as float16 (per-image scaled; default: float32 "
        "unless one image is over --image-budget-mb)",
    )
    precision.add_argument("--float32", action="store_true", help="store the volumes as float32 whatever their size")
    p.add_argument("--no-grads", action="store_true", help="store activations only")
    p.add_argument("--no-weight-grads", action="store_true", help="skip per-image weight gradients")
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), help="model input size")
    p.add_argument("--channels", type=int, help="model input channels (1 grey, 3 RGB, or N)")
    p.add_argument("--mean", nargs="+", type=float, help="normalization mean per channel ([0,1] pixels)")
    p.add_argument("--std", nargs="+", type=float, help="normalization std per channel")
    p.add_argument(
        "--resize",
        choices=["resize", "scale_crop", "resize_crop"],
        help="resize: plain resize (default for models without a preset); scale_crop: scale the "
        "smaller side to the input size keeping the aspect ratio, then centre-crop "
        "[PreferredInputs2016]; resize_crop: torchvision's Resize(short side) + CenterCrop (the "
        "default for a torchvision name, from its weights' transforms)",
    )
    p.add_argument(
        "--class-names",
        metavar="FILE",
        help="the model's class names: a text file (one per line), "
        "a JSON list, imagenet_class_index.json or synset_words.txt; class folders are matched to "
        "them by name",
    )
    p.add_argument(
        "--layout",
        choices=["auto", "flat", "classes"],
        default="auto",
        help="a folder of images: class sub-folders (classes), every image below it unlabelled "
        "(flat), or decided by what it holds (auto, default; a warning says what was ignored)",
    )
    p.add_argument("--video-stride", type=int, default=1, help="use every k-th frame of videos")
    p.add_argument("--max-images", type=int, help="capture at most this many images")
    p.add_argument(
        "--memory-budget-gb", type=float, help="working memory one batch may use (default: half the available RAM)"
    )
    g = p.add_argument_group("what the store keeps (sizes: see the projected size printed before the capture)")
    g.add_argument(
        "--weight-grads",
        nargs="+",
        metavar="LAYER",
        help="store full per-image weight gradients of "
        "these layers (or: all); default: the first layers whose gradients fit --weight-grad-budget-mb "
        "per image. Every layer's per-filter gradient norms (what importance needs) are always kept",
    )
    g.add_argument(
        "--weight-grad-budget-mb",
        type=float,
        default=1.0,
        help="per-image budget for the default choice of --weight-grads (default 1 MB)",
    )
    g.add_argument(
        "--descriptors",
        nargs="+",
        metavar="LAYER",
        help="also keep one pooled descriptor row per image of these layers (the dataset view: embed, neighbours)",
    )
    g.add_argument(
        "--pool",
        default="meanmax",
        choices=["meanmax", "mean", "max", "full"],
        help="descriptor of a conv layer: spatial mean and max (default), mean, max, or the full map",
    )
    g.add_argument(
        "--descriptors-only",
        action="store_true",
        help="keep only the --descriptors layers' "
        "descriptors and the probabilities: thousands to 100k+ images, cheaply",
    )
    g.add_argument(
        "--compress",
        action="store_true",
        help="zstd-compress the arrays: about a third smaller for activations and gradients, about half the write rate",
    )
    g.add_argument(
        "--image-budget-mb",
        type=float,
        default=2.0,  # volviz.store.keep.IMAGE_BUDGET (not imported here: --help stays fast)
        help="bytes one image may take in the store, in MB (10^6 bytes; default %(default)g; 0: no limit). Over "
        "it the capture keeps, in this order, float16 volumes, fewer full weight gradients, fewer "
        "activation-gradient volumes (largest maps first); filter norms and activations stay",
    )
    g.add_argument(
        "--store-budget-gb",
        type=float,
        help="refuse a store projected larger than this (default: 90%% of the free disk)",
    )
    g = p.add_argument_group("more than one process (dask.distributed)")
    g.add_argument(
        "--workers",
        type=int,
        help="capture on a local Dask cluster of N worker processes (each writes its own shards of the store)",
    )
    g.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="use a running Dask scheduler (tcp://host:8786); its "
        "workers need volviz, the model and the images at the same paths (see docs/scale.md)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="plan only: print the memory one batch needs, the "
        "batch size chosen and why, and the projected store size; write nothing",
    )
    p.add_argument("--resume", action="store_true", help="complete an interrupted capture in --out")
    p.add_argument(
        "--repair",
        action="store_true",
        help="check every chunk of the store in --out and capture again the images whose data is damaged or missing",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing store (only a folder that holds a volviz store and nothing else)",
    )
    p.add_argument(
        "--trust-factory",
        action="store_true",
        help="with --resume/--repair: allow the store's "
        "model spec to import a package.module:factory or load a TorchScript file",
    )
    p.set_defaults(func=cmd_capture)


def cmd_capture(a) -> int:
    from volviz.store.capture import CaptureSettings, resume_capture, run_capture

    setup_torch_threads()
    trust = {"trust_pickle": a.trust_pickle, "trust_factory": a.trust_factory}
    many = {"workers": a.workers, "scheduler": a.scheduler}
    if a.workers is not None and a.workers < 1:
        raise UserError(f"--workers must be at least 1 (got {a.workers})")
    if a.repair:
        from volviz.store.verify import repair_store

        store = repair_store(a.out, **trust)
    elif a.resume:
        store = resume_capture(a.out, **trust, **many)
    else:
        s = CaptureSettings(
            model=a.model,
            weights=a.weights,
            images=a.images,
            layers=a.layers,
            layer_types=a.layer_types,
            target=a.target,
            batch_size=a.batch_size,
            dtype="float16" if a.float16 else "float32" if a.float32 else "auto",
            gradients=not a.no_grads,
            weight_gradients=not (a.no_grads or a.no_weight_grads),
            size=tuple(a.size) if a.size else None,
            channels=a.channels,
            mean=tuple(a.mean) if a.mean else None,
            std=tuple(a.std) if a.std else None,
            resize=a.resize,
            layout=a.layout,
            class_names_file=a.class_names,
            trust_pickle=a.trust_pickle,
            video_stride=a.video_stride,
            max_images=a.max_images,
            memory_budget=int(a.memory_budget_gb * (1 << 30)) if a.memory_budget_gb else None,
            weight_grad_layers=a.weight_grads,
            weight_grad_budget=int(a.weight_grad_budget_mb * (1 << 20)),
            descriptors=a.descriptors,
            pool=a.pool,
            descriptors_only=a.descriptors_only,
            compress=a.compress,
            store_budget=int(a.store_budget_gb * (1 << 30)) if a.store_budget_gb is not None else None,
            image_budget=int(a.image_budget_mb * 1e6) if a.image_budget_mb else None,
        )
        if a.dry_run:
            return dry_run(a.out, s)
        store = run_capture(a.out, s, overwrite=a.overwrite, **many)
    print(describe_store(store, short=True))
    return 0


def dry_run(out, s) -> int:
    """``volviz capture --dry-run``: everything checked and planned, nothing written."""

    from volviz.capture.memory import describe_memory_plan, fmt_bytes
    from volviz.store.capture import check_store_size, plan_capture
    from volviz.store.folder import prepare_folder_check

    prepare_folder_check(pathlib.Path(out), overwrite=True)
    plan, _, _ = plan_capture(s)
    size = check_store_size(plan, pathlib.Path(out), s.store_budget)
    print(describe_memory_plan(plan.memory))
    kept = [i.name for i in plan.layers if i.weight_grad and i.weight_shape]
    print(
        f"store             {len(plan.images)} images, at most {fmt_bytes(size)} "
        f"({fmt_bytes(size / max(1, len(plan.images)))} per image) in {out}"
    )
    print(f"weight gradients  full for {', '.join(kept) or 'no layer'}; filter norms for every layer")
    print("dry run: nothing was written")
    return 0


def describe_store(store, short: bool = False) -> str:
    import numpy as np

    p = store.plan
    done = store.done
    lines = [
        f"store       {store.path}",
        "status      "
        + ("complete" if store.complete else f"INCOMPLETE: resume with volviz capture --resume --out {store.path}"),
        f"model       {p.model.describe()}",
        f"images      {int(done.sum())}/{store.n_images} captured, {len(p.skipped)} skipped",
        f"target      {p.target}   dtype {p.dtype}   gradients {p.gradients}",
    ]
    if store.summary.get("accuracy") is not None:
        lines.append(f"accuracy    {store.summary['accuracy']:.3f} on labelled images")
    if store.class_names:
        names = store.class_names
        lines.append(
            f"classes     {', '.join(names[:12])}" + (f", ... ({len(names)} names)" if len(names) > 12 else "")
        )
    for layer, bad in (store.summary.get("nonfinite") or {}).items():
        lines.append(f"WARNING     {layer}: {bad} NaN/Inf activation values (rendered clamped, flagged in views)")
    lines.append("layers:")
    for info in store.layers.values():
        w = "x".join(map(str, info.weight_shape)) if info.weight_shape else "-"
        lines.append(
            f"  {info.name:<28} {info.module_type:<10} act {'x'.join(map(str, info.act_shape)):<14} weight {w}"
        )
    if not short:
        for s in p.skipped:
            lines.append(f"skipped     {s['path']}: {s['reason']}")
        if store.manifest:
            v = store.manifest.get("versions", {})
            lines.append("versions    " + ", ".join(f"{k} {v[k]}" for k in v))
        if done.any():
            labels, pred = store.column("label"), store.column("pred")
            names = store.class_names
            lines.append("first images:")
            for i in np.flatnonzero(done)[:5]:
                im = store.images[i]
                t = names[labels[i]] if names and labels[i] >= 0 else labels[i]
                pr = names[pred[i]] if names else pred[i]
                lines.append(f"  [{i}] {im.id}  true={t} pred={pr}")
    return "\n".join(lines)


def add_info(sub) -> None:
    p = sub.add_parser(
        "info",
        help="print what a store holds",
        description="Print a store's model, images, layers and accuracy. --verify reads every "
        "chunk and checks its checksum (exit 1 when damage is found).",
    )
    p.add_argument("store")
    p.add_argument("--verify", action="store_true", help="read and check every chunk of every captured image")
    p.set_defaults(func=cmd_info)


def cmd_info(a) -> int:
    from volviz.store.store import Store

    store = Store.open(a.store)
    print(describe_store(store))
    if a.verify:
        from volviz.store.verify import verify_store

        report = verify_store(store)
        print(report.text())
        return 0 if report.ok else 1
    return 0


# ---- demo models ------------------------------------------------------------------------
def add_train_demo(sub) -> None:
    p = sub.add_parser("train-demo", help="(re)train the embedded demo models into data/")
    p.add_argument("name", nargs="?", default="all", help="digits | faces | all (default all)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_demo)


def cmd_train_demo(a) -> int:
    from volviz.sources import demo
    from volviz.sources.demo_training import train_demo

    names = demo.DEMO_NAMES if a.name == "all" else [a.name]
    for n in names:
        if n not in demo.DEMO_NAMES:
            raise UserError(f"unknown demo model {n!r}; valid: {', '.join(demo.DEMO_NAMES)}, all")
        print(n, train_demo(n, epochs=a.epochs, seed=a.seed))
    return 0


def _command_modules() -> list:
    """Subcommands that live next to their features register themselves here (volviz/commands/)."""
    import importlib
    import pkgutil

    import volviz.commands as pkg

    modules = [importlib.import_module(f"volviz.commands.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)]
    return [m for m in modules if hasattr(m, "register")]  # common.py holds shared helpers


COMMANDS = [add_capture, add_info, add_train_demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="volviz",
        description="Look inside trained CNNs in 3D: layer volumes, gradients, preferred inputs, network graphs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    for module in _command_modules():
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if a.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    if not getattr(a, "func", None):
        parser.print_help()
        return 2
    try:
        return a.func(a)
    except VolvizError as exc:
        print(f"volviz {a.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"volviz {a.command}: interrupted", file=sys.stderr)
        return 130
