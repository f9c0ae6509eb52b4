"""The filter over the image order (volviz.app.image_filter) and the app driving it: the slider
walks only the images that pass, the image shown stays when it passes, "go to image" jumps, and
every key the page sets for it is bounded."""

from __future__ import annotations

import shutil
import uuid

import numpy as np
import pytest

from volviz.app import state as S
from volviz.app.image_filter import MAX_SEARCH, FilterColumns, ImageFilter, filter_sequence, position_in

LABEL = np.array([0, 1, 2, 0, 1, 2, -1, 0])
PRED = np.array([0, 1, 1, 2, 1, 2, 0, 0])
PROBS = np.eye(3)[PRED] * np.array([0.9, 0.6, 0.55, 0.4, 0.99, 0.7, 0.5, 0.8])[:, None]
IDS = ["cat/img_000.png", "dog/IMG_001.png", "x/a(b).png", "cat/img_003.png", "y.png", "z.png", "u.png", "cat/q.png"]


def cols():
    return FilterColumns(LABEL, PRED, PROBS, IDS)


def test_each_condition_vectorised_and_order_kept():
    seq = np.array([7, 6, 5, 4, 3, 2, 1, 0])  # some slider order: the filter keeps it
    c = cols()
    assert filter_sequence(seq, c, ImageFilter()).tolist() == seq.tolist()
    assert filter_sequence(seq, c, ImageFilter(true_class=0)).tolist() == [7, 3, 0]
    assert filter_sequence(seq, c, ImageFilter(pred_class=1)).tolist() == [4, 2, 1]
    # misclassified: labelled and wrong (the unlabelled image 6 is neither)
    assert filter_sequence(seq, c, ImageFilter(correct="wrong")).tolist() == [3, 2]
    assert filter_sequence(seq, c, ImageFilter(correct="correct")).tolist() == [7, 5, 4, 1, 0]
    assert filter_sequence(seq, c, ImageFilter(prob=(0.5, 0.7))).tolist() == [6, 5, 2, 1]
    both = ImageFilter(true_class=0, correct="wrong")
    assert filter_sequence(seq, c, both).tolist() == [3]
    assert both.describe() == "true 0 · misclassified"


def test_search_is_literal_case_insensitive_and_loads_names_once():
    calls = []

    def ids():
        calls.append(1)
        return IDS

    c = FilterColumns(LABEL, PRED, PROBS, ids)
    seq = np.arange(8)
    assert filter_sequence(seq, c, ImageFilter(true_class=1)).tolist() == [1, 4]
    assert calls == []  # no search yet: the file names are not even read
    assert filter_sequence(seq, c, ImageFilter(search="img_")).tolist() == [0, 1, 3]
    assert filter_sequence(seq, c, ImageFilter(search="CAT img")).tolist() == [0, 3]  # words: all must occur
    assert filter_sequence(seq, c, ImageFilter(search="a(b")).tolist() == [2]  # not a regex
    assert filter_sequence(seq, c, ImageFilter(search=".*")).tolist() == []
    assert calls == [1]


def test_twenty_thousand_images_and_position():
    rng = np.random.default_rng(0)
    n = 20_000
    label, pred = rng.integers(0, 10, n), rng.integers(0, 10, n)
    probs = rng.dirichlet(np.ones(10), n)
    c = FilterColumns(label, pred, probs, [f"{i:06d}.png" for i in range(n)])
    seq = np.argsort(-probs[np.arange(n), pred], kind="stable")
    kept = filter_sequence(seq, c, ImageFilter(true_class=7, correct="wrong", search="99"))
    want = [i for i in seq if label[i] == 7 and pred[i] != 7 and "99" in f"{i:06d}.png"]
    assert kept.tolist() == want and len(want) > 10
    assert position_in(kept, want[5]) == 5 and position_in(kept, -3) is None


