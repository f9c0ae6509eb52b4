"""Where each quantity lives inside the zarr group, and how arrays are created.

Only ``volviz/store`` knows these paths. Every array carries a crc32c checksum (a flipped byte is
an error, never data) and writes every chunk, even an all-zero one, so a missing chunk file of a
captured image is damage, not a legitimate fill value.
"""

from __future__ import annotations

import math
import os
import pathlib

import numpy as np

#: per-image quantities: full activations and gradients, per-filter weight-gradient norms (what
#: importance needs, kept for every layer with weights), pooled descriptors (the dataset view)
QUANTITIES = ("activation", "grad_activation", "grad_weight", "grad_norm", "descriptor")
GROUP = {
    "activation": "act",
    "grad_activation": "grad_act",
    "grad_weight": "grad_weight",
    "grad_norm": "grad_norm",
    "descriptor": "descriptor",
}
POOLS = ("meanmax", "mean", "max", "full")
PER_IMAGE = ("done", "probs", "pred", "label", "target", "input")
#: top-level entries a volviz store may hold; a folder with anything else is not overwritten
OWNED = {"plan.json", "manifest.json", "zarr.json", ".lock", *PER_IMAGE, *GROUP.values(), "results"}


def quantity_keys(quantity: str, layer: str, parts: tuple[str, ...] = ("w",)) -> list[str]:
    """The arrays one quantity of one layer is stored in; a weight gradient's ``parts`` are
    ``LayerInfo.weight_parts``: ``w`` (full), ``u``/``v`` (outer-product factors), ``x`` (a conv's input)."""
    g = GROUP[quantity]
    if quantity != "grad_weight":
        return [f"{g}/{layer}/data"]
    return [f"{g}/{layer}/{p}" for p in parts]


#: what a conv's rebuild from its stored input needs (and the only conv types it rebuilds)
CONV_GEOMETRY = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "padding_mode",
)
CONV_TYPES = ("Conv1d", "Conv2d", "Conv3d")


def scale_key(key: str) -> str:
    parent, leaf = key.rsplit("/", 1)
    return f"{parent}/scale_{leaf}"


#: zarr's runtime setting that writes every chunk, even one equal to the fill value: it is not
#: stored with an array, so every handle that writes is opened with it (:func:`open_array`)
WRITE_ALL = {"write_empty_chunks": True}


def open_array(root, key: str):
    """``root[key]`` opened with :data:`WRITE_ALL`: without it zarr compares every chunk with the
    fill value and leaves out a shard that equals it, which a reader takes for damage."""
    return root[key].with_config(dict(WRITE_ALL))


def codecs(compress: bool = False) -> dict:
    """crc32c on every chunk; zstd (level 1) only when asked: on activations and gradients it saves
    about a third of the bytes and halves the capture's write rate (benchmarks/bench_store.py)."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    chain = [ZstdCodec(level=1), Crc32cCodec()] if compress else [Crc32cCodec()]
    return {"compressors": chain, "config": dict(WRITE_ALL)}


#: the codec pipeline a capture WRITES through, when installed: zarrs (Rust, off the GIL) encodes
#: and writes a shard at a fraction of zarr-python's CPU, which on two cores competes with the
#: compute (digits LeNet, 20,000 images: 0.59 -> 0.71 of the compute-only rate). Reading stays
#: with zarr-python, whose crc32c check reports a damaged chunk (zarrs 0.2 returned it as data).
WRITE_PIPELINE = "zarrs.ZarrsCodecPipeline"


def direct_io_supported(folder: pathlib.Path) -> bool:
    """Whether files in ``folder`` can be written with O_DIRECT (Linux; not every file system).

    A capture writes gigabytes it does not read back: through the page cache the kernel copies
    every byte once more and writes it back later, on the cores the compute needs (digits LeNet,
    20,000 images, 2.9 GB: 4.4 of 28 CPU-seconds, in ``pwrite``). Direct writes skip that copy and
    give the same bytes (tests/test_store_shards.py)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    probe = pathlib.Path(folder) / f".direct-io-probe-{os.getpid()}.tmp"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | flag, 0o600)
    except OSError:
        return False
    os.close(fd)
    probe.unlink(missing_ok=True)
    return True


