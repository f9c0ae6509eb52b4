"""The dataset view's numerics on small data: descriptors, embeddings, neighbours, top-k."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import write_image_folder

from volviz.analysis.dataset import descriptors as D
from volviz.analysis.dataset.embedding import (
    MIN_IMAGES,
    embed,
    embed_store,
    load_embedding,
    pca_fit,
    pca_stream,
    save_embedding,
)
from volviz.analysis.dataset.neighbours import brute_neighbours, class_share, nearest
from volviz.analysis.dataset.topk import merge_topk, top_examples, unit_scores
from volviz.capture.reduce import pool
from volviz.store.capture import CaptureSettings, run_capture

TINY = dict(model="helpers:tiny_cnn", size=(12, 12), channels=1, batch_size=4, gradients=False)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("dscore")
    imgs = write_image_folder(root / "imgs", n_per_class=4)
    full = run_capture(root / "full", CaptureSettings(images=[str(imgs)], **TINY), progress=False)
    desc = run_capture(
        root / "desc",
        CaptureSettings(
            images=[str(imgs)], descriptors=["conv2", "fc1"], pool="meanmax", descriptors_only=True, **TINY
        ),
        progress=False,
    )
    return full, desc


def blobs(n_per: int = 20, k: int = 4, dim: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 6, (k, dim))
    x = np.concatenate([c + rng.normal(0, 1, (n_per, dim)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(k), n_per)


# ---- descriptors --------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["mean", "max", "meanmax"])
def test_pooled_activations_streamed_in_small_batches(stores, how):
    full, _ = stores
    rows = np.flatnonzero(full.done)
    want = pool(full.read_batch("activation", "conv2", rows), how)
    got = D.descriptors(full, "conv2", pool=how, batch=5)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.dtype == np.float32 and got.shape == (len(rows), (2 if how == "meanmax" else 1) * 4)
    np.testing.assert_allclose(D.descriptors(full, "fc1"), full.read_batch("activation", "fc1", rows))


@pytest.mark.parametrize("how", ["mean", "max", "meanmax"])
def test_stored_descriptors_are_read_and_equal_pooled_activations(stores, how):
    full, desc = stores
    assert desc.has("descriptor", "conv2") and not desc.has("activation", "conv2")
    np.testing.assert_allclose(
        D.descriptors(desc, "conv2", pool=how), D.descriptors(full, "conv2", pool=how), rtol=1e-5, atol=1e-6
    )


class _NoData:
    """A store that keeps nothing of its layer (a future kind of capture)."""

    def __init__(self, store):
        self.s = store
        self.path, self.layers = store.path, store.layers

    def has(self, quantity, layer):
        return False


def test_a_layer_without_descriptors_names_the_command_that_makes_them(stores):
    full, desc = stores
    with pytest.raises(D.NoDescriptorsError, match=r"volviz capture --descriptors conv1"):
        D.descriptors(_NoData(full), "conv1")
    with pytest.raises(D.DatasetError, match="not in"):
        D.descriptors(desc, "conv1")  # not captured at all


# ---- embeddings ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_planted_clusters_are_recovered(method):
    x, y = blobs()
    coords = embed(x, method, 2)
    idx, _ = brute_neighbours(coords, 5, metric="euclidean")
    assert class_share(idx, y).mean() >= 0.97


@pytest.mark.slow  # numba compiles UMAP on first use (about 20 s in a fresh environment)
def test_planted_clusters_umap_2d_and_3d():
    x, y = blobs()
    for dims in (2, 3):
        coords = embed(x, "umap", dims)
        assert coords.shape == (len(x), dims)
        idx, _ = brute_neighbours(coords, 5, metric="euclidean")
        assert class_share(idx, y).mean() >= 0.97


def test_streamed_pca_equals_sklearn_up_to_sign():
    from sklearn.decomposition import PCA

    x, _ = blobs(dim=12)
    fit, n = pca_stream(((None, x[s : s + 7]) for s in range(0, len(x), 7)), 3)
    ref = PCA(3).fit(x)
    assert n == len(x)
    got, want = fit.transform(x), ref.transform(x)
    signs = np.sign((got * want).sum(0))
    np.testing.assert_allclose(got * signs, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fit.variance, ref.explained_variance_, rtol=1e-6)
    np.testing.assert_allclose(pca_fit(x, 3).components, fit.components, atol=1e-8)


def test_too_few_images_explain_the_minimum():
    with pytest.raises(D.TooFewImagesError, match=f"at least {MIN_IMAGES} images"):
        embed(np.random.default_rng(0).normal(size=(3, 8)), "pca")


def test_store_embedding_round_trips_and_one_class_still_embeds(stores, tmp_path):
    from volviz.store.store import Store

    full, _ = stores
    st = Store.open(full.path, "r+")
    emb = embed_store(st, "fc1", "pca", 3, batch=5)
    assert emb.coords.shape == (st.n_images, 3) and emb.settings["method"] == "pca"
    save_embedding(st, emb)
    back = load_embedding(Store.open(full.path), "fc1")
    np.testing.assert_array_equal(back.coords, emb.coords)
    np.testing.assert_array_equal(back.rows, emb.rows)
    assert back.settings["dims"] == 3 and load_embedding(st, "conv1") is None
    one = run_capture(
        tmp_path / "one",
        CaptureSettings(images=[str(write_image_folder(tmp_path / "i", 6, ("a",)))], **TINY),
        progress=False,
    )
    e1 = embed_store(one, "conv2", "tsne")
    assert e1.coords.shape == (6, 2) and np.isfinite(e1.coords).all()
    from volviz.views.dataset_figures import colour_values

    kind, values, title = colour_values(D.image_table(one), "auto")
    assert kind == "class" and "predicted" in title


# ---- neighbours ---------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_neighbour_search_equals_brute_force(metric):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 9)).astype(np.float32)
    x[7] = 0  # a zero vector: cosine distance 1 to everything
    idx, dist = brute_neighbours(x, 6, metric=metric, chunk=32)
    xx = x.astype(np.float64)
    if metric == "cosine":
        n = np.linalg.norm(xx, axis=1, keepdims=True)
        u = xx / np.where(n > 0, n, 1)
        full = 1 - u @ u.T
    else:
        full = np.linalg.norm(xx[:, None] - xx[None], axis=2)
    np.fill_diagonal(full, np.inf)
    want = np.argsort(full, axis=1, kind="stable")[:, :6]
    np.testing.assert_allclose(dist, np.take_along_axis(full, want, 1), atol=1e-5)
    ok = np.abs(np.take_along_axis(full, want, 1) - np.take_along_axis(full, idx, 1)).max(1) < 1e-5
    assert ok.all()
    assert (idx != np.arange(150)[:, None]).all()
    q_idx, q_dist = brute_neighbours(x, 6, queries=[3, 99], metric=metric)
    np.testing.assert_array_equal(q_idx, idx[[3, 99]])


@pytest.mark.slow  # numba compiles pynndescent on first use
def test_approximate_neighbours_recall():
    x, _ = blobs(n_per=80, dim=10)
    exact, _ = brute_neighbours(x, 10)
    approx, _ = nearest(x, 10, method="approx")
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx)])
    assert recall >= 0.9


# ---- top-k --------------------------------------------------------------------------------------
def test_streamed_topk_equals_a_full_sort(stores):
    full, _ = stores
    rows = np.flatnonzero(full.done)
    for layer in ("conv2", "fc1"):
        act = full.read_batch("activation", layer, rows)
        scores, pos = unit_scores(act)
        top = top_examples(full, layer, 5, batch=3, bins=8)
        order = np.lexsort((np.broadcast_to(rows[:, None], scores.shape), -scores), axis=0)[:5].T  # (U, 5)
        np.testing.assert_array_equal(top.rows, rows[order])
        np.testing.assert_allclose(top.values, np.take_along_axis(scores.T, order, 1))
        np.testing.assert_array_equal(top.positions, np.take_along_axis(pos.transpose(1, 0, 2), order[..., None], 1))
        assert (top.hist_counts.sum(1) == len(rows)).all()
        np.testing.assert_allclose(top.minimum, scores.min(0))
        if act.ndim == 4:
            u, i = 2, 0
            y, xx = top.positions[u, i]
            assert act[list(rows).index(top.rows[u, i]), u, y, xx] == pytest.approx(top.values[u, i])


def test_merge_topk_breaks_ties_by_row_and_keeps_missing_last():
    v = np.full((1, 3), -np.inf, np.float32)
    r = np.full((1, 3), -1)
    p = np.full((1, 3, 2), -1)
    v, r, p = merge_topk(v, r, p, np.array([[1.0, 2.0]]), np.array([[5, 4]]), np.zeros((1, 2, 2), int), 3)
    v, r, p = merge_topk(v, r, p, np.array([[2.0]]), np.array([[1]]), np.zeros((1, 1, 2), int), 3)
    assert r.tolist() == [[1, 4, 5]] and v.tolist() == [[2.0, 2.0, 1.0]]
