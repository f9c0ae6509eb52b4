"""Preferred inputs that can be aimed and afforded: --units (indices, ranges, class names), a later
run extending a layer, --size (optimized small, upsampled for the model), batch-norm folding, grouped
and depthwise convs computing one unit, the projected time and the progress bar."""

import numpy as np
import pytest
import torch
from helpers import tiny_cnn, write_image_folder
from torch import nn

from volviz.analysis.actmax import results as R
from volviz.analysis.actmax import run as run_mod
from volviz.analysis.actmax.objectives import LayerOutput
from volviz.analysis.actmax.optimize import Config, Problem, optimize_batch
from volviz.analysis.actmax.progress import UnitBar
from volviz.analysis.actmax.run import PreferredSettings, run_preferred
from volviz.analysis.actmax.speed import auto_batch, fold_batchnorm
from volviz.analysis.actmax.units import parse_units
from volviz.errors import PreferredError
from volviz.store.capture import CaptureSettings, run_capture

TRUST = {"trust_factory": True}
FAST = PreferredSettings(seeds=2, steps=20, search=0, batch_size=4)


def test_parse_units_indices_ranges_and_class_names():
    assert parse_units("0:3,7", 10).tolist() == [0, 1, 2, 7]
    assert parse_units(["-1", "2:9:3", "2"], 10).tolist() == [2, 5, 8, 9]
    assert parse_units(":2", 5).tolist() == [0, 1] and parse_units("3:", 5).tolist() == [3, 4]
    assert parse_units(None, 3).tolist() == [0, 1, 2]
    names = ["tench", "goldfish", "Cardigan", "cardigan", "tabby cat"]
    assert parse_units(["goldfish", "tabby cat", "0"], 5, class_names=names).tolist() == [0, 1, 4]
    assert parse_units("Cardigan", 5, class_names=names).tolist() == [2]  # exact match first
    assert parse_units("CARDIGAN", 5, class_names=names).tolist() == [2, 3]  # else ignoring case
    for bad, match in (("12", "out of range"), ("8:9", "selects no unit"), ("", "empty"), ("1:5:0", "step")):
        with pytest.raises(PreferredError, match=match):
            parse_units(bad, 5, layer="fc2")
    with pytest.raises(PreferredError, match="did you mean 'goldfish'"):
        parse_units("goldfsh", 5, class_names=names)
    with pytest.raises(PreferredError, match="no class names"):
        parse_units("goldfish", 5, layer="conv1")


