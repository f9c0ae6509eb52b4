"""What several subcommands share: opening a store, and the --trust-* flags that alone may let a
store's model spec unpickle or run code (a store is data someone may have sent you)."""

from __future__ import annotations

import argparse


def add_trust_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("trust (a store or scene can never switch these on by itself)")
    g.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow the model's weights to be a pickled full model (runs code from the file)",
    )
    g.add_argument(
        "--trust-factory",
        action="store_true",
        help="allow the store's model spec to import a package.module:factory or load a "
        "TorchScript file (runs code named by the store)",
    )


def trust(a) -> dict:
    """The trust flags of THIS command line, as keyword arguments for ``Store.model``."""
    return {
        "trust_pickle": bool(getattr(a, "trust_pickle", False)),
        "trust_factory": bool(getattr(a, "trust_factory", False)),
    }


def add_dask_args(p: argparse.ArgumentParser) -> None:
    """``--workers`` / ``--scheduler`` of the streamed analyses (the capture's own are in capture)."""
    g = p.add_argument_group("Dask (map over ranges of images, merge; the result does not change)")
    g.add_argument("--workers", type=int, metavar="N", help="run on N local worker processes (a LocalCluster)")
    g.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on the Dask cluster at ADDRESS (tcp://HOST:8786); its workers need this volviz, "
        "the store at the same path and the model's files",
    )


def dask_options(a):
    """The command line's Dask options (None: one process), with its trust flags for the workers."""
    workers, scheduler = getattr(a, "workers", None), getattr(a, "scheduler", None)
    if workers is None and not scheduler:
        return None
    from volviz.analysis.distributed_map import DaskOptions
    from volviz.errors import UserError

    if workers is not None and not 1 <= workers <= 1024:
        raise UserError(f"--workers must be 1..1024, got {workers}")
    return DaskOptions(workers=workers, scheduler=scheduler, trust=trust(a))


def open_store(path, mode: str = "r"):
    from volviz.store.store import Store

    return Store.open(path, mode)


def store_model(store, a):
    """The store's model, loaded with the command line's trust flags."""
    return store.model(**trust(a))


def check_output(path, suffixes: tuple[str, ...] | None = None):
    """Fail before any work when an output file cannot be written: wrong suffix, a parent that is
    a file, or a folder without write permission. Returns the path."""
    import os
    import pathlib

    from volviz.errors import UserError

    out = pathlib.Path(path)
    if suffixes and out.suffix.lower() not in suffixes:
        raise UserError(f"--out {out}: use one of {', '.join(suffixes)}")
    if out.is_dir():
        raise UserError(
            f"--out {out} is a folder; give a file name such as {out / ('out' + (suffixes or ('.png',))[0])}"
        )
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot write {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write {out}: no permission to write in {parent}")
    return out
