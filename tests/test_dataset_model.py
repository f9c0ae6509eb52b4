"""Dataset analyses that run the model: receptive-field crops (checked by perturbation), occlusion
and deconvnet (against captum called directly), inversion, fooling, diagnostics."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from helpers import tiny_cnn, write_image_folder
from torch import nn

from volviz.analysis.actmax.objectives import LayerOutput
from volviz.analysis.dataset import diagnostics as G
from volviz.analysis.dataset.fooling import fool
from volviz.analysis.dataset.inversion import store_inversion
from volviz.analysis.dataset.modelio import model_inputs
from volviz.analysis.dataset.occlusion import deconv_projections, store_deconv, store_occlusion
from volviz.analysis.dataset.topk import boxes_from_masks, crop_boxes, support_masks, top_examples, unit_crops
from volviz.store.capture import CaptureSettings, run_capture

TRUST = {"trust_factory": True}


class PlainCNN(nn.Module):
    """No branches: conv - ReLU - max-pool - conv (padded) - ReLU - strided conv."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(5, 3, 3, stride=2)

    def forward(self, x):
        return self.conv3(self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x))))))


def dead_cnn() -> nn.Module:
    """tiny_cnn with fc1 units 0 and 1 switched off and conv2 filter 3 a copy of filter 0."""
    m = tiny_cnn()
    with torch.no_grad():
        m.fc1.bias[:2] = -1e4
        m.conv2.weight[3] = m.conv2.weight[0]
    return m


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("dsmodel")
    imgs = write_image_folder(root / "imgs", n_per_class=4)
    s = CaptureSettings(
        model="test_dataset_model:dead_cnn", images=[str(imgs)], size=(12, 12), channels=1, gradients=False
    )
    st = run_capture(root / "s", s, progress=False)
    return st, st.model(**TRUST).module.eval()


