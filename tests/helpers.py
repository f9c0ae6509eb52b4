"""Tiny models and image folders for the tests (real layers, random or planted weights)."""

from __future__ import annotations

import pathlib

import numpy as np
import torch
from torch import nn


class TinyCNN(nn.Module):
    """Grey 12x12 input, a conv followed by an in-place ReLU (as in VGG), a residual branch, two linears."""

    def __init__(self, n_classes: int = 3, in_ch: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, 4, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.fc1 = nn.Linear(6 * 9, 8)
        self.relu2 = nn.ReLU()
        self.fc2 = nn.Linear(8, n_classes)

    def forward(self, x):
        h = self.relu1(self.conv1(x))
        h = h + torch.tanh(self.conv2(h))  # residual add
        h = self.pool(torch.relu(self.conv3(h)))
        return self.fc2(self.relu2(self.fc1(h.flatten(1))))


class SmallMapCNN(nn.Module):
    """Convs on maps small enough that their inputs have fewer values than their weights (a store
    keeps such a conv's input in place of its weight gradient)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(3)
        self.conv2 = nn.Conv2d(4, 16, 3, padding=1, padding_mode="reflect")
        self.conv3 = nn.Conv2d(16, 16, 3, stride=2, padding=2, dilation=2, groups=4)
        self.fc = nn.Linear(16 * 2 * 2, 3)

    def forward(self, x):
        h = self.pool(torch.relu_(self.conv1(x)))
        h = torch.relu_(self.conv2(h))
        return self.fc(torch.tanh(self.conv3(h)).flatten(1))


def small_map_cnn() -> nn.Module:
    torch.manual_seed(0)
    return SmallMapCNN()


class NoConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(144, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN()


def tiny_rgb_cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN(in_ch=3)


def no_conv() -> nn.Module:
    return NoConv()


def write_image_folder(
    root: pathlib.Path, n_per_class: int = 4, classes=("a", "b", "c"), size=(12, 12), rgb: bool = False, seed: int = 0
) -> pathlib.Path:
    import imageio.v3 as iio

    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = rng.integers(0, 255, size=(*size, 3) if rgb else size, dtype=np.uint8)
            img[..., : size[1] // (k + 2)] = 255  # class-dependent stripe
            iio.imwrite(d / f"{c}_{i}.png", img)
    return root


def capture_tiny_store(
    root: pathlib.Path, n_per_class: int = 2, *, rgb: bool = False, grads: bool = True, out: str = "s"
) -> pathlib.Path:
    """``volviz capture`` of the tiny CNN (``rgb``: its 3-channel twin) on a 3-class image folder,
    through the CLI: root/out."""
    from volviz.cli import main

    imgs = write_image_folder(root / "imgs", n_per_class=n_per_class, rgb=rgb)
    model, channels = ("helpers:tiny_rgb_cnn", "3") if rgb else ("helpers:tiny_cnn", "1")
    argv = ["capture", "--out", str(root / out), "--images", str(imgs), "--model", model]
    argv += ["--size", "12", "12", "--channels", channels] + ([] if grads else ["--no-grads"])
    assert main(argv) == 0
    return root / out
