"""Capture into a store and read back; interrupted captures resume; bad input is reported."""

import json

import numpy as np
import pytest
import torch
from helpers import tiny_cnn, write_image_folder

import volviz.store.execute as run_mod
from volviz.capture.engine import capture_batch
from volviz.sources.images import read_image
from volviz.sources.preprocess import Preprocess
from volviz.store.capture import CaptureError, CaptureSettings, resume_capture, run_capture
from volviz.store.store import FORMAT_VERSION, Store, StoreError


def close(a, b):
    """Equal up to float32 reordering (the store was filled in batches of 4, the reference in one)."""
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(float(np.abs(b).max()), 1e-30))


SETTINGS = dict(model="helpers:tiny_cnn", size=(12, 12), channels=1, batch_size=4)


@pytest.fixture
def images(tmp_path):
    return write_image_folder(tmp_path / "imgs", n_per_class=3)


def _direct(store):
    """What capture_batch gives for all images at once, as the reference for what was stored."""
    prep = Preprocess((12, 12), 1)
    recs = list(store.images)
    x = torch.stack([prep(read_image(r)) for r in recs])
    labels = torch.tensor([r.label for r in recs])
    return capture_batch(tiny_cnn().eval(), x, list(store.layers), labels=labels), labels


def test_capture_store_round_trip(tmp_path, images):
    store = run_capture(tmp_path / "s", CaptureSettings(images=[str(images)], **SETTINGS), progress=False)
    assert store.complete and store.n_images == 9 and store.done.all()
    assert store.class_names == ["a", "b", "c"]
    ref, labels = _direct(store)
    assert list(store.layers) == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    for i in (0, 4, 8):
        for layer in store.layers:
            close(store.read("activation", layer, i), ref.act[layer][i])
            close(store.read("grad_activation", layer, i), ref.grad_act[layer][i])
        close(store.read("grad_weight", "conv3", i), ref.grad_weight["conv3"][i])
        u, v = ref.grad_weight_factors["fc1"]
        close(store.read("grad_weight", "fc1", i), np.outer(u[i], v[i]))
    np.testing.assert_array_equal(store.column("label"), labels.numpy())
    close(store.column("probs"), ref.probs)
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["complete"] and m["versions"]["torch"] == torch.__version__
    assert m["layers"][0]["act_shape"] == [4, 12, 12] and m["layers"][2]["weight_shape"] == [6, 2, 3, 3]
    assert store.read_input(0).shape == (1, 12, 12)
    # reading one image decodes one small chunk; many images per shard file
    from volviz.store.layout import CHUNK_BYTES

    arr = store._root["act/conv1/data"]
    assert arr.chunks[1:] == (4, 12, 12) and arr.chunks[0] * 4 * 12 * 12 * 4 <= CHUNK_BYTES
    assert arr.shards[0] == 8  # a power of two: 9 images in 2 files
    assert len(list((tmp_path / "s" / "act" / "conv1" / "data" / "c").iterdir())) == 2


def test_float16_store_keeps_small_gradients(tmp_path, images):
    store = run_capture(
        tmp_path / "h", CaptureSettings(images=[str(images)], dtype="float16", **SETTINGS), progress=False
    )
    ref, _ = _direct(store)
    for layer in ("conv1", "fc1"):
        g = ref.grad_act[layer][3]
        np.testing.assert_allclose(store.read("grad_activation", layer, 3), g, atol=2e-3 * np.abs(g).max())
    g = ref.grad_weight["conv3"][2]
    np.testing.assert_allclose(store.read("grad_weight", "conv3", 2), g, atol=2e-3 * np.abs(g).max())
    assert store._root["grad_weight/conv3/w"].dtype == np.float16


