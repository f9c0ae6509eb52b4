"""Filter importance (volviz.analysis.importance) and class groups (volviz.analysis.class_groups)
against direct computation: loop-computed per-image gradients, hand-made class means."""

import json

import numpy as np
import pytest
import torch
from helpers import tiny_cnn, write_image_folder
from torch import nn

from volviz.analysis.class_groups import (
    confusion_similarity,
    group_gradients,
    magnitude_by_class,
    pick_class_groups,
)
from volviz.analysis.importance import importance_from_store, importance_on_the_fly
from volviz.analysis.inputs import InputSet
from volviz.capture.persample import loop_per_sample_grads
from volviz.cli import main
from volviz.errors import AnalysisError, EmptyClassError, NotDifferentiableError, NoWeightsError
from volviz.store.capture import CaptureSettings, run_capture

SETTINGS = dict(model="helpers:tiny_cnn", size=(12, 12), channels=1, batch_size=4)


def _loop_norms(model, x, targets, layers):
    ref = loop_per_sample_grads(model, x, targets, [f"{n}.weight" for n in layers])
    return {n: ref[f"{n}.weight"].reshape(len(x), ref[f"{n}.weight"].shape[1], -1).norm(dim=2).numpy() for n in layers}


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("imp")
    imgs = write_image_folder(root / "imgs", n_per_class=3)
    store = run_capture(root / "s", CaptureSettings(images=[str(imgs)], **SETTINGS), progress=False)
    return store


def test_importance_is_the_norm_of_the_loop_gradient_in_small_chunks():
    m = tiny_cnn().eval()
    x, labels = torch.randn(7, 1, 12, 12), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    # max_bytes=200: per-image weight gradients are formed one or two images at a time
    res = importance_on_the_fly(
        m, InputSet.from_tensors(x, labels), target="true", batch_size=3, max_bytes=200, progress=False
    )
    assert res.layers == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    ref = _loop_norms(m, x, labels, res.layers)
    for n in res.layers:
        np.testing.assert_allclose(res.per_image[n], ref[n], rtol=1e-4, atol=1e-7, err_msg=n)
    # fc2 (the output layer): only the target neuron's row has a gradient
    assert np.all(res.per_image["fc2"][np.arange(7), labels.numpy()] > 0)
    other = np.ones((7, 3), bool)
    other[np.arange(7), labels.numpy()] = False
    assert np.all(res.per_image["fc2"][other] == 0)


def test_layer_without_fast_path_and_fixed_target():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(), nn.Linear(300, 4)).eval()
    m[1].running_var.fill_(2.0)
    x = torch.randn(5, 1, 12, 12)
    res = importance_on_the_fly(m, InputSet.from_tensors(x, [0, 1, 2, 3, 0]), ["0", "1", "4"], target=2, progress=False)
    assert list(res.target) == [2] * 5
    ref = _loop_norms(m, x, torch.full((5,), 2), ["0", "1", "4"])
    for n in ["0", "1", "4"]:
        np.testing.assert_allclose(res.per_image[n], ref[n], rtol=1e-4, atol=1e-7, err_msg=n)


def test_class_means_and_empty_class():
    m = tiny_cnn().eval()
    x, labels = torch.randn(6, 1, 12, 12), torch.tensor([0, 0, 1, 1, 1, 0])
    res = importance_on_the_fly(m, InputSet.from_tensors(x, labels), ["conv2"], target="true", progress=False)
    rel, counts = res.class_relevance("conv2")
    assert counts.tolist() == [3, 3, 0]
    np.testing.assert_allclose(rel[1], res.per_image["conv2"][[2, 3, 4]].mean(0), rtol=1e-6)
    assert np.isnan(rel[2]).all()
    with pytest.raises(EmptyClassError, match="class 2 has no images here; classes with images: 0, 1"):
        res.mean("conv2", 2)
    tot = res.total_norm("conv2")
    np.testing.assert_allclose(tot, np.linalg.norm(res.per_image["conv2"], axis=1), rtol=1e-6)


