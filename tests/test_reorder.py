"""Filter orders (volviz.analysis.reorder) checked against scikit-learn on known data."""

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from volviz.analysis.reorder import (
    ORDER_NAMES,
    REORDERINGS,
    KMeansOrder,
    NaturalOrder,
    PCAOrder,
    SliceOrder,
    TwoLevelKMeansOrder,
    make_orderer,
)


def _sign_fixed_pc1(F):
    """Reference: sklearn PCA(1) direction with the documented sign convention."""
    pca = PCA(n_components=1, svd_solver="full").fit(F)
    v = pca.components_[0]
    if v[np.argmax(np.abs(v))] < 0:
        v = -v
    return (F - pca.mean_) @ v


def _assert_contiguous(labels_in_order):
    """Each label occupies one run of positions."""
    runs = labels_in_order[np.r_[True, np.diff(labels_in_order) != 0]]
    assert len(runs) == len(np.unique(labels_in_order)), labels_in_order


def _assert_permutation(order, C):
    assert order.shape == (C,)
    assert np.issubdtype(order.dtype, np.integer)
    assert np.array_equal(np.sort(order), np.arange(C))


def _arc_chain(n_clusters, per_cluster, degrees, D, seed):
    """Blobs whose centres lie along a circular arc (a curved 1-D chain) in D dims, shuffled."""
    rng = np.random.default_rng(seed)
    theta = np.deg2rad(np.linspace(0, degrees, n_clusters))
    basis = np.linalg.qr(rng.normal(size=(D, 2)))[0].T  # 2 orthonormal directions in D dims
    centres = 10.0 * np.c_[np.cos(theta), np.sin(theta)] @ basis
    truth = np.repeat(np.arange(n_clusters), per_cluster)
    F = centres[truth] + 0.05 * rng.normal(size=(len(truth), D))
    perm = rng.permutation(len(truth))
    return F[perm], truth[perm]


def _chain_sequence(orderer, truth):
    """True chain index of each cluster, in the order the orderer shows the clusters."""
    shown = truth[orderer.order_]
    return shown[np.r_[True, np.diff(shown) != 0]]


# --------------------------------------------------------------------------- PCA


def test_pca_order_matches_sklearn_projection_on_random_data():
    rng = np.random.default_rng(0)
    F = rng.normal(size=(12, 30))
    orderer = PCAOrder().fit(F)
    proj = _sign_fixed_pc1(F)
    assert np.array_equal(orderer.order_, np.argsort(proj, kind="stable"))
    assert np.allclose(orderer.projection_, proj)
    # independent of sklearn: numpy SVD of the centred data, same sign convention
    _, _, vt = np.linalg.svd(F - F.mean(axis=0), full_matrices=False)
    v = vt[0] if vt[0][np.argmax(np.abs(vt[0]))] > 0 else -vt[0]
    assert np.array_equal(orderer.order_, np.argsort((F - F.mean(axis=0)) @ v, kind="stable"))
    assert orderer.component_[np.argmax(np.abs(orderer.component_))] > 0


def test_pca_order_of_volume_flattens_each_map():
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(10, 6, 7))
    assert np.array_equal(PCAOrder().fit(vol).order_, PCAOrder().fit(vol.reshape(10, -1)).order_)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_pca_order_recovers_planted_order(sign):
    rng = np.random.default_rng(2)
    C, D = 20, 50
    t = rng.uniform(-3, 3, size=C)
    pattern = rng.normal(size=D)
    pattern *= np.sign(pattern[np.argmax(np.abs(pattern))])  # largest entry positive
    F = t[:, None] * (sign * pattern) + 0.01 * rng.normal(size=(C, D))
    order = PCAOrder().fit(F).order_
    expected = np.argsort(t) if sign > 0 else np.argsort(t)[::-1]
    assert np.array_equal(order, expected)


def test_pca_standardize_matches_sklearn_on_scaled_features():
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(3)
    F = rng.normal(size=(15, 8)) * np.array([100, 1, 1, 1, 1, 1, 1, 1])
    order = PCAOrder(standardize=True).fit(F).order_
    expected = np.argsort(_sign_fixed_pc1(StandardScaler().fit_transform(F)), kind="stable")
    assert np.array_equal(order, expected)


