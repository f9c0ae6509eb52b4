"""`volviz render`, `volviz movie` and `volviz demo`: layer volumes and grids from a store to PNG / MP4 / GIF."""

from __future__ import annotations

import argparse
import json
import os
import pathlib

import numpy as np

RENDER_EPILOG = """\
examples:
  volviz render stores/digits --out conv1.png                       # first conv layer, image 0
  volviz render stores/digits --layer conv2 --order kmeans --fit set --out conv2-kmeans.png
  volviz render stores/digits --layer conv2 --quantity grad_weight --out conv2-gradw.png
  volviz render stores/digits --layer conv2 --grid --out conv2-maps.png   # 2-D grid of feature maps
  volviz render stores/digits --layer conv1 --slices --opacity linear --image 17 --out s.png
  volviz render stores/digits --layer conv2 --preferred --out conv2-preferred.png   # after volviz optimize
  volviz render stores/digits --layer conv1 --slice-row 15 --out row15.png   # + row15_agreement.png

quantities: activation, grad_activation (gradient of the target neuron w.r.t. the activations),
grad_weight (w.r.t. each filter's weights: a C_out x C_in x kH x kW tensor shown as C_out slices,
each a mosaic of its C_in kernels; see docs/views.md).
orders: natural, pca, kmeans (clusters with separators), kmeans2 (two-level "20 x 5 means"),
slice-pca, slice-kmeans (fitted on one row slice). --fit image: an order per image; --fit set: one
order fitted over the image set, fixed while stepping through images.
"""

