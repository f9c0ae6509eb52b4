"""Faults in what users point volviz at (models, weights, images, class folders), each with the
fixture that showed it; errors must be VolvizErrors with one clear line."""

import json
import logging

import numpy as np
import pytest
import torch
from helpers import tiny_cnn
from PIL import Image
from torch import nn

from volviz.capture.engine import capture_batch, model_logits, resolve_targets
from volviz.capture.layers import layer_kind, select_layers
from volviz.errors import VolvizError
from volviz.sources import images as images_mod
from volviz.sources.classes import (
    check_class_count,
    compact_names,
    find_class,
    load_class_names,
    match_class_folders,
    read_class_file,
)
from volviz.sources.images import ImageRecord, discover_images, read_image
from volviz.sources.models import load_model
from volviz.sources.preprocess import Preprocess

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit's deprecation notices


def one_line_error(excinfo, *words):
    """The error is a VolvizError whose message is one line naming the problem."""
    assert isinstance(excinfo.value, VolvizError), type(excinfo.value)
    msg = str(excinfo.value)
    assert "\n" not in msg and len(msg) < 400, msg
    for w in words:
        assert w.lower() in msg.lower(), (w, msg)
    return msg


def save_png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


# ---- decoding ---------------------------------------------------------------------------------
def test_cmyk_jpeg_is_white_and_exif_orientation_is_applied(tmp_path):
    Image.new("CMYK", (16, 8), (0, 0, 0, 0)).save(tmp_path / "paper.jpg")  # white paper
    img = read_image(ImageRecord("paper.jpg", str(tmp_path / "paper.jpg")))
    assert img.shape == (8, 16, 3) and img.min() > 245
    a = np.zeros((16, 32, 3), np.uint8)
    a[:, :16] = 255  # left half white, stored sideways: orientation 6 = rotate 90 degrees clockwise
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    img = read_image(ImageRecord("phone.jpg", str(tmp_path / "phone.jpg")))
    assert img.shape == (32, 16, 3)
    assert img[:12].mean() > 240 and img[20:].mean() < 15  # the left half is now on top


def test_animated_gif_decodes_only_its_first_frame(tmp_path, monkeypatch):
    from PIL import GifImagePlugin

    frames = [Image.new("P", (300, 300), k) for k in range(12)]
    for k, f in enumerate(frames):
        f.putpalette([v for i in range(256) for v in (i * 20 % 256, 0, 0)])
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    seeks = []
    orig = GifImagePlugin.GifImageFile.seek
    monkeypatch.setattr(GifImagePlugin.GifImageFile, "seek", lambda self, k: (seeks.append(k), orig(self, k))[1])
    img = read_image(ImageRecord("anim.gif", str(tmp_path / "anim.gif")))
    assert img.shape == (300, 300, 3) and max(seeks, default=0) == 0


def test_pixel_cap_skips_a_huge_image_with_a_reason(tmp_path, monkeypatch):
    save_png(tmp_path / "big.png", np.zeros((1200, 1000), np.uint8))
    monkeypatch.setattr(images_mod, "MAX_PIXELS", 1_000_000)
    with pytest.raises(images_mod.ImageTooLargeError) as e:
        read_image(ImageRecord("big.png", str(tmp_path / "big.png")))
    one_line_error(e, "1000x1200", "MAX_PIXELS")
    assert read_image(ImageRecord("big.png", str(tmp_path / "big.png")), max_pixels=2_000_000).shape == (1200, 1000, 1)


def test_extreme_aspect_crop_is_cut_before_scaling(monkeypatch):
    from volviz.sources import preprocess as pp

    sizes = []
    orig = pp._interp

    def spy(x, size):
        sizes.append((tuple(x.shape[-2:]), tuple(size)))
        return orig(x, size)

    monkeypatch.setattr(pp, "_interp", spy)
    strip = np.zeros((1, 2000, 3), np.uint8)
    strip[:, 990:1010] = 255
    for mode in ("scale_crop", "resize_crop"):
        x = Preprocess((224, 224), 3, mode=mode)(strip)
        assert x.shape == (3, 224, 224) and float(x.max()) > 0.9  # the centre of the strip
    assert all(a[0] * a[1] <= 2000 and b == (224, 224) for a, b in sizes), sizes  # never 448000x224


