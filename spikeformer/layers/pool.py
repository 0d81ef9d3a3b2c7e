"""Max-pooling of channels-last frames with the compiled CPU kernel (``neurons/neuron_cpu.cpp``).

Spikformer's stem pools spike frames with a 3x3, stride-2, padding-1 max-pool. On channels-last frames PyTorch's CPU
kernel keeps the argmax as int64 (8 bytes per output, kept for backward) and zero-fills the input gradient in a
separate pass; the compiled kernel gives the same outputs and the same gradients bit for bit (first maximum in
window order; gradients summed in output order, rounded in the tensor's dtype after each addition), keeps the argmax
as one byte, and writes the input gradient in one pass. Anything it does not cover (other pool shapes, NCHW frames,
dtypes other than float32/bfloat16, no compiled kernel) runs the ``nn.MaxPool2d`` module itself.
"""

from __future__ import annotations

import torch

from ..neurons import _native
from ..neurons._native import _ptr, threads


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


class _NativeMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        N, C, H, W = x.shape
        Ho, Wo = (H - 1) // 2 + 1, (W - 1) // 2 + 1
        y = torch.empty((N, C, Ho, Wo), dtype=x.dtype, memory_format=torch.channels_last)
        idx = torch.empty((N, Ho, Wo, C), dtype=torch.uint8) if x.requires_grad else None  # argmax for backward
        _native.library().sf_maxpool_fwd(N, H, W, C, _ptr(x), int(x.dtype == torch.bfloat16), _ptr(y),
                                         _ptr(idx), threads())
        if idx is not None:
            ctx.save_for_backward(idx)
        ctx.in_shape = x.shape
        return y

    @staticmethod
    def backward(ctx, gy):
        (idx,) = ctx.saved_tensors
        N, C, H, W = ctx.in_shape
        gy = gy.contiguous(memory_format=torch.channels_last)
        gx = torch.empty((N, C, H, W), dtype=gy.dtype, memory_format=torch.channels_last)
        _native.library().sf_maxpool_bwd(N, H, W, C, _ptr(gy), int(gy.dtype == torch.bfloat16), _ptr(idx),
                                         _ptr(gx), threads())
        return gx


def max_pool(pool: torch.nn.MaxPool2d, x: torch.Tensor) -> torch.Tensor:
    """``pool(x)`` for frames ``[N, C, H, W]``, on the compiled kernel when it covers the call."""
    if _covered(pool, x):
        return _NativeMaxPool.apply(x)
    return pool(x)
