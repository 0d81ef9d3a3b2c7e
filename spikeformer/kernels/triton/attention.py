"""Spike attention in Triton on tokens ``[..., N, C]`` in the token layout: ``(Q K^T V) * scale`` per head (head
``h`` = channels ``h*d:(h+1)*d``), fp32 output with the heads concatenated as in the input, no head transposes.

One program per (leading index, head): it accumulates ``K^T V`` (``d x d``) over token blocks, then writes
``Q (K^T V) * scale`` block by block. Products are fp32 with IEEE inputs (no TF32), so 0/1 spikes give exact
integer sums: the reference's values bit for bit. Backward (one program per head as well) accumulates ``K^T V``
and ``Q^T dO`` and writes ``dQ``, ``dK``, ``dV`` in the inputs' dtype. Head dims up to :data:`MAX_HEAD_DIM`;
other calls go to the PyTorch reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..torch import attention as torch_attention
from .common import FLOAT_DTYPES, NUM_WARPS, round_to, runs_on

MAX_HEAD_DIM = 128  # a head's d x d products stay in registers
BLOCK_N = 32        # tokens per tile


@triton.jit
def _attn_fwd(q_ptr, k_ptr, v_ptr, o_ptr, N, C, heads, d, scale,
              BLOCK_N: tl.constexpr, DP: tl.constexpr):
    pid = tl.program_id(0)
    m = pid // heads
    hh = pid % heads
    base = m.to(tl.int64) * N * C + hh * d
    rn = tl.arange(0, BLOCK_N)
    rd = tl.arange(0, DP)
    dmask = rd < d
    kv = tl.zeros([DP, DP], tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + rn
        msk = (rows < N)[:, None] & dmask[None, :]
        off = base + rows[:, None] * C + rd[None, :]
        kb = tl.load(k_ptr + off, mask=msk, other=0.0).to(tl.float32)
        vb = tl.load(v_ptr + off, mask=msk, other=0.0).to(tl.float32)
        kv += tl.dot(tl.trans(kb), vb, input_precision="ieee")
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + rn
        msk = (rows < N)[:, None] & dmask[None, :]
        off = base + rows[:, None] * C + rd[None, :]
        qb = tl.load(q_ptr + off, mask=msk, other=0.0).to(tl.float32)
        out = tl.dot(qb, kv, input_precision="ieee") * scale
        tl.store(o_ptr + off, out, mask=msk)


@triton.jit
def _attn_bwd(q_ptr, k_ptr, v_ptr, go_ptr, gq_ptr, gk_ptr, gv_ptr, N, C, heads, d, scale,
              BLOCK_N: tl.constexpr, DP: tl.constexpr):
    pid = tl.program_id(0)
    m = pid // heads
    hh = pid % heads
    base = m.to(tl.int64) * N * C + hh * d
    rn = tl.arange(0, BLOCK_N)
    rd = tl.arange(0, DP)
    dmask = rd < d
    kv = tl.zeros([DP, DP], tl.float32)   # K^T V
    qg = tl.zeros([DP, DP], tl.float32)   # Q^T dO
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + rn
        msk = (rows < N)[:, None] & dmask[None, :]
        off = base + rows[:, None] * C + rd[None, :]
        qb = tl.load(q_ptr + off, mask=msk, other=0.0).to(tl.float32)
        kb = tl.load(k_ptr + off, mask=msk, other=0.0).to(tl.float32)
        vb = tl.load(v_ptr + off, mask=msk, other=0.0).to(tl.float32)
        gb = tl.load(go_ptr + off, mask=msk, other=0.0)
        kv += tl.dot(tl.trans(kb), vb, input_precision="ieee")
        qg += tl.dot(tl.trans(qb), gb, input_precision="ieee")
    # out = Q KV s: dQ = dO KV^T s, dKV = Q^T dO s, dK = V dKV^T, dV = K dKV
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + rn
        msk = (rows < N)[:, None] & dmask[None, :]
        off = base + rows[:, None] * C + rd[None, :]
        kb = tl.load(k_ptr + off, mask=msk, other=0.0).to(tl.float32)
        vb = tl.load(v_ptr + off, mask=msk, other=0.0).to(tl.float32)
        gb = tl.load(go_ptr + off, mask=msk, other=0.0)
        gq = tl.dot(gb, tl.trans(kv), input_precision="ieee") * scale
        gk = tl.dot(vb, tl.trans(qg), input_precision="ieee") * scale
        gv = tl.dot(kb, qg, input_precision="ieee") * scale
        tl.store(gq_ptr + off, round_to(gq, gq_ptr.dtype.element_ty).to(gq_ptr.dtype.element_ty), mask=msk)
        tl.store(gk_ptr + off, round_to(gk, gk_ptr.dtype.element_ty).to(gk_ptr.dtype.element_ty), mask=msk)
        tl.store(gv_ptr + off, round_to(gv, gv_ptr.dtype.element_ty).to(gv_ptr.dtype.element_ty), mask=msk)


def _dims(q: torch.Tensor, heads: int):
    N, C = q.shape[-2], q.shape[-1]
    d = C // heads
    return q.numel() // (N * C), N, C, d, max(16, triton.next_power_of_2(d))


# ------------------------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("spikeformer::triton_attention", mutates_args=())
def attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    """``(Q K^T V) * scale`` per head of contiguous tokens ``[..., N, C]``, fp32."""
    M, N, C, d, DP = _dims(q, heads)
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    _attn_fwd[(M * heads,)](q, k, v, out, N, C, heads, d, float(scale), BLOCK_N=BLOCK_N, DP=DP,
                            num_warps=NUM_WARPS)
    return out


@attention_op.register_fake
def _attention_fake(q, k, v, heads, scale):
    return torch.empty(q.shape, dtype=torch.float32, device=q.device)


@torch.library.custom_op("spikeformer::triton_attention_backward", mutates_args=())
def attention_backward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad_out: torch.Tensor, heads: int,
                          scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dL/dQ, dL/dK, dL/dV)`` of :func:`attention_op`, in the inputs' dtype."""
    M, N, C, d, DP = _dims(q, heads)
    go = grad_out.to(torch.float32).contiguous()
    gq, gk, gv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _attn_bwd[(M * heads,)](q, k, v, go, gq, gk, gv, N, C, heads, d, float(scale), BLOCK_N=BLOCK_N, DP=DP,
                            num_warps=NUM_WARPS)
    return gq, gk, gv


@attention_backward_op.register_fake
def _attention_backward_fake(q, k, v, grad_out, heads, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, heads, scale = inputs
    ctx.save_for_backward(q, k, v)
    ctx.heads, ctx.scale = heads, scale


def _backward(ctx, grad_out):
    q, k, v = ctx.saved_tensors
    gq, gk, gv = attention_backward_op(q, k, v, grad_out, ctx.heads, ctx.scale)
    return gq, gk, gv, None, None


attention_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------- entry point
def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> bool:
    """Whether the Triton kernels can run this call (else the PyTorch reference runs it)."""
    return (runs_on(q.device) and q.dtype in FLOAT_DTYPES and q.dim() >= 2
            and q.shape == k.shape == v.shape and q.dtype == k.dtype == v.dtype
            and q.device == k.device == v.device and q.numel() > 0
            and q.shape[-1] % heads == 0 and q.shape[-1] // heads <= MAX_HEAD_DIM)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    """The attention operation (signature of ``kernels.torch.attention.attention``)."""
    if not supports(q, k, v, heads):
        return torch_attention.attention(q, k, v, heads, scale)
    return attention_op(q.contiguous(), k.contiguous(), v.contiguous(), int(heads), float(scale))