MOVIE_EPILOG = """\
examples:
  volviz movie stores/digits --layer conv2 --mode rotate --out conv2.mp4
  volviz movie stores/digits --layer conv1 --mode images --sort probability --out steps.gif
  volviz movie stores/digits --mode both --order pca --frames 60 --out both.mp4
  volviz movie scenes/digits_flythrough.toml --out fly.mp4        # a scene file (network graph)
  volviz movie stores/digits --mode dashboard --class 7 --sort probability --out sevens.mp4
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layer", help="layer name (default: the first conv layer)")
    p.add_argument("--quantity", default="activation", choices=["activation", "grad_activation", "grad_weight"])
    p.add_argument("--order", default="natural", help="natural, pca, kmeans, kmeans2, slice-pca, slice-kmeans")
    p.add_argument(
        "--fit",
        default=None,
        choices=["image", "set"],
        help="order fitted per image or once over the image set (render: image, movie: set)",
    )
    p.add_argument("--clusters", type=int, help="number of k-means clusters (default: C/4, at most 10)")
    p.add_argument("--cmap", help="colour map (default: the theme, inferno; RdBu_r for signed data)")
    p.add_argument(
        "--opacity",
        help="opacity preset: linear, sigmoid, high, flat, diverging (default sigmoid; diverging for gradients)",
    )
    p.add_argument("--slices", action="store_true", help="show orthogonal slice planes")
    p.add_argument(
        "--slice-pos",
        nargs=3,
        type=float,
        metavar=("X", "Y", "Z"),
        default=(0.5, 0.5, 0.5),
        help="slice positions as fractions 0..1",
    )
    p.add_argument("--no-outline", action="store_true")
    p.add_argument("--width", type=int, help="pixels (default 800; a scene file's own size)")
    p.add_argument("--height", type=int, help="pixels (default 608; a scene file's own size)")


def register(sub) -> None:
    p = sub.add_parser(
        "render",
        help="write a layer volume (or a 2-D grid of maps) to PNG",
        description="Render one layer of a store for one image as a 3-D volume "
        "(activations, activation gradients or weight gradients), or as a 2-D grid.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=RENDER_EPILOG,
    )
    p.add_argument("store")
    p.add_argument("--out", required=True, help="PNG file")
    p.add_argument("--image", default="0", help="image index or id (default 0)")
    p.add_argument("--grid", action="store_true", help="2-D grid of feature maps (vis_square) instead of 3-D")
    p.add_argument(
        "--preferred",
        action="store_true",
        help="grid of the layer's preferred inputs (computed by `volviz optimize STORE`)",
    )
    _common(p)
    from volviz.commands.render_slices import add_slice_args

    add_slice_args(p)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser(
        "movie",
        help="write an MP4/GIF: a rotating volume, a time series of images, or a scene file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=MOVIE_EPILOG,
        description="Rotate a layer volume and/or step through the captured images, or "
        "render a scene file (scenes/*.toml) with its camera path.",
    )
    p.add_argument("source", help="a store folder, or a scene file (.toml)")
    p.add_argument("--out", required=True, help=".mp4 or .gif")
    p.add_argument("--mode", default="images", choices=["rotate", "images", "both", "dashboard"])
    p.add_argument("--frames", type=int, default=72, help="frames of a full rotation (default 72)")
    p.add_argument("--fps", type=float, help="frames per second (default 12; a scene file's own fps)")
    p.add_argument(
        "--sort",
        default="captured",
        choices=["captured", "probability", "class", "misclassified"],
        help="order of images in the time series",
    )
    p.add_argument("--max-images", type=int, help="play at most this many images")
    p.add_argument(
        "--allow-outside",
        action="store_true",
        help="a scene file may name a store outside its own folder (trusted scene files only)",
    )
    _common(p)
    from volviz.commands.common import add_trust_args
    from volviz.commands.movie_dashboard import add_dashboard_args

    add_trust_args(p)
    add_dashboard_args(p)
    p.set_defaults(func=cmd_movie)

    p = sub.add_parser(
        "demo",
        help="the README's main job: capture the embedded default and show it",
        description="Capture the embedded digits model on its test images (once), write "
        "PNG renderings of its layer volumes to out/demo/, then serve the app.",
    )
    p.add_argument("--store", default="stores/digits")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--no-serve", action="store_true", help="only capture and render")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=cmd_demo)


# ---------------------------------------------------------------------------------------
def _open(path):
    from volviz.store.store import Store

    store = Store.open(path)
    if not store.done.any():
        from volviz.store.store import StoreError

        raise StoreError(f"{path} holds no captured image yet; run `volviz capture --resume --out {path}`")
    return store


def default_layer(store) -> str:
    for name, info in store.layers.items():
        if info.kind == "conv":
            return name
    return next(iter(store.layers))


def resolve_image(store, image: str) -> int:
    if image.lstrip("-").isdigit():
        return int(image)
    found = store.images.position(image)
    if found is not None:
        return found
    from volviz.store.store import StoreError

    raise StoreError(
        f"no image {image!r} in the store; give an index 0..{store.n_images - 1} or an id like {store.images.ids[0]!r}"
    )


def style_for(a, quantity: str, data=None):
    """The volume's look: the one colour theme (``views/colors.py``: signed data on the diverging
    map, zero transparent; non-negative data on the sequential map), unless --cmap / --opacity."""
    from volviz.views.colors import QUANTITY_LABELS, theme_for
    from volviz.views.volume_style import VolumeStyle

    th = theme_for(data) if data is not None else theme_for(signed=quantity != "activation")
    return VolumeStyle(
        cmap=a.cmap,
        opacity=a.opacity or th.opacity,
        show_slices=a.slices,
        slice_positions=tuple(a.slice_pos),
        show_outline=not a.no_outline,
        scalar_bar_title=QUANTITY_LABELS[quantity],
    )


def caption(store, i: int) -> str:
    names = store.class_names
    lab, pred = int(store.column("label", i)), int(store.column("pred", i))
    p = float(store.column("probs", i)[pred])
    name = lambda k: names[k] if names and 0 <= k < len(names) else str(k)
    true = name(lab) if lab >= 0 else "?"
    return f"image {i}  true {true}  pred {name(pred)} ({p:.2f})"


def target_name(store, i: int) -> str:
    """The output neuron image ``i``'s gradients were taken of, by class name where there is one."""
    t = int(store.column("target", i))
    names = store.class_names
    return f"'{names[t]}'" if names and 0 <= t < len(names) else f"#{t}"


