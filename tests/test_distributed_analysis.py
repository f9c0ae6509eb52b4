"""The streamed analyses as map (ranges of images) + merge on a 2-worker Dask LocalCluster
(processes) equal the 1-process run on a digits LeNet store.

Reads, top-k, histograms, descriptors and error rates are the same bits (integer counts and
exact copies of stored floats; ranges are aligned to the batches). What the workers recompute
with torch (importance on the fly, probabilities of pruned models) runs the same batches, but a
worker's thread count may pick a different float32 kernel: compared at rtol 1e-5 (float32 has
~6e-8 relative resolution; a different summation order over a few thousand terms moves the last
few bits) while the predicted classes and every integer must agree exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("distributed")

from volviz.analysis.distributed_map import DaskOptions, split_ranges  # noqa: E402

RTOL = 1e-5


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import pathlib
    import shutil

    from volviz.store.capture import CaptureSettings, run_capture

    root = tmp_path_factory.mktemp("dstore")
    shipped = pathlib.Path(__file__).resolve().parents[1] / "data" / "digits" / "test"
    for c in range(10):  # 6 real test digits per class
        (root / "imgs" / str(c)).mkdir(parents=True)
        for f in sorted((shipped / str(c)).glob("*.png"))[:6]:
            shutil.copy(f, root / "imgs" / str(c) / f.name)
    settings = CaptureSettings(model="digits", images=[str(root / "imgs")], batch_size=16)
    return run_capture(root / "s", settings, progress=False)


@pytest.fixture(scope="module")
def dask():
    with DaskOptions(workers=2, progress=False, tasks_per_worker=2) as opts:
        yield opts


def test_split_ranges_aligned_and_covering():
    r = split_ranges(60, 4, align=8)
    assert r == [(0, 16), (16, 32), (32, 48), (48, 60)]
    assert split_ranges(5, 8, align=8) == [(0, 5)]
    assert split_ranges(0, 3) == []


def test_importance_from_store_same_bits(store, dask):
    from volviz.analysis.importance import importance_from_store

    one = importance_from_store(store, batch_size=8, progress=False)
    two = importance_from_store(store, batch_size=8, progress=False, dask=dask)
    assert two.layers == one.layers and two.image_ids == one.image_ids
    for n in one.layers:
        assert np.array_equal(two.per_image[n], one.per_image[n])
    assert np.array_equal(two.target, one.target) and np.array_equal(two.label, one.label)


def test_importance_on_the_fly_and_groups(store, dask):
    from volviz.analysis.class_groups import GroupsReport
    from volviz.analysis.importance import importance_on_the_fly
    from volviz.analysis.inputs import inputs_from_store

    model = store.model().module
    inputs, _ = inputs_from_store(store)
    kw = dict(target="pred", class_names=store.class_names, batch_size=8, progress=False)
    one = importance_on_the_fly(model, inputs, ["conv1", "fc1"], **kw)
    two = importance_on_the_fly(model, inputs, ["conv1", "fc1"], dask=dask, store=store, **kw)
    assert two.image_ids == one.image_ids
    assert np.array_equal(two.target, one.target) and np.array_equal(two.pred, one.pred)
    for n in one.layers:
        np.testing.assert_allclose(two.per_image[n], one.per_image[n], rtol=RTOL, atol=1e-7)
    # class groups: descriptor similarity and the statistics over all images of the 3 classes
    g_kw = dict(by="descriptor", descriptor_layer="fc1", layer="conv1")
    g1 = GroupsReport.compute(store, model, 3, **g_kw)
    g2 = GroupsReport.compute(store, model, 3, dask=dask, **g_kw)
    assert g2.groups.to_dict() == g1.groups.to_dict()
    assert g1.stats and g2.stats.keys() == g1.stats.keys()
    for g, d in g1.stats.items():
        assert g2.stats[g]["n"] == d["n"] and g2.stats[g]["n_misclassified"] == d["n_misclassified"]
        np.testing.assert_allclose(g2.stats[g]["mean"], d["mean"], rtol=RTOL)


def test_prune_report_on_dask_equals_one_process(store, dask):
    from volviz.analysis.importance import importance_from_store
    from volviz.analysis.inputs import inputs_from_store
    from volviz.analysis.prune_report import PruneReport

    model = store.model().module
    inputs, _ = inputs_from_store(store)
    res = importance_from_store(store, ["conv1", "conv2"], progress=False)
    kw = dict(classes=[0, 1], k=2, steps=6, progress=False)
    one = PruneReport.compute(model, inputs, res, ["conv1", "conv2"], **kw)
    two = PruneReport.compute(model, inputs, res, ["conv1", "conv2"], dask=dask, store=store, **kw)
    for a, b in zip(one.rows, two.rows):
        assert (a.layer, a.reference, a.least, a.most) == (b.layer, b.reference, b.least, b.most)
        assert (a.error_before, a.error_least, a.error_most) == (b.error_before, b.error_least, b.error_most)
        assert (a.overall_least, a.overall_most) == (b.overall_least, b.overall_most)
        np.testing.assert_allclose([b.prob_least, b.prob_most], [a.prob_least, a.prob_most], rtol=RTOL)
    for a, b in zip(one.sweeps, two.sweeps):
        assert np.array_equal(a.n_removed, b.n_removed)
        assert np.array_equal(a.error, b.error, equal_nan=True) and np.array_equal(a.overall, b.overall)
        assert np.array_equal(a.overall_most_first, b.overall_most_first)
    assert one.sweeps[0].overall[-1] > one.sweeps[0].overall[0]  # removing every filter hurts: a real sweep


def test_topk_and_descriptors_same_bits(store, dask):
    from volviz.analysis.dataset.descriptors import descriptors
    from volviz.analysis.dataset.topk import top_examples

    one = top_examples(store, "conv2", 5, batch=8)
    two = top_examples(store, "conv2", 5, batch=8, dask=dask)
    for f in ("rows", "values", "positions", "minimum", "hist_edges", "hist_counts"):
        assert np.array_equal(getattr(two, f), getattr(one, f)), f
    assert one.hist_counts.sum() == 60 * one.rows.shape[0]
    d1 = descriptors(store, "conv2", pool="meanmax", batch=8)
    assert np.array_equal(descriptors(store, "conv2", pool="meanmax", batch=8, dask=dask), d1)
    assert d1.shape == (60, 100)


def test_cli_importance_workers_same_files(store, tmp_path, capsys):
    from volviz.cli import main

    s = str(store.path)
    assert main(["importance", s, "--out", str(tmp_path / "a"), "--layers", "conv1", "fc2"]) == 0
    assert main(["importance", s, "--out", str(tmp_path / "b"), "--layers", "conv1", "fc2", "--workers", "1"]) == 0
    for f in sorted((tmp_path / "a").glob("*.csv")):
        assert (tmp_path / "b" / f.name).read_bytes() == f.read_bytes(), f.name
    assert main(["importance", s, "--out", str(tmp_path / "c"), "--workers", "0"]) == 2
    assert "--workers must be 1..1024" in capsys.readouterr().err
