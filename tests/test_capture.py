"""Capture against direct computation: activations, activation gradients, per-image weight gradients."""

import numpy as np
import pytest
import torch
import torchvision
from helpers import NoConv, TinyCNN, tiny_cnn
from torch import nn

from volviz.capture.engine import capture_batch
from volviz.capture.layers import LayerSelectionError, select_layers
from volviz.capture.persample import func_per_sample_grads, loop_per_sample_grads
from volviz.capture.tap import LayerTap, SharedModuleError


def _full_grad_weight(res, layer):
    if layer in res.grad_weight_factors:
        u, v = res.grad_weight_factors[layer]
        return np.einsum("no,ni->noi", u, v)
    return res.grad_weight[layer]


def _check_against_loop(model, x, layers, target="pred"):
    res = capture_batch(model, x, layers, target=target)
    ref = loop_per_sample_grads(model, x, torch.tensor(res.target), [f"{n}.weight" for n in layers])
    # float32, batch of N vs batches of 1: other kernels and summation orders (oneDNN picks by
    # shape and CPU), each weight gradient a sum of up to a few thousand products, so relative
    # errors of ~1e-6 and absolute ones near 1e-7 of the largest entry; 1e-4 / 1e-6 leave margin.
    for n in layers:
        np.testing.assert_allclose(
            _full_grad_weight(res, n),
            ref[f"{n}.weight"].numpy(),
            rtol=1e-4,
            atol=1e-6 * float(ref[f"{n}.weight"].abs().max()),
            err_msg=n,
        )
    return res


def test_activations_match_direct_forward_and_are_pre_inplace_relu():
    m = tiny_cnn().eval()
    x = torch.randn(5, 1, 12, 12)
    res = capture_batch(m, x, ["conv1", "conv2", "fc1"], gradients=False)
    with torch.no_grad():
        c1 = m.conv1(x)  # the in-place ReLU after conv1 must not leak into the capture
        c2 = m.conv2(torch.relu(c1))
        np.testing.assert_allclose(res.act["conv1"], c1.numpy(), rtol=1e-6)
        assert (res.act["conv1"] < 0).any()
        np.testing.assert_allclose(res.act["conv2"], c2.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(res.probs, torch.softmax(m(x), 1).numpy(), rtol=1e-5)
    assert res.act["fc1"].shape == (5, 8)


def test_activation_gradients_equal_per_image_autograd():
    m = tiny_cnn().eval()
    x = torch.randn(4, 1, 12, 12)
    res = capture_batch(m, x, ["conv1", "conv3", "fc1"], target=1)
    for n in range(4):
        acts = {}
        hooks = [
            getattr(m, k).register_forward_hook(lambda mod, i, o, k=k: acts.__setitem__(k, o)) for k in ("conv3", "fc1")
        ]
        try:
            s = m(x[n : n + 1])[0, 1]
            g3, gf = torch.autograd.grad(s, [acts["conv3"], acts["fc1"]])
        finally:
            for h in hooks:
                h.remove()
        np.testing.assert_allclose(res.grad_act["conv3"][n], g3[0].numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(res.grad_act["fc1"][n], gf[0].numpy(), rtol=1e-5, atol=1e-7)


def test_batched_weight_grads_equal_loop_tiny():
    m = tiny_cnn().eval()
    _check_against_loop(m, torch.randn(6, 1, 12, 12), select_layers(m))


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_batched_weight_grads_equal_loop_torchvision(arch):
    torch.manual_seed(0)
    m = torchvision.models.get_model(arch, weights=None, num_classes=10).eval()
    layers = select_layers(m)
    assert len(layers) > 20
    _check_against_loop(m, torch.randn(3, 3, 40, 40), layers)


def test_func_per_sample_grads_agree_with_loop():
    m = tiny_cnn().eval()
    x, t = torch.randn(4, 1, 12, 12), torch.tensor([0, 1, 2, 0])
    names = ["conv3.weight", "fc2.weight"]
    got = func_per_sample_grads(m, x, t, names)
    ref = loop_per_sample_grads(m, x, t, names)
    for k in names:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-6)


def test_layer_without_fast_path_uses_torch_func(caplog):
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.PReLU(3), nn.Flatten(), nn.Linear(3 * 10 * 10, 2)).eval()
    with caplog.at_level("WARNING", logger="volviz.capture"):
        res = _check_against_loop(m, torch.randn(3, 1, 12, 12), ["0", "1", "3"])
    assert "1" in res.grad_weight and res.grad_weight["1"].shape == (3, 3)
    assert "PReLU has no batched per-image weight gradient" in caplog.text


def _double(model):
    torch.manual_seed(0)
    return model.double().eval()


