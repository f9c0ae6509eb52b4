"""What a capture keeps: filter norms of every layer's weight gradients, full gradients only within
a per-image budget, pooled descriptors, and a projected size checked before anything is written."""

import numpy as np
import pytest
from helpers import write_image_folder

from volviz.analysis.importance import importance_from_store
from volviz.capture.reduce import filter_norms, pool
from volviz.errors import CaptureError, StoreError
from volviz.store.capture import CaptureSettings, run_capture
from volviz.store.contents import projected_bytes

SETTINGS = dict(model="helpers:tiny_cnn", size=(12, 12), channels=1, batch_size=4)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imgs") / "i", n_per_class=4)


@pytest.fixture(scope="module")
def full(tmp_path_factory, images):
    return run_capture(
        tmp_path_factory.mktemp("full") / "s", CaptureSettings(images=[str(images)], **SETTINGS), progress=False
    )


def test_filter_norms_are_kept_and_equal_the_full_tensors(full):
    rows = np.arange(full.n_images)
    for name in ("conv2", "conv3"):
        np.testing.assert_allclose(
            full.read_batch("grad_norm", name, rows),
            filter_norms(full.read_batch("grad_weight", name, rows)),
            rtol=1e-6,
        )
    u, v = full.read_factors("fc1", rows)
    np.testing.assert_allclose(
        full.read_batch("grad_norm", "fc1", rows), np.linalg.norm(np.einsum("ni,nj->nij", u, v), axis=2), rtol=1e-5
    )


def test_norms_only_store_gives_the_same_importance(tmp_path, images, full):
    small = run_capture(
        tmp_path / "s", CaptureSettings(images=[str(images)], weight_grad_budget=200, **SETTINGS), progress=False
    )
    kept = [n for n, i in small.layers.items() if i.weight_grad]
    assert kept == ["conv1"]  # 4x1x3x3 floats = 144 bytes fit 200; conv2 does not
    with pytest.raises(StoreError, match="--weight-grads conv2"):
        small.read("grad_weight", "conv2", 0)
    a, b = importance_from_store(full, progress=False), importance_from_store(small, progress=False)
    for name in a.layers:  # streamed reductions equal reductions over the full per-image tensors
        np.testing.assert_allclose(b.per_image[name], a.per_image[name], rtol=1e-5)
    assert projected_bytes(small.plan) < projected_bytes(full.plan)
    named = run_capture(
        tmp_path / "n",
        CaptureSettings(images=[str(images)], weight_grad_layers=["conv3"], max_images=2, **SETTINGS),
        progress=False,
    )
    assert [n for n, i in named.layers.items() if i.weight_grad] == ["conv3"]


def test_descriptors_are_pooled_activations(tmp_path, images, full):
    st = run_capture(
        tmp_path / "d", CaptureSettings(images=[str(images)], descriptors=["conv2", "fc1"], **SETTINGS), progress=False
    )
    rows = np.arange(st.n_images)
    np.testing.assert_allclose(
        st.read_batch("descriptor", "conv2", rows),
        pool(full.read_batch("activation", "conv2", rows), "meanmax"),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        st.read_batch("descriptor", "fc1", rows), full.read_batch("activation", "fc1", rows), rtol=1e-5, atol=1e-6
    )
    only = run_capture(
        tmp_path / "o",
        CaptureSettings(images=[str(images)], descriptors=["conv2"], pool="mean", descriptors_only=True, **SETTINGS),
        progress=False,
    )
    assert list(only.layers) == ["conv2"] and only.read("descriptor", "conv2", 0).shape == (4,)
    with pytest.raises(StoreError, match="only descriptors"):
        only.read("activation", "conv2", 0)
    with pytest.raises(StoreError, match="--descriptors conv1"):
        full.read("descriptor", "conv1", 0)


def test_projected_size_is_refused_beyond_the_budget(tmp_path, images):
    with pytest.raises(CaptureError, match="--store-budget-gb"):
        run_capture(
            tmp_path / "s", CaptureSettings(images=[str(images)], store_budget=1000, **SETTINGS), progress=False
        )
    assert not (tmp_path / "s").exists()


def test_compressed_store_reads_the_same(tmp_path, images, full):
    small = run_capture(
        tmp_path / "z", CaptureSettings(images=[str(images)], compress=True, **SETTINGS), progress=False
    )
    rows = np.arange(full.n_images)
    for q, layer in (("activation", "conv1"), ("grad_weight", "conv2"), ("grad_norm", "fc1")):
        np.testing.assert_array_equal(small.read_batch(q, layer, rows), full.read_batch(q, layer, rows))
    assert small.plan.compress and "zstd" in str(small._root["act/conv1/data"].metadata.to_dict())


def test_dry_run_plans_and_writes_nothing(tmp_path, images, capsys):
    from volviz.cli import main

    out = tmp_path / "never"
    assert (
        main(
            [
                "capture",
                "--model",
                "helpers:tiny_cnn",
                "--size",
                "12",
                "12",
                "--channels",
                "1",
                "--images",
                str(images),
                "--out",
                str(out),
                "--dry-run",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "batch size" in text and "per image" in text and "nothing was written" in text
    assert not out.exists()
