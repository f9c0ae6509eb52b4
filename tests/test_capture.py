"""Capture against direct computation: activations, activation gradients, per-image weight gradients."""
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from helpers import NoConv, TinyCNN, tiny_cnn
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
    for n in layers:
        np.testing.assert_allclose(_full_grad_weight(res, n), ref[f"{n}.weight"].numpy(), rtol=1e-4,
                                   atol=1e-6 * float(ref[f"{n}.weight"].abs().max()), err_msg=n)
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
        hooks = [getattr(m, k).register_forward_hook(lambda mod, i, o, k=k: acts.__setitem__(k, o))
                 for k in ("conv3", "fc1")]
        try:
            s = m(x[n:n + 1])[0, 1]
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


def test_layer_without_fast_path_uses_torch_func():
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 10 * 10, 2)).eval()
    m[1].running_var.fill_(2.0)
    res = _check_against_loop(m, torch.randn(3, 1, 12, 12), ["0", "1", "4"])
    assert "1" in res.grad_weight and res.grad_weight["1"].shape == (3, 3)


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
    assert select_layers(m, ["layer1.*.conv?"]) == ["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"]
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


def test_batched_weight_grads_for_unusual_convolutions():
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding="same", padding_mode="reflect"),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2, stride=2, groups=4),  # depthwise, dilated, strided
        nn.Conv2d(4, 3, (3, 1), padding="valid", padding_mode="circular"),
        nn.Flatten(), nn.LazyLinear(2)).eval()
    x = torch.randn(3, 2, 10, 10)
    m(x)  # materialize the lazy layer
    _check_against_loop(m, x, ["0", "1", "2", "4"])
    c1d = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1, padding_mode="replicate"), nn.Flatten(), nn.Linear(24, 2)).eval()
    _check_against_loop(c1d, torch.randn(4, 2, 8), ["0", "2"])
