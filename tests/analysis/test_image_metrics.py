"""PSNR and SSIM equal scikit-image's (the metric every spike-camera paper reports) to 1e-10; closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spikeformer.analysis.image_metrics import psnr, ssim, to_uint8
from spikeformer.errors import SpikeformerError


def _pairs():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 40, 52), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    smooth = np.clip(np.linspace(0, 255, 250 * 40).reshape(250, 40) + rng.normal(0, 5, (250, 40)), 0, 255)
    return a, b, smooth.astype(np.uint8)


def test_equal_to_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    a, b, s = _pairs()
    ours_p, ours_s = psnr(b, a), ssim(b, a)
    assert ours_p.shape == (3,) and ours_p.dtype == torch.float64
    for i in range(3):
        assert abs(ours_p[i].item() - metrics.peak_signal_noise_ratio(a[i], b[i])) < 1e-10
        assert abs(ours_s[i].item() - metrics.structural_similarity(b[i], a[i])) < 1e-10
    shifted = np.roll(s, 3, axis=0)
    assert abs(ssim(s, shifted).item() - metrics.structural_similarity(s, shifted)) < 1e-10
    f, g = a[0] / 255.0, b[0] / 255.0  # float images: data_range 1 here, stated explicitly to scikit-image
    assert abs(ssim(f, g).item() - metrics.structural_similarity(f, g, data_range=1.0)) < 1e-10
    assert abs(psnr(f, g).item() - metrics.peak_signal_noise_ratio(f, g, data_range=1.0)) < 1e-10


def test_closed_forms():
    x = torch.full((2, 1, 16, 16), 100, dtype=torch.uint8)
    y = x.clone()
    y[:, :, ::2] += 10  # half the pixels off by 10: MSE 50
    assert psnr(y, x).shape == (2, 1)
    assert psnr(y, x)[0, 0].item() == pytest.approx(10 * math.log10(255 ** 2 / 50), abs=1e-12)
    assert math.isinf(psnr(x, x)[0, 0].item())
    assert ssim(x, x).eq(1).all()
    with pytest.raises(SpikeformerError, match="differ in shape"):
        psnr(x, x[0])
    with pytest.raises(SpikeformerError, match="at least 7x7"):
        ssim(x[..., :5, :5], x[..., :5, :5])


def test_to_uint8_truncates_like_the_official_evaluation():
    y = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0])
    assert to_uint8(y, -1, 1).tolist() == [0, 0, 127, 191, 255, 255]  # (y + 1) / 2 * 255 = 127.5 -> 127
    official = ((y.clamp(-1, 1).numpy() + 1.0) / 2.0 * 255.0).astype(np.uint8)
    assert to_uint8(y, -1, 1).numpy().tolist() == official.tolist()
    assert to_uint8(torch.tensor([0.999])).item() == 254
