"""The token-wise Linear in PyTorch: the reference of the linear operation and its fallback."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``x [..., in]``."""
    return F.linear(x, weight, bias)
