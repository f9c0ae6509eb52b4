"""Turn a decoded image into the tensor a model expects: channels, size, normalization.

Two ways to reach the input size: ``resize`` (plain, may distort the aspect ratio) and
``scale_crop`` (seed 000: scale the smaller side up to the input size keeping the aspect ratio,
then take the centre crop).
"""
from __future__ import annotations

from volviz.errors import ChannelError  # noqa: F401  (re-exported)
from dataclasses import dataclass, asdict

import numpy as np
import torch
import torch.nn.functional as F

MODES = ("resize", "scale_crop")




@dataclass(frozen=True)
class Preprocess:
    size: tuple[int, int]                 # (H, W)
    channels: int = 3
    mean: tuple[float, ...] | None = None  # per channel, on [0, 1] pixel values
    std: tuple[float, ...] | None = None
    mode: str = "resize"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown preprocessing mode {self.mode!r}; valid: {', '.join(MODES)}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and len(v) not in (1, self.channels):
                raise ValueError(f"{name} has {len(v)} values for {self.channels} channels")

    def to_dict(self) -> dict:
        return asdict(self)

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
        raise ChannelError(f"image has {c} channels, the model expects {self.channels}; "
                           "only grey<->RGB(A) conversions are automatic")

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        a = self.convert_channels(img)
        x = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]  # 1xCxHxW
        H, W = self.size
        h, w = x.shape[-2:]
        if self.mode == "resize":
            if (h, w) != (H, W):
                x = F.interpolate(x, size=(H, W), mode="bilinear", antialias=True, align_corners=False)
        else:
            scale = max(H / h, W / w)
            nh, nw = max(H, round(h * scale)), max(W, round(w * scale))
            if (nh, nw) != (h, w):
                x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
            top, left = (nh - H) // 2, (nw - W) // 2
            x = x[:, :, top:top + H, left:left + W]
        x = x[0].clamp(0, 1)
        if self.mean is not None:
            x = x - torch.tensor(self.mean, dtype=x.dtype).view(-1, 1, 1)
        if self.std is not None:
            x = x / torch.tensor(self.std, dtype=x.dtype).view(-1, 1, 1)
        return x.contiguous()
