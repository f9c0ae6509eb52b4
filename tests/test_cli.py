"""The command line as a user runs it: capture, info, render, movie, and clear errors for bad input."""

import imageio.v3 as iio
import numpy as np
import pytest
from helpers import write_image_folder

from volviz.cli import main

TINY = ["--model", "helpers:tiny_cnn", "--size", "12", "12", "--channels", "1"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    imgs = write_image_folder(root / "imgs", n_per_class=3)
    assert main(["capture", "--out", str(root / "s"), "--images", str(imgs), *TINY]) == 0
    return root / "s"


def _png(path):
    img = iio.imread(path)
    assert img.ndim == 3 and img.std() > 10, f"{path} looks blank"
    return img


def test_info(store, capsys):
    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    assert "complete" in out and "9/9 captured" in out and "conv3" in out and "6x2x3x3" in out


def test_render_volume_changes_with_order_quantity_and_image(store, tmp_path):
    base = ["render", str(store), "--layer", "conv2", "--width", "320", "--height", "240"]
    assert main([*base, "--out", str(tmp_path / "nat.png")]) == 0
    assert main([*base, "--order", "pca", "--out", str(tmp_path / "pca.png")]) == 0
    assert main([*base, "--image", "5", "--out", str(tmp_path / "img5.png")]) == 0
    assert main([*base, "--quantity", "grad_weight", "--slices", "--out", str(tmp_path / "gw.png")]) == 0
    nat, pca, img5, gw = (_png(tmp_path / f) for f in ("nat.png", "pca.png", "img5.png", "gw.png"))
    assert np.abs(nat.astype(int) - pca).mean() > 0.5
    assert np.abs(nat.astype(int) - img5).mean() > 0.5
    assert gw.shape == nat.shape


def test_render_grid(store, tmp_path):
    assert (
        main(
            [
                "render",
                str(store),
                "--layer",
                "conv1",
                "--grid",
                "--order",
                "kmeans",
                "--clusters",
                "2",
                "--out",
                str(tmp_path / "g.png"),
            ]
        )
        == 0
    )
    g = _png(tmp_path / "g.png")
    assert min(g.shape[:2]) >= 256


def test_movie_images_and_rotate(store, tmp_path):
    out = tmp_path / "m.gif"
    assert (
        main(
            [
                "movie",
                str(store),
                "--layer",
                "conv1",
                "--mode",
                "both",
                "--frames",
                "4",
                "--order",
                "pca",
                "--width",
                "160",
                "--height",
                "128",
                "--max-images",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    frames = iio.imread(out, index=None)
    assert len(frames) == 7
    assert np.abs(frames[4].astype(int) - frames[6]).mean() > 0.1  # the time series moves


def test_bad_input_is_one_clear_line(store, tmp_path, capsys):
    assert main(["render", str(store), "--layer", "conv9", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "layer 'conv9' is not in this store. Layers: conv1, conv2, conv3, fc1, fc2" in err
    assert (
        main(
            ["capture", "--out", str(tmp_path / "s"), "--images", str(store.parent / "imgs"), *TINY, "--layers", "nope"]
        )
        == 2
    )
    assert "no layer named 'nope'" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "no store at" in capsys.readouterr().err
    assert main(["render", str(store), "--order", "random", "--out", str(tmp_path / "x.png")]) == 2
    assert "unknown order 'random'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_help_teaches(capsys):
    with pytest.raises(SystemExit):
        main(["capture", "--help"])
    out = capsys.readouterr().out
    assert "--resume" in out and "scale_crop" in out and "volviz capture --model resnet18" in out