def _title(store, a, lv, with_target: bool = True) -> str:
    what = a.quantity
    if with_target and a.quantity != "activation":
        what += f" of {target_name(store, lv.image)}"
    return f"{store.plan.model.spec}  {lv.layer}  {what}"


def _note(a, lv) -> str:
    shape = " x ".join(str(v) for v in lv.volume.shape)
    what = {"weights": "filters x kernel mosaic", "neurons": "neuron grid"}.get(lv.kind, "maps x H x W")
    return f"{shape} ({what}), order {a.order}"


def _scene(store, a, layer, image, fit):
    from volviz.views.source import LayerVolumeSource

    src = LayerVolumeSource(store)
    lv = src.get(layer, a.quantity, image, a.order, fit, n_clusters=a.clusters)
    return src, lv, _scene_for(store, a, lv, with_target=False)  # a movie: the target may change


def _scene_for(store, a, lv, with_target: bool = True):
    """The off-screen scene showing one LayerVolume: title top left, caption bottom left."""
    from volviz.views.volume import LayerVolumeScene

    scene = LayerVolumeScene(
        lv.volume,
        lv.order,
        lv.boundaries,
        style_for(a, a.quantity, lv.volume),
        _title(store, a, lv, with_target),
        window_size=(a.width or 800, a.height or 608),
    )
    scene.set_note(_note(a, lv))
    scene.set_label(caption(store, lv.image))
    return scene


def layer_volume(store, a, layer: str, image: int, fit: str = "image"):
    """The volume to draw. The natural order reads the array directly (no orderer, so no
    scikit-learn import: about 2.5 s of every render on the 2-core machine); other orders go
    through ``LayerVolumeSource``."""
    order = a.order.lower().replace("_", "-")
    if order != "natural":
        from volviz.views.source import LayerVolumeSource

        return LayerVolumeSource(store).get(layer, a.quantity, image, a.order, fit, n_clusters=a.clusters)
    from types import SimpleNamespace

    from volviz.store.store import StoreError
    from volviz.views.volume_data import array_volume

    if layer not in store.layers:
        raise StoreError(f"layer {layer!r} is not in this store. Layers: {', '.join(store.layers)}")
    vol, kind = array_volume(store.read(a.quantity, layer, image), a.quantity)
    return SimpleNamespace(
        volume=vol,
        order=np.arange(vol.shape[0]),
        boundaries=np.array([], int),
        quantity=a.quantity,
        layer=layer,
        image=image,
        kind=kind,
    )


def _class_names_for(store, layer: str):
    """The class names when ``layer`` produces the class scores (its output size is the number
    of classes), else None."""
    names = store.class_names
    info = store.layers.get(layer)
    shape = tuple(getattr(info, "act_shape", ()) or ())
    return names if names and len(shape) == 1 and shape[0] == len(names) else None


