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


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_conv_kept_as_its_input_rebuilds_the_per_image_weight_gradient(tmp_path, images, dtype, monkeypatch):
    import volviz.store.capture as capture_mod

    settings = dict(SETTINGS, model="helpers:small_map_cnn")
    st = run_capture(tmp_path / "s", CaptureSettings(images=[str(images)], dtype=dtype, **settings), progress=False)
    parts = {i.name: tuple(i.weight_parts) for i in st.plan.layers}
    assert parts == {"conv1": ("w",), "conv2": ("x",), "conv3": ("x",), "fc": ("u", "v")}
    monkeypatch.setattr(capture_mod, "_stored_as_input", lambda info, module, inp: info)
    ref = run_capture(tmp_path / "full", CaptureSettings(images=[str(images)], **settings), progress=False)
    assert {tuple(i.weight_parts) for i in ref.plan.layers if i.kind == "conv"} == {("w",)}
    assert projected_bytes(st.plan) < projected_bytes(ref.plan)
    rows = np.arange(st.n_images)
    # float32: the same exact routine on the same float32 tensors (another batch shape: 1e-5 of the
    # largest value); float16: the input and the output gradient are each rounded to 11 bits
    # (relative 5e-4) before the rebuild, so about 1e-3 of the largest value
    tol = 1e-5 if dtype == "float32" else 2e-3
    for name in ("conv2", "conv3"):
        got, want = st.read_batch("grad_weight", name, rows), ref.read_batch("grad_weight", name, rows)
        assert np.abs(got - want).max() <= tol * np.abs(want).max()
        np.testing.assert_allclose(st.read_batch("grad_norm", name, rows), filter_norms(want), rtol=10 * tol, atol=1e-6)


def test_image_budget_gives_up_volumes_in_order_and_keeps_importance_exact(tmp_path, images, full, caplog):
    from volviz.store.contents import bytes_per_image

    whole = bytes_per_image(full.plan)
    assert full.plan.dtype == "float32"  # "auto" under the default budget: nothing given up
    st = run_capture(
        tmp_path / "s", CaptureSettings(images=[str(images)], image_budget=whole // 4, **SETTINGS), progress=False
    )
    assert bytes_per_image(st.plan) <= whole // 4 and st.plan.dtype == "float16"
    assert "over the" in caplog.text and "--image-budget-mb" in caplog.text
    dropped = [i.name for i in st.plan.layers if not i.gradient]
    assert dropped and dropped[0] == "conv1"  # the largest maps first
    kept = [i.name for i in st.plan.layers if i.gradient]
    rows = np.arange(st.n_images)
    for name in kept:
        np.testing.assert_allclose(
            st.read_batch("grad_activation", name, rows),
            full.read_batch("grad_activation", name, rows),
            rtol=0,
            atol=1e-3 * np.abs(full.read_batch("grad_activation", name, rows)).max(),
        )
    with pytest.raises(StoreError, match="--image-budget-mb 0"):
        st.read("grad_activation", "conv1", 0)
    for name in ("conv1", "conv2", "conv3", "fc1"):  # filter norms stay float32: importance is exact
        assert st._array(f"grad_norm/{name}/data").dtype == np.float32
        np.testing.assert_allclose(
            st.read_batch("grad_norm", name, rows), full.read_batch("grad_norm", name, rows), rtol=1e-6
        )
    from volviz.store.verify import verify_store

    assert verify_store(st, progress=False).ok


def test_explicit_float32_and_no_budget_keep_everything(tmp_path, images, full):
    from volviz.store.contents import bytes_per_image

    small = bytes_per_image(full.plan) // 4
    st = run_capture(
        tmp_path / "a",
        CaptureSettings(images=[str(images)], image_budget=small, dtype="float32", **SETTINGS),
        progress=False,
    )
    assert st.plan.dtype == "float32" and not all(i.gradient for i in st.plan.layers)
    st = run_capture(
        tmp_path / "b", CaptureSettings(images=[str(images)], image_budget=None, **SETTINGS), progress=False
    )
    assert bytes_per_image(st.plan) == bytes_per_image(full.plan)


def test_the_command_line_default_image_budget_is_the_store_default():
    from volviz.cli import build_parser
    from volviz.store.keep import IMAGE_BUDGET

    a = build_parser().parse_args(["capture", "--out", "x"])
    assert a.image_budget_mb * 1e6 == IMAGE_BUDGET and a.float16 is False and a.float32 is False
