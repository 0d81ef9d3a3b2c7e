"""Max-pooling 3x3, stride 2, padding 1 of frames ``[N, C, H, W]`` (Spikformer's stem), in PyTorch: the reference
of the max-pool operation and its fallback."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def max_pool(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 3, 2, 1)``."""
    return F.max_pool2d(x, 3, 2, 1)
