"""Binding of the compiled max-pool (``pool.cpp``): 3x3, stride 2, padding 1 on channels-last frames.

On channels-last frames PyTorch's CPU kernel keeps the argmax as int64 (8 bytes per output, kept for backward) and
zero-fills the input gradient in a separate pass; the compiled kernel gives the same outputs and the same gradients
bit for bit (first maximum in window order; gradients summed in output order, rounded in the tensor's dtype after
each addition), keeps the argmax as one byte, and writes the input gradient in one pass.
"""

from __future__ import annotations

import ctypes

import torch

from ..torch import pool as torch_pool
from . import bf16, build, ops
from .build import is_bf16, ptr, threads

_sig = (None, [ctypes.c_int64] * 4 + [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int])
build.declare(sf_maxpool_fwd=_sig, sf_maxpool_bwd=_sig)


def pool_forward(x: torch.Tensor, save_argmax: bool):
    """``(pooled channels-last frames, argmax as bytes [N, Ho, Wo, C] or None)``."""
    N, C, H, W = x.shape
    Ho, Wo = (H - 1) // 2 + 1, (W - 1) // 2 + 1
    y = torch.empty((N, C, Ho, Wo), dtype=x.dtype, memory_format=torch.channels_last)
    idx = torch.empty((N, Ho, Wo, C), dtype=torch.uint8) if save_argmax else None
    build.library().sf_maxpool_fwd(N, H, W, C, ptr(x), is_bf16(x), ptr(y), ptr(idx), threads())
    return y, idx


def pool_backward(gy: torch.Tensor, idx: torch.Tensor, in_shape) -> torch.Tensor:
    """The input gradient, channels-last ``in_shape``, from the output gradient and the argmax."""
    N, C, H, W = in_shape
    gy = gy.contiguous(memory_format=torch.channels_last)
    gx = torch.empty((N, C, H, W), dtype=gy.dtype, memory_format=torch.channels_last)
    build.library().sf_maxpool_bwd(N, H, W, C, ptr(gy), is_bf16(gy), ptr(idx), ptr(gx), threads())
    return gx


class MaxPoolFunction(torch.autograd.Function):
    """The max-pool of channels-last frames ``[N, C, H, W]``; output channels-last ``[N, C, Ho, Wo]``."""

    @staticmethod
    def forward(ctx, x):
        y, idx = pool_forward(x, x.requires_grad)  # the argmax only for backward
        if idx is not None:
            ctx.save_for_backward(idx)
        ctx.in_shape = x.shape
        return y

    @staticmethod
    @bf16.autocast_free
    def backward(ctx, gy):
        (idx,) = ctx.saved_tensors
        return pool_backward(gy, idx, ctx.in_shape)


class NativeMaxPool:
    """``NativeMaxPool.apply(x)``: :class:`MaxPoolFunction` in eager mode, the custom operator
    ``spikeformer::max_pool`` under ``torch.compile`` (the argmax kept only when autograd needs it)."""

    @staticmethod
    def apply(x):
        if torch.compiler.is_compiling():
            return ops.max_pool_op(x, torch.is_grad_enabled() and x.requires_grad)[0]
        return MaxPoolFunction.apply(x)


def supports(x: torch.Tensor) -> bool:
    """Whether the compiled kernel can pool ``x`` (else PyTorch's max-pool runs)."""
    return (x.device.type == "cpu" and x.dim() == 4 and x.dtype in (torch.float32, torch.bfloat16)
            and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last) and build.available())


def max_pool(x: torch.Tensor) -> torch.Tensor:
    """The max-pool operation on CPU (signature of ``kernels.torch.pool.max_pool``)."""
    return NativeMaxPool.apply(x) if supports(x) else torch_pool.max_pool(x)
