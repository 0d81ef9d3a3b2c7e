"""Binding of the compiled spike attention (``attention.cpp``): every head of tokens ``[..., N, C]`` in the token
layout, without head transposes, for the head dims in :data:`ATTENTION_HEAD_DIMS`. A product whose spike operand is
sparse enough adds only the rows its nonzeros pick, with the same sums in the same order as the dense product (same
bits); ``products`` forces one kind (tests and ``benchmarks/bench_attention_products.py``)."""

from __future__ import annotations

import ctypes

import torch

from ..torch import attention as torch_attention
from . import bf16, build, ops
from .build import is_bf16, ptr, threads

ATTENTION_HEAD_DIMS = (16, 32, 64)  # head dims the compiled attention kernel is built for
PRODUCTS = {"auto": 0, "dense": 1, "listed": 2}  # attention.cpp's Products

_vp, _i64, _ci = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
build.declare(
    sf_attn_fwd=(_ci, [_i64, _i64, _i64, _i64, _vp, _vp, _vp, _ci, ctypes.c_float, _vp, _ci, _ci]),
    sf_attn_bwd=(_ci, [_i64, _i64, _i64, _i64, _vp, _vp, _vp, _ci, ctypes.c_float, _vp, _vp, _vp, _vp, _ci, _ci]),
)


def attention_forward(q, k, v, heads: int, scale: float, products: str = "auto") -> torch.Tensor:
    """``(Q K^T V) * scale`` per head, fp32 ``[..., N, C]`` (the compiled kernel's forward)."""
    C, N = q.shape[-1], q.shape[-2]
    M = q.numel() // (N * C)
    out = torch.empty(q.shape, dtype=torch.float32)
    if not build.library().sf_attn_fwd(M, N, C, heads, ptr(q), ptr(k), ptr(v), is_bf16(q), float(scale), ptr(out),
                                       PRODUCTS[products], threads()):
        raise ValueError(f"no compiled attention kernel for head dim {C // heads}")
    return out


def attention_backward(grad_out, q, k, v, heads: int, scale: float, products: str = "auto"):
    """``(dL/dq, dL/dk, dL/dv)``, recomputing ``K^T V`` per head."""
    C, N = q.shape[-1], q.shape[-2]
    M = q.numel() // (N * C)
    go = grad_out.to(torch.float32).contiguous()
    gq, gk, gv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    build.library().sf_attn_bwd(M, N, C, heads, ptr(q), ptr(k), ptr(v), is_bf16(q), float(scale), ptr(go), ptr(gq),
                                ptr(gk), ptr(gv), PRODUCTS[products], threads())
    return gq, gk, gv


class SpikeAttentionFunction(torch.autograd.Function):
    """``(Q K^T V) * scale`` per head on tokens ``[..., N, C]`` (head ``h`` = channels ``h*d:(h+1)*d``, ``d`` in
    :data:`ATTENTION_HEAD_DIMS`), fp32 output of the same shape with the heads concatenated as in the input: no head
    transposes. fp32 sums, so 0/1 spikes give exact integers (the values of any association order). Saves Q, K, V;
    backward recomputes K^T V per head (Q K^T for heads with few tokens)."""

    @staticmethod
    def forward(ctx, q, k, v, heads, scale):
        out = attention_forward(q, k, v, heads, scale)
        ctx.save_for_backward(q, k, v)
        ctx.heads, ctx.scale = heads, float(scale)
        return out

    @staticmethod
    @bf16.autocast_free
    def backward(ctx, grad_out):
        q, k, v = ctx.saved_tensors
        return attention_backward(grad_out, q, k, v, ctx.heads, ctx.scale) + (None, None)


class NativeSpikeAttention:
    """``NativeSpikeAttention.apply(q, k, v, heads, scale)``: :class:`SpikeAttentionFunction` in eager mode, the
    custom operator ``spikeformer::attention`` under ``torch.compile``."""

    @staticmethod
    def apply(q, k, v, heads, scale):
        if torch.compiler.is_compiling():
            return ops.attention_op(q, k, v, int(heads), float(scale))
        return SpikeAttentionFunction.apply(q, k, v, heads, scale)


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> bool:
    """Whether the compiled kernel can run this call (else the PyTorch reference runs it)."""
    return (q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16) and q.dim() >= 2
            and q.shape == k.shape == v.shape and q.dtype == k.dtype == v.dtype and q.numel() > 0
            and q.shape[-1] % heads == 0 and q.shape[-1] // heads in ATTENTION_HEAD_DIMS
            and q.is_contiguous() and k.is_contiguous() and v.is_contiguous() and build.available())


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    """The attention operation on CPU (signature of ``kernels.torch.attention.attention``)."""
    if supports(q, k, v, heads):
        return NativeSpikeAttention.apply(q, k, v, heads, scale)
    return torch_attention.attention(q, k, v, heads, scale)
