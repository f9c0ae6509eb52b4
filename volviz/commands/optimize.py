"""``volviz optimize``: preferred inputs for every unit of the chosen layers, into the store;
``volviz preferred-grid``: one layer's preferred inputs as a grid PNG."""

from __future__ import annotations

import argparse
import math
import pathlib

import numpy as np

from volviz.errors import UserError

EPILOG = """\
examples:
  volviz capture --out stores/digits                      # a store first (model + real images)
  volviz optimize stores/digits                           # every conv/linear layer, 3 seeds, search 16
  volviz optimize stores/digits --layers conv2 --seeds 5 --steps 512 --grid-dir grids/
  volviz optimize stores/digits --search 0 --param fourier --tv 0.1 --blur-every 0
  volviz optimize stores/vgg --layers features.28 --device cuda --precision bf16 --batch-size 512
  volviz optimize stores/mnv2 --layers features.6.conv.1.0 --units 0:16 --size 96 --seeds 1 --steps 64
  volviz optimize stores/mnv2 --layers classifier.1 --units goldfish "tabby cat" 285 --size 128

--units picks units (indices 3,7,285, ranges 0:64, class names for the output layer); a later run
with more units extends the layer. --size optimizes a smaller image that is upsampled (bilinear) to
the model input for every forward pass: fewer pixels to optimize, smoother images, the same model.
The projected time is printed before the run, from one timed step per layer.
  volviz preferred-grid stores/digits --layer conv2 --out conv2.png --seeds all
"""


