"""The view layer: volumes from arrays, 2-D grids, rendered scenes, movies."""

from __future__ import annotations

import numpy as np
import pytest

from volviz.views import (
    LayerVolumeScene,
    VolumeStyle,
    activation_volume,
    auto_clim,
    near_square_grid,
    neuron_grid,
    opacity_curve,
    save_png,
    to_rgb,
    vis_square,
    weight_volume,
)

WIN = (400, 304)  # small, 16-divisible (movies)


# ----------------------------------------------------------------------------- data helpers
def smooth_maps(c=16, h=20, w=20, seed=0):
    """Fake ReLU activations: each channel one of 4 blob prototypes, scaled, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    protos = []
    for _ in range(4):
        cy, cx = rng.uniform(0.2, 0.8, 2) * (h, w)
        protos.append(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.15 * h) ** 2)))
    labels = rng.integers(0, 4, c)
    maps = np.stack([protos[k] * rng.uniform(0.6, 1.4) for k in labels])
    maps = maps + 0.05 * rng.standard_normal(maps.shape)
    return np.maximum(maps, 0).astype(np.float32), labels


def signed_grad(c_out=12, c_in=6, k=3, seed=1):
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((c_out, c_in, k, k)).astype(np.float32) * 1e-4
    g[::3] *= 8  # a few filters matter much more
    return g


def bg_fraction(img, bg):
    """Fraction of pixels within 12 levels of the background colour."""
    d = np.abs(img.astype(int) - np.asarray(bg, int)).max(axis=2)
    return float((d <= 12).mean())


def assert_not_blank(img, scene):
    assert img.dtype == np.uint8 and img.shape == (WIN[1], WIN[0], 3)
    assert img.std() > 8, f"render looks flat (std {img.std():.2f})"
    bg = np.round(np.array(scene.plotter.background_color.float_rgb) * 255)
    assert bg_fraction(img, bg) < 0.97, "render is (almost) all background"


def changed(a, b, min_frac=0.002):
    return float((np.abs(a.astype(int) - b.astype(int)).max(axis=2) > 20).mean()) > min_frac


# ----------------------------------------------------------------------------- pure numpy
def test_near_square_grid():
    assert near_square_grid(96) == (8, 12)
    assert near_square_grid(20) == (4, 5)
    assert near_square_grid(1) == (1, 1)
    assert near_square_grid(97) == (10, 10)
    for n in range(1, 300):
        r, c = near_square_grid(n)
        assert r * c >= n and r <= c
        assert r * c - n < c  # never a whole empty row
        assert c / r <= 2.0 or r * c > n
    with pytest.raises(ValueError):
        near_square_grid(0)


def test_weight_volume_conv_layout():
    c_out, c_in, kh, kw = 3, 6, 2, 3
    w = np.zeros((c_out, c_in, kh, kw), np.float32)
    for o in range(c_out):
        for i in range(c_in):
            w[o, i] = 100 * (o + 1) + i + 1  # every kernel constant, unique
    vol = weight_volume(w)
    rows, cols = near_square_grid(c_in)
    assert (rows, cols) == (2, 3)
    assert vol.shape == (c_out, rows * kh + rows - 1, cols * kw + cols - 1) == (3, 5, 11)
    for o in range(c_out):
        for i in range(c_in):
            r, c = divmod(i, cols)
            tile = vol[o, r * (kh + 1) : r * (kh + 1) + kh, c * (kw + 1) : c * (kw + 1) + kw]
            assert np.all(tile == 100 * (o + 1) + i + 1)
    # gap rows / columns hold the gap value (0)
    assert np.all(vol[:, kh, :] == 0)
    assert np.all(vol[:, :, kw] == 0) and np.all(vol[:, :, 2 * kw + 1] == 0)
    assert np.isnan(weight_volume(w, gap_value=np.nan)[0, kh, 0])
    # a real kernel keeps its orientation inside its tile
    w2 = np.arange(2 * 1 * 3 * 3, dtype=np.float32).reshape(2, 1, 3, 3)
    np.testing.assert_array_equal(weight_volume(w2), w2[:, 0])


def test_weight_volume_linear_and_errors():
    w = np.arange(4 * 10, dtype=np.float32).reshape(4, 10) + 1
    vol = weight_volume(w)
    rows, cols = near_square_grid(10)
    assert vol.shape == (4, rows, cols)
    for j in range(10):
        r, c = divmod(j, cols)
        np.testing.assert_array_equal(vol[:, r, c], w[:, j])
    assert np.all(vol.reshape(4, -1)[:, 10:] == 0)
    assert weight_volume(np.ones((5, 2, 7))).shape == (5, 1, 2 * 7 + 1)  # conv1d
    with pytest.raises(ValueError):
        weight_volume(np.ones((2, 2, 2, 2, 2)))


def test_activation_volume_order():
    maps = np.arange(4)[:, None, None] * np.ones((4, 2, 3))
    vol = activation_volume(maps, order=[2, 0, 3, 1])
    assert vol.dtype == np.float32
    np.testing.assert_array_equal(vol[:, 0, 0], [2, 0, 3, 1])
    with pytest.raises(ValueError):
        activation_volume(maps, order=[0, 0, 1, 2])
    v1 = activation_volume(np.arange(10.0))
    assert v1.shape == (1, *near_square_grid(10)) and np.isfinite(v1).all()


def test_vis_square_layout():
    c, h, w = 5, 3, 4
    maps = np.arange(c, dtype=np.float32)[:, None, None] * np.ones((c, h, w), np.float32)
    img = vis_square(maps, padding=1, normalize=None)
    rows, cols = near_square_grid(c)  # (2, 3)
    assert img.shape == (rows * h + rows - 1, cols * w + cols - 1)
    for i in range(c):
        r, cc = divmod(i, cols)
        assert np.all(img[r * (h + 1) : r * (h + 1) + h, cc * (w + 1) : cc * (w + 1) + w] == i)
    assert np.isnan(img[h, 0]) and np.isnan(img[0, w])  # padding
    assert np.all(np.isnan(img[h + 1 :, 2 * (w + 1) :]))  # the empty sixth cell
    g = vis_square(maps)  # global: 0..1 over all maps
    assert np.nanmin(g) == 0 and np.nanmax(g) == 1
    pm = vis_square(maps + np.random.default_rng(0).random(maps.shape), normalize="per_map")
    assert np.nanmax(pm[:h, :w]) == 1 and np.nanmin(pm[:h, :w]) == 0
    rgb = vis_square(np.random.default_rng(0).random((7, 3, 3, 3)))
    assert rgb.shape[2] == 3


def test_neuron_grid_to_rgb_save_png(tmp_path):
    g = neuron_grid(np.arange(10.0))
    assert g.shape == near_square_grid(10)
    assert np.isnan(g.ravel()[10:]).all() and g.ravel()[9] == 9
    rgb = to_rgb(g, "viridis")
    assert rgb.dtype == np.uint8 and rgb.shape == g.shape + (3,)
    assert tuple(rgb.reshape(-1, 3)[-1]) == (255, 255, 255)  # NaN -> white
    const = to_rgb(np.full((2, 2), 3.0))  # constant data: one (middle) colour, no crash
    assert (const == const[0, 0]).all()
    clamped = to_rgb(np.array([[-5.0, 0.0, 1.0, 5.0]]), clim=(0.0, 1.0))
    assert (clamped[0, 0] == clamped[0, 1]).all() and (clamped[0, 2] == clamped[0, 3]).all()
    import imageio.v3 as iio

    p = save_png(tmp_path / "sub" / "g.png", rgb)
    back = iio.imread(p)
    assert max(back.shape[:2]) >= 512 and back.shape[0] % g.shape[0] == 0
    np.testing.assert_array_equal(back[0, 0], rgb[0, 0])


def test_colors_presets_and_clim():
    d = opacity_curve("diverging", 101)
    assert d[50] == 0 and d[0] > 0.9 and d[-1] > 0.9
    assert opacity_curve("high", 11)[5] == 0 and opacity_curve("linear", 3)[0] == 0
    assert np.allclose(opacity_curve([0, 1], 3), [0, 0.5, 1])
    with pytest.raises(ValueError):
        opacity_curve("nope")
    lo, hi = auto_clim(np.array([-2.0, 1.0, np.nan]), percentile=100)
    assert (lo, hi) == (-2.0, 2.0)
    assert auto_clim(np.array([0.0, 0.0]))[0] < auto_clim(np.array([0.0, 0.0]))[1]
    assert auto_clim([np.zeros(3), np.full(3, 4.0)], percentile=100) == (0.0, 4.0)


# ----------------------------------------------------------------------------- rendering
@pytest.fixture
def act_scene(can_render):
    maps, labels = smooth_maps()
    scene = LayerVolumeScene(maps, title="test", window_size=WIN)
    yield scene, maps, labels
    scene.close()


def test_activation_render_not_blank(act_scene, out_dir):
    scene, _, _ = act_scene
    img = scene.screenshot(out_dir / "act.png")
    assert_not_blank(img, scene)
    assert (out_dir / "act.png").exists()
    assert not scene.has_nonfinite


def test_gradient_diverging_render(can_render, out_dir):
    vol = weight_volume(signed_grad())
    with LayerVolumeScene(vol, style=VolumeStyle(opacity="diverging"), window_size=WIN) as s:
        lo, hi = s.clim
        assert lo == -hi  # symmetric for signed data
        img = s.screenshot(out_dir / "grad.png")
        assert_not_blank(img, s)
        # both signs are visible: reddish and bluish pixels
        r, b = img[..., 0].astype(int), img[..., 2].astype(int)
        assert (r - b > 40).mean() > 0.002 and (b - r > 40).mean() > 0.002


def test_slices_separators_and_order_change(act_scene, out_dir):
    scene, maps, labels = act_scene
    plain = scene.screenshot()
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    vol_actor, grid = scene.volume_actor, scene.grid
    scene.set_order(order, bounds)
    assert scene.separators_actor.GetVisibility()
    reordered = scene.screenshot(out_dir / "reordered.png")
    assert_not_blank(reordered, scene)
    assert changed(plain, reordered)
    np.testing.assert_array_equal(scene.displayed, maps[order])
    scene.set_style(show_slices=True)
    with_slices = scene.screenshot(out_dir / "slices.png")
    assert_not_blank(with_slices, scene)
    assert changed(reordered, with_slices)
    assert scene.volume_actor is vol_actor and scene.grid is grid
    scene.set_order(None)  # back to natural, no separators
    assert not scene.separators_actor.GetVisibility()


def test_update_in_place_changes_picture(act_scene):
    scene, maps, _ = act_scene
    before = scene.screenshot()
    ids = {
        "volume": scene.volume_actor,
        "mapper": scene.volume_actor.mapper,
        "grid": scene.grid,
        "slices": scene.slices_actor,
        "slices_mesh": scene._slices_mesh,
        "separators": scene.separators_actor,
        "outline": scene.outline_actor,
    }
    vtk_array = scene.grid.GetPointData().GetArray("values")
    n_actors = len(scene.plotter.renderer.actors)
    scene.update(maps[::-1].copy())  # same shape, different data
    after = scene.screenshot()
    assert changed(before, after)
    assert scene.volume_actor is ids["volume"] and scene.volume_actor.mapper is ids["mapper"]
    assert scene.grid is ids["grid"] and scene.slices_actor is ids["slices"]
    assert scene._slices_mesh is ids["slices_mesh"] and scene.outline_actor is ids["outline"]
    assert scene.separators_actor is ids["separators"]
    assert scene.grid.GetPointData().GetArray("values") is vtk_array
    assert len(scene.plotter.renderer.actors) == n_actors
    assert scene.volume_actor.mapper.GetInput() is scene.grid
    # the ImageData holds the new values: channel c at z = c*dz, row h at y = H-1-h, col w at x
    c, h, w = maps.shape
    vals, pts = scene.grid.point_data["values"], scene.grid.points
    dz = scene.grid.spacing[2]
    for cc, hh, ww in [(0, 0, 0), (3, 2, 7), (c - 1, h - 1, w - 1), (5, 0, w - 1)]:
        i = ww + w * (h - 1 - hh) + w * h * cc
        assert vals[i] == pytest.approx(maps[::-1][cc, hh, ww])
        np.testing.assert_allclose(pts[i], (ww, h - 1 - hh, cc * dz), atol=1e-5)
    with pytest.raises(ValueError):
        scene.update(maps[:, :5])
    # style changes are in place too, and visible
    scene.set_style(cmap="viridis", opacity="linear")
    assert changed(after, scene.screenshot())
    assert scene.volume_actor is ids["volume"]


def test_style_changes_in_place(act_scene):
    scene, maps, _ = act_scene
    grid, vol = scene.grid, scene.volume_actor
    scene.set_style(clim=(0.0, 10.0))
    assert scene.clim == (0.0, 10.0)
    assert scene.scalar_bar.GetLookupTable().GetRange() == pytest.approx((0.0, 10.0))
    scene.set_style(clim=None)  # back to auto
    assert scene.clim[1] < 10.0
    scene.set_style(z_spacing=2.0)
    assert scene.grid is grid and scene.grid.spacing[2] == 2.0
    assert scene.grid.bounds[5] == pytest.approx((maps.shape[0] - 1) * 2.0)
    scene.set_style(show_slices=True, slice_positions=(None, None, 0.0))  # only channel 0
    sl = scene._slices_mesh
    np.testing.assert_allclose(np.sort(sl.point_data["values"]), np.sort(maps[0].ravel()), rtol=1e-6)
    scene.update(maps * 3)
    assert scene._slices_mesh is sl
    np.testing.assert_allclose(np.sort(sl.point_data["values"]), np.sort(3 * maps[0].ravel()), rtol=1e-5)
    assert scene.volume_actor is vol
    with pytest.raises(ValueError):
        scene.set_style(mapper="nope")


def test_two_scenes_share_a_plotter(can_render):
    import pyvista as pv

    maps, _ = smooth_maps()
    p = pv.Plotter(off_screen=True, window_size=WIN)
    try:
        s1 = LayerVolumeScene(maps, plotter=p)
        n1 = len(p.renderer.actors)
        s2 = LayerVolumeScene(maps[:, ::-1], plotter=p)
        assert len(p.renderer.actors) > n1 and s1.volume_actor is not s2.volume_actor
        s2.close()
        assert len(p.renderer.actors) == n1
        assert_not_blank(s1.screenshot(), s1)
    finally:
        p.close()


def test_nan_data_renders_and_flags(can_render, out_dir):
    maps, _ = smooth_maps()
    maps[2, 3:8, 3:8] = np.nan
    maps[5, 0, 0] = np.inf
    maps[6, 0, 0] = -np.inf
    with LayerVolumeScene(maps, window_size=WIN) as s:
        assert s.has_nonfinite and s.n_nonfinite == 27
        assert np.all(np.isfinite(s.grid.point_data["values"]))
        assert np.all(np.isfinite(s.clim))
        assert "NaN" in s.warning_text
        img = s.screenshot(out_dir / "nan.png")
        assert_not_blank(img, s)
        s.update(np.nan_to_num(maps, nan=0.0, posinf=1.0, neginf=0.0))
        assert not s.has_nonfinite and s.warning_text == ""
    with LayerVolumeScene(np.full((3, 4, 4), np.nan), window_size=WIN) as s:  # all NaN
        assert s.has_nonfinite
        s.screenshot()


def test_degenerate_shapes_render(can_render):
    for shape in [(1, 8, 8), (5, 1, 9), (4, 6, 1)]:
        with LayerVolumeScene(np.random.default_rng(0).random(shape), window_size=WIN) as s:
            assert s.screenshot().shape == (WIN[1], WIN[0], 3)


# ----------------------------------------------------------------------------- movies
def test_movies_mp4_and_gif(act_scene, out_dir):
    import imageio.v3 as iio

    from volviz.record import orbit_frames, timeseries_frames, write_movie

    scene, maps, _ = act_scene
    mp4 = write_movie(out_dir / "orbit.mp4", orbit_frames(scene, 6), fps=6, total=6, progress=False)
    frames = _read_ffmpeg(mp4)
    assert len(frames) == 6 and frames[0].shape[:2] == (WIN[1], WIN[0])
    assert changed(frames[0], frames[3])
    steps = [maps * s for s in (0.2, 0.6, 1.0)]
    gif = write_movie(
        out_dir / "series.gif", timeseries_frames(scene, steps, labels=["a", "b", "c"]), fps=4, progress=False
    )
    g = iio.imread(gif, index=None)
    assert g.shape[0] == 3 and g.shape[1:3] == (WIN[1], WIN[0])
    assert scene.label_text == "c"
    # odd sizes are padded to 16 for H.264
    odd = [np.full((30, 50, 3), 40 * i, np.uint8) for i in range(3)]
    back = _read_ffmpeg(write_movie(out_dir / "odd.mp4", odd, progress=False))
    assert len(back) == 3 and back[0].shape[:2] == (32, 64)


def test_interrupted_movie_leaves_no_file(tmp_path):
    from volviz.record import write_movie

    def frames():
        for i in range(3):
            yield np.full((32, 32, 3), 50 * i, np.uint8)
        raise RuntimeError("capture died")

    for name in ("m.mp4", "m.gif"):
        with pytest.raises(RuntimeError, match="capture died"):
            write_movie(tmp_path / name, frames(), progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the movie nor a temp file
    with pytest.raises(ValueError, match="unknown movie format"):
        write_movie(tmp_path / "m.avi", [], progress=False)
    with pytest.raises(ValueError, match="same shape"):
        write_movie(tmp_path / "m.gif", [np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)], progress=False)
    assert list(tmp_path.iterdir()) == []


def _read_ffmpeg(path):
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    return [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]


def test_bad_style_leaves_scene_unchanged(act_scene):
    scene, _, _ = act_scene
    before = scene.style
    for bad in [
        dict(mapper="nope"),
        dict(opacity="nope"),
        dict(clim=(1.0, 0.0)),
        dict(z_spacing=0.0),
        dict(interpolation="cubic"),
        dict(cmap="not-a-cmap"),
    ]:
        with pytest.raises((ValueError, TypeError)):
            scene.set_style(**bad)
        assert scene.style == before


def test_docstring_examples():
    import doctest

    from volviz.views import colors, grid

    for mod in (colors, grid):
        assert doctest.testmod(mod).failed == 0
