"""The embedded demo models: architectures, shipped weights and test images, API errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from volviz.sources import demo
from volviz.sources.demo import (
    DEMO_INFO,
    DEMO_NAMES,
    DemoInfo,
    build_demo_model,
    demo_images_dir,
    demo_weights_path,
    load_demo_model,
)
from volviz.sources.demo_training import train_demo

REPO = Path(__file__).resolve().parents[1]

# measured when the shipped weights were trained (data/<name>.json): digits 0.975 on the 200
# exported PNGs (0.986 on the whole 1,000-image test split), faces 1.0 on the 100 PNGs.
MIN_ACCURACY = {"digits": 0.95, "faces": 0.9}
N_PER_CLASS = {"digits": 20, "faces": 50}


def _read_test_images(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    info = DEMO_INFO[name]
    root = demo_images_dir(name)
    xs, ys = [], []
    for label, cls in enumerate(info.class_names):
        files = sorted((root / cls).glob("*.png"))
        assert len(files) == N_PER_CLASS[name], (cls, len(files))
        for f in files:
            assert f.name.startswith(f"{name}_")
            with Image.open(f) as im:
                assert im.mode == "L"
                xs.append(np.asarray(im, dtype=np.float32) / 255.0)
            ys.append(label)
    x = torch.from_numpy(np.stack(xs))[:, None]
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return (x - mean) / std, torch.tensor(ys)


def test_names_and_info():
    assert DEMO_NAMES == ("digits", "faces")
    assert set(DEMO_INFO) == set(DEMO_NAMES)
    assert DEMO_INFO["digits"] == DemoInfo("digits", (1, 28, 28), tuple("0123456789"), (0.0,), (1.0,))
    faces = DEMO_INFO["faces"]
    assert faces.class_names == ("face", "nonface")
    assert faces.input_size[0] == 1 and faces.input_size[1] == faces.input_size[2]
    for info in DEMO_INFO.values():
        assert len(info.mean) == len(info.std) == info.input_size[0]
        with pytest.raises(AttributeError):  # frozen
            info.name = "x"  # type: ignore[misc]


def test_paths():
    assert demo_weights_path("digits") == REPO / "data" / "digits.pt"
    assert demo_images_dir("faces") == REPO / "data" / "faces" / "test"


def test_digits_lenet_shapes():
    model = build_demo_model("digits").eval()
    names = [n for n, _ in model.named_children()]
    assert names == ["conv1", "pool1", "conv2", "pool2", "fc1", "relu1", "fc2"]
    shapes = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:])))
        for n, m in model.named_children()
    ]
    with torch.no_grad():
        out = model(torch.rand(3, 1, 28, 28))
    for h in hooks:
        h.remove()
    assert out.shape == (3, 10)
    assert shapes == {
        "conv1": (20, 24, 24),
        "pool1": (20, 12, 12),
        "conv2": (50, 8, 8),
        "pool2": (50, 4, 4),
        "fc1": (500,),
        "relu1": (500,),
        "fc2": (10,),
    }


def test_faces_net_shapes():
    model = build_demo_model("faces").eval()
    children = dict(model.named_children())
    for n in ("conv1", "conv2", "conv3", "conv4"):
        assert isinstance(children[n], torch.nn.Conv2d)
    for n in ("fc1", "fc2", "fc3"):
        assert isinstance(children[n], torch.nn.Linear)
    assert any(isinstance(m, torch.nn.Dropout) for m in children.values())
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    c, h, w = DEMO_INFO["faces"].input_size
    with torch.no_grad():
        out = model(torch.rand(4, c, h, w))
    assert out.shape == (4, 2)


@pytest.mark.parametrize(
    "call",
    [build_demo_model, demo_weights_path, demo_images_dir, load_demo_model, lambda n: train_demo(n, progress=False)],
)
def test_unknown_name_lists_valid_names(call):
    with pytest.raises(ValueError) as err:
        call("mnist")
    msg = str(err.value)
    assert "'mnist'" in msg and "digits" in msg and "faces" in msg


@pytest.mark.parametrize("name", DEMO_NAMES)
def test_shipped_weights_classify_shipped_images(name):
    path = demo_weights_path(name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert path.stat().st_size < 4_000_000

    model = load_demo_model(name)
    assert not model.training
    x, y = _read_test_images(name)
    assert x.shape[1:] == DEMO_INFO[name].input_size
    with torch.no_grad():
        pred = model(x).argmax(1)
    acc = (pred == y).float().mean().item()
    assert acc >= MIN_ACCURACY[name], acc

    metrics = json.loads((REPO / "data" / f"{name}.json").read_text())
    assert metrics["test_accuracy"] >= MIN_ACCURACY[name]
    assert metrics["exported_accuracy"] == pytest.approx(acc, abs=1e-3)


def test_missing_weights_tell_how_to_train(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "DATA_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="volviz train-demo faces"):
        load_demo_model("faces")


def test_train_demo_one_epoch_writes_everything(tmp_path):
    threads = torch.get_num_threads()
    res = train_demo("digits", epochs=1, out_dir=tmp_path, progress=False)
    assert torch.get_num_threads() == threads
    assert {"test_accuracy", "train_seconds", "n_train", "n_test"} <= set(res)
    assert res["n_train"] == 4000 and res["n_test"] == 1000
    assert res["test_accuracy"] > 0.5  # one epoch of LeNet: ~0.87
    assert json.loads((tmp_path / "digits.json").read_text()) == res
    state = torch.load(tmp_path / "digits.pt", weights_only=True)
    build_demo_model("digits").load_state_dict(state)
    pngs = sorted((tmp_path / "digits" / "test").glob("*/*.png"))
    assert len(pngs) == 200
    assert {p.parent.name for p in pngs} == set(DEMO_INFO["digits"].class_names)


def test_export_digits_writes_the_held_out_split(tmp_path):
    from volviz.cli import main

    assert main(["export-digits", str(tmp_path / "d"), "--per-class", "2"]) == 0
    files = sorted(p.relative_to(tmp_path / "d").parts[0] for p in (tmp_path / "d").rglob("*.png"))
    assert len(files) == 20 and sorted(set(files)) == [str(k) for k in range(10)]
    assert main(["export-digits", str(tmp_path / "d")]) == 2  # not empty: refused, nothing overwritten
