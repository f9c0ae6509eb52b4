"""Image operations of the optimization loop, all batched with per-element settings.

Every function takes a batch ``x (B, C, H, W)`` and per-element parameters (a ``(B,)`` tensor or
a ``(B, 2)`` shift table), so one batch can hold many units and, during the random search, many
regularization settings at once. Nothing here loops over batch elements.

* :func:`jitter`: circular shift by a different ``(dy, dx)`` per element (differentiable; it sits
  between the image and the network, as in J. Johnson's cnn-vis and Yosinski et al.).
* :func:`gaussian_blur`: separable Gaussian blur with a sigma per element (reflect padding).
* :func:`blurred_noise`: the start images, Gaussian noise blurred and rescaled to a given std.
* :func:`element_rngs`: one numpy generator per (seed, unit) so that every random number an
  element sees depends only on its own seed and unit, never on which batch it runs in.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["element_rngs", "jitter", "jitter_table", "gaussian_blur", "blurred_noise"]

_SALT = 0x5EED


def element_rngs(seeds, units) -> list[np.random.Generator]:
    """One generator per batch element, seeded by ``(seed, unit)`` only.

    This is what makes a batched run equal to running each unit alone with the same seed, and a
    resumed run equal to an uninterrupted one: no random number depends on the batch layout.
    (One short Python call per element at start-up; the optimization itself never loops.)
    """
    return [np.random.default_rng([int(s), int(u), _SALT]) for s, u in zip(seeds, units)]


def jitter_table(rngs: list[np.random.Generator], steps: int, amount) -> torch.Tensor:
    """``(steps, B, 2)`` integer shifts, uniform in ``[-amount_b, amount_b]`` for element b.

    Each element draws ``steps x 2`` uniforms from its own generator, so the table of one element
    does not change with the batch it is in; ``amount`` only scales them.
    """
    amount = np.broadcast_to(np.asarray(amount, dtype=np.int64), (len(rngs),))
    u = np.stack([r.random((steps, 2)) for r in rngs], axis=1)  # (steps, B, 2)
    span = (2 * amount + 1)[None, :, None]
    shifts = np.floor(u * span).astype(np.int64) - amount[None, :, None]
    return torch.from_numpy(shifts)


def jitter(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Roll each element by its own ``shifts[b] = (dy, dx)`` (circular, like ``np.roll``)."""
    b, c, h, w = x.shape
    dev = x.device
    iy = (torch.arange(h, device=dev)[None, :] - shifts[:, :1].to(dev)) % h  # (B, H)
    ix = (torch.arange(w, device=dev)[None, :] - shifts[:, 1:].to(dev)) % w  # (B, W)
    x = x.gather(2, iy[:, None, :, None].expand(b, c, h, w))
    return x.gather(3, ix[:, None, None, :].expand(b, c, h, w))


def _kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """``(B, 2r+1)`` normalized 1-D Gaussians; sigma <= 0 gives the identity kernel."""
    t = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    s = sigma.float().clamp_min(1e-6)[:, None]
    k = torch.exp(-0.5 * (t[None, :] / s) ** 2)
    ident = (t == 0).float()[None, :].expand_as(k)
    k = torch.where(sigma[:, None] > 0, k, ident)
    return k / k.sum(1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma, max_sigma: float | None = None) -> torch.Tensor:
    """Blur each element with its own sigma (pixels); separable, reflect padding at the border.

    ``sigma`` is a float or a ``(B,)`` tensor; 0 leaves an element unchanged. ``max_sigma`` (the
    largest sigma, known to the caller) spares a device synchronization on the GPU.
    """
    b, c, h, w = x.shape
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(b)
    smax = float(sigma.max()) if max_sigma is None else float(max_sigma)
    if smax <= 0:
        return x
    radius = max(1, min(int(math.ceil(3 * smax)), (min(h, w) - 1)))
    k = _kernels(sigma, radius).to(x.dtype)  # (B, K)
    k = k.repeat_interleave(c, dim=0)  # (B*C, K)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=b * c)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=b * c)
    return y.reshape(b, c, h, w)


def blurred_noise(
    rngs: list[np.random.Generator], shape: tuple[int, int, int], std: float = 0.1, sigma: float = 1.0
) -> torch.Tensor:
    """``(B, C, H, W)`` Gaussian noise from each element's generator, blurred with ``sigma``
    pixels, then rescaled so that every element has standard deviation ``std`` again (the blur
    alone would shrink it by a size-dependent factor)."""
    z = torch.from_numpy(np.stack([r.standard_normal(shape) for r in rngs]).astype(np.float32))
    if sigma > 0:
        z = gaussian_blur(z, sigma)
    z = z - z.mean(dim=(1, 2, 3), keepdim=True)
    sd = z.flatten(1).std(1).clamp_min(1e-8)
    return z * (std / sd)[:, None, None, None]
