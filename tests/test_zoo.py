"""Every torchvision CNN family through the capture: random weights, 64 px, 2 images.

Per family: the captured activations equal torchvision's create_feature_extractor, the per-image
weight gradients of every conv, linear and norm layer equal a per-image backward loop (float64),
the network graph builds, and a layer volume renders; on ShuffleNet (channel shuffle, chunk) and
ConvNeXt (channels-last blocks) the graph's channel maps equal autograd's dependencies. About
45 s on one thread for the ten families; r3d_18 (Conv3d, 5-15 s) is marked slow. `make test`
(CI) runs every test, slow ones included: about 60 s in all.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
import torchvision.models.feature_extraction as fx
from torch import nn

from volviz.capture.engine import capture_batch
from volviz.capture.layers import named_leaf_modules
from volviz.capture.persample import BATCH_NORMS, CONV_TYPES, has_fast_path, loop_per_sample_grads

# family -> (builder keyword arguments, what it exercises)
FAMILIES = {
    "resnet18": ({}, "strided 7x7, 1x1 downsample, BatchNorm"),
    "resnext50_32x4d": ({}, "grouped 3x3 (32 groups)"),
    "mobilenet_v2": ({}, "depthwise 3x3, 1x1"),
    "mobilenet_v3_small": ({"dilated": True}, "dilated depthwise 5x5, squeeze-excitation"),
    "efficientnet_b0": ({}, "depthwise 3x3/5x5, squeeze-excitation"),
    "regnet_y_400mf": ({}, "group convs (width 8), squeeze-excitation"),
    "shufflenet_v2_x0_5": ({}, "depthwise stride 2, channel shuffle"),
    "convnext_tiny": ({}, "7x7 depthwise, LayerNorm (channels last) and LayerNorm2d, Linear on maps"),
    "squeezenet1_1": ({}, "1x1-heavy, a conv classifier"),
    "densenet121": ({}, "1x1 bottlenecks, concatenation"),
}
NORMS = (*BATCH_NORMS, nn.LayerNorm, nn.GroupNorm)
# DenseNet.forward applies F.relu(inplace=True) to features.norm5's output, so the extractor's
# value of that node is the ReLU of the layer's output (the capture keeps the layer's own output).
RELU_AFTER = {"densenet121": {"features.norm5"}}


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    m = torchvision.models.get_model(name, weights=None, num_classes=10, **FAMILIES[name][0]).eval()
    for mod in m.modules():  # an in-place op would overwrite an extractor's returned node value
        if hasattr(mod, "inplace"):
            mod.inplace = False
    return m


def weighted_layers(m: nn.Module) -> list[str]:
    kinds = (*CONV_TYPES, nn.Linear, *NORMS)
    return [
        n
        for n, mod in named_leaf_modules(m).items()
        if isinstance(mod, kinds) and isinstance(getattr(mod, "weight", None), nn.Parameter)
    ]


def full_grad(res, name):
    if name in res.grad_weight_factors:
        u, v = res.grad_weight_factors[name]
        return np.einsum("no,ni->noi", u, v)
    return res.grad_weight[name]


@pytest.fixture(scope="module")
def no_op_leaves():
    """create_feature_extractor treats torchvision.ops modules (Conv2dNormActivation,
    SqueezeExcitation) as leaves, hiding the convs inside; trace through them instead."""
    saved = fx._get_leaf_modules_for_ops
    fx._get_leaf_modules_for_ops = lambda: []
    yield
    fx._get_leaf_modules_for_ops = saved


@pytest.mark.parametrize("name", list(FAMILIES))
def test_zoo_capture_equals_feature_extractor_and_per_image_loop(name, no_op_leaves, can_render):
    m = build(name)
    layers = weighted_layers(m)
    modules = dict(m.named_modules())
    assert all(has_fast_path(modules[n]) for n in layers), [n for n in layers if not has_fast_path(modules[n])]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))

    res = capture_batch(m, x, layers, target="pred", weight_gradients=False)
    with torch.no_grad():
        feats = fx.create_feature_extractor(m, return_nodes=layers)(x)
    for n in layers:
        want = feats[n].numpy()
        got = np.maximum(res.act[n], 0) if n in RELU_AFTER.get(name, ()) else res.act[n]
        # same kernels on the same batch shape: equal up to float32 rounding of the same sums
        assert np.abs(got - want).max() <= 1e-5, n

    # float64: per-image gradients vs one backward per image, exact up to float32 storage
    md, xd = copy.deepcopy(m).double(), x.double()
    res64 = capture_batch(md, xd, layers, target="pred")
    ref = loop_per_sample_grads(md, xd, torch.tensor(res64.target), [f"{n}.weight" for n in layers])
    for n in layers:
        r = ref[f"{n}.weight"].numpy()
        np.testing.assert_allclose(full_grad(res64, n), r, rtol=1e-4, atol=1e-6 * np.abs(r).max(), err_msg=n)

    assert_renders(res.act[next(n for n in layers if isinstance(modules[n], CONV_TYPES))][0])


def assert_renders(volume: np.ndarray) -> None:
    """A layer volume of the capture renders, and not as a flat or empty picture."""
    from volviz.views import LayerVolumeScene

    scene = LayerVolumeScene(volume, window_size=(208, 160))
    try:
        img = scene.screenshot()
        bg = np.round(np.array(scene.plotter.background_color.float_rgb) * 255).astype(int)
    finally:
        scene.close()
    assert img.std() > 8, f"render looks flat (std {img.std():.2f})"
    assert (np.abs(img.astype(int) - bg).max(axis=2) <= 12).mean() < 0.97, "render is (almost) all background"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_zoo_graph_builds(name):
    from volviz.analysis.network_graph import build_network_graph

    G = build_network_graph(build(name), (3, 64, 64), k=4)
    assert G.number_of_edges() > 0 and len(G.graph["layers"]) > 5


def per_channel_norms(m: nn.Module) -> nn.Module:
    """LayerNorm normalizes over channels, so every output channel depends on every input one;
    the graph passes norms through channel by channel. For an autograd reference of the channel
    maps, make LayerNorms (plain and ConvNeXt's permuting LayerNorm2d) per-channel affine, and
    ReLUs leaky (a unit dead on every test image would hide a true source)."""
    for mod in list(m.modules()):
        for cname, child in mod.named_children():
            if isinstance(child, nn.ReLU):
                setattr(mod, cname, nn.LeakyReLU(0.1))
        if type(mod).__name__ == "LayerNorm2d":
            mod.forward = lambda x, mod=mod: (x.permute(0, 2, 3, 1) * mod.weight + mod.bias).permute(0, 3, 1, 2)
        elif isinstance(mod, nn.LayerNorm):
            mod.forward = lambda x, mod=mod: x * mod.weight + mod.bias
    return m


@pytest.mark.parametrize("tracer", ["fx", "dispatch"])
@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "convnext_tiny"])
def test_graph_channel_maps_equal_autograd_dependencies(name, tracer):
    """Channel shuffles, chunks and ConvNeXt's channels-last blocks: the units the traced graph
    says feed an input channel of a layer are exactly the units whose outputs that channel's
    values depend on (autograd, with every unit layer's output cut into a leaf so that only direct
    sources count); a few channels of every layer."""
    from volviz.analysis.dataflow_trace import trace_dataflow

    m = per_channel_norms(build(name))
    flow = trace_dataflow(m, (3, 64, 64), tracer=tracer)
    modules = dict(m.named_modules())
    leaves, inputs, handles = {}, {}, []

    def cut(layer):
        def pre(mod, args):
            inputs[layer] = args[0]

        def post(mod, args, out):
            leaves[layer] = out.detach().requires_grad_()
            return leaves[layer]

        return pre, post

    for layer in flow.layers[1:]:
        pre, post = cut(layer.name)
        handles += [modules[layer.name].register_forward_pre_hook(pre), modules[layer.name].register_forward_hook(post)]
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    try:
        m(x)
    finally:
        for h in handles:
            h.remove()
    leaves["input"] = x
    rng = np.random.default_rng(0)
    checked = 0
    for i, layer in enumerate(flow.layers[1:], 1):
        X = inputs[layer.name]
        last = layer.kind == "linear" and X.dim() > 2  # a Linear on channels-last maps
        earlier = flow.layers[:i]
        for c in rng.choice(len(layer.in_sources), size=min(3, len(layer.in_sources)), replace=False):
            sel = X[..., c] if last else X[:, c]
            grads = torch.autograd.grad(
                sel.sum(), [leaves[e.name] for e in earlier], allow_unused=True, retain_graph=True
            )
            want = set()
            for e, g in zip(earlier, grads):
                if g is not None:
                    axis = -1 if (e.kind == "linear" and g.dim() > 2) else 1
                    dims = [d for d in range(g.dim()) if d != axis % g.dim()]
                    want |= {e.first_id + int(j) for j in torch.nonzero(g.abs().sum(dims) > 0).flatten()}
            assert set(layer.in_sources[c]) == want, (layer.name, int(c))
            checked += 1
    assert checked > 100


@pytest.mark.slow
def test_zoo_conv3d_video_model():
    """r3d_18: Conv3d takes the folded native kernel, as Conv2d does (5-15 s; CI runs it)."""
    torch.manual_seed(0)
    m = torchvision.models.get_model("r3d_18", weights=None, num_classes=5).eval()
    layers = [n for n, mod in named_leaf_modules(m).items() if isinstance(mod, (nn.Conv3d, nn.Linear))]
    assert all(has_fast_path(dict(m.named_modules())[n]) for n in layers)
    md, x = m.double(), torch.randn(2, 3, 4, 32, 32, dtype=torch.float64)
    res = capture_batch(md, x, layers, target="pred")
    ref = loop_per_sample_grads(md, x, torch.tensor(res.target), [f"{n}.weight" for n in layers])
    for n in layers:
        r = ref[f"{n}.weight"].numpy()
        np.testing.assert_allclose(full_grad(res, n), r, rtol=1e-4, atol=1e-6 * np.abs(r).max(), err_msg=n)