def array_for_writing(root, key: str, direct_io: bool = False):
    """:func:`open_array` through :data:`WRITE_PIPELINE` when it imports (with O_DIRECT writes
    where :func:`direct_io_supported` says so), else zarr's own."""
    import importlib.util

    import zarr

    if importlib.util.find_spec(WRITE_PIPELINE.split(".")[0]) is not None:
        try:
            with zarr.config.set({"codec_pipeline.path": WRITE_PIPELINE, "codec_pipeline.direct_io": direct_io}):
                return open_array(root, key)
        except (ImportError, AttributeError, TypeError, NotImplementedError) as exc:  # a zarr it does not know
            import logging

            logging.getLogger("volviz.store").info(
                "writing through zarr-python: %s did not load (%s)", WRITE_PIPELINE, exc
            )
    return open_array(root, key)


#: bytes one shard file of a per-image array aims at, and the most images it holds: a shard is
#: written once when its images are captured, so the capture's write buffer is at most one shard
#: per array (SHARD_BYTES x arrays), and 1,000 images of the digits store (27 arrays) make ~40 files
SHARD_BYTES = 16 << 20
MAX_SHARD_ROWS = 1024


def rows_per_shard(row_shape: tuple, itemsize: int, n_rows: int) -> int:
    """Images per shard file for one per-image array: as many as fit ``SHARD_BYTES``, rounded down
    to a power of two, so that image ranges aligned to the largest shard are aligned to every
    array's shards (one writer per shard file in a sharded capture).

    >>> rows_per_shard((10,), 4, 100_000), rows_per_shard((64, 3, 7, 7), 4, 50), rows_per_shard((512, 512, 3, 3), 4, 9)
    (1024, 32, 1)
    """
    row = max(1, math.prod(row_shape) * itemsize)
    fit = int(max(1, min(MAX_SHARD_ROWS, n_rows, SHARD_BYTES // row)))
    return 1 << (fit.bit_length() - 1)


#: bytes of one chunk (the unit a read decodes and a checksum covers): small per-image arrays get
#: several images per chunk, since zarr's per-chunk overhead, not the bytes, bounds write speed
CHUNK_BYTES = 256 << 10


def rows_per_chunk(row_shape: tuple, itemsize: int, shard_rows: int) -> int:
    """Images per chunk inside a shard: a power of two, at most ``CHUNK_BYTES`` (one image when
    one image is bigger), never more than a shard.

    >>> rows_per_chunk((10,), 4, 1024), rows_per_chunk((20, 24, 24), 4, 64), rows_per_chunk((5,), 4, 4)
    (1024, 1, 4)
    """
    row = max(1, math.prod(row_shape) * itemsize)
    fit = int(max(1, min(shard_rows, CHUNK_BYTES // row)))
    return 1 << (fit.bit_length() - 1)


def create_array(
    group,
    key: str,
    shape: tuple,
    chunks: tuple,
    dtype: str,
    fill_value,
    *,
    sharded: bool = False,
    compress: bool = False,
):
    """A checksummed array; ``sharded``: a few images per chunk, many chunks per shard file."""
    shards = None
    if sharded:
        item = np.dtype(dtype).itemsize
        shards = (rows_per_shard(shape[1:], item, shape[0]), *shape[1:])
        chunks = (rows_per_chunk(shape[1:], item, shards[0]), *shape[1:])
    return group.create_array(
        key, shape=shape, chunks=chunks, shards=shards, dtype=dtype, fill_value=fill_value, **codecs(compress)
    )


def rows_per_file(arr) -> int:
    return int(arr.shards[0]) if arr.shards else int(arr.chunks[0])


def chunk_file(store_path: pathlib.Path, key: str, row: int, arr) -> pathlib.Path:
    """The file that holds row ``row`` of ``arr`` (its shard, or its chunk when unsharded)."""
    return store_path.joinpath(*key.split("/"), "c", str(row // rows_per_file(arr)), *(["0"] * (arr.ndim - 1)))


def is_volviz_folder(path: pathlib.Path) -> tuple[bool, list[str]]:
    """Whether ``path`` holds a volviz store and nothing else; the foreign entries otherwise."""
    names = [p.name for p in path.iterdir()]
    foreign = sorted(n for n in names if n not in OWNED and not n.endswith(".tmp"))
    return ("plan.json" in names or "zarr.json" in names) and not foreign, foreign
