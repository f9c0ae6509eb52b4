"""Pruning analysis (volviz.analysis.pruning): exactly the chosen filters are zeroed, error rates
match hand counts, the sweep removes filters in importance order, bad input is refused."""

import pathlib

import numpy as np
import pytest
import torch
from helpers import capture_tiny_store, tiny_cnn

from volviz.analysis.inputs import InputSet
from volviz.analysis.pruning import (
    error_rates,
    least_most_table,
    predict,
    sweep_thresholds,
    table_markdown,
    threshold_sweep,
    zero_filters,
)
from volviz.cli import main
from volviz.errors import AnalysisError, EmptyClassError, ThresholdError


def test_zero_filters_zeroes_exactly_the_chosen_ones_in_a_copy():
    m = tiny_cnn().eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    p = zero_filters(m, "conv2", [0, 3])
    for k, v in m.state_dict().items():  # the original is untouched
        assert torch.equal(v, before[k]), k
    w, b = p.conv2.weight.detach(), p.conv2.bias.detach()
    assert torch.all(w[[0, 3]] == 0) and torch.all(b[[0, 3]] == 0)
    assert torch.equal(w[[1, 2]], before["conv2.weight"][[1, 2]])
    assert torch.equal(b[[1, 2]], before["conv2.bias"][[1, 2]])
    for k, v in p.state_dict().items():  # nothing else changed
        if not k.startswith("conv2."):
            assert torch.equal(v, before[k]), k
    # removing a filter = its output map is exactly zero
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        out = p.conv2(torch.relu(p.conv1(x)))
    assert torch.all(out[:, [0, 3]] == 0)
    keep = zero_filters(m, "conv2", [1], zero_bias=False)
    assert torch.all(keep.conv2.weight[1] == 0) and keep.conv2.bias[1] == before["conv2.bias"][1]
    with pytest.raises(AnalysisError, match="out of range"):
        zero_filters(m, "conv2", [4])
    with pytest.raises(AnalysisError, match="has no weights"):
        zero_filters(m, "pool", [0])


def test_error_rates_match_a_hand_count():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, -1])
    pred = np.array([0, 1, 0, 1, 1, 2, 0, 0, 2, 1])
    per_class, overall, counts = error_rates(pred, labels, 4)
    assert counts.tolist() == [3, 2, 4, 0]
    np.testing.assert_allclose(per_class[:3], [1 / 3, 0.0, 2 / 4])
    assert np.isnan(per_class[3])  # a class without images has no error rate
    assert overall == pytest.approx(3 / 9)  # the unlabelled image is not counted
    with pytest.raises(AnalysisError, match="labelled"):
        error_rates(pred, -np.ones(10, int), 4)


def _inputs(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 12, 12, generator=g)
    return InputSet.from_tensors(x, np.arange(n) % 3)


def test_least_most_table_removes_argmin_and_argmax():
    m = tiny_cnn().eval()
    inputs = _inputs()
    rel = {"conv2": np.array([[0.5, 0.1, 0.9, 0.3], [0.2, 0.8, 0.4, 0.6], [0.7, 0.3, 0.1, 0.9]])}
    rows = least_most_table(m, inputs, rel, [0, 1], k=2, class_names=list("abc"), progress=False)
    assert [(r.least, r.most) for r in rows] == [([1, 3], [2, 0]), ([0, 2], [1, 3])]
    for r in rows:
        want, _, _ = error_rates(predict(zero_filters(m, "conv2", r.most), inputs), inputs.labels, 3)
        assert r.error_most == pytest.approx(want[r.reference])
        with torch.no_grad():  # mean p(class) of the class's images, by hand
            pr = torch.softmax(zero_filters(m, "conv2", r.least)(inputs._cache), 1).numpy()
        assert r.prob_least == pytest.approx(pr[inputs.labels == r.reference, r.reference].mean(), rel=1e-5)
        base, overall, counts = error_rates(predict(m, inputs), inputs.labels, 3)
        assert r.error_before == pytest.approx(base[r.reference]) and r.n_images == counts[r.reference]
    md = table_markdown(rows)
    assert md.count("\n") == 4 and "| a | conv2 | 2 |" in md
    with pytest.raises(AnalysisError, match="k=4"):
        least_most_table(m, inputs, rel, [0], k=4, progress=False)
    no_c = InputSet.from_tensors(inputs._cache[:4], np.array([0, 0, 1, 1]))
    with pytest.raises(EmptyClassError, match="class c"):
        least_most_table(m, no_c, rel, [2], class_names=list("abc"), progress=False)