def test_store_importance_equals_on_the_fly(tiny_store):
    from volviz.analysis.inputs import inputs_from_store

    res = importance_from_store(tiny_store, batch_size=4, progress=False)
    assert res.source == "store" and res.n_images == 9
    inputs, _ = inputs_from_store(tiny_store)
    fly = importance_on_the_fly(
        tiny_store.model(trust_factory=True).module, inputs, res.layers, target="true", progress=False
    )
    for n in res.layers:  # fc1/fc2 come from the stored u, v factors: |u_j| * ||v||
        np.testing.assert_allclose(res.per_image[n], fly.per_image[n], rtol=1e-4, atol=1e-7, err_msg=n)
    assert tiny_store.layers["fc1"].weight_factors
    # ... and equal the norms of the full stored gradients
    g = np.stack([tiny_store.read("grad_weight", "fc1", i) for i in range(9)])
    np.testing.assert_allclose(res.per_image["fc1"], np.linalg.norm(g, axis=2), rtol=1e-5)


def test_float16_store(tmp_path):
    imgs = write_image_folder(tmp_path / "imgs", n_per_class=2)
    s16 = run_capture(tmp_path / "h", CaptureSettings(images=[str(imgs)], dtype="float16", **SETTINGS), progress=False)
    s32 = run_capture(tmp_path / "f", CaptureSettings(images=[str(imgs)], **SETTINGS), progress=False)
    a, b = importance_from_store(s16, progress=False), importance_from_store(s32, progress=False)
    for n in a.layers:
        np.testing.assert_allclose(
            a.per_image[n], b.per_image[n], rtol=2e-3, atol=2e-3 * b.per_image[n].max(), err_msg=n
        )


def test_bad_layers_and_non_differentiable(tiny_store):
    m = tiny_cnn().eval()
    inputs = InputSet.from_tensors(torch.randn(2, 1, 12, 12), [0, 1])
    with pytest.raises(NoWeightsError, match=r"'pool' \(AdaptiveAvgPool2d\) has no weights.*conv1"):
        importance_on_the_fly(m, inputs, ["pool"], progress=False)
    with pytest.raises(NoWeightsError, match=r"'relu1' \(ReLU\) has no weights"):
        importance_on_the_fly(m, inputs, ["relu1"], progress=False)
    with pytest.raises(AnalysisError, match="not in this store"):
        importance_from_store(tiny_store, ["relu1"], progress=False)

    class Quantized(nn.Module):  # integer rounding cuts the gradient path after conv
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.fc = nn.Linear(200, 2)

        def forward(self, x):
            h = (self.conv(x) * 10).to(torch.int32).float()
            return self.fc(h.flatten(1))

    with pytest.raises(NotDifferentiableError, match="'conv'"):
        importance_on_the_fly(Quantized().eval(), inputs, ["conv", "fc"], progress=False)