def test_rules_bound_every_filter_key():
    from volviz.app.rules import client_rules
    from volviz.app.security import Refused

    rules = client_rules(1, ["volume"], ["maps"])
    state = dict(S.DEFAULTS)
    state[S.T_F_CLASSES] = [{"title": "any", "value": -1}, {"title": "class 0", "value": 0}]
    state[S.T_JUMP_MAX] = 99
    assert rules[S.T_F_TRUE](0, state) == 0
    assert rules[S.T_JUMP](99, state) == 99
    assert rules[S.T_F_SEARCH]("a" * MAX_SEARCH, state)
    for key, bad in [
        (S.T_F_TRUE, 5),
        (S.T_F_PRED, "0"),
        (S.T_F_CORRECT, "maybe"),
        (S.T_F_PROB, [0, 101]),
        (S.T_F_PROB, "0-100"),
        (S.T_F_SEARCH, "a" * (MAX_SEARCH + 1)),
        (S.T_F_SEARCH, ["x"]),
        (S.T_F_SEARCH, "a\nb"),
        (S.T_JUMP, 100),
        (S.T_JUMP, -2),
    ]:
        with pytest.raises(Refused):
            rules[key](bad, state)


# ---- the app, without a browser -----------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_store(tmp_path_factory):
    """The digits LeNet on 3 real shipped test digits per class."""
    import pathlib

    from volviz.store.capture import CaptureSettings, run_capture

    root = tmp_path_factory.mktemp("filter")
    shipped = pathlib.Path(__file__).resolve().parents[1] / "data" / "digits" / "test"
    for c in range(10):
        (root / "imgs" / str(c)).mkdir(parents=True)
        for f in sorted((shipped / str(c)).glob("*.png"))[:3]:
            shutil.copy(f, root / "imgs" / str(c) / f.name)
    return run_capture(root / "s", CaptureSettings(images=[str(root / "imgs")], batch_size=16), progress=False)


def test_app_filter_and_jump(digits_store, tmp_path, can_render, out_dir):
    from trame.app import get_server

    from volviz.app.explorer import Explorer

    server = get_server(f"test-{uuid.uuid4().hex[:8]}", client_type="vue3")
    app = Explorer([str(digits_store.path)], server=server, record_dir=tmp_path / "rec", window_size=(320, 240))
    try:
        st, pane = app.state, app.panes[0]
        st.ready()
        assert st[S.T_MAX] == 29 and st[S.T_JUMP_MAX] == 29 and st[S.T_F_NOTE] == ""
        assert len(st[S.T_F_CLASSES]) == 11
        before = pane.plotter.screenshot(return_img=True).copy()
        st[S.T_F_TRUE] = 3
        st.flush()
        threes = np.flatnonzero(digits_store.column("label") == 3)
        assert sorted(pane.sequence.tolist()) == threes.tolist() and st[S.T_MAX] == 2
        assert pane.image in threes and pane.columns["label"][pane.image] == 3
        assert st[S.pane_key(0, "caption")].startswith("1/3 ")
        assert st[S.T_F_NOTE] == "3 of 30 images · true 3"
        pane.plotter.render()
        after = pane.plotter.screenshot(str(out_dir / "filter_true3.png"), return_img=True)
        assert np.abs(after.astype(int) - before.astype(int)).max() > 0  # another image is drawn
        # the image shown stays when it still passes; the search is literal
        shown = pane.image
        name = digits_store.images[shown].id.split("/")[-1]
        st[S.T_F_SEARCH] = name.upper()
        st.flush()
        assert pane.sequence.tolist() == [shown] and pane.image == shown
        # nothing passes: the list is not emptied, the note says so
        st[S.T_F_SEARCH] = ".*"
        st.flush()
        assert len(pane.sequence) == 30 and "no image matches; showing all 30" in st[S.T_F_NOTE]
        # off again, then jump to a store index
        st.update({S.T_F_TRUE: -1, S.T_F_SEARCH: ""})
        st.flush()
        assert st[S.T_MAX] == 29 and st[S.T_F_NOTE] == ""
        st[S.T_JUMP] = 17
        st.flush()
        assert pane.image == 17 and st[S.T_INDEX] == pane.position_of(17) and st[S.T_JUMP] == -1
        # the order still applies under the filter: the 7s by probability, highest first
        st.update({S.T_SORT: "probability", S.T_F_TRUE: 7})
        st.flush()
        p = digits_store.column("probs")
        top = p[pane.sequence, digits_store.column("pred")[pane.sequence]]
        assert len(pane.sequence) == 3 and np.all(np.diff(top) <= 0)
    finally:
        app.close()