def test_threshold_sweep_order_and_range():
    m = tiny_cnn().eval()
    inputs = _inputs()
    imp = np.array([0.4, 0.1, 0.3, 0.2])
    th = sweep_thresholds(imp)
    assert len(th) == 5 and th[0] == 0 and th[-1] > 0.4
    s = threshold_sweep(m, inputs, "conv2", imp, n_classes=3, progress=False)
    assert s.n_removed.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(s.fraction_removed, [0, 0.25, 0.5, 0.75, 1])
    base, overall, _ = error_rates(predict(m, inputs), inputs.labels, 3)
    assert s.overall[0] == pytest.approx(overall)
    # the 2nd step removes filters 1 and 3 (importance 0.1, 0.2)
    want = error_rates(predict(zero_filters(m, "conv2", [1, 3]), inputs), inputs.labels, 3)[1]
    assert s.overall[2] == pytest.approx(want)
    assert "threshold,filters_removed,fraction_removed,overall_error" in s.to_csv()
    s2 = threshold_sweep(m, inputs, "conv2", imp, thresholds=[0.0, 0.25], n_classes=3, progress=False)
    assert s2.n_removed.tolist() == [0, 2]
    with pytest.raises(ThresholdError, match=r"outside the range.*\[0, 0.4\]"):
        threshold_sweep(m, inputs, "conv2", imp, thresholds=[0.1, 0.9], n_classes=3, progress=False)
    with pytest.raises(ThresholdError):
        threshold_sweep(m, inputs, "conv2", imp, thresholds=[-1.0], n_classes=3, progress=False)
    many = sweep_thresholds(np.arange(500.0), steps=50)
    assert len(many) == 51 and np.all(np.diff(many) > 0)


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    return capture_tiny_store(root, n_per_class=4)


def test_cli_prune_writes_table_and_sweep(tiny_store, tmp_path):
    out = tmp_path / "p"
    assert main(["prune", "--trust-factory", str(tiny_store), "--out", str(out), "--layers", "conv2", "conv3"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "sweep_conv2.csv",
        "sweep_conv2.png",
        "sweep_conv3.csv",
        "sweep_conv3.png",
        "table.csv",
        "table.md",
    ]
    table = (out / "table.csv").read_text().splitlines()
    assert table[0].startswith("class,layer,k,images,error_before_%") and len(table) == 1 + 3 * 2
    sweep = (out / "sweep_conv3.csv").read_text().splitlines()
    assert sweep[1].split(",")[1] == "0" and sweep[-1].split(",")[1] == "6"  # 0 .. all 6 filters removed


def test_cli_prune_bad_input_writes_nothing(tiny_store, tmp_path):
    for args in (["--thresholds", "1e9"], ["--layers", "pool"], ["--classes", "zebra"], ["--reference", "9"]):
        out = tmp_path / "bad"
        assert main(["prune", "--trust-factory", str(tiny_store), "--out", str(out), *args]) == 2, args
        assert not out.exists(), args
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".volviz-")]


def _digits_inputs():
    from volviz.sources import demo
    from volviz.sources.images import discover_images
    from volviz.sources.models import load_model
    from volviz.sources.preprocess import Preprocess

    lm = load_model("digits")
    prep = Preprocess(lm.input_size[1:], 1, lm.mean, lm.std)
    images = discover_images([demo.demo_images_dir("digits")], class_names=lm.class_names)
    return lm.module, InputSet(images.records, prep)


