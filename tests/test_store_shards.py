"""The sharded store against the layout it replaced, and a capture that loses a worker.

* A sharded store read back one image at a time equals a store of one file per image per array
  (the layout before sharding): same bytes, image by image.
* A Dask worker process killed in the middle of its range (``os._exit``, as the OOM killer or a
  lost node would) is replaced, its task re-run, and the store ends with the same bytes as a
  one-process capture.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

import numpy as np
import pytest
from helpers import TinyCNN, write_image_folder
from test_distributed import arrays_digest

from volviz.store import layout
from volviz.store.capture import CaptureSettings, run_capture
from volviz.store.layout import QUANTITIES

SETTINGS = dict(size=(12, 12), channels=1, batch_size=4)
DIE_ENV = "VOLVIZ_TEST_DIE_ONCE"  # a file: the first worker to rename it dies, once


class DyingCNN(TinyCNN):
    """TinyCNN (same weights) whose forward pass kills its Dask worker process, once, on that
    worker's second batch: a worker lost mid-way through a range."""

    calls = 0

    def forward(self, x):
        marker = os.environ.get(DIE_ENV)
        if marker and _in_dask_worker():
            DyingCNN.calls += 1
            if DyingCNN.calls == 2:
                try:
                    os.rename(marker, marker + ".used")  # atomic: exactly one process wins
                except FileNotFoundError:
                    pass
                else:
                    os._exit(1)
        return super().forward(x)


def _in_dask_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
        return True
    except (ImportError, ValueError):
        return False


def dying_cnn():
    import torch

    torch.manual_seed(0)
    return DyingCNN()


def test_sharded_store_reads_image_by_image_like_one_file_per_image(tmp_path, monkeypatch):
    images = write_image_folder(tmp_path / "imgs", n_per_class=4)
    s = dict(model="helpers:tiny_cnn", **SETTINGS)
    sharded = run_capture(tmp_path / "sharded", CaptureSettings(images=[str(images)], **s), progress=False)
    monkeypatch.setattr(layout, "MAX_SHARD_ROWS", 1)
    flat = run_capture(tmp_path / "flat", CaptureSettings(images=[str(images)], **s), progress=False)
    monkeypatch.undo()
    assert max(layout.rows_per_file(sharded._array(k)) for k in sharded._array_keys()) > 1
    assert all(layout.rows_per_file(flat._array(k)) == 1 for k in flat._array_keys())
    compared = 0
    for i in np.random.default_rng(0).permutation(sharded.n_images):
        for name in sharded.layers:
            for q in QUANTITIES:
                if sharded.has(q, name) and q != "grad_weight":
                    np.testing.assert_array_equal(sharded.read(q, name, i), flat.read(q, name, i))
                    compared += 1
        np.testing.assert_array_equal(sharded.read_inputs([i]), flat.read_inputs([i]))
    assert compared > 3 * sharded.n_images
    for col in ("probs", "pred", "label", "target"):
        np.testing.assert_array_equal(sharded.column(col), flat.column(col))