def register(sub) -> None:
    p = sub.add_parser(
        "optimize",
        help="preferred inputs (activation maximization) of every unit, into the store",
        description="Optimize an input image for every unit of the chosen layers (one unit per "
        "batch element), several seeds each, with the regularization chosen per layer by a random "
        "search; results go into STORE/preferred/<layer>/. Rerunning resumes an interrupted run "
        "and skips finished layers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("store", help="a store made by `volviz capture` (its model and real images are used)")
    p.add_argument("--layers", nargs="+", help="layer names or globs (default: the store's conv and linear layers)")
    p.add_argument(
        "--units",
        nargs="+",
        metavar="UNITS",
        help="units to optimize in each layer: indices (3,7,285), ranges (0:64, 900:), class "
        "names for the output layer (default: all units)",
    )
    p.add_argument(
        "--size",
        nargs="+",
        type=int,
        metavar="PX",
        help="optimize images of PX x PX (or H W) pixels, upsampled to the model input for the "
        "forward pass (default: the input size)",
    )
    p.add_argument("--seeds", type=int, default=3, help="start images per unit (default 3)")
    p.add_argument("--steps", type=int, default=256, help="optimization steps (default 256)")
    p.add_argument(
        "--search",
        type=int,
        default=16,
        metavar="N",
        help="random-search N regularization settings per layer (default 16; 0: use the fixed setting)",
    )
    p.add_argument("--search-units", type=int, default=8, help="units the search evaluates (default 8)")
    p.add_argument("--search-steps", type=int, help="steps per search run (default: --steps)")
    p.add_argument(
        "--hf-weight",
        type=float,
        default=1.0,
        help="weight of the high-frequency penalty in the search score (default 1)",
    )
    p.add_argument(
        "--param",
        choices=["auto", "pixel", "fourier"],
        default="auto",
        help="image parameterization (auto: the search tries both; pixel without search)",
    )
    p.add_argument(
        "--conv-objective",
        choices=["channel", "centre"],
        default="channel",
        help="conv unit = a channel's mean activation or its centre neuron (default channel)",
    )
    p.add_argument(
        "--init",
        choices=["noise", "mean"],
        default="noise",
        help="start from blurred Gaussian noise, or from the class mean image (class units) / the "
        "mean of the unit's top-9 real images (others), plus a little noise (default noise)",
    )
    g = p.add_argument_group("fixed regularization (without --search; with it, the search's first candidate)")
    g.add_argument("--lr", type=float, help="Adam step size (default 0.05)")
    g.add_argument("--l2-decay", type=float, help="fraction pulled back to the mean pixel per step (default 0.002)")
    g.add_argument("--l1", type=float, help="L1 penalty weight (default 0)")
    g.add_argument("--tv", type=float, help="total variation penalty weight (default 0.05)")
    g.add_argument("--blur-every", type=int, help="blur every k steps, 0 = never (default 4)")
    g.add_argument("--blur-sigma", type=float, help="blur sigma in pixels (default 0.5)")
    g.add_argument("--jitter", type=int, help="largest random shift per step in pixels (default 1)")
    g.add_argument("--no-clip", action="store_true", help="do not clip pixels to the real images' range")
    p.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="batch elements (units x seeds) per run (default: automatic; 512 on a GPU, fewer for "
        "large inputs on a CPU, where big batches of big images are slower per image)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument(
        "--precision",
        choices=["fp32", "tf32", "bf16"],
        default="fp32",
        help="fp32; tf32 (TF32 matmuls/convs on the GPU); bf16 (bf16 autocast for the model)",
    )
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: cores - 1)")
    p.add_argument("--overwrite", action="store_true", help="recompute layers that already have results")
    p.add_argument("--grid-dir", help="also write DIR/<layer>.png, a grid of each layer's preferred inputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from volviz.commands.common import add_trust_args

    add_trust_args(p)
    p.set_defaults(func=cmd_optimize)

    q = sub.add_parser(
        "preferred-grid",
        help="a layer's preferred inputs as a grid PNG",
        description="Write a grid PNG of one layer's preferred inputs (from `volviz optimize`): "
        "one tile per unit (the best seed, or all seeds side by side), normalized per unit, "
        "enlarged by nearest neighbour.",
    )
    q.add_argument("store")
    q.add_argument("--layer", required=True)
    q.add_argument("--out", required=True, help="PNG file to write")
    q.add_argument("--seeds", default="best", help="best (default), all, or a seed index")
    q.add_argument("--normalize", choices=["per_unit", "none"], default="per_unit")
    q.add_argument(
        "--channels",
        nargs=3,
        type=int,
        metavar=("R", "G", "B"),
        help="input channels shown as red, green, blue (N-channel inputs; default the first three)",
    )
    q.add_argument("--units", nargs="+", help="units as for optimize --units: 0:64, 3,7,285, class names (default all)")
    q.add_argument("--min-size", type=int, default=768, help="enlarge to at least this many pixels (default 768)")
    q.set_defaults(func=cmd_grid)


def cmd_optimize(a) -> int:
    from volviz.analysis.actmax.run import PreferredSettings, run_preferred
    from volviz.cli import setup_torch_threads

    setup_torch_threads(a.threads)
    fixed = {
        k: getattr(a, k)
        for k in ("lr", "l2_decay", "l1", "tv", "blur_every", "blur_sigma", "jitter")
        if getattr(a, k) is not None
    }
    if a.no_clip:
        fixed["clip"] = False
    size = None
    if a.size:
        if len(a.size) > 2 or min(a.size) < 1:
            raise UserError(f"--size takes one or two positive numbers (PX, or H W), got {' '.join(map(str, a.size))}")
        size = (a.size[0], a.size[-1])
    try:
        s = PreferredSettings(
            conv_objective=a.conv_objective,
            seeds=a.seeds,
            steps=a.steps,
            search=a.search,
            search_units=a.search_units,
            search_steps=a.search_steps,
            hf_weight=a.hf_weight,
            param=a.param,
            config=fixed,
            init=a.init,
            batch_size=a.batch_size,
            size=size,
            device=a.device,
            precision=a.precision,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    from volviz.commands.common import open_store, trust

    store = open_store(a.store, "r+")
    summaries = run_preferred(
        store,
        a.layers,
        s,
        overwrite=a.overwrite,
        progress=not a.quiet,
        trust=trust(a),
        units=a.units,
        report=None if a.quiet else print,
    )
    print(
        f"{'layer':<16} {'objective':<9} {'units':>5} {'beats real':>10} {'>= real':>8} {'median z':>9} "
        f"{'HF':>5} {'seconds':>8}"
    )
    for layer, m in summaries.items():
        print(
            f"{layer:<16} {m.get('objective', '?'):<9} {m.get('units', 0):>5} "
            f"{m.get('beats_real_fraction', float('nan')):>10.2f} "
            f"{m.get('matches_real_fraction', float('nan')):>8.2f} "
            f"{m.get('median_z', float('nan')):>9.2f} "
            f"{m.get('mean_hf', float('nan')):>5.2f} {m.get('seconds', 0):>8.1f}"
            + (f"  (of {m['of_units']})" if m.get("of_units") else "")
            + ("  (already done)" if m.get("skipped") else "")
        )
    if a.grid_dir:
        for layer in summaries:
            path = write_grid(a.store, layer, pathlib.Path(a.grid_dir) / f"{layer}.png")
            print(f"wrote {path}")
    return 0


def grid_image(
    images: np.ndarray,
    normalize: str = "per_unit",
    channels=None,
    unit_gap: int = 2,
    seed_gap: int = 1,
    gap_color=(128, 128, 128),
) -> np.ndarray:
    """float ``(units, C, H, W)`` or ``(units, seeds, C, H, W)`` -> uint8 RGB mosaic.

    With seeds, each unit is a horizontal strip of its seeds; strips are laid out so that the whole
    grid is near square. Gaps are mid grey, so black and white tiles (digits) both stand out.
    """
    from volviz.analysis.actmax.display import to_display
    from volviz.views.grid import near_square_grid, tile_mosaic, to_rgb

    imgs = np.asarray(images, dtype=np.float32)
    if imgs.ndim == 4:
        imgs = imgs[:, None]
    u, s, c, h, w = imgs.shape
    tiles = to_display(imgs.reshape(u * s, c, h, w), normalize, channels).reshape(u, s, h, w, 3)
    if s == 1:
        rows, cols = near_square_grid(u)
        mosaic = tile_mosaic(tiles[:, 0], rows, cols, gap=unit_gap)
    else:
        strips = np.stack([tile_mosaic(t, 1, s, gap=seed_gap) for t in tiles])  # (U, h, sw, 3)
        cols = max(1, round(math.sqrt(u * h / strips.shape[2])))
        mosaic = tile_mosaic(strips, -(-u // cols), cols, gap=unit_gap * 2)
    return to_rgb(mosaic, nan_color=gap_color)


def write_grid(
    store,
    layer: str,
    out,
    seeds: str = "best",
    normalize: str = "per_unit",
    channels=None,
    units=None,
    min_size: int = 768,
    max_size: int = 4096,
) -> pathlib.Path:
    """A grid PNG of a layer's preferred inputs. ``units``: a spec as for ``--units`` (default all);
    units without results are grey tiles. Images optimized below the model's input size
    (``--size``) are shown as the model saw them, upsampled (the grid at most ``max_size`` px)."""
    from volviz.analysis.actmax.results import _store, as_model_input, best_preferred, load_preferred, preferred_info
    from volviz.analysis.actmax.units import parse_units
    from volviz.views.grid import near_square_grid, save_png

    st = _store(store)
    info = preferred_info(st, layer)
    sel = None
    if units:
        sel = parse_units(
            units, info.n_units, layer=layer, class_names=st.class_names if info.objective == "class" else None
        )
    if seeds == "best":
        imgs = best_preferred(st, layer, units=sel)
    else:
        imgs = load_preferred(st, layer, units=sel)
        if seeds != "all":
            try:
                imgs = imgs[:, int(seeds)]
            except (ValueError, IndexError):
                raise UserError(
                    f"--seeds must be best, all or a seed index below {imgs.shape[1]}, got {seeds!r}"
                ) from None
    if info.input_shape and tuple(info.input_shape[-2:]) != tuple(imgs.shape[-2:]):
        n = imgs.shape[0] * (1 if imgs.ndim == 4 else imgs.shape[1])
        cols = near_square_grid(n)[1]
        imgs = as_model_input(imgs, info.input_shape, max_px=max(imgs.shape[-1], max_size // cols))
    return save_png(out, grid_image(imgs, normalize, channels), min_size=min_size)


def cmd_grid(a) -> int:
    path = write_grid(a.store, a.layer, a.out, a.seeds, a.normalize, a.channels, a.units, a.min_size)
    print(f"wrote {path}")
    return 0