def test_cli_importance_writes_tables_and_grids(tiny_store, tmp_path):
    out = tmp_path / "imp"
    assert main(["importance", "--trust-factory", str(tiny_store.path), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "importance_conv3.png" in names and "class_fc1.csv" in names and "per_image_conv1.csv" in names
    rows = (out / "class_conv3.csv").read_text().splitlines()
    assert rows[0].startswith("class,n_images,f0") and len(rows) == 4
    res = importance_from_store(tiny_store, progress=False)
    rel, _ = res.class_relevance("conv3")
    np.testing.assert_allclose([float(v) for v in rows[2].split(",")[2:]], rel[1], rtol=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layers"]["conv3"]["grid"] == [2, 3]
    # a layer without weights: a clear error, exit 2, nothing written
    bad = tmp_path / "bad"
    assert main(["importance", "--trust-factory", str(tiny_store.path), "--out", str(bad), "--layers", "pool"]) == 2
    assert not bad.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".volviz-")]


def test_cli_importance_fixed_target_recomputes(tiny_store, tmp_path):
    out = tmp_path / "t"
    assert (
        main(
            [
                "importance",
                "--trust-factory",
                str(tiny_store.path),
                "--out",
                str(out),
                "--target",
                "b",
                "--layers",
                "conv1",
            ]
        )
        == 0
    )
    pairs = (out / "pairs_conv1.csv").read_text().splitlines()
    assert [r.split(",")[:3] for r in pairs[1:]] == [["b", "a", "3"], ["b", "b", "3"], ["b", "c", "3"]]


# ---- class groups ------------------------------------------------------------------------------
def _toy_predictions():
    # 3 images per class for classes 0..3; class 1 is often taken for 0, class 3 never for 0
    labels = np.repeat(np.arange(4), 3)
    probs = np.full((12, 4), 0.02)
    for i, c in enumerate(labels):
        probs[i, c] = 0.9
    probs[3] = [0.6, 0.34, 0.03, 0.03]  # a 1 misclassified as 0
    probs[4] = [0.3, 0.64, 0.03, 0.03]
    probs[0] = [0.7, 0.24, 0.03, 0.03]
    probs /= probs.sum(1, keepdims=True)
    return labels, probs.argmax(1), probs


def test_class_groups_similar_dissimilar_and_missing():
    labels, pred, probs = _toy_predictions()
    sim = confusion_similarity(probs, labels, 0)
    P = np.array([probs[labels == a].mean(0) for a in range(4)])
    np.testing.assert_allclose(sim, (P[0] + P[:, 0]) / 2)
    g = pick_class_groups(labels, pred, probs, 0, class_names=list("wxyz"), indices=np.arange(100, 112))
    assert (g.similar, g.dissimilar) == (1, 2)  # 2 and 3 tie: the lower index wins, deterministically
    seq = g.sequence()
    assert [lab for _, lab in seq] == [
        "reference w · correct",
        "similar x · correct",
        "similar x · misclassified as w",
        "dissimilar y · correct",
    ]
    assert seq[2][0] == 103 and seq[0][0] in (101, 102)  # store indices, most confident first
    assert any("reference class w: no misclassified" in m for m in g.missing)
    with pytest.raises(EmptyClassError, match="reference class z has no labelled images"):
        pick_class_groups(labels[labels != 3], pred[labels != 3], probs[labels != 3], 3, class_names=list("wxyz"))


def test_group_gradients_shared_scale_and_magnitudes():
    m = tiny_cnn().eval()
    x = torch.randn(4, 1, 12, 12)
    gg = group_gradients(m, x, 1, "conv2")
    ref = loop_per_sample_grads(m, x, torch.full((4,), 1), ["conv2.weight"])["conv2.weight"].numpy()
    np.testing.assert_allclose(np.stack(gg.arrays), ref, rtol=1e-4, atol=1e-7)
    assert gg.clim == pytest.approx(float(np.abs(ref).max()), rel=1e-5)
    np.testing.assert_allclose(gg.norms, np.linalg.norm(ref.reshape(4, -1), axis=1), rtol=1e-5)
    res = importance_on_the_fly(m, InputSet.from_tensors(x, [0, 1, 1, 2]), ["conv2"], target=1, progress=False)
    mag = magnitude_by_class(res, "conv2", 1)
    assert mag[1]["n"] == 2 and mag[1]["mean"] == pytest.approx(gg.norms[1:3].mean(), rel=1e-4)


def test_cli_groups(tiny_store, tmp_path, capsys):
    out = tmp_path / "g"
    assert (
        main(["groups", "--trust-factory", str(tiny_store.path), "--class", "a", "--layer", "conv2", "--out", str(out)])
        == 0
    )
    text = capsys.readouterr().out
    assert "reference a" in text and "shared colour scale" in text
    d = json.loads((out / "sequence.json").read_text())
    assert d["reference"] == "a" and d["sequence"] and d["clim"] > 0 and len(d["norms"]) == len(d["sequence"])
    assert (out / "groups.png").stat().st_size > 1000
    assert main(["groups", "--trust-factory", str(tiny_store.path), "--class", "zebra"]) == 2


def test_probability_output_gradients():
    m = tiny_cnn().eval()
    x, labels = torch.randn(4, 1, 12, 12), torch.tensor([0, 1, 2, 0])
    res = importance_on_the_fly(
        m, InputSet.from_tensors(x, labels), ["conv2", "fc2"], target=1, output="prob", progress=False
    )
    for n in range(4):  # direct: d softmax(m(x))[1] / dW, one image at a time
        p = torch.softmax(m(x[n : n + 1]), 1)[0, 1]
        g2, gf = torch.autograd.grad(p, [m.conv2.weight, m.fc2.weight])
        np.testing.assert_allclose(res.per_image["conv2"][n], g2.flatten(1).norm(dim=1).numpy(), rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(res.per_image["fc2"][n], gf.norm(dim=1).numpy(), rtol=1e-4, atol=1e-9)
    gg = group_gradients(m, x, 1, "conv2", output="prob")
    np.testing.assert_allclose(gg.norms, res.total_norm("conv2"), rtol=1e-4)
    with pytest.raises(AnalysisError, match="unknown output"):
        importance_on_the_fly(m, InputSet.from_tensors(x, labels), output="softmax", progress=False)


@pytest.mark.parametrize(
    "kw", [dict(padding=1), dict(padding="same", padding_mode="reflect"), dict(stride=2, dilation=2)]
)
def test_gram_filter_norms_equal_direct(kw):
    from volviz.analysis.importance import conv2d_filter_norms_gram, filter_norms
    from volviz.capture.persample import hook_per_sample_grad

    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, **kw)
    inp = torch.randn(4, 6, 9, 9)
    go = torch.randn_like(conv(inp))
    direct = filter_norms(hook_per_sample_grad(conv, inp, go))
    np.testing.assert_allclose(
        conv2d_filter_norms_gram(conv, inp, go, max_bytes=5000).numpy(), direct.numpy(), rtol=1e-4
    )


def test_deep_small_maps_use_the_gram_path_and_agree_with_loop():
    from volviz.analysis.importance import _gram_is_cheaper

    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 2 * 2, 5),
    ).eval()
    x = torch.randn(3, 3, 4, 4)
    assert _gram_is_cheaper(m[2], torch.zeros(1, 64, 2, 2)) and not _gram_is_cheaper(m[0], torch.zeros(1, 32, 4, 4))
    res = importance_on_the_fly(m, InputSet.from_tensors(x, [0, 1, 2]), ["0", "2", "5"], target="true", progress=False)
    ref = _loop_norms(m, x, torch.tensor([0, 1, 2]), ["0", "2", "5"])
    for n in ["0", "2", "5"]:
        np.testing.assert_allclose(res.per_image[n], ref[n], rtol=1e-4, atol=1e-7, err_msg=n)


