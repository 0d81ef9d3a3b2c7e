"""Binding of the compiled gate kernels (``gates.cpp``): the pooled statistics and the gating of MA-SNN's
multi-dimensional attention over channels-last frames ``[N, P, C]``, one pass over the frames per operation and per
gradient.

PyTorch's reductions over the pixels of channels-last frames, its broadcast products and their backward copy and
re-stride the frames several times per gate (an MA-SNN training step spent a quarter of its time in copies). The
compiled kernels read the frames in their channels-last order: the same products as the reference
(``kernels/torch/gates.py``), sums in another order, and a maximum's gradient to its first position.
"""

from __future__ import annotations

import ctypes

import torch

from ..torch import gates as torch_gates
from . import bf16, build
from .build import f32, is_bf16, ptr, threads

_i64x3 = [ctypes.c_int64] * 3
_p, _i = ctypes.c_void_p, ctypes.c_int
build.declare(
    sf_gate_stats_fwd=(None, _i64x3 + [_p, _i, _p, _p, _p, _i]),
    sf_gate_stats_bwd=(None, _i64x3 + [_p, _p, _p, _p, _i, _i]),
    sf_gate_pool_fwd=(None, _i64x3 + [_p, _i, _p, _p, _p, _p, _i]),
    sf_gate_pool_bwd=(None, _i64x3 + [_p, _i, _p, _p, _p, _p, _p, _p, _i]),
    sf_gate_apply_fwd=(None, _i64x3 + [_p, _i, _p, _p, _p, _i]),
    sf_gate_apply_bwd=(None, _i64x3 + [_p, _i, _p, _p, _p, _p, _p, _p, _i]),
)
_F32 = torch.float32


class GateStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        N, P, C = x.shape
        S, M = torch.empty((N, C), dtype=_F32), torch.empty((N, C), dtype=_F32)
        idx = torch.empty((N, C), dtype=torch.int32)
        build.library().sf_gate_stats_fwd(N, P, C, ptr(x), is_bf16(x), ptr(S), ptr(M), ptr(idx), threads())
        ctx.save_for_backward(idx)
        ctx.shape, ctx.dtype = x.shape, x.dtype
        return S, M

    @staticmethod
    @bf16.autocast_free
    def backward(ctx, gS, gM):
        (idx,) = ctx.saved_tensors
        N, P, C = ctx.shape
        gS = torch.zeros((N, C), dtype=_F32) if gS is None else f32(gS)
        gM = torch.zeros((N, C), dtype=_F32) if gM is None else f32(gM)
        gx = torch.empty(ctx.shape, dtype=ctx.dtype)
        build.library().sf_gate_stats_bwd(N, P, C, ptr(gS), ptr(gM), ptr(idx), ptr(gx), is_bf16(gx), threads())
        return gx


class GatePool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        N, P, C = x.shape
        w = f32(w)
        A, X = torch.empty((N, P), dtype=_F32), torch.empty((N, P), dtype=_F32)
        idx = torch.empty((N, P), dtype=torch.int32)
        build.library().sf_gate_pool_fwd(N, P, C, ptr(x), is_bf16(x), ptr(w), ptr(A), ptr(X), ptr(idx), threads())
        ctx.save_for_backward(x, w, idx)
        return A, X

    @staticmethod
    @bf16.autocast_free
    def backward(ctx, gA, gX):
        x, w, idx = ctx.saved_tensors
        N, P, C = x.shape
        gA = torch.zeros((N, P), dtype=_F32) if gA is None else f32(gA)
        gX = torch.zeros((N, P), dtype=_F32) if gX is None else f32(gX)
        gx, gw = torch.empty_like(x), torch.empty((N, C), dtype=_F32)
        build.library().sf_gate_pool_bwd(N, P, C, ptr(x), is_bf16(x), ptr(w), ptr(gA), ptr(gX), ptr(idx), ptr(gx),
                                         ptr(gw), threads())
        return gx, gw


class GateApply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, s):
        N, P, C = x.shape
        w, s = f32(w), f32(s)
        y = torch.empty_like(x)
        build.library().sf_gate_apply_fwd(N, P, C, ptr(x), is_bf16(x), ptr(w), ptr(s), ptr(y), threads())
        ctx.save_for_backward(x, w, s)
        return y

    @staticmethod
    @bf16.autocast_free
    def backward(ctx, gy):
        x, w, s = ctx.saved_tensors
        N, P, C = x.shape
        gy = gy.to(x.dtype).contiguous()
        gx, gw, gs = torch.empty_like(x), torch.empty((N, C), dtype=_F32), torch.empty((N, P), dtype=_F32)
        build.library().sf_gate_apply_bwd(N, P, C, ptr(x), is_bf16(x), ptr(w), ptr(s), ptr(gy), ptr(gx), ptr(gw),
                                          ptr(gs), threads())
        return gx, gw, gs


def supports(x: torch.Tensor, *small: torch.Tensor) -> bool:
    """Whether the compiled kernels take frames ``x`` (else the reference runs)."""
    return (x.device.type == "cpu" and x.dim() == 3 and x.dtype in (_F32, torch.bfloat16) and x.is_contiguous()
            and x.numel() < 2 ** 31 and all(t.device.type == "cpu" for t in small) and build.available())


def gate_stats(x: torch.Tensor):
    """The gate statistics on CPU (signature of ``kernels.torch.gates.gate_stats``)."""
    return GateStats.apply(x) if supports(x) else torch_gates.gate_stats(x)


def gate_pool(x: torch.Tensor, w: torch.Tensor):
    """The channel pooling on CPU (signature of ``kernels.torch.gates.gate_pool``)."""
    return GatePool.apply(x, w) if supports(x, w) else torch_gates.gate_pool(x, w)


def gate_apply(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The gating on CPU (signature of ``kernels.torch.gates.gate_apply``)."""
    return GateApply.apply(x, w, s) if supports(x, w, s) else torch_gates.gate_apply(x, w, s)
