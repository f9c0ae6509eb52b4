"""Saliency (volviz.analysis.saliency, captum) against direct autograd, and the PNG overlay."""

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from helpers import capture_tiny_store, tiny_rgb_cnn
from torch import nn

from volviz.analysis.importance import AnalysisError, NotDifferentiableError
from volviz.analysis.saliency import METHODS, SALIENCY_METHODS, overlay, saliency_maps
from volviz.cli import main


def _direct(model, x, target):
    x = x.clone().requires_grad_(True)
    s = model(x)[torch.arange(len(x)), target].sum()
    (g,) = torch.autograd.grad(s, x)
    return g.abs().amax(1).numpy(), g


def test_saliency_equals_direct_autograd_max_over_channels():
    m = tiny_rgb_cnn().eval()
    x = torch.randn(3, 3, 12, 12)
    t = torch.tensor([0, 2, 1])
    maps = saliency_maps(m, x, t)
    ref, g = _direct(m, x, t)
    assert maps.shape == (3, 12, 12)
    np.testing.assert_allclose(maps, ref, rtol=1e-6, atol=1e-9)
    # the max is over channels: each pixel equals one channel's |grad|, not a sum
    assert np.all(np.isclose(maps[..., None], g.abs().permute(0, 2, 3, 1).numpy()).any(-1))
    same = saliency_maps(m, x, 1)
    np.testing.assert_allclose(same, _direct(m, x, torch.tensor([1, 1, 1]))[0], rtol=1e-6, atol=1e-9)


def test_integrated_gradients_completeness():
    m = tiny_rgb_cnn().eval()
    x = torch.randn(2, 3, 12, 12)
    base = torch.full_like(x, -0.5)
    maps, attr = saliency_maps(
        m, x, 1, method="integrated-gradients", baseline=base, n_steps=200, return_attributions=True
    )
    with torch.no_grad():
        gap = (m(x)[:, 1] - m(base)[:, 1]).numpy()
    # sum of attributions = S(x) - S(baseline) (up to the integration error)
    np.testing.assert_allclose(attr.reshape(2, -1).sum(1), gap, rtol=2e-2, atol=1e-3)
    np.testing.assert_allclose(maps, np.abs(attr).max(1))


def test_guided_backprop_zeroes_negative_gradients_at_relus():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    x = torch.randn(1, 1, 4, 4)
    maps = saliency_maps(m, x, 0, method="guided-backprop")
    # by hand: backward through ReLU passes only positive gradients at active units
    with torch.no_grad():
        h = m[1](x.flatten(1))
    g_h = m[3].weight[0] * (h[0] > 0) * (m[3].weight[0] > 0)
    g_x = (g_h @ m[1].weight).abs().reshape(4, 4)
    np.testing.assert_allclose(maps[0], g_x.detach().numpy(), rtol=1e-5, atol=1e-8)
    with pytest.warns(UserWarning, match="no nn.ReLU"):
        saliency_maps(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval(), x, 0, method="guided-backprop")


def test_bad_input():
    m = tiny_rgb_cnn().eval()
    with pytest.raises(AnalysisError, match="unknown saliency method"):
        saliency_maps(m, torch.randn(1, 3, 12, 12), 0, method="deconv")

    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x.flatten(1).detach())

    with pytest.raises(NotDifferentiableError):
        saliency_maps(Detached().eval(), torch.randn(1, 1, 2, 2), 0)


def test_overlay():
    img = np.zeros((1, 5, 6))
    sal = np.zeros((5, 6))
    sal[2, 3] = 1.0
    out = overlay(img, sal)
    assert out.shape == (5, 6, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [0, 0, 0] and out[2, 3].sum() > 100  # only the salient pixel is coloured
    with pytest.raises(ValueError, match="differ in size"):
        overlay(img, np.zeros((4, 4)))


def test_cli_saliency(tmp_path):
    store = capture_tiny_store(tmp_path, rgb=True)
    out = tmp_path / "sal"
    assert main(["saliency", "--trust-factory", str(store), "--out", str(out)]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["saliency_00000.png", "saliency_00002.png", "saliency_00004.png"]  # one per class
    img = iio.imread(out / pngs[0])
    assert img.ndim == 3 and img.std() > 10
    maps = np.load(out / "maps.npz")["maps"]
    assert maps.shape == (3, 12, 12) and maps.max() > 0
    assert (
        main(
            [
                "saliency",
                "--trust-factory",
                str(store),
                "--out",
                str(tmp_path / "ig"),
                "--method",
                "integrated-gradients",
                "--index",
                "1",
                "--steps",
                "8",
            ]
        )
        == 0
    )
    assert main(["saliency", "--trust-factory", str(store), "--out", str(tmp_path / "no"), "--index", "42"]) == 2
    assert not (tmp_path / "no").exists()


def test_the_registry_is_the_one_list_of_methods():
    """One entry per method: the CLI's choices and the app's select read it, and
    saliency_maps dispatches through it."""
    from volviz.app import state as S

    assert METHODS == tuple(SALIENCY_METHODS) == ("saliency", "integrated-gradients", "guided-backprop")
    assert [it["value"] for it in S.SAL_ITEMS] == list(METHODS)
    assert [it["title"] for it in S.SAL_ITEMS] == [m.title for m in SALIENCY_METHODS.values()]
    assert [m.name for m in SALIENCY_METHODS.values() if m.baseline] == ["integrated-gradients"]
    model = tiny_rgb_cnn().eval()
    x = torch.rand(1, 3, 12, 12)
    for name in METHODS:
        assert saliency_maps(model, x, 1, method=name, n_steps=4).shape == (1, 12, 12)