@pytest.mark.skipif(
    not __import__("volviz.sources.demo", fromlist=["x"]).demo_weights_path("digits").exists(),
    reason="digits weights not trained",
)
def test_digits_dissimilar_class_gradients_are_smaller_for_the_probability():
    """[Jain2016] figs 4-5 on the shipped digits: the gradient of the reference class's probability is
    orders of magnitude smaller for images of the most dissimilar class (for the score before softmax
    it is not: see docs/gradient-analysis.md)."""
    from volviz.sources import demo
    from volviz.sources.images import discover_images
    from volviz.sources.models import load_model
    from volviz.sources.preprocess import Preprocess

    lm = load_model("digits")
    inputs = InputSet(
        discover_images([demo.demo_images_dir("digits")], class_names=lm.class_names).records,
        Preprocess(lm.input_size[1:], 1, lm.mean, lm.std),
    )
    with torch.no_grad():
        probs = torch.softmax(lm.module(inputs.tensor(range(len(inputs)))), 1).numpy()
    for r in (0, 4, 7):
        g = pick_class_groups(inputs.labels, probs.argmax(1), probs, r)
        res = importance_on_the_fly(lm.module, inputs, ["conv2"], target=r, output="prob", progress=False)
        mag = magnitude_by_class(res, "conv2", r)
        assert mag[g.dissimilar]["mean"] < 0.1 * mag[r]["mean"], (r, g.dissimilar, mag)


