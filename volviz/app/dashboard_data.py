"""What the dashboard shows, for one live frame or one stored image: the user's choices
(:class:`Choices`) applied to a model's activations, as a
:class:`~volviz.views.dashboard.DashboardFrame`. The Dashboard tab and the dashboard movie
(:mod:`volviz.app.dashboard_movie`) both build their pictures here, so they look the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from volviz.app.live import LiveResult, crop_box, run_model
from volviz.app.panels import class_weights, input_rgb, relu_follows, sorted_neurons
from volviz.views.dashboard import DashboardFrame, LayerPanel

__all__ = ["Choices", "Dashboard", "layer_items"]


@dataclass
class Choices:
    """The dashboard's controls (see :mod:`volviz.app.dashboard_keys`)."""

    view: str = "generic"  # generic | fc
    conv_a: str | None = None
    conv_b: str | None = None
    fc: str | None = None
    sel_a: str = ""
    sel_b: str = ""
    sel_fc: str = ""
    rows_a: int = 0
    rows_b: int = 0
    rows_fc: int = 0
    cmap_a: str = "auto"
    cmap_b: str = "auto"
    cmap_fc: str = "auto"
    sort_class: int = -1  # the FC-only view's class; -1: the predicted one

    def layers(self) -> list[str]:
        return list(dict.fromkeys(n for n in (self.conv_a, self.conv_b, self.fc) if n))


def layer_items(store) -> tuple[list[str], list[str]]:
    """(conv layers, linear layers) of a store, in network order."""
    convs = [n for n, info in store.layers.items() if len(info.act_shape) == 3]
    fcs = [n for n, info in store.layers.items() if info.kind == "linear"]
    return convs, fcs


class Dashboard:
    """Builds dashboard frames for one store with its own copy of the store's model (the live
    thread's hooks never meet the pane's)."""

    def __init__(self, store, model):
        import copy

        self.store, self.model = store, copy.deepcopy(model).eval()
        self.pre = store.preprocess
        self.names = store.class_names or [str(k) for k in range(int(store.plan.n_outputs or 0))]
        self._weights: dict[str, tuple] = {}

    def defaults(self) -> Choices:
        convs, fcs = layer_items(self.store)
        return Choices(
            conv_a=convs[0] if convs else None,
            conv_b=convs[1] if len(convs) > 1 else (convs[0] if convs else None),
            fc=fcs[0] if fcs else None,
        )

    # ------------------------------------------------------------------ the two sources
    def from_frame(self, rgb: np.ndarray, ch: Choices, caption: str) -> DashboardFrame:
        """A live frame: the model runs on it now (nothing is written)."""
        res = run_model(self.model, self.pre, ch.layers(), rgb)
        return self._frame(res, ch, caption, label=-1)

    def from_store(self, i: int, ch: Choices) -> DashboardFrame:
        """Stored image ``i``: its stored input and activations (the model runs on the stored
        input for a layer the store does not keep)."""
        from volviz.sources.images import read_image

        st = self.store
        x = st.read_input(i)
        act, missing = {}, []
        for name in ch.layers():
            if st.has("activation", name):
                act[name] = st.read("activation", name, i)
            else:
                missing.append(name)
        if missing:
            import torch

            from volviz.capture.engine import capture_batch

            res = capture_batch(self.model, torch.from_numpy(np.asarray(x, np.float32))[None], missing, gradients=False)
            act.update({k: v[0] for k, v in res.act.items()})
        try:
            source = read_image(st.images[i])  # the image as the capture found it
        except Exception:  # noqa: BLE001 - moved or deleted since: the model's input then
            source = None
        label = int(st.column("label")[i])
        res = LiveResult(source, x, st.column("probs")[i], act)
        rec = st.images[i]
        truth = f"  true {self._name(label)}" if label >= 0 else ""
        return self._frame(res, ch, f"image {i} ({rec.id}){truth}", label=label)

    # ------------------------------------------------------------------ the picture's data
    def _name(self, c: int) -> str:
        return self.names[c] if 0 <= c < len(self.names) else str(c)

    def _frame(self, res: LiveResult, ch: Choices, caption: str, label: int) -> DashboardFrame:
        crop = input_rgb(res.x)
        if res.source is None:
            source, box = crop, None
        else:
            source = res.source[:, :, :3] if res.source.shape[2] >= 3 else np.repeat(res.source[:, :, :1], 3, 2)
            box = crop_box(self.pre, *source.shape[:2])
        probs = np.asarray(res.probs, np.float64)
        pred = int(np.argmax(probs))
        panels = [
            LayerPanel(n, res.act[n], s, r, c)
            for n, s, r, c in ((ch.conv_a, ch.sel_a, ch.rows_a, ch.cmap_a), (ch.conv_b, ch.sel_b, ch.rows_b, ch.cmap_b))
            if n
        ]
        fc = LayerPanel(ch.fc, res.act[ch.fc], ch.sel_fc, ch.rows_fc, ch.cmap_fc) if ch.fc else None
        frame = DashboardFrame(
            source,
            box,
            crop,
            probs,
            self.names,
            label=label,
            caption=f"{caption}  predicted {self._name(pred)} ({probs[pred] * 100:.1f}%)",
            convs=panels,
            fc=fc,
            view=ch.view,
        )
        if ch.view == "fc" and ch.fc:
            frame.sorted = self._sorted(res.act[ch.fc], ch, pred, frame.notes)
        return frame

    def _sorted(self, act, ch: Choices, pred: int, notes: list[str]):
        """[Tamari2017] §4.2's FC-only view, as the Sorted panel draws it."""
        if ch.fc not in self._weights:
            try:
                w, how = class_weights(self.model, self.store.layers, ch.fc, len(self.names))
                self._weights[ch.fc] = (w, how, relu_follows(self.model, ch.fc))
            except ValueError as exc:
                self._weights[ch.fc] = (None, str(exc), False)
        w, how, relu = self._weights[ch.fc]
        if w is None:
            notes.append(how)
            return None
        cls = pred if ch.sort_class is None or ch.sort_class < 0 or ch.sort_class >= w.shape[0] else ch.sort_class
        vec = np.asarray(act, np.float32).ravel()
        if relu:
            vec = np.maximum(vec, 0)
        img, _, means = sorted_neurons(vec, w[cls])
        fin = means[np.isfinite(means)]
        title = (
            f"{ch.fc}{' after ReLU' if relu else ''}: {vec.size} neurons sorted by weight to class "
            f"{self._name(cls)}{how}; right: row averages ({fin[0]:.3g} top row, {fin[-1]:.3g} bottom)"
        )
        return img, title
