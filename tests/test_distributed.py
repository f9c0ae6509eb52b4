"""A capture sharded over a 2-worker Dask LocalCluster (processes) equals a 1-process capture bit
for bit, and an interrupted one resumes (on the cluster) to the same bytes."""

import hashlib

import numpy as np
import pytest
from helpers import write_image_folder

from volviz.store.capture import CaptureSettings, resume_capture, run_capture
from volviz.store.distributed import ranges
from volviz.store.store import Store

pytest.importorskip("distributed")
SETTINGS = dict(model="helpers:tiny_cnn", size=(12, 12), channels=1, batch_size=4)


def arrays_digest(store: Store) -> dict[str, str]:
    return {
        k: hashlib.sha256(np.ascontiguousarray(store._root[k][:]).tobytes()).hexdigest() for k in store._array_keys()
    }


def test_two_workers_equal_one_process_bit_for_bit(tmp_path):
    images = write_image_folder(tmp_path / "imgs", n_per_class=6)  # 18 images: shards of 16 -> 2 ranges
    one = run_capture(tmp_path / "one", CaptureSettings(images=[str(images)], **SETTINGS), progress=False)
    assert ranges(one, 8) == [(0, 16), (16, 18)]
    two = run_capture(tmp_path / "two", CaptureSettings(images=[str(images)], **SETTINGS), progress=False, workers=2)
    assert two.complete and two.done.all()
    assert arrays_digest(two) == arrays_digest(one)
    # interrupted: forget the second range, resume on the cluster
    half = Store.open(tmp_path / "two", "r+")
    half.mark_not_done(np.arange(16, 18))
    again = resume_capture(tmp_path / "two", progress=False, trust_factory=True, workers=2)
    assert again.complete and arrays_digest(again) == arrays_digest(one)