@pytest.mark.parametrize("X", [np.zeros((8, 5, 5)), np.ones((6, 4)) * 3.5, np.full((4, 2, 3, 3), 2.0), np.ones(5)])
def test_constant_input_gives_natural_order_without_warnings(X):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ORDER_NAMES:
            if name.startswith("slice") and X.ndim < 3:
                continue
            orderer = make_orderer(name).fit(X)
            C = X.shape[1] if X.ndim == 4 else X.shape[0]
            assert np.array_equal(orderer.order_, np.arange(C)), name
            assert len(orderer.boundaries_) == 0


# --------------------------------------------------------------------------- k-means


def test_kmeans_partition_equals_sklearn_and_clusters_are_contiguous():
    F, truth = make_blobs(n_samples=40, centers=5, n_features=20, cluster_std=0.5, random_state=1)
    orderer = KMeansOrder(n_clusters=5, random_state=3, n_init=4).fit(F)
    sk = KMeans(n_clusters=5, random_state=3, n_init=4).fit(F)
    assert adjusted_rand_score(orderer.labels_, sk.labels_) == 1.0
    assert adjusted_rand_score(orderer.labels_, truth) == 1.0
    _assert_permutation(orderer.order_, 40)
    shown = orderer.labels_[orderer.order_]
    assert np.all(np.diff(shown) >= 0)  # ids follow the new order, clusters contiguous
    assert np.array_equal(orderer.boundaries_, np.cumsum(np.bincount(orderer.labels_))[:-1])
    assert orderer.n_clusters_ == 5
    assert np.allclose(orderer.cluster_centers_, [F[orderer.labels_ == j].mean(axis=0) for j in range(5)])


