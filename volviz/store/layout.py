"""Where each quantity lives inside the zarr group, and how arrays are created.

Only ``volviz/store`` knows these paths. Every array carries a crc32c checksum (a flipped byte is
an error, never data) and writes every chunk, even an all-zero one, so a missing chunk file of a
captured image is damage, not a legitimate fill value.
"""
from __future__ import annotations

import pathlib

QUANTITIES = ("activation", "grad_activation", "grad_weight")
GROUP = {"activation": "act", "grad_activation": "grad_act", "grad_weight": "grad_weight"}
PER_IMAGE = ("done", "probs", "pred", "label", "target", "input")
#: top-level entries a volviz store may hold; a folder with anything else is not overwritten
OWNED = {"plan.json", "manifest.json", "zarr.json", ".lock", *PER_IMAGE, *GROUP.values(), "results"}


def quantity_keys(quantity: str, layer: str, factors: bool) -> list[str]:
    """The arrays one quantity of one layer is stored in (two for outer-product factors)."""
    g = GROUP[quantity]
    if quantity != "grad_weight":
        return [f"{g}/{layer}/data"]
    return [f"{g}/{layer}/u", f"{g}/{layer}/v"] if factors else [f"{g}/{layer}/w"]


def scale_key(key: str) -> str:
    parent, leaf = key.rsplit("/", 1)
    return f"{parent}/scale_{leaf}"


def codecs() -> dict:
    from zarr.codecs import Crc32cCodec, ZstdCodec
    return {"compressors": [ZstdCodec(level=0), Crc32cCodec()], "config": {"write_empty_chunks": True}}


def create_array(group, key: str, shape: tuple, chunks: tuple, dtype: str, fill_value):
    return group.create_array(key, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value, **codecs())


def chunk_file(store_path: pathlib.Path, key: str, row: int, ndim: int) -> pathlib.Path:
    """The file of row ``row``'s chunk (chunks are one row, full extent on the other axes)."""
    return store_path.joinpath(*key.split("/"), "c", str(row), *(["0"] * (ndim - 1)))


def is_volviz_folder(path: pathlib.Path) -> tuple[bool, list[str]]:
    """Whether ``path`` holds a volviz store and nothing else; the foreign entries otherwise."""
    names = [p.name for p in path.iterdir()]
    foreign = sorted(n for n in names if n not in OWNED and not n.endswith(".tmp"))
    return ("plan.json" in names or "zarr.json" in names) and not foreign, foreign
