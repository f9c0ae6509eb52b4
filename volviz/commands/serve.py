"""`volviz serve`: the explorer app in the browser."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  volviz serve                                  # the embedded default (captured first if needed)
  volviz serve stores/digits                    # one store
  volviz serve stores/digits stores/faces       # two stores side by side
  volviz serve stores/digits --port 9000
  volviz serve stores/digits --host 0.0.0.0     # expose on purpose (prints a warning)
  volviz serve --root stores                    # every store under stores/ in the picker
  volviz serve stores/mine --trust-factory      # a store captured from --model pkg.mod:factory
  volviz serve stores/digits --shared           # one view for every browser (teaching)

Open the printed URL (it carries a token made for this launch, like Jupyter's: the page and its
websocket need it). Each browser tab gets a session of its own (slider, layer, order, camera,
recordings); --shared gives all of them one. The page can only choose among the stores given here
(and found under --root), the scenes/*.toml and out/prune folders listed at launch: by name, never
by path. A store (or scene file) is data: its model is only unpickled or imported when THIS
command line says --trust-pickle / --trust-factory; without them the panels that need the model
(sorted neurons, saliency, graph, class-group gradients, pruning) say so and the rest works.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="the explorer app in the browser (trame)",
        description="Serve the explorer: layer volumes you rotate, a time slider over "
        "the captured images, 2-D panels, recording. Headless; prints the URL.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument(
        "stores", nargs="*", metavar="STORE", help="store folders (two: side by side; default: stores/digits)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port)")
    p.add_argument("--record-dir", default="out/recordings", help="where recorded movies go")
    p.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="DIR",
        help="also offer the stores found under DIR (up to 3 levels down; repeatable)",
    )
    p.add_argument(
        "--shared", action="store_true", help="one session for every browser: all see and move the same view (teaching)"
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="NAME",
        help="another host name (or origin, e.g. https://proxy.example) the server answers to, "
        "e.g. a TLS proxy in front of it (repeatable)",
    )
    p.add_argument(
        "--max-sessions",
        type=int,
        default=16,
        help="sessions (browser tabs) kept at most (default 16; idle ones close first)",
    )
    p.add_argument(
        "--allow-outside",
        action="store_true",
        help="scene files (Scene preview) may name a store outside their own folder (trusted scene files only)",
    )
    from volviz.commands.common import add_trust_args

    add_trust_args(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(a) -> int:
    from volviz.app.server import serve
    from volviz.commands.common import trust

    return serve(
        a.stores,
        host=a.host,
        port=a.port,
        timeout=0,
        record_dir=a.record_dir,
        trust=trust(a),
        allow_outside=a.allow_outside,
        roots=a.root,
        allow_origins=a.allow_origin,
        shared=a.shared,
        max_sessions=a.max_sessions,
    )