def test_a_worker_killed_mid_way_is_replaced_and_the_bytes_are_the_same(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    images = write_image_folder(tmp_path / "imgs", n_per_class=12)  # 36 images: 3 ranges of 16 / 16 / 4
    one = run_capture(
        tmp_path / "one", CaptureSettings(images=[str(images)], model="helpers:tiny_cnn", **SETTINGS), progress=False
    )
    marker = pathlib.Path(tmp_path / "die")
    marker.write_text("")
    monkeypatch.setenv(DIE_ENV, str(marker))
    two = run_capture(
        tmp_path / "two",
        CaptureSettings(images=[str(images)], model="test_store_shards:dying_cnn", **SETTINGS),
        progress=False,
        workers=2,
    )
    assert not marker.exists() and pathlib.Path(str(marker) + ".used").exists()  # a worker did die
    assert two.complete and two.done.all()
    assert arrays_digest(two) == arrays_digest(one)


def test_a_shard_equal_to_the_fill_value_is_still_written(tmp_path):
    # zarr leaves out chunks equal to the fill value unless write_empty_chunks is set on the
    # opened array (a runtime setting, not stored): a missing shard of a done image is damage
    from volviz.store.store import Store

    imgs = write_image_folder(tmp_path / "imgs", n_per_class=2)
    settings = CaptureSettings(images=[str(imgs)], model="helpers:tiny_cnn", size=(12, 12), channels=1)
    st = run_capture(tmp_path / "s", settings, progress=False)
    st = Store.open(tmp_path / "s", "r+")
    key = layout.quantity_keys("activation", "conv2")[0]
    st._array(key)[0 : st.n_images] = np.zeros((st.n_images, *st.layers["conv2"].act_shape), np.float32)
    assert layout.chunk_file(st.path, key, 0, st._array(key)).exists()
    from volviz.store.verify import verify_store

    assert verify_store(st, progress=False).ok


def test_writes_go_through_zarrs_and_reads_through_zarr_python(tmp_path):
    # zarrs (Rust) writes at a fraction of zarr-python's CPU; zarr-python reads, since its crc32c
    # check reports a damaged chunk as an error (not as data)
    pytest.importorskip("zarrs")
    import zarr

    g = zarr.open_group(str(tmp_path / "z"), mode="w")
    layout.create_array(g, "a", (8, 4), (1, 4), "float32", 0, sharded=True)
    w = layout.array_for_writing(g, "a")
    assert type(w._async_array.codec_pipeline).__name__ == "ZarrsCodecPipeline"
    assert type(g["a"]._async_array.codec_pipeline).__name__ == "BatchedCodecPipeline"
    w[0:8] = np.arange(32, dtype=np.float32).reshape(8, 4)
    np.testing.assert_array_equal(g["a"][:], np.arange(32, dtype=np.float32).reshape(8, 4))


def test_without_zarrs_the_writer_falls_back_to_zarr_python(tmp_path, monkeypatch):
    import zarr

    monkeypatch.setattr(layout, "WRITE_PIPELINE", "no_such_codec_package.Pipeline")
    g = zarr.open_group(str(tmp_path / "z"), mode="w")
    layout.create_array(g, "a", (4, 2), (1, 2), "float32", 0, sharded=True)
    w = layout.array_for_writing(g, "a")
    assert type(w._async_array.codec_pipeline).__name__ == "BatchedCodecPipeline"
    w[0:4] = np.ones((4, 2), np.float32)
    assert g["a"][:].sum() == 8


def _shard_inode(st, key: str) -> int | None:
    path = layout.chunk_file(st.path, key, 0, st._array(key))
    return path.stat().st_ino if path.exists() else None  # an all-False done shard is not stored


def test_a_shard_holding_done_images_is_replaced_whole_and_a_fresh_one_written_in_place(tmp_path):
    # zarrs writes in place (a kill mid-write tears the file): only for shards with no done image;
    # a resume completing a half-done shard, and the done flags, go through zarr-python's
    # temporary-file-and-rename, so images already done are never in a torn file
    from test_distributed import arrays_digest

    from volviz.store.capture import resume_capture
    from volviz.store.store import Store

    imgs = write_image_folder(tmp_path / "imgs", n_per_class=2)
    settings = CaptureSettings(images=[str(imgs)], model="helpers:tiny_cnn", size=(12, 12), channels=1)
    first = arrays_digest(run_capture(tmp_path / "s", settings, progress=False))
    key = layout.quantity_keys("activation", "conv2")[0]
    in_place = importlib.util.find_spec("zarrs") is not None  # else zarr-python writes everything
    for keep_done, replaced in ((2, True), (0, not in_place)):
        st = Store.open(tmp_path / "s", "r+")
        data_inode = _shard_inode(st, key)
        st.mark_not_done(np.arange(keep_done, st.n_images))
        done_inode = _shard_inode(st, "done")
        st = resume_capture(tmp_path / "s", progress=False, trust_factory=True)
        assert (_shard_inode(st, key) != data_inode) is replaced
        assert _shard_inode(st, "done") != done_inode
        assert st.complete and arrays_digest(st) == first


def test_direct_writes_give_the_same_bytes_as_buffered_ones(tmp_path):
    pytest.importorskip("zarrs")
    if not layout.direct_io_supported(tmp_path):
        pytest.skip("this file system has no O_DIRECT")
    import zarr

    data = np.random.default_rng(0).standard_normal((300, 7, 13)).astype(np.float32)
    files = {}
    for direct in (False, True):
        g = zarr.open_group(str(tmp_path / f"z{direct}"), mode="w")
        layout.create_array(g, "a", data.shape, (1, 7, 13), "float32", 0, sharded=True)
        w = layout.array_for_writing(g, "a", direct_io=direct)
        w[0:256] = data[:256]
        w[256:300] = data[256:]
        np.testing.assert_array_equal(g["a"][:], data)
        root = tmp_path / f"z{direct}" / "a" / "c"
        files[direct] = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert len(files[True]) == 2 and files[True] == files[False]


def test_no_direct_writes_where_the_file_system_refuses_them(tmp_path, monkeypatch):
    import errno

    def refuse(path, flags, *a):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "open", refuse)
    assert not layout.direct_io_supported(tmp_path)
    monkeypatch.undo()
    assert not list(tmp_path.iterdir())  # the probe leaves nothing behind
