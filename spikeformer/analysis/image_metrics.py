"""Image-quality metrics of reconstructions: PSNR and SSIM as scikit-image computes them, on torch tensors.

The spike-camera papers (SpikeFormer, Spk2ImgNet, spikezoo) score with ``skimage.metrics.peak_signal_noise_ratio``
and ``structural_similarity`` at their defaults, on uint8 images, per image, then average. These functions give the
same numbers (checked against scikit-image to 1e-10 in tests/analysis/test_image_metrics.py) without depending on it:

* PSNR: ``10 log10(data_range**2 / MSE)`` in float64;
* SSIM (Wang et al. 2004, Eq. 13) with scikit-image's defaults: a 7x7 uniform window, sample covariances
  (``N / (N - 1)``), ``K1 = 0.01``, ``K2 = 0.03``, averaged over the positions whose window lies inside the image.

:func:`to_uint8` converts an image in [lo, hi] as the official evaluation does: clamp, map to [0, 255], truncate.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SpikeformerError


def _tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def to_uint8(img, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """``img`` with values in [lo, hi] -> uint8 [0, 255]: clamped, ``(img - lo) / (hi - lo) * 255`` in the image's
    float precision, then truncated, as SpikeFormer's evaluation turns its [-1, 1] output into pixels."""
    x = _tensor(img)
    x = x.float() if not x.is_floating_point() else x
    return ((x.clamp(lo, hi) - lo) / (hi - lo) * 255.0).to(torch.uint8)


def _pair(pred, target, data_range: Optional[float]) -> tuple[torch.Tensor, torch.Tensor, float]:
    p, t = _tensor(pred), _tensor(target)
    if p.shape != t.shape:
        raise SpikeformerError(f"images to compare differ in shape: {tuple(p.shape)} and {tuple(t.shape)}")
    if p.dim() < 2:
        raise SpikeformerError(f"images must be at least [H, W]; got shape {tuple(p.shape)}")
    if data_range is None:
        data_range = 255.0 if p.dtype == torch.uint8 and t.dtype == torch.uint8 else 1.0
    return p.double(), t.double(), float(data_range)


def psnr(pred, target, data_range: Optional[float] = None) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of every image ``[..., H, W]`` (float64, shape ``[...]``); ``data_range``
    defaults to 255 for uint8 images and 1 otherwise. Identical images give ``inf``."""
    p, t, r = _pair(pred, target, data_range)
    mse = (p - t).pow(2).mean(dim=(-2, -1))
    return 10 * torch.log10(r * r / mse)


def ssim(pred, target, data_range: Optional[float] = None, win_size: int = 7) -> torch.Tensor:
    """Mean structural similarity of every image ``[..., H, W]`` (float64, shape ``[...]``), scikit-image's
    ``structural_similarity`` at its defaults; ``data_range`` defaults to 255 for uint8 images and 1 otherwise."""
    p, t, r = _pair(pred, target, data_range)
    H, W = p.shape[-2:]
    if win_size % 2 == 0 or min(H, W) < win_size:
        raise SpikeformerError(f"SSIM needs images of at least {win_size}x{win_size} and an odd window; "
                               f"got {H}x{W}, window {win_size}")
    lead = p.shape[:-2]
    p, t = p.reshape(-1, 1, H, W), t.reshape(-1, 1, H, W)
    # scikit-image filters the whole image, then drops a (win_size - 1) / 2 border before averaging: exactly the
    # positions a 'valid' window average covers
    mean = lambda z: F.avg_pool2d(z, win_size, stride=1)  # noqa: E731
    n = win_size * win_size
    cov_norm = n / (n - 1)
    ux, uy = mean(p), mean(t)
    vx = cov_norm * (mean(p * p) - ux * ux)
    vy = cov_norm * (mean(t * t) - uy * uy)
    vxy = cov_norm * (mean(p * t) - ux * uy)
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(-3, -2, -1)).reshape(lead)
