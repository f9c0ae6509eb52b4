"""Turn a decoded image into the tensor a model expects: channels, size, normalization.

Three ways to reach the input size:

* ``resize``: plain, may distort the aspect ratio;
* ``scale_crop`` ([PreferredInputs2016]): scale the smaller side up to the input size keeping the aspect ratio,
  then take the centre crop;
* ``resize_crop``: torchvision's ImageNet evaluation transform, ``Resize(short_side)`` (shorter side
  to ``short_side``, aspect kept) then ``CenterCrop(size)``, as in Krizhevsky et al. (2012) and He
  et al. (2016). ``short_side`` None means ``size / 0.875`` (224 -> 256).

The crop modes never scale an image of extreme aspect ratio whole: when the scaled image would
be much larger than the crop, the crop box is cut from the source first and only it is scaled
(a 2000x1 strip at 224 would otherwise become 448000x224 floats).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from volviz.errors import ChannelError  # noqa: F401  (re-exported)

MODES = ("resize", "scale_crop", "resize_crop")
CROP_RATIO = 0.875  # crop / short side of the classic ImageNet evaluation (224 / 256)
EXACT_AREA = 16  # scale the whole image only while it stays within 16 crops' area


def _interp(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


@dataclass(frozen=True)
class Preprocess:
    size: tuple[int, int]  # (H, W)
    channels: int = 3
    mean: tuple[float, ...] | None = None  # per channel, on [0, 1] pixel values
    std: tuple[float, ...] | None = None
    mode: str = "resize"
    short_side: int | None = None  # resize_crop only: the shorter side before the crop

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown preprocessing mode {self.mode!r}; valid: {', '.join(MODES)}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and len(v) not in (1, self.channels):
                raise ValueError(f"{name} has {len(v)} values for {self.channels} channels")
        if self.short_side is not None and self.short_side < max(self.size):
            raise ValueError(
                f"short_side {self.short_side} is smaller than the crop {tuple(self.size)}; "
                "the shorter side must be at least the crop size"
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["short_side"] is None:  # stores written before resize_crop have no such key
            del d["short_side"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        """From ``to_dict`` output, old (without ``short_side``) or newer (unknown keys ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: (tuple(v) if k in ("size", "mean", "std") and v is not None else v) for k, v in d.items() if k in known}
        return cls(**d)

    def with_overrides(self, *, size=None, channels=None, mean=None, std=None, mode=None) -> Preprocess:
        """This preset with the user's options on top (None keeps the preset's). A new ``size``
        in ``resize_crop`` keeps the preset's short-side / crop ratio (256/224 at 112 -> 128)."""
        size = tuple(size) if size is not None else self.size
        mode = mode or self.mode
        short = None
        if mode == "resize_crop":
            ratio = (
                (self.short_side / max(self.size)) if self.short_side and self.mode == "resize_crop" else 1 / CROP_RATIO
            )
            short = max(max(size), round(max(size) * ratio))
        return dataclasses.replace(
            self,
            size=size,
            channels=channels or self.channels,
            mean=tuple(mean) if mean is not None else self.mean,
            std=tuple(std) if std is not None else self.std,
            mode=mode,
            short_side=short,
        )

    def convert_channels(self, img: np.ndarray) -> np.ndarray:
        """uint8 HxWxC -> float32 HxWxchannels on [0, 1]."""
        a = img.astype(np.float32) / 255.0
        c = a.shape[2]
        if c == 4 and self.channels != 4:
            a, c = a[:, :, :3], 3  # drop alpha
        if c == 2 and self.channels != 2:
            a, c = a[:, :, :1], 1  # grey + alpha
        if c == self.channels:
            return a
        if self.channels == 1 and c == 3:
            return (a @ np.array([0.299, 0.587, 0.114], np.float32))[:, :, None]
        if c == 1:
            return np.repeat(a, self.channels, axis=2)
        raise ChannelError(
            f"image has {c} channels, the model expects {self.channels}; only grey<->RGB(A) conversions are automatic"
        )

    def _geometry(self, h: int, w: int) -> tuple[tuple[int, int], int, int]:
        """(scaled size, crop top, crop left) in scaled coordinates, as torchvision rounds them."""
        H, W = self.size
        if self.mode == "scale_crop":
            scale = max(H / h, W / w)
            nh, nw = max(H, round(h * scale)), max(W, round(w * scale))
            return (nh, nw), (nh - H) // 2, (nw - W) // 2
        short = self.short_side or max(max(H, W), round(max(H, W) / CROP_RATIO))
        if h <= w:
            nh, nw = short, max(W, int(short * w / h))
        else:
            nh, nw = max(H, int(short * h / w)), short
        return (nh, nw), int(round((nh - H) / 2.0)), int(round((nw - W) / 2.0))

    def _to_tensor(self, img: np.ndarray) -> torch.Tensor:
        a = self.convert_channels(img)
        return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]  # 1xCxHxW

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        H, W = self.size
        h, w = img.shape[:2]
        if self.mode == "resize":
            x = _interp(self._to_tensor(img), (H, W))
        else:
            (nh, nw), top, left = self._geometry(h, w)
            if nh * nw <= EXACT_AREA * H * W:  # scale the whole image, then crop: torchvision's order
                x = _interp(self._to_tensor(img), (nh, nw))[:, :, top : top + H, left : left + W]
            else:  # the crop box, scaled back to the source, is cut first; only it is scaled
                sy, sx = h / nh, w / nw
                bh, bw = min(h, max(1, round(H * sy))), min(w, max(1, round(W * sx)))
                t = min(h - bh, max(0, math.floor(top * sy + 0.5)))
                l_ = min(w - bw, max(0, math.floor(left * sx + 0.5)))
                x = _interp(self._to_tensor(img[t : t + bh, l_ : l_ + bw]), (H, W))
        x = x[0].clamp(0, 1)
        if self.mean is not None:
            x = x - torch.tensor(self.mean, dtype=x.dtype).view(-1, 1, 1)
        if self.std is not None:
            x = x / torch.tensor(self.std, dtype=x.dtype).view(-1, 1, 1)
        return x.contiguous()
