"""Readable renders: corner texts that never overlap (long class names), deep stacks drawn without
moire (slabs binned to the ray sampling), one colour theme for CLI and app, 2-D figures with
title / colour bar / labels (a linear layer's weight gradient as a heatmap of the rows that
matter), the render probe asked once."""

import imageio.v3 as iio
import numpy as np
import pytest
from helpers import capture_tiny_store

from volviz.views.colors import DEFAULT_CMAP, DIVERGING_CMAP, colour_2d, is_signed, theme_for
from volviz.views.volume_data import bin_stack, stack_bin

LONG = "American Staffordshire terrier, Staffordshire bullterrier, Staffordshire bull terrier"


def test_theme_is_one_rule_for_every_view():
    assert theme_for(np.array([-1.0, 0.5])).cmap == DIVERGING_CMAP == "RdBu_r"
    assert theme_for(np.array([0.0, 2.0])).cmap == DEFAULT_CMAP == "inferno"
    assert theme_for(signed=True).opacity == "diverging" and theme_for(signed=False).opacity == "sigmoid"
    assert is_signed((-1, 1)) and not is_signed(np.array([np.nan, 1.0]))
    rgb = colour_2d(np.array([[-2.0, 0.0, 1.0]]))
    assert tuple(rgb[0, 1]) == tuple(colour_2d(np.array([[-1.0, 0.0, 1.0]]))[0, 1])  # zero: the middle colour
    assert rgb[0, 0, 2] > rgb[0, 0, 0]  # negative: blue


def test_deep_stacks_are_binned_to_the_ray_sampling():
    assert stack_bin((1280, 7, 7), 7 / 1280) == 8 and stack_bin((20, 24, 24), 24 / 20) == 1
    d = np.zeros((5, 1, 2), np.float32)
    d[1, 0, 0], d[2, 0, 0], d[0, 0, 1] = -3.0, 2.0, 1.0
    b = bin_stack(d, 2)
    assert b.shape == (3, 1, 2) and b[0, 0, 0] == -3.0 and b[1, 0, 0] == 2.0 and b[0, 0, 1] == 1.0


def _text_boxes_apart(boxes: dict, w: int, h: int) -> None:
    vals = list(boxes.values())
    from volviz.views.text_layout import overlaps

    for i, a in enumerate(vals):
        assert a.x0 >= 0 and a.x1 <= w + 1 and a.y0 >= 0 and a.y1 <= h + 1, a
        for b in vals[i + 1 :]:
            assert not overlaps(a, b, 0), (a, b)


def test_title_and_caption_never_overlap_with_long_class_names(can_render, out_dir):
    from volviz.views.volume import LayerVolumeScene

    rng = np.random.default_rng(0)
    with LayerVolumeScene(
        rng.random((1280, 7, 7), dtype=np.float32),
        title="mobilenet_v2  features.18.0  activation  (1280 x 7 x 7)  order=natural",
        window_size=(480, 360),
    ) as s:
        s.set_label(f"image 3  true {LONG}  pred {LONG} (0.41)")
        img = s.screenshot(out_dir / "long_caption.png")
        assert img.std() > 10
        assert s.bin == 8 and s.grid.dimensions[2] == 160  # 1280 maps as 160 slabs: no moire
        assert "as 160 slabs of 8" in s.texts.texts["note"]
        boxes = s.texts.boxes()
        assert {"title", "caption"} <= set(boxes)
        _text_boxes_apart(boxes, 480, 360)
        assert s.texts.caption.shown.endswith("...") and s.label_text.endswith("(0.41)")  # the text is kept
        s.plotter.window_size = (900, 600)  # a resized view (the app): laid out again before the render
        s.screenshot()
        _text_boxes_apart(s.texts.boxes(), 900, 600)


def test_weight_rows_are_the_non_zero_rows_by_norm():
    from volviz.views.render_figures import weight_rows

    g = np.zeros((10, 6), np.float32)
    g[7] = 0.1
    g[2] = -1.0
    g[5, 0] = 0.01
    rows, norms, n = weight_rows(g, max_rows=2)
    assert rows.tolist() == [2, 7] and n == 3 and norms[0] > norms[1]
    assert weight_rows(np.zeros((3, 2)))[2] == 0


@pytest.fixture(scope="module")
def store(tmp_path_factory):

    root = tmp_path_factory.mktemp("render")
    return capture_tiny_store(root, n_per_class=2)


def test_render_figures_have_titles_colour_bars_and_class_rows(store, tmp_path, can_render):
    from volviz.cli import main

    base = ["render", str(store), "--image", "0"]
    for extra, name in (
        (["--layer", "fc2", "--quantity", "grad_weight"], "w.png"),
        (["--layer", "conv2", "--grid"], "g.png"),
        (["--layer", "fc1"], "n.png"),
        (["--layer", "conv2", "--quantity", "grad_weight", "--grid"], "gw.png"),
    ):
        assert main(base + extra + ["--out", str(tmp_path / name)]) == 0
        img = iio.imread(tmp_path / name)
        assert img.ndim == 3 and img.shape[1] >= 900 and img.std() > 10
        dark = (img[..., :3].astype(int).sum(axis=2) < 90).mean()
        assert dark > 0.3  # the dark figure background around the plot, title and bar
    heat = iio.imread(tmp_path / "w.png")
    assert heat.shape[0] < 400  # a few rows that matter, not a 3-D box of 3 mostly empty slices
    assert main(base + ["--layer", "conv2", "--out", str(tmp_path / "v.png")]) == 0  # 3-D as before
    assert iio.imread(tmp_path / "v.png").shape[:2] == (608, 800)


def test_the_render_probe_is_asked_once(tmp_path, monkeypatch):
    import volviz.views.render_probe as probe
    from volviz.commands import render

    calls = []
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("VOLVIZ_RENDER_PROBE", raising=False)
    monkeypatch.setattr(probe, "rendering_available", lambda: calls.append(1) or (True, "ok"))
    render._ensure_rendering()
    render._ensure_rendering()
    assert calls == [1] and (tmp_path / "volviz" / "render-probe.json").exists()
    monkeypatch.setenv("VOLVIZ_RENDER_PROBE", "always")
    render._ensure_rendering()
    assert calls == [1, 1]
    monkeypatch.setattr(probe, "rendering_available", lambda: (False, "no EGL"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other"))
    from volviz.errors import VolvizError

    with pytest.raises(VolvizError, match="no EGL"):
        render._ensure_rendering()
