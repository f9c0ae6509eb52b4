"""``volviz movie --mode dashboard``: the Dashboard tab's picture for each image of a chosen set
([Tamari2017]'s predefined image runs, e.g. ``--class 7 --sort probability``: the 7s, most
probable first), written as an MP4 / GIF (:mod:`volviz.app.dashboard_movie`), with the first
conv layer's 3-D volume beside it (``--no-volume``: the dashboard alone, as the page's record
button writes it)."""

from __future__ import annotations

__all__ = ["add_dashboard_args", "cmd_dashboard_movie"]


def add_dashboard_args(p) -> None:
    g = p.add_argument_group("--mode dashboard")
    g.add_argument("--class", dest="image_class", metavar="C", help="only the images of this class (index or name)")
    g.add_argument("--view", default="generic", choices=["generic", "fc"], help="generic or FC-only (sorted neurons)")
    g.add_argument("--conv", nargs=2, metavar="LAYER", help="the two conv layers (default: the first two)")
    g.add_argument("--fc", help="the linear layer (default: the first)")
    g.add_argument("--no-volume", action="store_true", help="leave out the 3-D volume of the first conv layer")


def cmd_dashboard_movie(a) -> int:
    from volviz.app.dashboard_movie import image_set, write_dashboard_movie
    from volviz.commands.common import check_output, trust
    from volviz.errors import UserError
    from volviz.sources.classes import find_class
    from volviz.store.store import Store

    check_output(a.out, (".mp4", ".gif"))
    if a.max_images is not None and a.max_images < 1:
        raise UserError(f"--max-images must be at least 1 (got {a.max_images})")
    store = Store.open(a.source)
    names = store.class_names or [str(k) for k in range(int(store.column("probs").shape[1]))]
    cls = None
    if a.image_class is not None:
        cls = int(a.image_class) if a.image_class.isdigit() else find_class(a.image_class, names)
        if not 0 <= cls < len(names):
            raise UserError(f"--class {a.image_class}: the model has {len(names)} classes (0..{len(names) - 1})")
    rows = image_set(store, a.sort, cls, a.max_images)
    model = store.model(**trust(a)).module
    from volviz.app.dashboard_data import Dashboard, layer_items

    board = Dashboard(store, model)
    ch = board.defaults()
    ch.view = a.view
    convs, fcs = layer_items(store)
    for name in a.conv or []:
        if name not in convs:
            raise UserError(f"--conv {name}: not a conv layer of this store; it has {', '.join(convs)}")
    if a.fc and a.fc not in fcs:
        raise UserError(f"--fc {a.fc}: not a linear layer of this store; it has {', '.join(fcs) or 'none'}")
    if a.conv:
        ch.conv_a, ch.conv_b = a.conv
    ch.fc = a.fc or ch.fc
    if a.no_volume:
        path = write_dashboard_movie(board, a.out, rows, ch, fps=a.fps or 4)
    else:
        from volviz.app.dashboard_movie import dashboard_frames
        from volviz.app.recorder import composite
        from volviz.record import write_movie

        pairs = zip(dashboard_frames(board, rows, ch), _volume_shots(store, a, ch.conv_a, rows))
        path = write_movie(a.out, (composite([d, v]) for d, v in pairs), fps=a.fps or 4, total=len(rows))
    print(f"wrote {path} ({len(rows)} images)")
    return 0


def _volume_shots(store, a, layer: str, rows):
    """The layer's volume for each image, as ``volviz movie --mode images`` renders it (the
    command line's --order / --quantity / --cmap ... apply), 720 pixels tall beside the dashboard."""
    from volviz.commands.render import _ensure_rendering, _scene, caption

    _ensure_rendering()
    a.width, a.height = a.width or 720, a.height or 720
    fit = a.fit or "set"
    src, _, scene = _scene(store, a, layer, int(rows[0]), fit)
    with scene:
        for i in rows:
            v = src.get(layer, a.quantity, int(i), a.order, fit, n_clusters=a.clusters)
            scene.update(v.volume)
            if fit == "image":
                scene.set_order(v.order, v.boundaries)
            scene.set_label(caption(store, int(i)))
            yield scene.screenshot()
