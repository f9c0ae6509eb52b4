"""Faults around the store, the way a careful QA engineer tries them: each answers with exit 2 (or 1
for a failed verify), ONE line on stderr naming the problem and what to do, no traceback, and
nothing volviz did not create changed (the folder is hashed before and after)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import sys

import numpy as np
import pytest
import torch
from helpers import tiny_cnn, write_image_folder

from volviz.cli import main
from volviz.errors import StoreError
from volviz.store.capture import CaptureSettings, run_capture
from volviz.store.store import Store, write_lock

SETTINGS = dict(model="helpers:tiny_cnn", size=(12, 12), channels=1, batch_size=4)
CAPTURE = ["capture", "--model", "helpers:tiny_cnn", "--size", "12", "12", "--channels", "1"]


def tree_hash(root: pathlib.Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if not ln.startswith(("WARNING", "INFO"))]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture
def images(tmp_path):
    return write_image_folder(tmp_path / "imgs", n_per_class=3)


@pytest.fixture
def store(tmp_path, images):
    return run_capture(tmp_path / "s", CaptureSettings(images=[str(images)], **SETTINGS), progress=False)


def _chunk(store: Store, key: str, row: int) -> tuple[pathlib.Path, slice]:
    """The shard file holding ``row`` of ``key`` and the bytes of that row's chunk in it (zarr's
    shard index at the end of the file: (offset, nbytes) uint64 pairs, then a crc32c)."""
    import struct

    from volviz.store import layout

    arr = store._root[key]
    f = layout.chunk_file(store.path, key, row, arr)
    per, chunk = layout.rows_per_file(arr), arr.chunks[0]
    raw = f.read_bytes()
    index = raw[-(16 * (per // chunk) + 4) : -4]
    j = (row % per) // chunk
    off, n = struct.unpack("<QQ", index[16 * j : 16 * j + 16])
    return f, slice(off, off + n)


# ---- damaged chunks -----------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["random", "zeros", "delete"])
def test_damaged_chunk_is_an_error_found_by_verify_and_repaired(store, images, damage, capsys):
    before = store.read("activation", "conv2", 4).copy()
    f, where = _chunk(store, "act/conv2/data", 4)
    if damage == "delete":
        f.unlink()  # the shard file of images 0-7
    else:
        b = bytearray(f.read_bytes())
        b[where.start : where.start + 16] = os.urandom(16) if damage == "random" else bytes(16)
        f.write_bytes(bytes(b))
    st = Store.open(store.path)
    with pytest.raises(StoreError, match=r"image 4 .*--repair"):
        st.read("activation", "conv2", 4)
    # image 8 lives in another shard file; images 0-7 share image 4's shard (and, the arrays being
    # small, its chunk: several images per chunk)
    np.testing.assert_array_equal(st.read("activation", "conv2", 8), store.read("activation", "conv2", 8))
    assert main(["info", str(store.path), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED: 8 images" in out and "image 4" in out and "act/conv2/data" in out
    assert (
        main(["render", str(store.path), "--layer", "conv2", "--image", "4", "--out", str(store.path.parent / "x.png")])
        == 2
    )
    one_line_error(capsys, "image 4", "--repair")
    assert main(["capture", "--repair", "--trust-factory", "--out", str(store.path)]) == 0
    capsys.readouterr()
    fixed = Store.open(store.path)
    assert fixed.complete
    # recomputed alone instead of in a batch of 4: float32 kernels may differ in the last bits
    np.testing.assert_allclose(fixed.read("activation", "conv2", 4), before, rtol=1e-5, atol=1e-6)
    assert main(["info", str(store.path), "--verify"]) == 0
    assert "verify      OK" in capsys.readouterr().out


def test_old_done_flag_of_a_damaged_done_chunk(store, capsys):
    _chunk(store, "done", 2)[0].write_bytes(b"garbage!")
    assert main(["info", str(store.path), "--verify"]) == 2
    one_line_error(capsys, "done flags", "--repair")
    assert main(["capture", "--repair", "--trust-factory", "--out", str(store.path)]) == 0
    assert Store.open(store.path).done.all()


# ---- never delete what volviz did not create ----------------------------------------------
def test_overwrite_refuses_a_folder_with_user_files(tmp_path, images, capsys):
    out = tmp_path / "mine"
    (out / "photos").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes")
    (out / "photos" / "a.jpg").write_bytes(b"jpeg")
    h = tree_hash(out)
    assert main([*CAPTURE, "--images", str(images), "--out", str(out), "--overwrite"]) == 2
    one_line_error(capsys, "notes.txt", "never deletes")
    assert tree_hash(out) == h


def test_overwrite_refuses_a_folder_of_stores(tmp_path, images, store, capsys):
    parent = store.path.parent  # holds the store "s", the images "imgs"
    h = tree_hash(parent)
    assert main([*CAPTURE, "--images", str(images), "--out", str(parent), "--overwrite"]) == 2
    one_line_error(capsys, "did not create")
    assert tree_hash(parent) == h


def test_overwrite_replaces_a_store(tmp_path, images, store):
    assert main([*CAPTURE, "--images", str(images), "--out", str(store.path), "--overwrite", "--max-images", "2"]) == 0
    assert Store.open(store.path).n_images == 2


def test_demo_never_deletes_a_user_folder(tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    h = tree_hash(out)
    assert main(["demo", "--store", str(out), "--out", str(tmp_path / "png"), "--no-serve"]) == 2
    one_line_error(capsys, "thesis.tex")
    assert tree_hash(out) == h


def test_demo_says_upgrade_for_a_newer_store(store, tmp_path, capsys):
    plan = json.loads((store.path / "plan.json").read_text())
    plan["format_version"] = 99
    (store.path / "plan.json").write_text(json.dumps(plan))
    (store.path / "manifest.json").unlink()
    h = tree_hash(store.path)
    assert main(["demo", "--store", str(store.path), "--out", str(tmp_path / "png"), "--no-serve"]) == 2
    one_line_error(capsys, "newer volviz", "upgrade")
    assert tree_hash(store.path) == h


def test_a_second_writer_is_refused(store, images):
    with write_lock(store.path):
        with pytest.raises(StoreError, match="another volviz process"):
            run_capture(store.path, CaptureSettings(images=[str(images)], **SETTINGS), overwrite=True, progress=False)
    assert Store.open(store.path).complete


# ---- a store cannot run code by itself ----------------------------------------------------
MARKER_MODULE = """
import pathlib, torch
def build():
    pathlib.Path({marker!r}).write_text("ran")
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3))
"""


@pytest.fixture
def marker_model(tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"
    (tmp_path / "volviz_marker_mod.py").write_text(MARKER_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "volviz_marker_mod:build", marker
    sys.modules.pop("volviz_marker_mod", None)


def test_a_store_naming_a_factory_is_not_imported_without_the_flag(store, marker_model, capsys):
    spec, marker = marker_model
    plan = json.loads((store.path / "plan.json").read_text())
    plan["model"]["spec"] = spec
    plan["settings"]["trust_pickle"] = True  # a store cannot switch trust on
    (store.path / "plan.json").write_text(json.dumps(plan))
    (store.path / "manifest.json").unlink()
    for argv in (
        ["saliency", str(store.path), "--out", str(store.path.parent / "sal")],
        ["capture", "--resume", "--out", str(store.path)],
        ["graph", str(store.path), "--out", str(store.path.parent / "g.png")],
    ):
        assert main(argv) == 2, argv
        one_line_error(capsys, "--trust-factory")
        assert not marker.exists(), argv


def test_a_pickled_weights_file_in_a_store_is_not_unpickled(store, tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    marker = tmp_path / "PICKLE_RAN"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.write_text, (marker, "ran"))

    torch.save({"x": Payload()}, evil)
    plan = json.loads((store.path / "plan.json").read_text())
    plan["model"] = {"spec": "digits", "weights": str(evil)}
    plan["settings"]["trust_pickle"] = True
    (store.path / "plan.json").write_text(json.dumps(plan))
    assert main(["saliency", str(store.path), "--out", str(tmp_path / "sal")]) == 2
    one_line_error(capsys, "--trust-pickle")
    assert not marker.exists()


def test_a_scene_cannot_import_a_factory_or_leave_its_folder(tmp_path, marker_model, capsys):
    spec, marker = marker_model
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    keys = '[[keyframes]]\nview = "overview"\nduration = 1.0\n'
    (scenes / "evil.toml").write_text(f'[store]\nmodel = "{spec}"\npath = "st"\n' + keys)
    assert main(["movie", str(scenes / "evil.toml"), "--out", str(tmp_path / "m.mp4")]) == 2
    one_line_error(capsys, "--trust-factory")
    assert not marker.exists() and not (scenes / "st").exists()
    (scenes / "away.toml").write_text('[store]\npath = "../../elsewhere"\nmodel = "digits"\n' + keys)
    assert main(["movie", str(scenes / "away.toml"), "--out", str(tmp_path / "m.mp4")]) == 2
    one_line_error(capsys, "leaves the scene's folder", "--allow-outside")


# ---- resume must not mix two inputs -------------------------------------------------------
def test_resume_refuses_changed_weights(tmp_path, images, monkeypatch, capsys):
    import volviz.store.execute as cap

    w = tmp_path / "w.pt"
    torch.save(tiny_cnn().state_dict(), w)
    real, calls = cap.capture_batch, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(cap, "capture_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        run_capture(tmp_path / "s", CaptureSettings(images=[str(images)], weights=str(w), **SETTINGS), progress=False)
    monkeypatch.setattr(cap, "capture_batch", real)
    torch.save({k: v * 2 for k, v in tiny_cnn().state_dict().items()}, w)  # other weights, same name
    assert main(["capture", "--resume", "--trust-factory", "--out", str(tmp_path / "s")]) == 2
    one_line_error(capsys, "the weights file changed")
    assert not Store.open(tmp_path / "s").complete


# ---- validated before anything is created -------------------------------------------------
@pytest.mark.parametrize(
    "args,words",
    [
        (["--target", "10"], ["out of range"]),
        (["--target", "zebra"], ["unknown target class", "zebra"]),
        (["--max-images", "0"], ["--max-images"]),
        (["--max-images", "-1"], ["--max-images"]),
        (["--batch-size", "0"], ["--batch-size"]),
    ],
)
def test_bad_settings_leave_nothing_behind(tmp_path, images, args, words, capsys):
    out = tmp_path / "new"
    assert main([*CAPTURE, "--images", str(images), "--out", str(out), *args]) == 2
    one_line_error(capsys, *words)
    assert not out.exists()


def test_out_is_a_file_or_under_one(tmp_path, images, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    for out in (f, f / "sub"):
        assert main([*CAPTURE, "--images", str(images), "--out", str(out)]) == 2
        one_line_error(capsys, "is a file")
    assert f.read_text() == "x"


def test_render_and_movie_outputs_that_cannot_be_written(store, tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert main(["render", str(store.path), "--out", str(f / "a.png")]) == 2
    one_line_error(capsys, "is a file")
    assert main(["movie", str(store.path), "--out", str(f / "a.mp4")]) == 2
    one_line_error(capsys, "is a file")
    assert main(["movie", str(store.path), "--out", str(tmp_path / "a.mp4"), "--max-images", "0"]) == 2
    one_line_error(capsys, "--max-images")
    assert main(["render", str(store.path), "--out", str(tmp_path / "a.txt")]) == 2
    one_line_error(capsys, ".png")


@pytest.mark.parametrize("name", ["plan.json", "manifest.json"])
def test_garbage_json_names_the_file(store, name, capsys):
    (store.path / name).write_text("{not json")
    assert main(["info", str(store.path)]) == 2
    one_line_error(capsys, name, "damaged")


def test_plan_missing_a_key_names_it(store, capsys):
    plan = json.loads((store.path / "plan.json").read_text())
    del plan["layers"]
    (store.path / "plan.json").write_text(json.dumps(plan))
    (store.path / "manifest.json").unlink()
    assert main(["info", str(store.path)]) == 2
    one_line_error(capsys, "plan.json", "'layers'")


def test_disk_full_says_how_much_is_safe_and_how_to_continue(tmp_path, images, monkeypatch):
    from volviz.errors import CaptureError
    from volviz.store.writer import ShardWriter

    real = ShardWriter._write

    def full(self, key, rows):
        if key == "act/conv2/data":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, key, rows)

    monkeypatch.setattr(ShardWriter, "_write", full)
    with pytest.raises(CaptureError, match=r"disk is full: 0 of 9 images .*--resume"):
        run_capture(tmp_path / "s", CaptureSettings(images=[str(images)], **SETTINGS), progress=False)
    monkeypatch.setattr(ShardWriter, "_write", real)
    assert main(["capture", "--resume", "--trust-factory", "--out", str(tmp_path / "s")]) == 0
    assert Store.open(tmp_path / "s").complete


def test_paths_in_the_plan_are_absolute(tmp_path, images, monkeypatch):
    monkeypatch.chdir(images.parent)
    st = run_capture(tmp_path / "s", CaptureSettings(images=[images.name], max_images=2, **SETTINGS), progress=False)
    assert all(pathlib.Path(p).is_absolute() for p in st.plan.settings["images"])
    assert all(pathlib.Path(r.path).is_absolute() for r in st.images)


def test_a_killed_movie_leaves_no_partial_file_behind(tmp_path):
    from volviz.record import write_movie

    out = tmp_path / "m.gif"
    dead = tmp_path / ".m.999999999-abcd1234.partial.gif"  # a writer pid that cannot exist
    dead.write_bytes(b"half a movie")
    frames = [np.full((16, 16, 3), v, np.uint8) for v in (0, 128, 255)]
    write_movie(out, frames, fps=2, progress=False)
    assert out.exists() and not dead.exists()
