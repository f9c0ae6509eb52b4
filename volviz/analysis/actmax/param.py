"""How the optimized image is parameterized: plain pixels, or a decorrelated Fourier spectrum.

Both hold a whole batch ``(B, C, H, W)`` of independent images and work in *pixel space*: the
model's input before its normalization, ``[0, 1]`` per channel for images read from files (the
store's ``input`` array holds exactly these). The optimizer normalizes with the model's mean/std.

* :class:`PixelImage`: the pixels are the parameters (Yosinski et al., cnn-vis). L2 decay pulls
  them toward ``centre`` (the mean pixel of the real images), clipping keeps them in ``[lo, hi]``,
  periodic blur is a spatial Gaussian blur.
* :class:`FourierImage`: the parameters are the real FFT coefficients of a logit image, scaled by
  ``1 / f`` (Olah et al., lucid/lucent), mixed across channels by the square root of the channels'
  covariance, then squashed with a sigmoid into ``(0, 1)``. Unlike lucent, the ``1 / f`` scale is
  normalized to unit RMS, so an optimizer step changes the image by about as much at 28 x 28 as at
  224 x 224 (lucent's unnormalized scale is one reason its small images differ, lucent #10). Decay
  shrinks the spectrum, blur multiplies it by the Gaussian's transfer function, clipping is not
  needed.

Both can start from any pixel image (noise or a mean image): :class:`FourierImage` inverts its own
mapping at construction.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from volviz.analysis.actmax.transforms import gaussian_blur

__all__ = ["PARAM_KINDS", "ImageParam", "PixelImage", "FourierImage", "colour_matrix", "make_param"]

PARAM_KINDS = ("pixel", "fourier")

# lucid's colour correlation of ImageNet (square root of the RGB covariance, via SVD)
_IMAGENET_SQRT_COV = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float64)


def colour_matrix(channels: int, cov: np.ndarray | None = None) -> np.ndarray:
    """``(C, C)`` matrix that maps decorrelated channels to the image's channels.

    ``cov``: the channel covariance of real images (any C); its symmetric square root is used.
    Without it: lucid's ImageNet matrix for C = 3, the identity otherwise. Columns are scaled so
    the largest has unit norm (as lucid does), so the matrix changes colour, not contrast.
    """
    if cov is not None:
        cov = np.asarray(cov, dtype=np.float64).reshape(channels, channels)
        evals, evecs = np.linalg.eigh(cov + 1e-4 * np.trace(cov) / channels * np.eye(channels) + 1e-8)
        m = evecs @ np.diag(np.sqrt(np.clip(evals, 0, None))) @ evecs.T
    elif channels == 3:
        m = _IMAGENET_SQRT_COV
    else:
        m = np.eye(channels)
    return (m / np.linalg.norm(m, axis=0).max()).astype(np.float32)


def _per_channel(v, c: int, device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(v, dtype=np.float32), device=device).reshape(-1)
    return (t.expand(c) if t.numel() == 1 else t).reshape(1, c, 1, 1)


class ImageParam:
    """A batch of images as optimizable parameters."""

    params: list[torch.Tensor]

    def image(self) -> torch.Tensor:
        """``(B, C, H, W)`` float32 pixel images (differentiable w.r.t. ``params``)."""
        raise NotImplementedError

    def decay(self, rate: torch.Tensor) -> None:
        """L2 decay toward the centre: ``x <- c + (1 - rate_b) (x - c)``."""
        raise NotImplementedError

    def blur(self, sigma: torch.Tensor, max_sigma: float) -> None:
        """Gaussian blur with ``sigma_b`` pixels (0 = leave element b alone)."""
        raise NotImplementedError

    def clip(self) -> None:
        """Keep pixels in range (a no-op where the parameterization bounds them already)."""


class PixelImage(ImageParam):
    def __init__(self, init: torch.Tensor, centre, lo=0.0, hi=1.0, clip: bool = True):
        b, c, h, w = init.shape
        self.x = init.detach().clone().float().requires_grad_(True)
        self.params = [self.x]
        self.centre = _per_channel(centre, c, init.device)
        self.lo, self.hi = _per_channel(lo, c, init.device), _per_channel(hi, c, init.device)
        self._clip = clip
        self.clip()

    def image(self) -> torch.Tensor:
        return self.x

    @torch.no_grad()
    def decay(self, rate: torch.Tensor) -> None:
        self.x.sub_(rate.view(-1, 1, 1, 1) * (self.x - self.centre))

    @torch.no_grad()
    def blur(self, sigma: torch.Tensor, max_sigma: float) -> None:
        self.x.copy_(gaussian_blur(self.x, sigma, max_sigma))

    @torch.no_grad()
    def clip(self) -> None:
        if self._clip:
            self.x.copy_(torch.maximum(torch.minimum(self.x, self.hi), self.lo))


def _radial_freqs(h: int, w: int) -> np.ndarray:
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)  # (H, W//2+1) cycles per pixel


class FourierImage(ImageParam):
    def __init__(self, init: torch.Tensor, centre, colour: np.ndarray | None = None, decay_power: float = 1.0):
        b, c, h, w = init.shape
        dev = init.device
        self.shape = (h, w)
        f = _radial_freqs(h, w)
        scale = 1.0 / np.maximum(f, 1.0 / max(h, w)) ** decay_power
        # unit RMS over the full spectrum (rfft columns 1..W/2-1 stand for two coefficients)
        weight = np.full(f.shape, 2.0)
        weight[:, 0] = 1.0
        if w % 2 == 0:
            weight[:, -1] = 1.0
        scale = scale / math.sqrt((weight * scale**2).sum() / (h * w))
        self.scale = torch.tensor(scale, dtype=torch.float32, device=dev)[None, None]
        self.freq2 = torch.tensor(f**2, dtype=torch.float32, device=dev)[None, None]
        col = colour_matrix(c) if colour is None else np.asarray(colour, dtype=np.float32)
        self.colour = torch.tensor(col, device=dev)
        self.colour_inv = torch.tensor(np.linalg.pinv(col.astype(np.float64)).astype(np.float32), device=dev)
        cen = _per_channel(centre, c, dev).clamp(1e-3, 1 - 1e-3)
        self.offset = torch.log(cen) - torch.log1p(-cen)  # logit(centre)
        with torch.no_grad():
            p = init.float().clamp(1e-3, 1 - 1e-3)
            z = torch.log(p) - torch.log1p(-p) - self.offset
            z = torch.einsum("ij,bjhw->bihw", self.colour_inv, z)
            spec = torch.fft.rfft2(z, norm="ortho") / self.scale
        self.spectrum = torch.view_as_real(spec).contiguous().requires_grad_(True)
        self.params = [self.spectrum]

    def image(self) -> torch.Tensor:
        spec = torch.view_as_complex(self.spectrum) * self.scale
        z = torch.fft.irfft2(spec, s=self.shape, norm="ortho")
        z = torch.einsum("ij,bjhw->bihw", self.colour, z)
        return torch.sigmoid(z + self.offset)

    @torch.no_grad()
    def decay(self, rate: torch.Tensor) -> None:
        self.spectrum.mul_((1 - rate).view(-1, 1, 1, 1, 1))

    @torch.no_grad()
    def blur(self, sigma: torch.Tensor, max_sigma: float) -> None:
        # the Gaussian's transfer function exp(-2 pi^2 sigma^2 f^2) (a circular blur)
        g = torch.exp(-2 * math.pi**2 * sigma.view(-1, 1, 1, 1) ** 2 * self.freq2)
        self.spectrum.mul_(g[..., None])


def make_param(
    kind: str, init: torch.Tensor, *, centre, lo=0.0, hi=1.0, clip: bool = True, colour: np.ndarray | None = None
) -> ImageParam:
    """``kind``: ``pixel`` or ``fourier``; ``init``: ``(B, C, H, W)`` start images in pixel space."""
    if kind == "pixel":
        return PixelImage(init, centre, lo, hi, clip)
    if kind == "fourier":
        return FourierImage(init, centre, colour)
    raise ValueError(f"unknown image parameterization {kind!r}; valid: {', '.join(PARAM_KINDS)}")