def _sensitive(model, layer, unit, pos, bases, amount=3.0):
    """Pixels whose change (+-amount, on any base input) changes the activation: by perturbation."""
    f = LayerOutput(model, layer, unit_only=False)
    _, c, h, w = bases.shape
    out = np.zeros((h, w), bool)
    with torch.no_grad():
        for base in bases:
            xs = base[None].repeat(2 * h * w + 1, 1, 1, 1)
            for p in range(h * w):
                xs[1 + p, :, p // w, p % w] += amount
                xs[1 + h * w + p, :, p // w, p % w] -= amount
            o = f(xs)
            a = o[:, unit, pos[0], pos[1]] if o.dim() == 4 else o[:, unit]
            d = (a[1:] - a[0]).abs().reshape(2, h * w).amax(0).reshape(h, w)
            out |= (d > 1e-6).numpy()
    return out


@pytest.mark.parametrize(
    "make,layer",
    [(PlainCNN, "conv2"), (PlainCNN, "conv3"), (tiny_cnn, "conv2"), (tiny_cnn, "conv3"), (tiny_cnn, "fc1")],
)
def test_receptive_field_crop_holds_exactly_the_pixels_that_change_the_unit(make, layer):
    """On a plain CNN and on the residual tiny_cnn (skip add, in-place ReLU, grouped strided conv):
    the crop is the bounding box of the pixels a perturbation shows to matter; none outside it."""
    model = make().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out_shape = LayerOutput(model, layer, unit_only=False)(torch.zeros(1, 1, 12, 12)).shape[1:]
    if len(out_shape) == 1:
        cases = [(3, (-1, -1))]
    else:
        cases = [(0, (0, 0)), (1, (out_shape[-2] // 2, out_shape[-1] // 2)), (2, (out_shape[-2] - 1, 1))]
    bases = torch.randn(6, 1, 12, 12, generator=gen)
    image = bases[:1].repeat(len(cases), 1, 1, 1)
    units = [u for u, _ in cases]
    positions = [p for _, p in cases]
    masks = support_masks(model, layer, units, positions, image)
    boxes = boxes_from_masks(masks)
    np.testing.assert_array_equal(boxes, crop_boxes(model, layer, units, positions, image))
    for (u, p), mask, box in zip(cases, masks, boxes):
        sens = _sensitive(model, layer, u, p, bases)
        inside = np.zeros_like(sens)
        inside[box[0] : box[1], box[2] : box[3]] = True
        assert sens.any() and not (sens & ~inside).any(), "a pixel that changes the unit lies outside the crop"
        ys, xs = np.nonzero(sens)
        assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == tuple(box), "the crop is larger than needed"
        np.testing.assert_array_equal(mask, sens)


def test_unit_crops_of_the_top_examples(store):
    st, model = store
    top = top_examples(st, "conv3", 3)
    crops, boxes = unit_crops(st, model, top, [0, 4], chunk_units=1)
    assert len(crops) == 2 and crops[0].shape[0] == 3 and boxes.shape == (2, 3, 4)
    x = st.read_input(int(top.rows[0, 0]))
    y0, y1, x0, x1 = boxes[0, 0]
    got = crops[0][0]
    np.testing.assert_allclose(got[~np.isnan(got)], x[:, y0:y1, x0:x1].ravel(), atol=1e-6)


def test_occlusion_equals_captum_called_directly(store):
    from captum.attr import Occlusion

    st, model = store
    res = store_occlusion(st, model, 5, window=4, stride=2)
    assert res.kinds == ["true", "predicted"] and res.maps.shape == (2, 12, 12)
    x = model_inputs(st, [5])
    prep = st.preprocess
    base = torch.tensor(np.asarray(st.read_inputs(np.flatnonzero(st.done)).mean(axis=(0, 2, 3)), np.float32))
    base = ((base - torch.tensor(prep.mean or 0.0)) / torch.tensor(prep.std or 1.0)).view(1, -1, 1, 1)

    def p(inp):
        return torch.softmax(model(inp), 1)

    for t, m in zip(res.classes, res.maps):
        want = Occlusion(p).attribute(x, sliding_window_shapes=(1, 4, 4), strides=(1, 2, 2), baselines=base, target=t)
        np.testing.assert_allclose(m, want[0, 0].numpy(), atol=1e-6)
        assert np.abs(m).max() > 0


def test_deconvnet_equals_captum_called_directly(store):
    from captum.attr import Deconvolution

    st, model = store

    class Cut(nn.Module):  # conv3's output, by a forward hook, independent of volviz
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            box = {}
            h = model.conv3.register_forward_hook(lambda mod, i, o: box.__setitem__("o", o))
            try:
                model(x)
            finally:
                h.remove()
            return box["o"]

    res = store_deconv(st, model, "conv3", 2, k=4)
    x = model_inputs(st, res.rows)
    target = [(2, int(p[0]), int(p[1])) for p in res.positions]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = Deconvolution(Cut()).attribute(x.clone().requires_grad_(True), target=target)
    np.testing.assert_allclose(res.projections, want.detach().numpy(), atol=1e-6)
    assert np.abs(res.projections).max() > 0
    fc = deconv_projections(model, "fc1", x[:2], [3, 4])
    assert fc.shape == (2, 1, 12, 12)


def test_inversion_reduces_the_code_distance_tenfold(store):
    st, model = store
    for p in model.parameters():
        p.requires_grad_(False)
    inv = store_inversion(st, model, "conv2", [0, 7], steps=150)
    assert inv.images.shape == inv.originals.shape
    assert (inv.distance_final * 10 <= inv.distance_start).all(), (inv.distance_start, inv.distance_final)
    with torch.no_grad():  # the reported distance is the real one
        f = LayerOutput(model, "conv2", unit_only=False)
        from volviz.analysis.dataset.modelio import normalize

        a, b = f(normalize(st.preprocess, inv.images)), f(model_inputs(st, [0, 7]))
        d = ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).numpy()
    np.testing.assert_allclose(d, inv.distance_final, rtol=1e-3, atol=1e-6)


def _digits(n_per: int = 1, classes=(0, 1, 7)):
    """The trained digits LeNet and a few of its shipped test digits (pixels in [0, 1])."""
    import imageio.v3 as iio

    from volviz.sources.demo import demo_images_dir
    from volviz.sources.models import load_model
    from volviz.sources.preprocess import Preprocess

    loaded = load_model("digits")
    files = [sorted((demo_images_dir("digits") / str(c)).glob("*.png"))[:n_per] for c in classes]
    x = np.stack([iio.imread(f).astype(np.float32)[None] / 255 for fs in files for f in fs])
    prep = Preprocess(tuple(loaded.input_size[1:]), 1, loaded.mean, loaded.std)
    return loaded.module.eval(), prep, x


def test_fooling_flips_the_class_with_the_reported_norm():
    from volviz.analysis.dataset.modelio import normalize

    model, prep, x = _digits()
    res = fool(model, prep, x, 3, confidence=0.9, max_steps=400)
    assert (res.prob_before.argmax(1) != 3).all() and res.success.all()
    with torch.no_grad():
        p = torch.softmax(model(normalize(prep, res.images)), 1).numpy()
    assert (p.argmax(1) == 3).all() and (p[:, 3] >= 0.9).all()
    np.testing.assert_allclose(p, res.prob_after, atol=1e-5)
    d = (res.images - res.originals).reshape(len(x), -1)
    np.testing.assert_allclose(res.l2, np.linalg.norm(d, axis=1), rtol=1e-5)
    np.testing.assert_allclose(res.linf, np.abs(d).max(1), rtol=1e-5)
    assert (res.images >= 0).all() and (res.images <= 1).all() and (res.l2 > 0).all()
    assert (res.relative_l2 < 1).all()


def test_diagnostics_find_planted_dead_units_and_duplicates(store):
    st, model = store
    diag = G.diagnose(st, model, threshold=0.6)
    by = {d.layer: d for d in diag.layers}
    rows = np.flatnonzero(st.done)
    for layer in ("conv2", "fc1"):
        a = st.read_batch("activation", layer, rows)
        a = a.reshape(len(a), a.shape[1], -1)
        np.testing.assert_array_equal(by[layer].dead, a.max(axis=(0, 2)) <= 0)
        np.testing.assert_allclose(by[layer].sparsity, (a <= 0).mean(axis=(0, 2)))
    assert by["fc1"].dead[:2].all()  # the planted ones
    assert by["fc1"].sparsity[:2].tolist() == [1.0, 1.0]
    assert by["conv2"].duplicate_fraction == pytest.approx(2 / 4)
    assert by["conv2"].correlation[0, 3] == pytest.approx(1.0)
    assert all(d.probe_accuracy is not None and 0 <= d.probe_accuracy <= 1 for d in diag.layers)
    lab, pred = st.column("label"), st.column("pred")
    conf = st.column("probs").max(1)
    assert diag.confusion.sum() == len(lab)
    assert diag.confusion[:, -1].sum() == (conf < 0.6).sum()
    for t in range(3):
        for c in range(3):
            assert diag.confusion[t, c] == ((lab == t) & (pred == c) & (conf >= 0.6)).sum()


def test_linear_probe_and_duplicates_on_planted_data():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    x = rng.normal(size=(90, 6)) + 4 * np.eye(3, 6)[y]
    train, test = G.linear_probe(x, y)
    assert test >= 0.9 and train >= 0.9
    w = rng.normal(size=(5, 2, 3, 3))
    w[4] = 2 * w[1] + 0.01  # a scaled copy is a duplicate; a negated one is not
    w[3] = -w[0]
    c = G.filter_correlation(w)
    assert G.duplicate_fraction(c, 0.9) == pytest.approx(2 / 5)