# ---- folders and class names ------------------------------------------------------------------
def test_flat_folder_with_a_stray_subfolder_takes_the_flat_images(tmp_path, caplog):
    photos = tmp_path / "photos"
    for k in range(3):
        save_png(photos / f"p{k}.png", np.full((8, 8), 40 * k, np.uint8))
    save_png(photos / "backup" / "old.png", np.zeros((8, 8), np.uint8))
    (photos / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING, "volviz.sources"):
        s = discover_images([photos])
    assert sorted(r.id for r in s.records if r.id.endswith(".png")) == [f"photos/p{k}.png" for k in range(3)]
    assert s.class_names is None and all(r.label == -1 for r in s.records)
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "backup/" in warning and "--layout classes" in warning
    assert [r.id for r in discover_images([photos], layout="classes").records] == ["photos/backup/old.png"]
    assert len([r for r in discover_images([photos], layout="flat").records if r.id.endswith(".png")]) == 4
    tree = tmp_path / "tree"  # the other way round: an ImageFolder with one stray image of its own
    for c in ("a", "b", "c"):
        save_png(tree / c / "x.png", np.zeros((8, 8), np.uint8))
    save_png(tree / "preview.png", np.zeros((8, 8), np.uint8))
    caplog.clear()
    with caplog.at_level(logging.WARNING, "volviz.sources"):
        s = discover_images([tree], class_names=["a", "b", "c"])
    assert [r.label for r in s.records] == [0, 1, 2] and "--layout flat" in caplog.text


def test_class_folders_matched_by_name_not_sorted_position(tmp_path, caplog):
    root = tmp_path / "digits"
    for name in ("seven", "three", "Nine"):
        save_png(root / name / "x.png", np.zeros((8, 8), np.uint8))
    s = discover_images([root], class_names=[str(d) for d in range(10)])
    assert {r.id.split("/")[1]: r.label for r in s.records} == {"Nine": 9, "seven": 7, "three": 3}
    names = ["tench", "goldfish", "great white shark", "crane", "crane"]
    m = match_class_folders(["Tench", "001_goldfish", "Great_White-Shark", "cat", "crane", "003 crane"], names)
    assert m.index == {"Tench": 0, "001_goldfish": 1, "Great_White-Shark": 2, "003 crane": 3}
    assert m.unmatched == ["cat"] and m.ambiguous == ["crane"]
    root2 = tmp_path / "pets"
    for name in ("cat", "dog", "goldfish"):
        save_png(root2 / name / "x.png", np.zeros((8, 8), np.uint8))
    caplog.clear()
    with caplog.at_level(logging.WARNING, "volviz.sources"):
        s = discover_images([root2], class_names=names)
    assert [r.label for r in s.records] == [-1, -1, 1] and s.class_names == names
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "cat, dog" in msgs[0] and "--class-names" in msgs[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, "volviz.sources"):
        s = discover_images([root2])  # the model names no classes: sorted position, said so
    assert [r.label for r in s.records] == [0, 1, 2] and "--class-names FILE" in caplog.records[0].getMessage()


def test_class_files_and_wordnet_ids(tmp_path):
    (tmp_path / "names.txt").write_text("tench\ngoldfish\n\n")
    assert load_class_names(tmp_path / "names.txt") == ["tench", "goldfish"]
    (tmp_path / "names.json").write_text(json.dumps(["a", "b"]))
    assert load_class_names(tmp_path / "names.json") == ["a", "b"]
    (tmp_path / "index.json").write_text(json.dumps({"1": ["n01443537", "goldfish"], "0": ["n01440764", "tench"]}))
    t = read_class_file(tmp_path / "index.json")
    assert t.names == ["tench", "goldfish"] and t.wordnet_ids == ["n01440764", "n01443537"]
    (tmp_path / "synset_words.txt").write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    t = read_class_file(tmp_path / "synset_words.txt")
    assert t.names[0] == "tench, Tinca tinca" and t.wordnet_ids[1] == "n01443537"
    root = tmp_path / "val"
    for wnid in ("n01443537", "n01440764"):
        save_png(root / wnid / "x.png", np.zeros((8, 8), np.uint8))
    s = discover_images([root], class_names=t.names, wordnet_ids=t.wordnet_ids)
    assert {r.id.split("/")[1]: r.label for r in s.records} == {"n01440764": 0, "n01443537": 1}
    assert match_class_folders(["Tinca_tinca"], t.names).index == {"Tinca_tinca": 0}
    (tmp_path / "bad.json").write_text("[1, 2")
    for bad in ("bad.json", "missing.txt"):
        with pytest.raises(VolvizError) as e:
            load_class_names(tmp_path / bad)
        one_line_error(e, bad, "one class name per line")