def _figure(store, a, layer: str, image: int, lv, out) -> None:
    """The 2-D PNGs: a linear layer's weight gradient as a heatmap of its rows that matter, a
    linear layer's neurons, or (``--grid``) the maps as a mosaic; all with title and colour bar."""
    from volviz.views import render_figures as F
    from volviz.views.colors import QUANTITY_LABELS
    from volviz.views.grid import vis_square

    title = f"{store.plan.model.spec}  {layer}  {a.quantity}" + (
        f" of {target_name(store, image)}" if a.quantity != "activation" else ""
    )
    cap = caption(store, image)
    label = QUANTITY_LABELS[a.quantity]
    names = _class_names_for(store, layer)
    raw = store.read(a.quantity, layer, image) if a.quantity == "grad_weight" else None
    if raw is not None and raw.ndim == 2:
        F.weight_rows_figure(
            out,
            raw,
            title=f"{title}  ({raw.shape[0]} x {raw.shape[1]})",
            caption=cap,
            names=names,
            bar_label=label,
            cmap=a.cmap,
        )
    elif lv.kind == "neurons":
        vec = store.read(a.quantity, layer, image).ravel()
        F.neuron_figure(
            out, vec, title=f"{title}  ({vec.size} neurons)", caption=cap, bar_label=label, names=names, cmap=a.cmap
        )
    else:
        from volviz.views.colors import is_signed

        maps = lv.volume[lv.order]
        img = vis_square(maps, normalize=None if is_signed(maps) else "global")
        what = {"maps": "maps", "weights": "filters (C_in kernels each)"}.get(lv.kind, "maps")
        F.grid_figure(
            out,
            img,
            title=f"{title}  ({maps.shape[0]} {what} of {maps.shape[1]} x {maps.shape[2]})",
            caption=cap,
            bar_label=label + ("" if is_signed(maps) else " (layer min..max)"),
            cmap=a.cmap,
            note=f"row-major on a near-square grid, order={a.order}",
        )


def cmd_render(a) -> int:
    from volviz.commands.common import check_output

    check_output(a.out, (".png",))
    store = _open(a.store)
    layer = a.layer or default_layer(store)
    out = pathlib.Path(a.out)
    if a.preferred:
        from volviz.commands.optimize import write_grid

        write_grid(store, layer, out)
        print(f"wrote {out}")
        return 0
    image = resolve_image(store, a.image)
    from volviz.commands.render_slices import cmd_slices, wants_slices

    if wants_slices(a):  # [Jain2016]'s slice figure and its agreement plot
        for path in cmd_slices(store, a, layer, image, out):
            print(f"wrote {path}")
        return 0
    info = store.layers.get(layer)
    linear_weights = a.quantity == "grad_weight" and info is not None and len(info.weight_shape or ()) == 2
    lv = None if linear_weights else layer_volume(store, a, layer, image, a.fit or "image")
    if a.grid or linear_weights or lv.kind == "neurons":  # 2-D: a heatmap / grid, not a volume
        _figure(store, a, layer, image, lv, out)
    else:
        _ensure_rendering()
        with _scene_for(store, a, lv) as scene:
            scene.screenshot(out)
    print(f"wrote {out}")
    return 0


def _probe_key() -> str:
    import sys
    from importlib.metadata import PackageNotFoundError, version

    try:
        vtk = version("vtk")
    except PackageNotFoundError:
        vtk = "?"
    env = {
        k: os.environ.get(k, "")
        for k in (
            "VTK_DEFAULT_OPENGL_WINDOW",
            "DISPLAY",
            "WAYLAND_DISPLAY",
            "EGL_PLATFORM",
            "LIBGL_ALWAYS_SOFTWARE",
            "MESA_LOADER_DRIVER_OVERRIDE",
        )
    }
    return json.dumps({"python": sys.executable, "vtk": vtk, "env": env, "host": os.uname().nodename}, sort_keys=True)


def _ensure_rendering() -> None:
    """Probe off-screen rendering once (VTK segfaults without EGL/OSMesa), then remember the
    answer for this Python, VTK version, host and display settings (``~/.cache/volviz``): the probe
    is a fresh interpreter that imports pyvista and renders, about 2.6 s of every render before.
    ``VOLVIZ_RENDER_PROBE=always`` probes every time."""
    cache = (
        pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache")
        / "volviz"
        / "render-probe.json"
    )
    key = _probe_key()
    if os.environ.get("VOLVIZ_RENDER_PROBE") != "always":
        try:
            if key in json.loads(cache.read_text()).get("ok", []):
                return
        except (OSError, ValueError, AttributeError):
            pass
    from volviz.views.render_probe import rendering_available

    ok, msg = rendering_available()
    if not ok:
        from volviz.errors import VolvizError

        raise VolvizError(msg)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"ok": [key]}))
        os.replace(tmp, cache)
    except OSError:  # a read-only home: probe again next time
        pass