# ---- reports: written, then read back -------------------------------------------------------------
def test_importance_report_round_trip(tiny_store, tmp_path):
    from volviz.analysis.importance_report import ImportanceReport

    res = importance_from_store(tiny_store, progress=False)
    out = tmp_path / "imp"
    assert main(["importance", "--trust-factory", str(tiny_store.path), "--out", str(out)]) == 0
    back = ImportanceReport.read(out)
    got = back.result
    assert got.layers == res.layers and got.class_names == res.class_names and got.n_classes == res.n_classes
    assert got.source == "store" and got.image_ids == res.image_ids and back.store == str(tiny_store.path)
    for name in ("label", "pred", "target"):
        assert getattr(got, name).tolist() == getattr(res, name).tolist(), name
    for n in res.layers:
        np.testing.assert_allclose(got.per_image[n], res.per_image[n], rtol=1e-5, atol=1e-12, err_msg=n)
        np.testing.assert_allclose(got.class_relevance(n)[0], res.class_relevance(n)[0], rtol=1e-5, equal_nan=True)
    assert back.grids["conv3"] == (2, 3)
    # written again from what was read: the same per-image tables and summary (the class means are
    # means of the rounded values: equal within the rounding)
    again = tmp_path / "again"
    again.mkdir()
    back.write(again)
    for p in again.glob("per_image_*.csv"):
        assert p.read_text() == (out / p.name).read_text(), p.name
    assert json.loads((again / "summary.json").read_text()) == json.loads((out / "summary.json").read_text())
    mine = np.genfromtxt(again / "class_conv2.csv", delimiter=",", skip_header=1)[:, 1:]
    np.testing.assert_allclose(
        mine, np.genfromtxt(out / "class_conv2.csv", delimiter=",", skip_header=1)[:, 1:], rtol=1e-5
    )
    with pytest.raises(AnalysisError, match="not a `volviz importance --out` folder"):
        ImportanceReport.read(tmp_path)


def test_groups_report_round_trip(tiny_store, tmp_path):
    from volviz.analysis.class_groups import GroupsReport, class_groups_from_store
    from volviz.sources.images import read_image

    out = tmp_path / "g"
    assert (
        main(["groups", "--trust-factory", str(tiny_store.path), "--class", "b", "--layer", "conv1", "--out", str(out)])
        == 0
    )
    back = GroupsReport.read(out)
    want = class_groups_from_store(tiny_store, "b")
    g = back.groups
    assert (g.reference, g.similar, g.dissimilar, g.by) == (want.reference, want.similar, want.dissimilar, want.by)
    assert g.items == want.items and g.missing == want.missing and g.sequence() == want.sequence()
    np.testing.assert_allclose(g.similarity, want.similarity, atol=1e-6)
    x = torch.stack([tiny_store.preprocess(read_image(tiny_store.images[it.index])) for it in want.items])
    gg = group_gradients(tiny_store.model(trust_factory=True).module, x, want.reference, "conv1")
    np.testing.assert_allclose(back.gradients.norms, gg.norms, rtol=1e-5)
    assert back.gradients.clim == pytest.approx(gg.clim, rel=1e-5) and back.gradients.layer == "conv1"
    assert back.differentiated == "S_b" and set(back.stats) == {"reference", "similar", "dissimilar"}
    again = tmp_path / "again"
    again.mkdir()
    back.write(again)
    assert json.loads((again / "sequence.json").read_text()) == json.loads((out / "sequence.json").read_text())