def _check_float64(model, x, layers):
    """Per-image weight gradients vs one backward per image, in float64 (so the only difference
    left is float32 storage of the result: ~6e-8 relative)."""
    res = capture_batch(model, x, layers, target="pred")
    ref = loop_per_sample_grads(model, x, torch.tensor(res.target), [f"{n}.weight" for n in layers])
    for n in layers:
        r, got = ref[f"{n}.weight"].numpy(), _full_grad_weight(res, n)
        assert got.shape == r.shape, n
        np.testing.assert_allclose(got, r, rtol=1e-5, atol=1e-7 * np.abs(r).max(), err_msg=n)
    return res


class _Permute(nn.Module):
    def __init__(self, *dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


def test_norm_layer_affine_weight_grads_equal_loop():
    from torchvision.models.convnext import LayerNorm2d

    m = nn.Sequential(
        nn.Conv2d(2, 8, 3),
        nn.BatchNorm2d(8),
        nn.GroupNorm(2, 8),
        LayerNorm2d(8),
        _Permute(0, 2, 3, 1),
        nn.LayerNorm(8),
        nn.Linear(8, 6),
        _Permute(0, 3, 1, 2),  # convnext's block
        nn.Flatten(),
        nn.Linear(6 * 6 * 6, 5),
        nn.BatchNorm1d(5),
    )
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
            if getattr(mod, "weight", None) is not None and mod.weight.dim() == 1:
                mod.weight.uniform_(0.5, 1.5)
    m = _double(m)
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    _check_float64(m, x, ["1", "2", "3", "5", "6", "9", "10"])


def _conv_zoo():
    """Every conv flavour the fast routes must get right, as one network."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding="same", padding_mode="reflect"),
        nn.Conv2d(4, 6, 3, padding=1, groups=2),  # grouped, channel multiplier 1.5
        nn.Conv2d(6, 12, 3, padding=2, dilation=2, stride=2, groups=6),  # depthwise x2, dilated, strided
        nn.Conv2d(12, 8, 1, stride=2),  # pointwise, strided
        nn.Conv2d(8, 8, 1, padding=1, padding_mode="circular"),  # 1x1 with circular padding
        nn.Conv2d(8, 6, (3, 1), padding="valid"),
        nn.Flatten(1, 2),  # (N, 6*H, W) for a Conv1d
        nn.Conv1d(18, 6, 2, groups=3, padding=1, padding_mode="replicate"),
        nn.Flatten(),
        nn.LazyLinear(3),
    )


class _Conv3dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv3d(2, 4, 3, padding=1, stride=(1, 2, 2))
        self.b = nn.Conv3d(4, 8, (1, 3, 3), groups=4, padding=(0, 1, 1))  # depthwise x2
        self.c = nn.Conv3d(8, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.c(torch.relu(self.b(self.a(x)))).mean((2, 3, 4)))


@pytest.mark.parametrize("route", ["auto", "unfold", "folded"])
def test_every_conv_route_equals_loop(route, monkeypatch):
    import volviz.capture.persample as ps

    if route != "auto":  # force one route for every conv that is not pointwise
        monkeypatch.setattr(ps, "UNFOLD_WEIGHT_PER_POSITION", 0 if route == "unfold" else 10**9)
    m = _conv_zoo()
    x = torch.randn(3, 2, 10, 10)
    m(x)  # materialize the lazy layer
    _check_float64(_double(m), x.double(), ["0", "1", "2", "3", "4", "5", "7", "9"])
    _check_float64(_double(_Conv3dNet()), torch.randn(3, 2, 4, 8, 8, dtype=torch.float64), ["a", "b", "c", "fc"])


def test_channels_last_grouped_conv_per_image_route_equals_loop():
    import volviz.capture.persample as ps

    # convnext's blocks hand a depthwise conv a permuted (channels-last) input
    m = nn.Sequential(
        nn.Conv2d(2, 8, 1),
        _Permute(0, 2, 3, 1),
        nn.LayerNorm(8),
        _Permute(0, 3, 1, 2),
        nn.Conv2d(8, 16, 3, padding=1, groups=8),
        nn.Flatten(),
        nn.LazyLinear(3),
    )
    x = torch.randn(3, 2, 20, 20)
    m(x)
    inp = m[3](m[2](m[1](m[0](x))))
    assert ps.is_channels_last(inp) and ps.conv_route(m[4], (1, 1), 20 * 20, True) == "per_image"
    _check_float64(_double(m), x.double(), ["0", "2", "4", "6"])


def test_large_depthwise_kernels_correlate_route_equals_loop():
    import volviz.capture.persample as ps

    # 5x5 / 7x7 depthwise convs (efficientnet, convnext): strided, dilated, non-square, padded
    # by a mode the kernel cannot apply, and on a channels-last input (convnext's permuted blocks)
    m = nn.Sequential(
        nn.Conv2d(2, 6, 1),
        nn.Conv2d(6, 6, 7, padding=3, groups=6),
        nn.Conv2d(6, 6, 5, stride=2, padding=2, groups=6),
        nn.Conv2d(6, 6, (5, 7), dilation=(2, 1), padding=(4, 3), padding_mode="reflect", groups=6),
        _Permute(0, 2, 3, 1),
        nn.LayerNorm(6),
        _Permute(0, 3, 1, 2),
        nn.Conv2d(6, 6, 7, padding=3, stride=(1, 2), groups=6),
        nn.Conv2d(6, 12, 3, padding=1, groups=6),  # channel multiplier 2: not this route
        nn.Flatten(),
        nn.LazyLinear(3),
    )
    x = torch.randn(3, 2, 15, 13)
    m(x)
    assert [ps.conv_route(m[i], (0, 0), 64) for i in (1, 2, 3, 7, 8)] == ["correlate"] * 4 + ["folded"]
    _check_float64(_double(m), x.double(), ["1", "2", "3", "7", "8", "10"])


def test_channels_last_small_map_folds_without_leaving_the_layout():
    import volviz.capture.persample as ps

    x = torch.randn(3, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    folded = ps._fold_channels_last(x)
    assert folded.shape == (1, 18, 5, 5) and ps.is_channels_last(folded)
    assert torch.equal(folded, x.reshape(1, 18, 5, 5))
    m = nn.Sequential(
        nn.Conv2d(2, 8, 1),
        _Permute(0, 2, 3, 1),
        nn.LayerNorm(8),
        _Permute(0, 3, 1, 2),
        nn.Conv2d(8, 16, 3, padding=1, groups=4),  # grouped, 5x5 map: the folded route
        nn.Flatten(),
        nn.LazyLinear(3),
    )
    x = torch.randn(3, 2, 5, 5)
    m(x)
    assert ps.conv_route(m[4], (1, 1), 25, True) == "folded"
    _check_float64(_double(m), x.double(), ["0", "2", "4", "6"])


def test_conv_routes_chosen_by_shape():
    import volviz.capture.persample as ps

    def route(conv, hw):
        return ps.conv_route(conv, conv.padding, hw)

    assert route(nn.Conv2d(64, 128, 1, stride=2), 49) == "pointwise"
    assert route(nn.Conv2d(32, 32, 3, groups=32), 4) == "folded"  # depthwise 3x3, any map
    assert route(nn.Conv2d(96, 96, 7, groups=96), 56 * 56) == "correlate"  # depthwise 7x7 (convnext)
    assert route(nn.Conv2d(64, 64, 3), 16 * 16) == "folded"  # dense, large map
    assert route(nn.Conv2d(512, 512, 3), 2 * 2) == "unfold"  # dense, small map
    assert route(nn.Conv3d(512, 512, 3), 2 * 2 * 2) == "folded"  # no unfold in 3-D


def test_conv_subclass_with_its_own_forward_takes_torch_func():
    class StdConv(nn.Conv2d):  # weight standardization: the weight is not used as is
        def forward(self, x):
            w = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
            w = w / (self.weight.std((1, 2, 3), keepdim=True) + 1e-5)
            return self._conv_forward(x, w, self.bias)

    from volviz.capture.persample import has_fast_path

    m = nn.Sequential(StdConv(1, 4, 3), nn.Flatten(), nn.Linear(4 * 8 * 8, 2)).eval()
    assert not has_fast_path(m[0])
    _check_float64(_double(m), torch.randn(2, 1, 10, 10, dtype=torch.float64), ["0"])


def test_targets_true_pred_and_named():
    m = tiny_cnn().eval()
    x = torch.randn(4, 1, 12, 12)
    labels = torch.tensor([2, -1, 0, 1])
    res = capture_batch(m, x, ["conv1"], target="true", labels=labels)
    pred = torch.softmax(m(x), 1).argmax(1).numpy()
    assert list(res.target) == [2, pred[1], 0, 1]  # unlabelled image falls back to the prediction
    res = capture_batch(m, x, ["conv1"], target="b", class_names=["a", "b", "c"])
    assert list(res.target) == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="out of range"):
        capture_batch(m, x, ["conv1"], target=7)
    with pytest.raises(ValueError, match="unknown target class"):
        capture_batch(m, x, ["conv1"], target="zebra", class_names=["a", "b", "c"])


def test_training_mode_refused():
    with pytest.raises(RuntimeError, match="eval"):
        capture_batch(tiny_cnn().train(), torch.randn(2, 1, 12, 12), ["conv1"])


def test_hooks_removed_even_when_forward_raises():
    m = tiny_cnn().eval()
    with pytest.raises(RuntimeError):
        with LayerTap(m, ["conv1", "fc1"]):
            m(torch.randn(1, 2, 12, 12))  # wrong channel count
    assert all(not mod._forward_hooks for mod in m.modules())


def test_shared_module_is_reported():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)
            self.fc = nn.Linear(16, 2)

        def forward(self, x):
            return self.fc(self.conv(self.conv(x)).flatten(1))

    m = Shared().eval()
    with pytest.raises(SharedModuleError, match="more than once"):
        capture_batch(m, torch.randn(1, 1, 4, 4), ["conv"])
    assert not m.conv._forward_hooks


def test_layer_selection_names_globs_types_and_errors():
    m = torchvision.models.resnet18(weights=None)
    default = select_layers(m)
    assert default[0] == "conv1" and default[-1] == "fc" and "layer2.0.downsample.0" in default
    assert select_layers(m, ["layer1.*.conv?"]) == [
        "layer1.0.conv1",
        "layer1.0.conv2",
        "layer1.1.conv1",
        "layer1.1.conv2",
    ]
    assert select_layers(m, ["layer4.*"], ["Conv2d"]) == [n for n in default if n.startswith("layer4.")]
    assert "relu" in select_layers(m, None, ["relu"])
    with pytest.raises(LayerSelectionError, match=r"no layer named 'conv9'.*layer1\.0\.conv1 \(Conv2d\)"):
        select_layers(m, ["conv9"])
    with pytest.raises(LayerSelectionError, match="no conv layer"):
        select_layers(NoConv())
    assert select_layers(TinyCNN(), ["fc*"]) == ["fc1", "fc2"]


def test_workspace_buffers_reused_across_batches_of_different_sizes():
    m = tiny_cnn().eval()
    ws = {}
    for n in (5, 3):  # the second, smaller batch writes into the first one's buffers
        x = torch.randn(n, 1, 12, 12)
        res = capture_batch(m, x, ["conv2", "conv3"], target="pred", workspace=ws)
        ref = loop_per_sample_grads(m, x, torch.tensor(res.target), ["conv2.weight", "conv3.weight"])
        for k in ("conv2", "conv3"):
            assert res.grad_weight[k].shape[0] == n
            np.testing.assert_allclose(res.grad_weight[k], ref[f"{k}.weight"].numpy(), rtol=1e-4, atol=1e-7)
    assert ws["conv2"].shape[0] == 5


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "resnet18"])
def test_memory_plan_predicts_the_measured_peak(arch):
    from volviz.capture.memory import measure_capture_peak, plan_memory

    torch.manual_seed(0)
    m = torchvision.models.get_model(arch, weights=None, num_classes=10).eval()
    layers = select_layers(m)
    x = torch.randn(8, 3, 64, 64)
    plan = plan_memory(m, x, layers, requested=8)
    measured = measure_capture_peak(m, x, layers, target="pred")
    assert abs(plan.peak() / measured - 1) < 0.15, (plan.to_dict(), measured)


def test_batch_size_choice_counts_weight_gradients_once():
    from volviz.capture.memory import CaptureError, choose_batch_size, describe_memory_plan, plan_memory

    m = tiny_cnn().eval()
    layers = select_layers(m)
    plan = plan_memory(m, torch.randn(1, 1, 12, 12), layers, requested=32)
    full = ["conv1", "conv2", "conv3"]  # fc1, fc2 keep two factors
    assert plan.parts["weight_grads"] == 4 * sum(getattr(m, n).weight.numel() for n in full)
    assert plan.batch_size == 32 and "as asked" in plan.reason

    lowered = choose_batch_size(plan.parts, 32, budget=int(10.5 * plan.per_image), largest_layer="conv3")
    assert lowered.batch_size == 10 and lowered.peak() <= lowered.budget and "lowered from 32" in lowered.reason
    text = describe_memory_plan(lowered)
    for words in ("batch size        10", "projected memory", "per image", "per-image weight gradients", "budget"):
        assert words in text
    budget = int(10.5 * plan.per_image)
    with_fixed = choose_batch_size(plan.parts, 32, budget=budget, fixed={"shards": plan.per_image})
    assert with_fixed.batch_size == 9
    with pytest.raises(CaptureError, match=r"one image needs .* budget .*conv3.*--layers"):
        choose_batch_size(plan.parts, 32, budget=plan.per_image // 2, largest_layer="conv3")
