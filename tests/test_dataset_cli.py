"""The dataset subcommands end to end on a 30-digit store of the trained LeNet, and their errors."""

from __future__ import annotations

import json
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
from helpers import write_image_folder

from volviz.cli import main
from volviz.sources.demo import demo_images_dir
from volviz.store.capture import CaptureSettings, run_capture
from volviz.store.store import Store


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """3 test digits per class of the demo LeNet, as an ImageFolder tree, captured with defaults."""
    root = tmp_path_factory.mktemp("dscli")
    for c in range(10):
        (root / "imgs" / str(c)).mkdir(parents=True)
        for f in sorted((demo_images_dir("digits") / str(c)).glob("*.png"))[:3]:
            shutil.copy(f, root / "imgs" / str(c) / f.name)
    st = run_capture(root / "s", CaptureSettings(images=[str(root / "imgs")], gradients=False), progress=False)
    return st.path


def _png(path):
    img = iio.imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) >= 100 and img[..., :3].std() > 5
    return img


def test_embed_writes_the_png_and_keeps_the_coordinates(digits, tmp_path, capsys):
    out = tmp_path / "e.png"
    assert main(["embed", str(digits), "--layer", "fc1", "--method", "pca", "--out", str(out)]) == 0
    _png(out)
    from volviz.analysis.dataset.embedding import load_embedding

    emb = load_embedding(Store.open(digits), "fc1")
    assert emb.coords.shape == (30, 2) and emb.settings["method"] == "pca" and emb.settings["pool"] == "mean"
    assert "results/embedding/fc1" in capsys.readouterr().out
    out3 = tmp_path / "e3.png"
    args = ["embed", str(digits), "--layer", "conv2", "--method", "tsne", "--dims", "3", "--colour", "wrong"]
    assert main([*args, "--out", str(out3), "--no-save"]) == 0
    _png(out3)
    assert load_embedding(Store.open(digits), "conv2") is None


def test_neighbours_strip_and_table(digits, tmp_path, capsys):
    out = tmp_path / "n.png"
    assert main(["neighbours", str(digits), "--layer", "fc2", "--image", "4", "-k", "5", "--out", str(out)]) == 0
    _png(out)
    assert "40% of the 5 nearest" in capsys.readouterr().out  # 3 images per class: 2 of 5 at most
    assert main(["neighbours", str(digits), "--image", "4", "-k", "2", "--table"]) == 0
    text = capsys.readouterr().out
    rows = [line.split() for line in text.splitlines() if line.split() and line.split()[0] in ("conv1", "fc2")]
    assert len(rows) == 2 and all(0 <= float(r[2]) <= 1 for r in rows)
    assert float(rows[1][3]) > 0.8  # the class scores' neighbours share their class
    assert main(["neighbours", str(digits), "--image", "4"]) == 2  # neither --out nor --table


def test_top_examples_occlusion_deconv(digits, tmp_path, capsys):
    d = tmp_path / "top"
    assert main(["top-examples", str(digits), "--layer", "conv2", "-k", "4", "--units", "0", "3", "--out", str(d)]) == 0
    _png(d / "conv2_top4.png")
    _png(d / "conv2_hist.png")
    meta = json.loads((d / "conv2_top.json").read_text())
    assert meta["units"] == [0, 3] and len(meta["rows"][0]) == 4 and len(meta["boxes"][1][0]) == 4
    assert main(["occlusion", str(digits), "--image", "7", "--out", str(tmp_path / "o.png")]) == 0
    _png(tmp_path / "o.png")
    assert (
        main(["deconv", str(digits), "--layer", "conv2", "--unit", "3", "-k", "3", "--out", str(tmp_path / "d.png")])
        == 0
    )
    _png(tmp_path / "d.png")
    assert "no nn.ReLU module runs before conv2" in capsys.readouterr().out  # LeNet: deconvnet = gradient
    assert main(["deconv", str(digits), "--layer", "conv2", "--unit", "50", "--out", str(tmp_path / "x.png")]) == 2


def test_invert_and_fool(digits, tmp_path, capsys):
    args = ["invert", str(digits), "--layer", "conv1", "--image", "3", "--steps", "60"]
    assert main([*args, "--out", str(tmp_path / "i.png")]) == 0
    _png(tmp_path / "i.png")
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("image 3")][0]
    assert "x lower" in line
    code = main(
        ["fool", str(digits), "--image", "0", "--class", "3", "--confidence", "0.9", "--out", str(tmp_path / "f.png")]
    )
    assert code == 0
    _png(tmp_path / "f.png")
    out = capsys.readouterr().out
    assert "fooled" in out and "perturbation L2" in out
    assert main(["fool", str(digits), "--image", "0", "--class", "eleven", "--out", str(tmp_path / "g.png")]) == 2


def test_diagnose_writes_every_table_and_figure(digits, tmp_path, capsys):
    d = tmp_path / "diag"
    assert main(["diagnose", str(digits), "--out", str(d), "--threshold", "0.9"]) == 0
    for name in ("probe.png", "dead_sparsity.png", "confusion.png", "filters_conv1.png", "correlation_conv2.png"):
        _png(d / name)
    summary = json.loads((d / "diagnostics.json").read_text())
    assert [x["layer"] for x in summary["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    assert summary["columns"][-1] == "uncertain" and np.asarray(summary["confusion"]).sum() == 30
    csv = (d / "confusion.csv").read_text().splitlines()
    assert csv[0].endswith(",uncertain") and len(csv) == 11
    assert "uncertain" in capsys.readouterr().out


def test_bad_input_is_one_clear_line(digits, tmp_path, capsys):
    tiny = dict(model="helpers:tiny_cnn", size=(12, 12), channels=1, gradients=False)
    three = run_capture(
        tmp_path / "three", CaptureSettings(images=[str(write_image_folder(tmp_path / "i", 1))], **tiny), progress=False
    )
    assert main(["embed", str(three.path), "--layer", "fc1", "--out", str(tmp_path / "e.png")]) == 2
    err = capsys.readouterr().err
    assert "3 images" in err and "at least 5 images" in err and len(err.strip().splitlines()) == 1
    desc = run_capture(
        tmp_path / "desc",
        CaptureSettings(
            images=[str(write_image_folder(tmp_path / "j", 2))],
            descriptors=["conv2"],
            pool="mean",
            descriptors_only=True,
            **tiny,
        ),
        progress=False,
    )
    assert main(["embed", str(desc.path), "--layer", "conv2", "--pool", "max", "--out", str(tmp_path / "e.png")]) == 2
    assert "volviz capture --descriptors conv2 --pool max" in capsys.readouterr().err
    assert main(["embed", str(digits), "--layer", "nope", "--out", str(tmp_path / "e.png")]) == 2
    assert "fc1" in capsys.readouterr().err  # names the layers there are
    assert main(["occlusion", str(digits), "--image", "99", "--out", str(tmp_path / "o.png")]) == 2
    assert main(["embed", str(digits), "--layer", "fc1", "--out", str(tmp_path / "e.txt")]) == 2
    assert not (tmp_path / "e.png").exists()


def test_help_teaches_with_examples(capsys):
    for cmd in ("embed", "neighbours", "top-examples", "occlusion", "deconv", "invert", "fool", "diagnose"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = capsys.readouterr().out
        assert "examples" in text and f"volviz {cmd} stores/digits" in text
