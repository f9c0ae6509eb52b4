"""Finite differences (volviz.analysis.gradcheck): pass on a smooth model, FAIL when the backward
pass or the stored gradient is wrong, leave every weight exactly as it was."""

import numpy as np
import pytest
import torch
from helpers import capture_tiny_store
from torch import nn

from volviz.analysis.gradcheck import EPS64, check_gradients, fd_step
from volviz.capture.engine import capture_batch
from volviz.cli import main


class Smooth(nn.Module):
    """conv - tanh - conv - tanh - linear: differentiable everywhere (no kinks)."""

    def __init__(self, act=torch.tanh):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.conv2 = nn.Conv2d(4, 5, 3)
        self.fc = nn.Linear(5 * 6 * 6, 3)
        self.act = act

    def forward(self, x):
        return self.fc(self.act(self.conv2(self.act(self.conv1(x)))).flatten(1))


class _WrongTanh(torch.autograd.Function):
    """tanh whose backward is 10 % too large: the kind of bug finite differences must catch."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y) * 1.1


def test_step_rule():
    assert fd_step(0.01) == pytest.approx(EPS64 ** (1 / 3))
    assert fd_step(-300.0) == pytest.approx(300 * EPS64 ** (1 / 3))


def test_smooth_model_passes_and_weights_are_restored_exactly():
    m = Smooth().eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(1, 1, 10, 10)
    rep = check_gradients(m, x, 1, filters_per_layer=3, weights_per_filter=8)
    assert rep.passed and rep.worst < 1e-6, rep.table()
    assert len(rep.rows) == 9 and all(r.kinks == 0 for r in rep.rows)
    assert all(r.n_weights == 8 or r.layer == "conv1" for r in rep.rows)  # conv1 filters have 9 weights
    assert max(r.grad_norm for r in rep.rows if r.layer == "fc") > 0
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]) and v.dtype == torch.float32, k
    assert "PASSED" in rep.table()


def test_wrong_backward_fails():
    m = Smooth(act=_WrongTanh.apply).eval()
    rep = check_gradients(m, torch.randn(1, 1, 10, 10), 0, filters_per_layer=2, weights_per_filter=6)
    assert not rep.passed
    by_layer = {r.layer: r.rel_error for r in rep.rows}
    assert by_layer["conv1"] > 0.05 and by_layer["conv2"] > 0.05
    assert by_layer["fc"] < 1e-6  # the last layer's gradient does not pass through the bad tanh
    assert "FAILED" in rep.table()


def test_stored_gradients_checked_and_corruption_caught():
    m = Smooth().eval()
    x = torch.randn(1, 1, 10, 10)
    res = capture_batch(m, x, ["conv1", "conv2", "fc"], target=2)
    u, v = res.grad_weight_factors["fc"]
    stored = {"conv1": res.grad_weight["conv1"][0], "conv2": res.grad_weight["conv2"][0], "fc": np.outer(u[0], v[0])}
    rep = check_gradients(m, x, 2, stored=stored, filters_per_layer=2, weights_per_filter=6)
    assert rep.passed and rep.worst_stored < 1e-4, rep.table()
    bad = dict(stored, conv2=stored["conv2"] * 1.01)
    rep = check_gradients(m, x, 2, stored=bad, filters_per_layer=2, weights_per_filter=6)
    assert not rep.passed
    assert [r.layer for r in rep.rows if not r.passed(rep.tol, rep.store_tol)] == ["conv2", "conv2"]


def test_kinks_are_skipped_not_failed():
    # a ReLU network evaluated where a unit sits exactly at its kink
    m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)).eval()
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        m[0].bias.zero_()
        m[2].weight.fill_(1.0)
    rep = check_gradients(m, torch.tensor([[0.0, 1.0]]), 0, ["0"], filters_per_layer=2, weights_per_filter=2)
    row0 = [r for r in rep.rows if r.filter == 0][0]
    assert row0.kinks >= 1 and rep.passed  # unit 0 has pre-activation exactly 0
    assert "kink" in rep.table()


def test_bad_input():
    from volviz.analysis.importance import AnalysisError, NoWeightsError

    m = Smooth().eval()
    with pytest.raises(AnalysisError, match="one image"):
        check_gradients(m, torch.randn(2, 1, 10, 10), 0)
    with pytest.raises(NoWeightsError):
        check_gradients(
            nn.Sequential(nn.Conv2d(1, 1, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 2)).eval(),
            torch.randn(1, 1, 10, 10),
            0,
            ["1"],
        )


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("gc")
    return capture_tiny_store(root, n_per_class=2)


def test_cli_check_gradients_exit_status(tiny_store, tmp_path, capsys):
    csv = tmp_path / "gc.csv"
    assert (
        main(
            [
                "check-gradients",
                "--trust-factory",
                str(tiny_store),
                "--index",
                "0",
                "3",
                "--filters",
                "2",
                "--weights",
                "4",
                "--csv",
                str(csv),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "PASSED" in out and "rel.err store" in out
    assert csv.read_text().count("\n") == 1 + 2 * 5 * 2
    # corrupt one stored gradient chunk: the check must fail with exit status 1
    from volviz.store.store import Store

    s = Store.open(tiny_store, mode="r+")
    arr = s._root["grad_weight/conv2/w"]  # store internals: corrupt the values, keep the checksum valid
    arr[0] = arr[0] * 1.05
    assert (
        main(
            [
                "check-gradients",
                "--trust-factory",
                str(tiny_store),
                "--index",
                "0",
                "--layers",
                "conv2",
                "--filters",
                "2",
                "--weights",
                "4",
            ]
        )
        == 1
    )
    assert "FAILED" in capsys.readouterr().out
    assert main(["check-gradients", "--trust-factory", str(tiny_store), "--index", "99"]) == 2