@pytest.mark.skipif(
    not __import__("volviz.sources.demo", fromlist=["x"]).demo_weights_path("digits").exists(),
    reason="digits weights not trained",
)
def test_digits_most_important_filters_matter_more():
    """[Jain2016]'s table on the shipped 200 digits: removing a class's most important conv2 filters
    costs that class far more probability than removing its least important ones."""
    from volviz.analysis.importance import importance_on_the_fly

    model, inputs = _digits_inputs()
    res = importance_on_the_fly(model, inputs, ["conv2"], target="true", progress=False)
    rows = least_most_table(
        model, inputs, {"conv2": res.class_relevance("conv2")[0]}, list(range(10)), k=5, progress=False
    )
    drop_most = np.array([r.prob_before - r.prob_most for r in rows])
    drop_least = np.array([r.prob_before - r.prob_least for r in rows])
    assert drop_most.mean() > 5 * max(drop_least.mean(), 1e-3)  # measured: 0.026 vs 0.0004
    assert (drop_most > drop_least).sum() >= 8  # measured: 10 / 10 classes
    s = threshold_sweep(model, inputs, "conv2", res.overall("conv2"), n_classes=10, progress=False)
    assert s.overall[0] == pytest.approx(0.025)  # 5 of 200 shipped digits misclassified
    assert np.all(s.overall[s.fraction_removed <= 0.2] <= 0.035)  # flat at first ...
    assert s.overall[-1] >= 0.8  # ... then rising to chance


# ---- the report: one object for `volviz prune` and the app -----------------------------------------
def _report(classes=None, reference="all"):
    from volviz.analysis.importance import importance_on_the_fly
    from volviz.analysis.prune_report import PruneReport

    m = tiny_cnn().eval()
    inputs = _inputs()
    res = importance_on_the_fly(m, inputs, ["conv2", "conv3"], target="true", class_names=list("abc"), progress=False)
    steps = []
    rep = PruneReport.compute(
        m,
        inputs,
        res,
        ["conv2", "conv3"],
        classes=classes,
        k=1,
        reference=reference,
        steps=3,
        progress=False,
        on_step=lambda d, t: steps.append((d, t)),
    )
    return rep, steps


def _same_report(a, b):
    assert (a.k, a.n_images, a.evaluated_on, a.importance_from, a.reference, a.highlight) == (
        b.k,
        b.n_images,
        b.evaluated_on,
        b.importance_from,
        b.reference,
        b.highlight,
    )
    assert a.text == b.text and a.cells() == b.cells()  # what a user sees: the same cells
    assert len(a.rows) == len(b.rows)
    for r, s in zip(a.rows, b.rows):
        assert (r.reference, r.class_name, r.layer, r.k, r.n_images, r.least, r.most) == (
            s.reference,
            s.class_name,
            s.layer,
            s.k,
            s.n_images,
            s.least,
            s.most,
        )
        np.testing.assert_allclose(
            [r.error_before, r.error_least, r.error_most, r.overall_before, r.overall_least, r.overall_most],
            [s.error_before, s.error_least, s.error_most, s.overall_before, s.overall_least, s.overall_most],
            atol=5e-5,
        )
        np.testing.assert_allclose(
            [r.prob_before, r.prob_least, r.prob_most], [s.prob_before, s.prob_least, s.prob_most], atol=5e-5
        )
    assert [s.layer for s in a.sweeps] == [s.layer for s in b.sweeps]
    for s, t in zip(a.sweeps, b.sweeps):
        assert (s.reference, len(s.importance)) == (t.reference, len(t.importance))
        assert s.n_removed.tolist() == t.n_removed.tolist()
        np.testing.assert_allclose(s.thresholds, t.thresholds, rtol=5e-6)
        np.testing.assert_allclose(s.fraction_removed, t.fraction_removed, atol=5e-5)
        np.testing.assert_allclose(s.error, t.error, atol=5e-5)  # NaN (no image of the class) on both
        np.testing.assert_allclose(s.overall, t.overall, atol=5e-5)
        np.testing.assert_allclose(s.overall_most_first, t.overall_most_first, atol=5e-5)
        assert [str(n) for n in (s.class_names or range(s.error.shape[1]))] == [
            str(n) for n in (t.class_names or range(t.error.shape[1]))
        ]