def test_interrupted_capture_resumes_to_the_same_result(tmp_path, images, monkeypatch):
    calls = {"n": 0}
    real = run_mod.capture_batch

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # call 1 checks the first image before the store exists
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(run_mod, "capture_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        run_capture(tmp_path / "s", CaptureSettings(images=[str(images)], **SETTINGS), progress=False)
    store = Store.open(tmp_path / "s")
    assert not store.complete and store.done.sum() == 4
    store.read("activation", "conv1", 0)
    with pytest.raises(StoreError, match="--resume"):
        store.read("activation", "conv1", 5)
    # a half-written chunk of an image that is not done is never read as data
    chunk = tmp_path / "s" / "act" / "conv1" / "data" / "c" / "5" / "0" / "0" / "0"
    chunk.parent.mkdir(parents=True, exist_ok=True)
    chunk.write_bytes(b"\x28\xb5\x2f\xfd truncated")
    with pytest.raises(StoreError, match="not captured yet"):
        Store.open(tmp_path / "s").read("activation", "conv1", 5)
    monkeypatch.setattr(run_mod, "capture_batch", real)
    store = resume_capture(tmp_path / "s", progress=False, trust_factory=True)
    assert store.complete and store.done.all()
    ref, _ = _direct(store)
    for i in range(9):
        close(store.read("activation", "conv2", i), ref.act["conv2"][i])
    assert chunk.exists()


def test_store_errors(tmp_path, images):
    with pytest.raises(StoreError, match="no store"):
        Store.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="not a volviz store"):
        Store.open(tmp_path / "empty")
    store = run_capture(
        tmp_path / "s",
        CaptureSettings(images=[str(images)], layers=["conv1"], gradients=False, **SETTINGS),
        progress=False,
    )
    with pytest.raises(StoreError, match="layer 'conv9' is not in this store. Layers: conv1"):
        store.read("activation", "conv9", 0)
    with pytest.raises(StoreError, match="no grad_activation"):
        store.read("grad_activation", "conv1", 0)
    with pytest.raises(StoreError, match="exists"):
        run_capture(tmp_path / "s", CaptureSettings(images=[str(images)], **SETTINGS), progress=False)
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    m["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="newer volviz"):
        Store.open(tmp_path / "s")


def test_unreadable_files_are_skipped_and_reported(tmp_path, images, caplog):
    (images / "a" / "broken.png").write_bytes(b"not a png at all")
    (images / "b" / "notes.txt").write_text("hello")
    store = run_capture(tmp_path / "s", CaptureSettings(images=[str(images)], **SETTINGS), progress=False)
    assert store.n_images == 9
    skipped = {s["path"].rsplit("/", 1)[1] for s in store.plan.skipped}
    assert skipped == {"broken.png", "notes.txt"}
    assert "skipping" in caplog.text


def test_channel_conversion_and_refusal(tmp_path):
    rgb = write_image_folder(tmp_path / "rgb", n_per_class=1, rgb=True)
    store = run_capture(tmp_path / "s", CaptureSettings(images=[str(rgb)], **SETTINGS), progress=False)
    assert store.n_images == 3  # RGB converted to grey for a grey model
    img = np.zeros((12, 12, 3), np.uint8)
    with pytest.raises(ValueError, match="3 channels, the model expects 5"):
        Preprocess((12, 12), 5)(img)
    with pytest.raises(CaptureError, match="none of the 3 files"):
        run_capture(
            tmp_path / "s5",
            CaptureSettings(images=[str(rgb)], model="helpers:tiny_cnn", size=(12, 12), channels=5),
            progress=False,
        )


def test_layer_too_big_for_memory_is_a_clear_error(tmp_path, images):
    with pytest.raises(CaptureError, match=r"one image needs .* KiB .*budget.*--layers"):
        run_capture(
            tmp_path / "s", CaptureSettings(images=[str(images)], memory_budget=1000, **SETTINGS), progress=False
        )
    assert not (tmp_path / "s").exists()


def test_nan_activations_are_stored_and_flagged(tmp_path, images, caplog):
    import helpers

    def nan_cnn():
        m = helpers.tiny_cnn()
        with torch.no_grad():
            m.conv1.bias[0] = float("nan")
        return m

    helpers.nan_cnn = nan_cnn
    s = dict(SETTINGS, model="helpers:nan_cnn")
    store = run_capture(tmp_path / "s", CaptureSettings(images=[str(images)], gradients=False, **s), progress=False)
    a = store.read("activation", "conv1", 0)
    assert np.isnan(a[0]).all() and np.isfinite(a[1]).all()
    assert "NaN/Inf" in caplog.text
    assert store.manifest["summary"]["nonfinite"]["conv1"] == 9 * 12 * 12
    from volviz.cli import describe_store

    assert "conv1: 1296 NaN/Inf activation values" in describe_store(store)