def test_target_by_class_name():
    names = ["tench", "goldfish", "crane", "Great white shark", "crane"]
    assert find_class("goldfish", names) == 1 and find_class("great_white_shark", names) == 3
    for bad, words in (("crane", ("2 classes", "index")), ("cat", ("unknown target", "tench"))):
        with pytest.raises(VolvizError) as e:
            find_class(bad, names)
        one_line_error(e, *words)
    with pytest.raises(VolvizError) as e:
        check_class_count(names, 10)
    one_line_error(e, "5 names", "10 outputs")


def test_compact_names():
    assert compact_names(["tench", "goldfish"]) == "tench, goldfish"
    assert compact_names([f"c{i}" for i in range(1000)], limit=2) == "c0, c1, ... (1000 names)"


# ---- model outputs ----------------------------------------------------------------------------
def test_model_logits_never_takes_an_aux_output_silently(caplog):
    from torchvision.models.googlenet import GoogLeNetOutputs

    aux, logits = torch.zeros(2, 10), torch.ones(2, 10)
    with caplog.at_level(logging.WARNING, "volviz.capture"):
        assert torch.equal(model_logits((aux, logits)), logits)
    assert "taking element 1" in caplog.text and "last tensor" in caplog.text
    assert torch.equal(model_logits([torch.zeros(2, 10), torch.ones(2, 3)], n_classes=10), aux)
    assert torch.equal(model_logits(GoogLeNetOutputs(logits, aux, aux)), logits)
    assert torch.equal(model_logits({"aux": aux, "out": logits}), logits)
    assert torch.equal(model_logits({"logits": logits}), logits)
    with pytest.raises(VolvizError) as e:
        model_logits({"features": aux, "scores": logits})
    one_line_error(e, "'features', 'scores'", "logits")
    with pytest.raises(VolvizError) as e:
        model_logits(torch.tensor(1.0))
    one_line_error(e, "single number")


