"""BatchNorm over the channel (last) dimension of token tensors ``[..., C]``."""

from __future__ import annotations

import torch
from torch import nn

from .numerics import NumericsAware


class TokenBN(NumericsAware, nn.BatchNorm1d):
    """BatchNorm1d applied to channel-last tokens ``[..., C]``.

    Statistics are taken over every leading dimension (T, B and tokens), which is what the official models' BN1d
    on ``[T*B, C, N]`` computes; the parameter and buffer names are those of ``nn.BatchNorm1d``.

    ``transposed=True`` normalises the ``[M, C, N]`` transposed view instead of the flat ``[M*N, C]`` tensor (``N`` =
    the second-to-last dim): the same statistics, but PyTorch's CPU kernel then rounds exactly as code that applies
    BatchNorm1d to ``x.transpose(-1, -2)`` does (Spikformer's official CIFAR model). A one-ulp difference can flip
    a spike, so bit-exact agreement with that code needs the same kernel path. Only fp32 outside the fast mode
    takes it: for bf16/fp16 input (autocast) there is no bit-exact reference, and ``numerics='fast'`` (the
    default, :mod:`spikeformer.layers.numerics`) trades those bits for
    speed; both take the flat view, whose kernel is vectorised (on ``[8192, 1536]`` tokens, forward + backward:
    3x faster in fp32, 9x in bf16, on the benchmark machine).
    """

    def __init__(self, num_features: int, *args, transposed: bool = False, **kwargs):
        super().__init__(num_features, *args, **kwargs)
        self.transposed = transposed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if self.transposed and not self.fast and x.dtype not in (torch.bfloat16, torch.float16):
            y = super().forward(x.reshape(-1, shape[-2], shape[-1]).transpose(1, 2))
            return y.transpose(1, 2).reshape(shape)
        return super().forward(x.reshape(-1, shape[-1])).reshape(shape)