def test_kmeans_sklearn_partition_on_volumes_with_other_seed():
    rng = np.random.default_rng(4)
    vol = rng.normal(size=(30, 5, 5))
    orderer = KMeansOrder(n_clusters=6, random_state=7, n_init=3).fit(vol)
    sk = KMeans(n_clusters=6, random_state=7, n_init=3).fit(vol.reshape(30, -1))
    assert adjusted_rand_score(orderer.labels_, sk.labels_) == 1.0
    _assert_contiguous(orderer.labels_[orderer.order_])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_kmeans_centroid_order_follows_curved_chain(seed):
    # a 270 degree arc: sorting centroids by one PCA projection would fold it
    F, truth = _arc_chain(n_clusters=9, per_cluster=4, degrees=270, D=25, seed=seed)
    orderer = KMeansOrder(n_clusters=9, random_state=seed).fit(F)
    seq = _chain_sequence(orderer, truth)
    assert seq.tolist() in (list(range(9)), list(range(9))[::-1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_centroid_order_follows_random_walk_chain(seed):
    rng = np.random.default_rng(seed)
    k, D = 12, 60
    centres = np.cumsum(rng.normal(size=(k, D)), axis=0) * 3.0
    truth = rng.permutation(np.repeat(np.arange(k), 3))
    F = centres[truth] + 0.05 * rng.normal(size=(len(truth), D))
    seq = _chain_sequence(KMeansOrder(n_clusters=k, random_state=0).fit(F), truth)
    assert seq.tolist() in (list(range(k)), list(range(k))[::-1])


def test_kmeans_clamps_clusters_to_filters_and_distinct_rows():
    rng = np.random.default_rng(5)
    small = rng.normal(size=(4, 9))
    orderer = KMeansOrder(n_clusters=10).fit(small)
    _assert_permutation(orderer.order_, 4)
    assert orderer.n_clusters_ == 4
    assert orderer.boundaries_.tolist() == [1, 2, 3]
    rows = np.repeat(rng.normal(size=(2, 9)), 3, axis=0)  # 6 filters, 2 distinct
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        orderer = KMeansOrder(n_clusters=4).fit(rows)
    assert orderer.n_clusters_ == 2
    assert orderer.boundaries_.tolist() == [3]


# --------------------------------------------------------------------------- two-level


def test_two_level_outer_and_inner_clusters_are_contiguous():
    rng = np.random.default_rng(6)
    outer_centres = rng.normal(size=(4, 16)) * 20
    inner_offsets = rng.normal(size=(4, 3, 16)) * 3
    F = np.concatenate(
        [outer_centres[o] + inner_offsets[o, i] + 0.2 * rng.normal(size=(5, 16)) for o in range(4) for i in range(3)]
    )
    F = F[rng.permutation(len(F))]
    orderer = TwoLevelKMeansOrder(n_outer=4, n_inner=3, random_state=0).fit(F)
    _assert_permutation(orderer.order_, 60)
    outer = orderer.labels_[orderer.order_]
    inner = orderer.inner_labels_[orderer.order_]
    assert np.all(np.diff(outer) >= 0) and np.all(np.diff(inner) >= 0)
    assert orderer.n_clusters_ == 4 and orderer.n_inner_clusters_ == 12
    for j in range(orderer.n_inner_clusters_):  # each inner cluster inside one outer cluster
        assert len(np.unique(orderer.labels_[orderer.inner_labels_ == j])) == 1
    assert np.array_equal(orderer.boundaries_, np.flatnonzero(np.diff(outer)) + 1)
    assert np.array_equal(orderer.inner_boundaries_, np.flatnonzero(np.diff(inner)) + 1)
    assert set(orderer.boundaries_) <= set(orderer.inner_boundaries_)
    # the levels are sklearn's partitions
    sk_outer = KMeans(n_clusters=4, random_state=0, n_init=10).fit(F).labels_
    assert adjusted_rand_score(orderer.labels_, sk_outer) == 1.0
    for o in range(4):
        members = orderer.labels_ == o
        sk_inner = KMeans(n_clusters=3, random_state=0, n_init=10).fit(F[members]).labels_
        assert adjusted_rand_score(orderer.inner_labels_[members], sk_inner) == 1.0


def test_two_level_default_20_by_5_on_96_filters():
    rng = np.random.default_rng(7)
    vol = np.maximum(rng.normal(size=(96, 6, 6)), 0)
    orderer = TwoLevelKMeansOrder().fit(vol)
    _assert_permutation(orderer.order_, 96)
    assert orderer.n_clusters_ == 20
    assert 20 <= orderer.n_inner_clusters_ <= 100
    _assert_contiguous(orderer.labels_[orderer.order_])
    _assert_contiguous(orderer.inner_labels_[orderer.order_])


# --------------------------------------------------------------------------- slices


@pytest.mark.parametrize("method", ["pca", "kmeans"])
@pytest.mark.parametrize("axis", ["row", "col"])
def test_slice_order_reads_only_the_chosen_slice(method, axis):
    rng = np.random.default_rng(8)
    vol = rng.normal(size=(14, 9, 11))
    orderer = SliceOrder(method=method, axis=axis, index=3, n_clusters=4).fit(vol)
    other = rng.normal(size=vol.shape)
    if axis == "row":
        other[:, 3, :] = vol[:, 3, :]
        piece = vol[:, 3, :]
    else:
        other[:, :, 3] = vol[:, :, 3]
        piece = vol[:, :, 3]
    again = SliceOrder(method=method, axis=axis, index=3, n_clusters=4).fit(other)
    assert np.array_equal(orderer.order_, again.order_)
    assert np.array_equal(orderer.labels_, again.labels_)
    direct = PCAOrder() if method == "pca" else KMeansOrder(n_clusters=4)
    assert np.array_equal(orderer.order_, direct.fit(piece).order_)
    assert np.array_equal(orderer.boundaries_, direct.boundaries_)


def test_slice_order_changes_with_the_slice_and_defaults_to_middle():
    rng = np.random.default_rng(9)
    vol = rng.normal(size=(20, 8, 10))
    mid = SliceOrder(axis="row").fit(vol)
    assert mid.index_ == 4
    assert np.array_equal(mid.order_, PCAOrder().fit(vol[:, 4, :]).order_)
    assert not np.array_equal(mid.order_, SliceOrder(axis="row", index=1).fit(vol).order_)
    assert SliceOrder(axis="col", index=-1).fit(vol).index_ == 9
    with pytest.raises(ValueError, match="out of range"):
        SliceOrder(index=8).fit(vol)
    with pytest.raises(ValueError, match="volume"):
        SliceOrder().fit(vol[:, 0, :])


def test_slice_order_over_stack_concatenates_slices():
    rng = np.random.default_rng(10)
    stack = rng.normal(size=(3, 12, 7, 6))
    orderer = SliceOrder(method="pca", axis="col", index=2).fit(stack)
    feats = np.concatenate([stack[n, :, :, 2] for n in range(3)], axis=1)
    assert np.array_equal(orderer.order_, PCAOrder().fit(feats).order_)


# --------------------------------------------------------------------------- stacks, transform


@pytest.mark.parametrize("name", ["natural", "pca", "kmeans", "kmeans2"])
def test_order_fitted_over_stack_equals_concatenated_features(name):
    rng = np.random.default_rng(11)
    stack = rng.normal(size=(4, 18, 5, 5)).astype(np.float32)
    feats = np.concatenate([stack[n].reshape(18, -1) for n in range(4)], axis=1)
    kw = {"kmeans": {"n_clusters": 4}, "kmeans2": {"n_outer": 4, "n_inner": 2}}.get(name, {})
    a = make_orderer(name, **kw).fit(stack)
    b = make_orderer(name, **kw).fit(feats)
    assert np.array_equal(a.order_, b.order_)
    assert np.array_equal(a.labels_, b.labels_)
    c = make_orderer(name, **kw).fit(stack.reshape(4, 18, 25), stacked=True)  # (N, C, D)
    assert np.array_equal(a.order_, c.order_)


def test_transform_applies_the_order():
    rng = np.random.default_rng(12)
    vol = rng.normal(size=(10, 4, 4))
    orderer = PCAOrder().fit(vol)
    assert np.array_equal(orderer.transform(vol), vol[orderer.order_])
    assert np.array_equal(orderer.fit_transform(vol), vol[orderer.order_])
    stack = rng.normal(size=(3, 10, 4, 4))
    assert np.array_equal(orderer.transform(stack), stack[:, orderer.order_])
    per_image = rng.normal(size=(3, 10))
    assert np.array_equal(orderer.transform(per_image, stacked=True), per_image[:, orderer.order_])
    with pytest.raises(ValueError, match="stacked=True"):
        orderer.transform(rng.normal(size=(3, 10, 4)))
    with pytest.raises(RuntimeError, match="not fitted"):
        KMeansOrder().transform(vol)


@pytest.mark.parametrize("name", ORDER_NAMES)
@pytest.mark.parametrize("C", [1, 2, 5, 33])
def test_order_is_always_a_permutation(name, C):
    rng = np.random.default_rng(C)
    vol = np.maximum(rng.normal(size=(C, 6, 6)), 0)
    orderer = make_orderer(name).fit(vol)
    _assert_permutation(orderer.order_, C)
    assert orderer.labels_.shape == (C,)
    assert np.all((orderer.boundaries_ > 0) & (orderer.boundaries_ < C))
    assert np.array_equal(orderer.boundaries_, np.flatnonzero(np.diff(orderer.labels_[orderer.order_])) + 1)
    if not name.startswith("slice"):
        _assert_permutation(make_orderer(name).fit(vol[:, 0, 0]).order_, C)  # (C,) input


def test_natural_order_is_identity():
    orderer = NaturalOrder().fit(np.random.default_rng(0).normal(size=(7, 3, 3)))
    assert np.array_equal(orderer.order_, np.arange(7))
    assert np.array_equal(orderer.labels_, np.zeros(7)) and len(orderer.boundaries_) == 0


def test_one_value_per_filter_sorts_by_value():
    values = np.array([3.0, -1.0, 2.0, 0.5])
    assert PCAOrder().fit(values).order_.tolist() == [1, 3, 2, 0]


# --------------------------------------------------------------------------- bad input, names


@pytest.mark.parametrize("name", ORDER_NAMES)
def test_nonfinite_input_is_fitted_as_zero(name):
    rng = np.random.default_rng(13)
    vol = rng.normal(size=(12, 5, 5))
    vol[2, 1, 1] = np.nan
    vol[5, 2, 2] = np.inf
    vol[7, 2, 3] = -np.inf
    orderer = make_orderer(name).fit(vol)
    clean = make_orderer(name).fit(np.nan_to_num(vol, nan=0.0, posinf=0.0, neginf=0.0))
    assert orderer.had_nonfinite_ and not clean.had_nonfinite_
    assert np.array_equal(orderer.order_, clean.order_)
    out = orderer.transform(vol)
    assert np.isnan(out[orderer.order_.tolist().index(2), 1, 1])  # transform keeps values
    all_nan = make_orderer(name).fit(np.full((6, 4, 4), np.nan))
    assert all_nan.had_nonfinite_
    _assert_permutation(all_nan.order_, 6)


def test_make_orderer_names_and_errors():
    kinds = {
        "natural": NaturalOrder,
        "pca": PCAOrder,
        "kmeans": KMeansOrder,
        "kmeans2": TwoLevelKMeansOrder,
        "slice-pca": SliceOrder,
        "slice-kmeans": SliceOrder,
    }
    assert set(ORDER_NAMES) == set(kinds)
    for name, cls in kinds.items():
        assert type(make_orderer(name)) is cls
    assert make_orderer("slice_KMeans", n_clusters=3).method == "kmeans"
    with pytest.raises(ValueError) as err:
        make_orderer("tsne")
    for name in ORDER_NAMES:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="method"):
        make_orderer("slice-pca", method="kmeans")
    with pytest.raises(TypeError):
        make_orderer("pca", n_clusters=3)


def test_estimators_follow_sklearn_conventions():
    orderer = KMeansOrder(n_clusters=3, random_state=5)
    assert clone(orderer).get_params() == orderer.get_params()
    assert not any(k.endswith("_") for k in vars(orderer))  # __init__ stores parameters only
    assert orderer.fit(np.random.default_rng(0).normal(size=(9, 4))) is orderer


def test_the_registry_is_the_one_list_of_orders():
    """One entry per order carries its class, title, clusters parameter and defaults; the
    names, the app's items and the views read it."""
    from volviz.app import state as S
    from volviz.views.source import LayerVolumeSource

    assert ORDER_NAMES == tuple(REORDERINGS)
    assert [it["value"] for it in S.ORDER_ITEMS] == list(REORDERINGS)
    assert [it["title"] for it in S.ORDER_ITEMS] == [r.title for r in REORDERINGS.values()]
    assert S.ORDERS_WITH_CLUSTERS == ["kmeans", "kmeans2", "slice-kmeans"]
    vol = np.random.default_rng(0).normal(size=(24, 6, 6))
    for name, r in REORDERINGS.items():
        est = r.build(24)
        assert type(est) is type(make_orderer(name))
        assert not r.seeded or est.random_state == 0
        for k, v in r.defaults(24).items():
            assert est.get_params()[k] == v
        if r.clusters:  # the clusters parameter counts the separators' clusters
            fitted = r.build(24, clusters=3).fit(vol)
            assert getattr(fitted, r.clusters) == 3 and len(fitted.boundaries_) == 2
            assert r.build(24, clusters=0).get_params()[r.clusters] == r.defaults(24)[r.clusters]
    assert REORDERINGS["kmeans"].defaults(50) == {"n_clusters": 10}
    assert REORDERINGS["kmeans2"].defaults(50) == {"n_outer": 10, "n_inner": 5}
    assert REORDERINGS["slice-pca"].build(8).method == "pca"
    with pytest.raises(ValueError, match="method"):
        REORDERINGS["slice-kmeans"].make(method="pca")

    class Store:  # the views use the registry's defaults: --clusters reaches two-level k-means too
        layers = {"x": None}
        done = np.ones(1, bool)

        def read(self, q, layer, i):
            return vol

    src = LayerVolumeSource(Store())
    two = src.get("x", "activation", 0, "kmeans2", "image", n_clusters=4)
    assert len(two.boundaries) == 3
    assert len(src.get("x", "activation", 0, "kmeans", "image").boundaries) == 24 // 4 - 1