def cmd_movie(a) -> int:
    if a.source.endswith(".toml"):
        from volviz.commands.common import check_output
        from volviz.scene import movie_from_scene

        check_output(a.out, (".mp4", ".gif"))
        from volviz.commands.common import trust

        movie_from_scene(
            a.source, a.out, width=a.width, height=a.height, fps=a.fps, trust=trust(a), allow_outside=a.allow_outside
        )
        print(f"wrote {a.out}")
        return 0
    if a.mode == "dashboard":  # input, bars and layer grids per image: volviz.app.dashboard_movie
        from volviz.commands.movie_dashboard import cmd_dashboard_movie

        return cmd_dashboard_movie(a)
    from volviz.analysis.sequence import store_sequence
    from volviz.commands.common import check_output
    from volviz.errors import UserError
    from volviz.record import orbit_frames, timeseries_frames, write_movie
    from volviz.views.colors import auto_clim

    check_output(a.out, (".mp4", ".gif"))
    if a.max_images is not None and a.max_images < 1:
        raise UserError(f"--max-images must be at least 1 (got {a.max_images}); leave it out to play every image")
    _ensure_rendering()
    store = _open(a.source)
    layer = a.layer or default_layer(store)
    seq = store_sequence(store, a.sort)[: a.max_images]
    fit = a.fit or "set"
    src, lv, scene = _scene(store, a, layer, int(seq[0]), fit)
    with scene:
        frames = []
        total = 0
        if a.mode in ("rotate", "both"):
            frames.append(orbit_frames(scene, a.frames))
            total += a.frames
        if a.mode in ("images", "both"):
            vols = [src.get(layer, a.quantity, int(i), a.order, fit, n_clusters=a.clusters) for i in seq]
            scene.update(
                vols[0].volume,
                clim=auto_clim([v.volume for v in vols], symmetric=scene.style.opacity == "diverging" or None),
            )
            if fit == "image":

                def steps():
                    for v, i in zip(vols, seq):
                        scene.set_order(v.order, v.boundaries)
                        yield v.volume

                volumes = steps()
            else:
                volumes = (v.volume for v in vols)
            frames.append(timeseries_frames(scene, volumes, [caption(store, int(i)) for i in seq]))
            total += len(seq)

        def chain():
            for f in frames:
                yield from f

        write_movie(a.out, chain(), fps=a.fps or 12, total=total)
    print(f"wrote {a.out}")
    return 0


def cmd_demo(a) -> int:
    from volviz.cli import setup_torch_threads
    from volviz.store.capture import CaptureSettings, open_or_capture

    setup_torch_threads()
    path = pathlib.Path(a.store)
    store = open_or_capture(path, CaptureSettings())  # never deletes: a foreign folder is an error
    out = pathlib.Path(a.out)
    renders = [
        ("conv1", "activation", "natural", False),
        ("conv1", "activation", "pca", False),
        ("conv2", "activation", "kmeans", False),
        ("conv2", "activation", "natural", True),
        ("conv2", "grad_activation", "natural", False),
        ("conv2", "grad_weight", "pca", False),
    ]
    for layer, q, order, grid in renders:
        if layer not in store.layers:
            continue
        name = f"{layer}-{q}-{order}{'-grid' if grid else ''}.png"
        ns = argparse.Namespace(
            store=str(path),
            out=str(out / name),
            image="0",
            layer=layer,
            quantity=q,
            order=order,
            fit="image",
            clusters=None,
            cmap=None,
            opacity=None,
            slices=False,
            slice_pos=(0.5, 0.5, 0.5),
            no_outline=False,
            width=800,
            height=608,
            grid=grid,
            preferred=False,
        )
        cmd_render(ns)
    if a.no_serve:
        return 0
    try:
        from volviz.app.server import serve
    except ImportError:
        print("the app is not available in this build; PNGs are in", out)
        return 0
    return serve([str(path)], port=a.port)