def test_prune_report_round_trip(tmp_path):
    from volviz.analysis.prune_report import PruneReport
    from volviz.views.figures import write_prune_report

    rep, steps = _report(reference="b")
    assert rep.highlight == 1 and rep.reference == "b" and [r.class_name for r in rep.rows] == list("abcabc")
    # progress: one call per evaluation, the total known from the start
    total = 3 * 2 + sum(len(s.thresholds) for s in rep.sweeps)
    assert steps == [(i, total) for i in range(1, total + 1)]
    names = write_prune_report(rep, tmp_path)
    assert (
        sorted(names)
        == sorted(p.name for p in tmp_path.iterdir())
        == ["sweep_conv2.csv", "sweep_conv2.png", "sweep_conv3.csv", "sweep_conv3.png", "table.csv", "table.md"]
    )
    back = PruneReport.read(tmp_path)
    _same_report(rep, back)
    # the Markdown says what the report says (it is written, never read)
    md = (tmp_path / "table.md").read_text()
    assert md == back.markdown() and md.startswith(rep.text) and rep.text.startswith("Error rate")
    # written again from what was read: the same files, byte for byte (but the PNGs)
    again = tmp_path / "again"
    again.mkdir()
    back.write(again)
    for n in ("table.csv", "table.md", "sweep_conv2.csv", "sweep_conv3.csv"):
        assert (again / n).read_text() == (tmp_path / n).read_text(), n
    # a table limited to some classes; bad classes and thresholds are refused before any pruning
    only, _ = _report(classes=["c"])
    assert [r.class_name for r in only.rows] == ["c", "c"] and only.highlight is None
    with pytest.raises(AnalysisError, match="unknown class 'zebra'"):
        _report(classes=["zebra"])


def test_prune_folder_read_refuses_links_out_and_odd_files(tmp_path):
    """A report folder may come from anyone: the app reads only regular files inside it."""
    import os

    from volviz.analysis.prune_report import PruneReport
    from volviz.app.prune_tab import read_prune_folder
    from volviz.views.figures import write_prune_report

    rep, _ = _report()
    folder = tmp_path / "report"
    folder.mkdir()
    write_prune_report(rep, folder)
    shown = read_prune_folder(folder)
    assert shown["rows"] == rep.cells()[1] and len(shown["images"]) == 2

    # table.md linked to /etc/passwd: the tab never reads Markdown, nothing of it shows
    (folder / "table.md").unlink()
    (folder / "table.md").symlink_to("/etc/passwd")
    shown = read_prune_folder(folder)
    assert "root:" not in repr(shown) and shown["text"] == rep.text
    # table.csv linked to a file outside the folder (a valid table, even): refused
    outside = tmp_path / "elsewhere.csv"
    outside.write_text((folder / "table.csv").read_text())
    (folder / "table.csv").unlink()
    (folder / "table.csv").symlink_to(outside)
    for read in (PruneReport.read, read_prune_folder):
        with pytest.raises(AnalysisError, match="points outside the folder"):
            read(folder)
    # ... and through a relative link with ../ in it
    (folder / "table.csv").unlink()
    (folder / "table.csv").symlink_to(pathlib.Path("..") / "elsewhere.csv")
    with pytest.raises(AnalysisError, match="points outside the folder"):
        read_prune_folder(folder)
    # a link that stays inside the folder is fine
    (folder / "table.csv").unlink()
    (folder / "copy.csv").write_text(outside.read_text())
    (folder / "table.csv").symlink_to("copy.csv")
    assert read_prune_folder(folder)["rows"] == rep.cells()[1]
    # a plot linked out of the folder: refused, not sent to the browser
    png = folder / "sweep_conv3.png"
    (tmp_path / "secret.png").write_bytes(png.read_bytes())
    png.unlink()
    png.symlink_to(tmp_path / "secret.png")
    with pytest.raises(AnalysisError, match="points outside the folder"):
        read_prune_folder(folder)
    png.unlink()
    # a FIFO named like a table is not a regular file: refused at once, no read that blocks
    (folder / "table.csv").unlink()
    os.mkfifo(folder / "table.csv")
    with pytest.raises(AnalysisError, match="not a regular file"):
        read_prune_folder(folder)