class BNNet(nn.Module):
    """conv-bn-relu blocks in a Sequential and as attributes (as torchvision's models), a
    depthwise conv, and a residual add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn_dw = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.bn_pw = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 3, padding=1)
        self.bn_head = nn.BatchNorm2d(4)

    def forward(self, x):
        h = self.stem(x)
        h = h + self.bn_pw(self.pw(torch.relu(self.bn_dw(self.dw(h)))))
        return self.bn_head(self.head(h)).mean((2, 3))


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    m = BNNet()
    for mod in m.modules():  # running statistics far from (0, 1): folding must use them
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.3, 0.3)
    return m.eval().requires_grad_(False)


@pytest.mark.parametrize("layer", ["dw", "pw", "head"])
def test_batchnorm_folding_keeps_the_target_layer_output(layer):
    m = bn_net()
    folded, n = fold_batchnorm(m, keep={layer})
    assert n >= 2 and folded is not m
    assert isinstance(m.bn_dw, nn.BatchNorm2d)  # the original model is untouched
    kept = {"dw": "bn_dw", "pw": "bn_pw", "head": "bn_head"}[layer]
    assert isinstance(getattr(folded, kept), nn.BatchNorm2d)  # the target's own norm is not folded
    x = torch.rand(3, 3, 10, 10, requires_grad=True)
    a, b = LayerOutput(m, layer)(x), LayerOutput(folded, layer)(x)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    (ga,) = torch.autograd.grad(a.square().sum(), x)
    (gb,) = torch.autograd.grad(b.square().sum(), x)
    torch.testing.assert_close(ga, gb, rtol=1e-3, atol=1e-5)
    assert fold_batchnorm(tiny_cnn().eval(), keep={"conv2"})[1] == 0  # nothing to fold: same model


def test_depthwise_conv_computes_only_the_target_unit():
    m = bn_net()
    x = torch.rand(5, 3, 10, 10, requires_grad=True)
    units = torch.tensor([7, 0, 3, 3, 5])
    fast = Problem(m, "dw", "channel", (3, 10, 10))
    assert fast.forward.unit_only
    full = Problem(m, "dw", "channel", (3, 10, 10), unit_only=False)
    a, b = fast.values(x, units), full.values(x, units)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        torch.autograd.grad(a.sum(), x)[0], torch.autograd.grad(b.sum(), x)[0], rtol=1e-4, atol=1e-6
    )


def test_size_optimizes_a_smaller_image_that_the_model_sees_upsampled():
    m = tiny_cnn().eval().requires_grad_(False)
    pr = Problem(m, "conv2", "channel", (1, 12, 12), image_size=(6, 6))
    assert pr.opt_shape == (1, 6, 6)
    res = optimize_batch(pr, [0, 3], [0, 0], Config(), 30)
    assert res.images.shape == (2, 1, 6, 6)
    assert (res.activation > res.activation_init).all()
    up = torch.nn.functional.interpolate(
        torch.from_numpy(res.images), size=(12, 12), mode="bilinear", align_corners=False
    )
    same = Problem(m, "conv2", "channel", (1, 12, 12)).values(up, torch.tensor([0, 3])).numpy()
    np.testing.assert_allclose(same, res.activation, rtol=1e-4, atol=1e-6)
    base = np.random.default_rng(0).random((2, 1, 12, 12)).astype(np.float32)  # full-size starts shrink
    assert optimize_batch(pr, [0, 1], [0, 0], Config(), 1, base=base).images.shape == (2, 1, 6, 6)
    with pytest.raises(ValueError, match="image_size"):
        Problem(m, "conv2", "channel", (1, 12, 12), image_size=(16, 16))


def test_auto_batch_and_the_bar_moving_inside_a_batch():
    assert auto_batch((1, 28, 28)) == 512 and auto_batch((3, 224, 224)) == 7
    assert auto_batch((3, 224, 224), "cuda") == 512
    bar = UnitBar(8, enabled=False)
    step = bar.stepper(4, 10)
    for t in range(5):
        step(t)
    assert bar.n == 2  # half of the batch's 4 units after 5 of 10 steps
    bar.finish_batch()
    assert bar.n == 4


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("aim")
    imgs = write_image_folder(root / "imgs", n_per_class=3)
    return run_capture(
        root / "store",
        CaptureSettings(model="helpers:tiny_cnn", images=[str(imgs)], size=(12, 12), channels=1),
        progress=False,
    ).path


def test_units_run_then_a_later_run_extends_the_layer(store, monkeypatch):
    notes = []
    out = run_preferred(store, ["fc1"], FAST, units="0,2", progress=False, trust=TRUST, report=notes.append)
    assert out["fc1"]["units"] == 2 and out["fc1"]["of_units"] == 8
    assert "projected time" in notes[0] and "fc1: 2 units x 2 seeds x 20 steps" in notes[0]
    info = R.preferred_info(store, "fc1")
    assert info.done.tolist() == [True, False, True] + [False] * 5
    imgs = R.load_preferred(store, "fc1")
    assert np.isfinite(imgs[[0, 2]]).all() and np.isnan(imgs[[1, 3]]).all()
    assert np.isnan(info.activation[1]).all() and np.isfinite(info.activation[0]).all()
    thumbs = R.thumbnails(store, "fc1", size=None)
    assert thumbs.shape[0] == 8 and (thumbs[1] == 128).all()  # a unit never optimized: mid grey
    before = imgs[[0, 2]].copy()

    calls = []
    real = run_mod.optimize_batch
    monkeypatch.setattr(
        run_mod,
        "optimize_batch",
        lambda pr, units, *a, **k: calls.append(np.unique(units).tolist()) or real(pr, units, *a, **k),
    )
    out = run_preferred(store, ["fc1"], FAST, units="0:4", progress=False, trust=TRUST)
    assert sorted(sum(calls, [])) == [1, 3]  # only the units without results
    assert out["fc1"]["units"] == 4
    np.testing.assert_array_equal(R.load_preferred(store, "fc1")[[0, 2]], before)
    calls.clear()
    assert run_preferred(store, ["fc1"], FAST, units="1", progress=False, trust=TRUST)["fc1"]["skipped"]
    assert calls == []
    with pytest.raises(PreferredError, match="other settings"):
        run_preferred(
            store,
            ["fc1"],
            PreferredSettings(seeds=2, steps=20, search=0, size=(6, 6)),
            units="5",
            progress=False,
            trust=TRUST,
        )


def test_class_names_aim_at_class_units_and_size_is_stored(store):
    out = run_preferred(
        store,
        ["fc2"],
        PreferredSettings(seeds=1, steps=15, search=2, search_units=2, size=(6, 6)),
        units=["b"],
        progress=False,
        trust=TRUST,
    )
    assert out["fc2"]["objective"] == "class" and out["fc2"]["units"] == 1
    info = R.preferred_info(store, "fc2")
    assert info.done.tolist() == [False, True, False]
    assert info.image_shape == (1, 6, 6) and info.input_shape == (1, 12, 12)
    assert info.search["units"].tolist() == [1]  # the search looks at the units asked for
    shown = R.as_model_input(R.best_preferred(store, "fc2"), info.input_shape)
    assert shown.shape == (3, 1, 12, 12) and np.isfinite(shown[1]).all()
    with pytest.raises(PreferredError, match="no class names"):
        run_preferred(store, ["conv1"], FAST, units="b", progress=False, trust=TRUST)


def test_cli_units_size_and_grid(store, tmp_path, capsys):
    import imageio.v3 as iio

    from volviz.cli import main

    args = [
        "optimize",
        "--trust-factory",
        str(store),
        "--layers",
        "conv3",
        "--seeds",
        "1",
        "--steps",
        "8",
        "--search",
        "0",
        "--threads",
        "1",
    ]
    assert main(args + ["--units", "0:2", "5", "--size", "8"]) == 0
    out = capsys.readouterr().out
    assert "projected time" in out and "conv3: 3 units x 1 seed x 8 steps" in out and "(of 6)" in out
    assert R.preferred_info(store, "conv3").image_shape == (1, 8, 8)
    png = tmp_path / "g.png"
    assert main(["preferred-grid", str(store), "--layer", "conv3", "--out", str(png), "--units", "0:2"]) == 0
    assert iio.imread(png).std() > 5
    assert main(args + ["--units", "9", "--size", "8"]) == 2  # out of range: one line, exit 2
    assert "out of range" in capsys.readouterr().err
    assert main(args + ["--size", "20", "--overwrite"]) == 2
    assert main(args + ["--size", "4", "4", "4"]) == 2
