"""The default capture set of the demo models (issue 10): the digits model's whole held-out test
split (1,000 digits, the same images it was tested on), the faces model's 100 exported test images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from volviz.sources.demo import DEMO_INFO, demo_capture_dir, demo_images_dir
from volviz.sources.demo_data import digits_split


def test_digits_default_set_is_the_whole_test_split():
    root = demo_capture_dir("digits")
    if root == demo_images_dir("digits"):
        pytest.skip("data/digits/heldout not shipped in this checkout")
    files = {c: sorted((root / c).glob("*.png")) for c in DEMO_INFO["digits"].class_names}
    assert {c: len(f) for c, f in files.items()} == {c: 100 for c in files}
    split = digits_split(0)
    names = {f"digits_{int(i):04d}.png" for i in split.test_ids}
    assert {f.name for fs in files.values() for f in fs} == names
    exported = {f.name for f in demo_images_dir("digits").glob("*/*.png")}
    assert exported <= names  # the 200 exported PNGs are among them
    # the pixels are exactly the test tensors the accuracy in data/digits.json was measured on
    k = 7
    name = f"digits_{int(split.test_ids[k]):04d}.png"
    cls = str(int(split.y_test[k]))
    px = np.asarray(Image.open(root / cls / name), np.float32) / 255
    np.testing.assert_array_equal(px, split.x_test[k, 0].numpy())


def test_faces_default_set_is_its_exported_test_images():
    assert demo_capture_dir("faces") == demo_images_dir("faces")
