"""The embedded default: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), no download.

Split: stratified, 80 % train / 20 % test (1,437 / 360 images) with ``random_state=0`` (sklearn
``train_test_split``); fixed, so every run and every paper-style comparison sees the same held-out images.
Images (0..16 grey levels) are scaled to [0, 1], upsampled to 16x16 (bilinear, align_corners=False) and
normalised with the training split's mean and std, giving a 1x16x16 input a small Spikformer handles well.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from .registry import register_dataset

SPLIT_SEED = 0
TEST_FRACTION = 0.2
SIZE = 16


def digits_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The raw 8x8 images in [0, 1] (float32, [N, 8, 8]) and labels of one split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, d.target, test_size=TEST_FRACTION, stratify=d.target, random_state=SPLIT_SEED
    )
    return (x_tr, y_tr) if split == "train" else (x_te, y_te)


def _upsample(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x).unsqueeze(1)
    return F.interpolate(t, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


@register_dataset("digits", num_classes=10, input_size=(1, SIZE, SIZE), needs_root=False,
                  description="scikit-learn digits, 1x16x16, embedded (no download)",
                  default_model="spikformer_digits_1_64")
def build_digits(split: str, root=None, T=None) -> TensorDataset:
    x, y = digits_arrays(split)
    train = _upsample(digits_arrays("train")[0])
    mean, std = train.mean(), train.std()
    return TensorDataset((_upsample(x) - mean) / std, torch.from_numpy(y).long())