# ---- models and weights -----------------------------------------------------------------------
class TinyBN(nn.Module):
    """Conv + BatchNorm (its weight gradient takes the torch.func route) + Linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 144, 4)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.1, 0.1)
            self.bn.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_model_captures_like_the_eager_one(tmp_path, how):
    x = torch.randn(3, 1, 12, 12)
    for ref, layers in ((tiny_cnn().eval(), None), (TinyBN().eval(), ["conv", "bn", "fc"])):
        ts = torch.jit.script(ref) if how == "script" else torch.jit.trace(ref, x[:1])
        torch.jit.save(ts, str(tmp_path / "m.pt"))
        loaded = load_model(str(tmp_path / "m.pt"))
        chosen = select_layers(loaded.module, layers)
        assert chosen == select_layers(ref, layers) == select_layers(torch.jit.load(str(tmp_path / "m.pt")), layers)
        assert [layer_kind(dict(loaded.module.named_modules())[n]) for n in chosen] == [
            layer_kind(dict(ref.named_modules())[n]) for n in chosen
        ]
        got = capture_batch(loaded.module, x, chosen, target="pred")
        want = capture_batch(ref, x, chosen, target="pred")
        np.testing.assert_allclose(got.probs, want.probs, rtol=1e-5, atol=1e-6)
        for n in chosen:
            np.testing.assert_allclose(got.act[n], want.act[n], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(got.grad_act[n], want.grad_act[n], rtol=1e-4, atol=1e-6)
            if n in want.grad_weight:
                np.testing.assert_allclose(got.grad_weight[n], want.grad_weight[n], rtol=1e-4, atol=1e-6)
    with pytest.raises(VolvizError) as e:
        load_model(str(tmp_path / "nope.pt"))
    one_line_error(e, "not found")


def test_scripted_torchvision_resnet_runs_as_eager_modules(tmp_path):
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None, num_classes=7).eval()
    torch.jit.save(torch.jit.script(ref), str(tmp_path / "r18.pt"))
    loaded = load_model(str(tmp_path / "r18.pt"))
    layers = select_layers(loaded.module)
    assert layers == select_layers(ref) and len(layers) == 21  # 20 convs (with downsamples) + fc
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), ref(x), rtol=1e-4, atol=1e-5)


def test_damaged_weights_files_give_one_line_errors(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    save_file(tiny_cnn().state_dict(), str(tmp_path / "w.safetensors"))
    good = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(good[: len(good) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage" * 10)
    for f in ("cut.safetensors", "junk.safetensors"):
        with pytest.raises(VolvizError) as e:
            load_model("helpers:TinyCNN", str(tmp_path / f))
        one_line_error(e, f, "damaged")
    torch.save(tiny_cnn().state_dict(), tmp_path / "w.pth")
    good = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(good[: len(good) // 2])
    with pytest.raises(VolvizError) as e:
        load_model("helpers:TinyCNN", str(tmp_path / "cut.pth"))
    assert "--trust-pickle" not in one_line_error(e, "damaged")
    (tmp_path / "zero.pth").write_bytes(b"")
    for trust in (False, True):
        with pytest.raises(VolvizError) as e:
            load_model("helpers:TinyCNN", str(tmp_path / "zero.pth"), trust_pickle=trust)
        one_line_error(e, "empty (0 bytes)")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(good)
    with pytest.raises(VolvizError) as e:
        load_model("helpers:TinyCNN", str(tmp_path / "ckpt"))
    assert "--trust-pickle" not in one_line_error(e, "is a folder", "model.safetensors")
    (tmp_path / "badfactory.py").write_text("def build():\n    raise KeyError('layers')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(VolvizError) as e:
        load_model("badfactory:build")
    one_line_error(e, "badfactory:build", "KeyError")


# ---- videos -----------------------------------------------------------------------------------
def test_bad_video_is_skipped_like_a_bad_image(tmp_path, caplog):
    import imageio.v3 as iio

    save_png(tmp_path / "in" / "a.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "in" / "notes.mp4").write_text("this is a text file\n")
    frames = np.stack([np.full((32, 48, 3), 30 * k, np.uint8) for k in range(6)])
    iio.imwrite(tmp_path / "clip.mp4", frames, fps=5, codec="libx264", macro_block_size=16)
    data = (tmp_path / "clip.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, "volviz.sources"):
        s = discover_images([tmp_path / "in", tmp_path / "cut.mp4"])
    assert [r.id for r in s.records] == ["in/a.png"]
    assert sorted(d["path"].rsplit("/", 1)[1] for d in s.skipped) == ["cut.mp4", "notes.mp4"]
    assert all("\n" not in d["reason"] and "video" in d["reason"] for d in s.skipped)
    with pytest.raises(VolvizError) as e:
        discover_images([tmp_path / "cut.mp4"])
    one_line_error(e, "cut.mp4")
    with pytest.raises(VolvizError) as e:
        read_image(ImageRecord("cut.mp4#3", str(tmp_path / "cut.mp4"), -1, 3))
    one_line_error(e, "cut.mp4")


# ---- torchvision names: class names and preprocessing ------------------------------------------
def test_torchvision_name_brings_class_names_and_its_preprocessing():
    loaded = load_model("resnet18")
    assert loaded.class_names[:2] == ["tench", "goldfish"] and len(loaded.class_names) == 1000
    p = loaded.preprocess
    assert (p.mode, p.size, p.short_side, p.mean) == ("resize_crop", (224, 224), 256, (0.485, 0.456, 0.406))
    assert loaded.input_size == (3, 224, 224)
    logits = torch.zeros(2, 1000)
    assert resolve_targets("goldfish", logits, None, loaded.class_names).tolist() == [1, 1]
    assert load_model("resnet18", num_classes=5).class_names is None
    from volviz.sources.models import torchvision_meta

    names, prep = torchvision_meta("inception_v3")
    assert prep.size == (299, 299) and prep.short_side == 342 and len(names) == 1000


def test_resize_crop_matches_torchvision_and_old_dicts_still_load():
    from torchvision.transforms import v2

    rng = np.random.default_rng(0)
    img = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
    img = np.kron(img, np.ones((10, 10, 1), np.uint8))  # 300x400, smooth enough for bilinear
    prep = Preprocess((224, 224), 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "resize_crop", 256)
    tv = v2.Compose(
        [v2.Resize(256, antialias=True), v2.CenterCrop(224), v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    )
    want = tv(torch.from_numpy(img).permute(2, 0, 1).float() / 255)
    torch.testing.assert_close(prep(img), want, rtol=1e-4, atol=1e-4)
    old = {"size": [10, 10], "channels": 1, "mean": None, "std": None, "mode": "scale_crop"}
    assert Preprocess.from_dict(old) == Preprocess((10, 10), 1, mode="scale_crop")
    assert "short_side" not in Preprocess((10, 10), 1).to_dict()
    assert Preprocess.from_dict(prep.to_dict()) == prep
    from volviz.store.plan import preprocess_from_dict

    assert preprocess_from_dict(prep.to_dict()) == prep and preprocess_from_dict(old).mode == "scale_crop"
    small = prep.with_overrides(size=(112, 112))
    assert small.short_side == 128 and small.mean == prep.mean
    assert prep.with_overrides(mode="resize").short_side is None
    with pytest.raises(ValueError, match="short_side"):
        Preprocess((224, 224), 3, mode="resize_crop", short_side=200)
