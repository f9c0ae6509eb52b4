"""Models, images and preprocessing the user points at, and the errors for bad input."""

import numpy as np
import pytest
import torch
import torchvision
from helpers import TinyCNN, tiny_cnn, write_image_folder

from volviz.sources.images import ImageSourceError, discover_images, read_image
from volviz.sources.models import ModelLoadError, load_model
from volviz.sources.preprocess import Preprocess


def test_torchvision_name_with_local_state_dict(tmp_path):
    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None, num_classes=5)
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, tmp_path / "w.pth")
    loaded = load_model("resnet18", str(tmp_path / "w.pth"), num_classes=5)
    assert not loaded.module.training and loaded.input_size == (3, 224, 224)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), ref.eval()(x))


def test_safetensors_and_factory(tmp_path):
    from safetensors.torch import save_file

    ref = tiny_cnn()
    save_file(ref.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = load_model("helpers:TinyCNN", str(tmp_path / "w.safetensors"))
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), ref.eval()(x))


def test_pickled_full_model_refused_unless_trusted(tmp_path):
    torch.save(tiny_cnn(), tmp_path / "full.pt")
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        load_model("helpers:TinyCNN", str(tmp_path / "full.pt"))
    loaded = load_model("helpers:TinyCNN", str(tmp_path / "full.pt"), trust_pickle=True)
    assert isinstance(loaded.module, TinyCNN)


def test_bad_model_inputs(tmp_path):
    with pytest.raises(ModelLoadError, match="weights file not found"):
        load_model("resnet18", str(tmp_path / "nope.pth"))
    with pytest.raises(ModelLoadError, match=r"unknown model 'resnet19'.*resnet18"):
        load_model("resnet19")
    with pytest.raises(ModelLoadError, match="cannot import factory"):
        load_model("nosuchpkg.mod:build")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(ModelLoadError, match="do not fit TinyCNN"):
        load_model("helpers:TinyCNN", str(tmp_path / "wrong.pt"))
    with pytest.raises(ModelLoadError, match="model file not found"):
        load_model(str(tmp_path / "model.pt"))


def test_torchscript_file(tmp_path):
    m = tiny_cnn().eval()
    torch.jit.save(torch.jit.script(m), str(tmp_path / "m.pt"))
    loaded = load_model(str(tmp_path / "m.pt"))
    x = torch.randn(1, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), m(x))


def test_image_folder_flat_folder_files_and_video(tmp_path):
    import imageio.v3 as iio

    tree = write_image_folder(tmp_path / "tree", n_per_class=2)
    s = discover_images([tree])
    assert s.class_names == ["a", "b", "c"] and [r.label for r in s.records] == [0, 0, 1, 1, 2, 2]
    s = discover_images([tree], class_names=["x", "c", "b", "a"])  # the model's own class order wins
    assert [r.label for r in s.records][:2] == [3, 3]
    flat = discover_images([tree / "a"])
    assert flat.class_names is None and all(r.label == -1 for r in flat.records)
    files = discover_images([tree / "a" / "a_0.png", tree / "b" / "b_1.png"])
    assert len(files) == 2 and read_image(files.records[0]).shape == (12, 12, 1)
    frames = np.stack([np.full((32, 48, 3), 40 * k, np.uint8) for k in range(6)])
    iio.imwrite(tmp_path / "clip.mp4", frames, fps=5, codec="libx264", macro_block_size=16)
    vid = discover_images([tmp_path / "clip.mp4"], video_stride=2)
    assert [r.frame for r in vid.records] == [0, 2, 4]
    assert read_image(vid.records[2]).mean() > read_image(vid.records[0]).mean()
    with pytest.raises(ImageSourceError, match="no such file"):
        discover_images([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageSourceError, match="no image files"):
        discover_images([tmp_path / "empty"])


def test_discovery_order_hidden_files_and_symlinks(tmp_path, monkeypatch):
    """The order and the choices of pathlib's ``sorted(rglob)``, which discovery used to call per
    file: by path parts ('sub/' before 'sub-x.png'), hidden files and folders left out, symlinked
    files taken, symlinked sub-folders not entered except a class folder itself."""
    from PIL import Image

    cls = tmp_path / "cls"
    for rel in ("a/x.png", "a/sub-x.png", "a/sub/deep.png", "a/.hid.png", "a/.cache/z.png", "a-c/y.png", "b/q.png"):
        (cls / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (4, 4)).save(cls / rel)
    (cls / "a" / "link").symlink_to(cls / "b", target_is_directory=True)
    (cls / "a" / "lnk.png").symlink_to(cls / "b" / "q.png")
    (cls / "c").symlink_to(cls / "b", target_is_directory=True)
    s = discover_images([cls])
    assert [r.id for r in s.records] == [
        "cls/a/lnk.png",
        "cls/a/sub/deep.png",
        "cls/a/sub-x.png",
        "cls/a/x.png",
        "cls/a-c/y.png",
        "cls/b/q.png",
        "cls/c/q.png",
    ]
    assert [r.label for r in s.records] == [0, 0, 0, 0, 1, 2, 3] and s.class_names == ["a", "a-c", "b", "c"]
    assert s.records[0].path == str(cls / "a" / "lnk.png") and s.records[-1].path == str(cls / "c" / "q.png")
    flat = discover_images([cls / "a"], layout="flat")
    assert [r.id for r in flat.records] == ["a/lnk.png", "a/sub/deep.png", "a/sub-x.png", "a/x.png"]
    monkeypatch.chdir(cls / "a")
    here = discover_images(["."], layout="flat")  # ids and paths as pathlib writes them: no "./"
    assert [(r.id, r.path) for r in here.records][:2] == [("lnk.png", "lnk.png"), ("sub/deep.png", "sub/deep.png")]


def test_preprocess_scale_crop_keeps_aspect_and_resize_does_not():
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 10:30] = 255  # a centred white band half the width
    crop = Preprocess((10, 10), 1, mode="scale_crop")(img)
    assert crop.shape == (1, 10, 10) and crop.min() > 0.8 and crop.mean() > 0.95  # only the band
    plain = Preprocess((10, 10), 1, mode="resize")(img)
    assert plain[0, :, 0].max() < 0.1 and plain[0, :, 5].min() > 0.9  # squashed: band keeps half the width
    norm = Preprocess((10, 10), 3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))(img)
    assert norm.shape == (3, 10, 10) and float(norm.max()) == pytest.approx(2.0, abs=1e-3)
    grey = Preprocess((4, 4), 3)(np.full((4, 4, 1), 255, np.uint8))
    assert grey.shape == (3, 4, 4)
    with pytest.raises(ValueError, match="unknown preprocessing mode"):
        Preprocess((4, 4), 1, mode="stretch")
