"""BatchNorm over the channel (last) dimension of token tensors ``[..., C]``."""

from __future__ import annotations

import torch
from torch import nn


class TokenBN(nn.BatchNorm1d):
    """BatchNorm1d applied to channel-last tokens ``[..., C]``.

    Statistics are taken over every leading dimension (T, B and tokens), which is what the official models' BN1d
    on ``[T*B, C, N]`` computes; the parameter and buffer names are those of ``nn.BatchNorm1d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return super().forward(x.reshape(-1, shape[-1])).reshape(shape)
