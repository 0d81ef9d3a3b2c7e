"""Max-pooling of channels-last frames with the compiled CPU kernel (``kernels/cpu/pool.cpp``).

Spikformer's stem pools spike frames with a 3x3, stride-2, padding-1 max-pool. On channels-last frames PyTorch's CPU
kernel keeps the argmax as int64 (8 bytes per output, kept for backward) and zero-fills the input gradient in a
separate pass; the compiled kernel gives the same outputs and the same gradients bit for bit (first maximum in
window order; gradients summed in output order, rounded in the tensor's dtype after each addition), keeps the argmax
as one byte, and writes the input gradient in one pass. Anything it does not cover (other pool shapes, NCHW frames,
dtypes other than float32/bfloat16, no compiled kernel) runs the ``nn.MaxPool2d`` module itself.
"""

from __future__ import annotations

import torch

from ..kernels.cpu.pool import NativeMaxPool
from ..neurons import _native


def _covered(pool: torch.nn.MaxPool2d, x: torch.Tensor) -> bool:
    def pair(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in (torch.float32, torch.bfloat16)
        and x.shape[1] > 1
        and x.is_contiguous(memory_format=torch.channels_last)
        and pair(pool.kernel_size) == (3, 3)
        and pair(pool.stride) == (2, 2)
        and pair(pool.padding) == (1, 1)
        and pair(pool.dilation) == (1, 1)
        and not pool.ceil_mode
        and not pool.return_indices
        and _native.library() is not None
    )


def max_pool(pool: torch.nn.MaxPool2d, x: torch.Tensor) -> torch.Tensor:
    """``pool(x)`` for frames ``[N, C, H, W]``, on the compiled kernel when it covers the call."""
    if _covered(pool, x):
        return NativeMaxPool.apply(x)
    return pool(x)
