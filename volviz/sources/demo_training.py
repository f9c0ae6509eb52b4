"""Training the demo models: augmentation, the training loop (with hard-negative mining for
``faces``) and the files it writes (weights, metrics, test images).

Only ``volviz train-demo`` and the tests train; everything else loads the shipped weights
through :mod:`volviz.sources.demo`, so this module (and its tqdm import) stays out of their way.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from volviz.sources import demo
from volviz.sources.demo import DEMO_INFO, DemoInfo, build_demo_model, check_name
from volviz.sources.demo_data import (
    HELDOUT_PHOTOS,
    DemoSplit,
    digits_split,
    faces_split,
    write_test_images,
)

__all__ = ["train_demo"]


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

    check_name(name)
    info = DEMO_INFO[name]
    n_epochs = _DEFAULT_EPOCHS[name] if epochs is None else int(epochs)
    if n_epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    out = demo.DATA_DIR if out_dir is None else Path(out_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t_start = time.perf_counter()
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        split = digits_split(seed) if name == "digits" else faces_split(seed)
        model = build_demo_model(name)
        t_data = time.perf_counter()

        if name == "digits":
            aug = dict(
                flip=False,
                rot_deg=10.0,
                scale=(0.9, 1.1),
                shift=0.07,
                contrast=(1.0, 1.0),
                brightness=0.0,
                padding_mode="zeros",
            )
            batch, steps_per_epoch = 64, math.ceil(len(split.x_train) / 64)
            lr = 1e-3
        else:
            aug = dict(
                flip=True,
                rot_deg=10.0,
                scale=(0.9, 1.15),
                shift=0.06,
                contrast=(0.6, 1.4),
                brightness=0.2,
                padding_mode="border",
            )
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
        n_train = len(split.x_train) + sum(0 if t is None else len(t) for t in (split.extra_train, split.hard))

        pred = _predict(model, split.x_test, info)
        correct = (pred == split.y_test).float()
        per_class = {cls: round(float(correct[split.y_test == c].mean()), 4) for c, cls in enumerate(info.class_names)}
        export_acc = float(correct[torch.from_numpy(split.export)].mean())
        extra = {}
        if split.extra_test is not None:
            held = _predict(model, split.extra_test, info)
            extra = {
                "heldout_photos": list(HELDOUT_PHOTOS),
                "heldout_windows": int(len(held)),
                "heldout_window_nonface_accuracy": round(float((held == 1).float().mean()), 4),
                "hard_negatives_mined": int(n_mined),
            }

        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        torch.save(state, out / f"{name}.pt")
        n_png = write_test_images(name, split, info, out / name / "test")
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
def _mine_hard_negatives(model: nn.Module, split: DemoSplit, info: DemoInfo) -> int:
    """Bootstrapping as in classic face detectors: score fresh random crops of the training
    photos and keep the ones the model finds most face-like as extra non-faces. Returns the
    size of the hard-negative pool."""
    assert split.cropper is not None and split.rng is not None
    cand = split.cropper.random(_MINE_CANDIDATES, split.rng, lo=24, hi=200)
    model.eval()
    p_face = torch.cat(
        [torch.softmax(model(_normalize(cand[i : i + 500], info)), 1)[:, 0] for i in range(0, len(cand), 500)]
    )
    keep = cand[torch.argsort(p_face, descending=True)[:_MINE_KEEP]]
    split.hard = keep if split.hard is None else torch.cat([split.hard, keep])
    return len(split.hard)


def _faces_batch(split: DemoSplit, batch: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
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
    y = torch.cat([torch.zeros(n_face, dtype=torch.int64), torch.ones(batch - n_face, dtype=torch.int64)])
    return torch.cat(parts), y
