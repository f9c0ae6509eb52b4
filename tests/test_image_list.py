"""The plan's image list as columns: the sequence behaves as the list it replaces, plan.json holds
columns written once, and stores of the older per-image-dict format still open and resume."""

import json

import numpy as np
import pytest
from helpers import write_image_folder

from volviz.sources.images import ImageRecord
from volviz.store.capture import CaptureSettings, resume_capture, run_capture
from volviz.store.image_list import ImageList
from volviz.store.plan import Plan, images_fingerprint
from volviz.store.store import Store, StoreError

SETTINGS = dict(model="helpers:tiny_cnn", size=(12, 12), channels=1, batch_size=4)

RECORDS = [
    ImageRecord("a/x.png", "/nonexistent/a/x.png", 3),
    ImageRecord("v.mp4#2", "/nonexistent/v.mp4", -1, 2),
    ImageRecord("v.mp4#4", "/nonexistent/v.mp4", -1, 4),
]


@pytest.fixture
def store(tmp_path):
    images = write_image_folder(tmp_path / "imgs", n_per_class=3)
    return run_capture(tmp_path / "s", CaptureSettings(images=[str(images)], **SETTINGS), progress=False)


def test_the_columns_behave_as_the_list_of_records():
    images = ImageList.from_records(RECORDS)
    assert len(images) == 3 and list(images) == RECORDS and images == RECORDS
    assert images[1] == RECORDS[1] and images[np.int64(2)] == RECORDS[2] and images[-1] == RECORDS[-1]
    assert images[1:] == RECORDS[1:] and isinstance(images[1:], ImageList) and len(images[3:]) == 0
    assert images.ids == ["a/x.png", "v.mp4#2", "v.mp4#4"] and images.paths[0] == "/nonexistent/a/x.png"
    np.testing.assert_array_equal(images.labels, [3, -1, -1])
    assert images.labels.dtype == np.int64 and not images.labels.flags.writeable
    assert images.frames == [None, 2, 4] and images.video_paths() == ["/nonexistent/v.mp4"]
    assert images.position("v.mp4#4") == 2 and images.position("nope") is None
    with pytest.raises(IndexError):
        images[3]
    stills = ImageList.from_records(RECORDS[:1])
    assert stills.frames == [None] and stills.video_paths() == [] and stills.to_dict()["frame"] is None
    assert ImageList.from_records(images) is images and images != RECORDS[:2]


def test_columns_and_per_image_dicts_read_back_the_same():
    images = ImageList.from_records(RECORDS)
    columns = json.loads(json.dumps(images.to_dict()))
    assert ImageList.from_dict(columns) == images
    rows = [r.to_dict() for r in RECORDS]  # formats 1 and 2
    assert ImageList.from_dict(json.loads(json.dumps(rows))) == images
    assert ImageList.from_dict([{"id": "a", "path": "/a"}])[0] == ImageRecord("a", "/a")  # format 1 defaults
    changed = images.to_dict()
    changed["id"][0] = "other"
    assert images[0].id == "a/x.png"  # to_dict hands out copies
    with pytest.raises(ValueError, match="different lengths"):
        ImageList(["a", "b"], ["/a"], [0, 1])
    with pytest.raises(TypeError):
        ImageList.from_dict({"id": "a", "path": "/a", "label": 0})


def test_the_fingerprint_hashes_what_earlier_volviz_hashed():
    """Pinned digest from the per-record implementation: a store started before the columns must
    still resume (its stored fingerprint is compared with this one)."""
    expected = "9ed77275fc8edde31bd7b5bbb88e5b005315c56ed8c62fcd7fa8cf2fbb92beb4"
    assert images_fingerprint(RECORDS) == expected
    assert images_fingerprint(ImageList.from_records(RECORDS)) == expected


def test_plan_json_holds_columns_and_the_manifest_repeats_it(store):
    plan = json.loads((store.path / "plan.json").read_text())
    manifest = json.loads((store.path / "manifest.json").read_text())
    assert plan["format_version"] == 3 and set(plan["images"]) == {"id", "path", "label", "frame"}
    assert len(plan["images"]["id"]) == 9 and plan["images"]["frame"] is None
    assert {k: v for k, v in manifest.items() if k not in ("summary", "versions", "complete")} == plan
    opened = Store.open(store.path)
    assert isinstance(opened.images, ImageList) and opened.images == store.images
    assert opened.images[4].label == int(opened.column("label")[4])


def test_one_row_of_a_column(store):
    """A caption reads one image's label / prediction / probabilities, not the whole column."""
    for name in ("probs", "pred", "label", "target"):
        np.testing.assert_array_equal(store.column(name, 4), store.column(name)[4])
    assert store.column("probs", np.int64(8)).shape == (store.plan.n_outputs,)
    with pytest.raises(StoreError, match="image index 9 out of range"):
        store.column("label", 9)


def _to_per_image_dicts(path, version=2):
    """Rewrite a store's JSON files as a format-2 volviz wrote them: one dict per image."""
    for name in ("plan.json", "manifest.json"):
        d = json.loads((path / name).read_text())
        d["images"] = [r.to_dict() for r in ImageList.from_dict(d["images"])]
        d["format_version"] = version
        (path / name).write_text(json.dumps(d, indent=1))


def test_a_store_with_per_image_dicts_opens_and_reads(store):
    want = list(store.images)
    ref = store.read("activation", "conv1", 5)
    _to_per_image_dicts(store.path)
    old = Store.open(store.path)
    assert old.complete and old.plan.format_version == 2 and list(old.images) == want
    np.testing.assert_array_equal(old.read("activation", "conv1", 5), ref)  # same bytes, same store


def test_an_interrupted_store_with_per_image_dicts_resumes_in_its_own_format(store):
    ref = store.read("activation", "conv2", 7)
    _to_per_image_dicts(store.path)
    Store.open(store.path, "r+").mark_not_done([6, 7])  # as a repair leaves it: manifest removed
    done = resume_capture(store.path, progress=False, trust_factory=True)
    assert done.complete and done.done.all()
    # recomputed in a batch of 2 instead of 4: equal up to float32 summation order
    np.testing.assert_allclose(done.read("activation", "conv2", 7), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    manifest = json.loads((store.path / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and isinstance(manifest["images"], list)  # not half-converted


def test_damaged_image_columns_are_one_clear_error(store):
    plan = json.loads((store.path / "plan.json").read_text())
    plan["images"]["label"] = plan["images"]["label"][:-1]
    (store.path / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(StoreError, match=r"plan.json has an invalid entry \(image columns of different lengths"):
        Store.open(store.path)
    del plan["images"]["path"]
    with pytest.raises(StoreError, match="no 'path' entry"):
        Plan.from_dict(plan)
