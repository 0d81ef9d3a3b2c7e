"""Attention products shared by the spike-driven families."""

from __future__ import annotations

import math

import torch

from .. import kernels
from ..kernels.cpu import bf16 as _bf16
from ..neurons import _native

# Integers of magnitude below these are exact in the dtype (8- and 11-bit significands).
_EXACT_BELOW = {torch.bfloat16: 256, torch.float16: 2048}


def _products(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    if q.shape[-2] > q.shape[-1]:
        return (q @ (k.transpose(-2, -1) @ v)) * scale
    return ((q @ k.transpose(-2, -1)) @ v) * scale


def _exact_or_none(a: torch.Tensor, b: torch.Tensor):
    """``a @ b`` in the ambient precision, or None if an output may have been rounded.

    The GEMM accumulates in fp32 (exact for these integer sums); only its low-precision output can round. Rounding
    is monotone and the limit is representable, so every output of magnitude below the limit is exact and any rounded
    one is at or above it: a max over the outputs decides."""
    p = a @ b
    limit = _EXACT_BELOW.get(p.dtype)
    if limit is None or p.numel() == 0:
        return p
    lo, hi = torch.aminmax(p.detach())
    return p if max(-float(lo), float(hi)) < limit else None


def _low_precision_products(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    if q.shape[-2] > q.shape[-1]:
        inner = _exact_or_none(k.transpose(-2, -1), v)
        return None if inner is None else _exact_or_none(q, inner)
    inner = _exact_or_none(q, k.transpose(-2, -1))
    return None if inner is None else _exact_or_none(inner, v)


def spike_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """``Q K^T V * scale`` over ``[..., N, d]``.

    With binary Q, K, V every partial sum is a small integer, exact in fp32, so both association orders give the
    same bits; take the cheaper one (K^T V first when tokens outnumber the head dim).

    Under autocast (or for bf16/fp16 inputs) the result has the fp32 one's values bit for bit: bf16 holds integers
    only up to 256 (fp16: 2048), and a GEMM's low-precision output would round larger sums. On CPU the products run
    in the low precision (several times faster than fp32 GEMMs there) and are checked: if any output reached the
    limit they are recomputed in fp32 on the exactly upcast 0/1 spikes; on other devices, and on CPUs without bf16
    instructions (where bf16 products are emulated, far slower than fp32), they run in fp32 directly.
    Checked sums times a power-of-two scale (0.125, 0.25) are exact and stay in the low precision, as before the
    check; otherwise the sums are scaled in fp32 and the result stays fp32 under autocast (the attention neuron
    integrates in fp32 anyway) or is cast back to the inputs' dtype without it. The fp32 path without autocast is
    untouched.
    """
    dev = q.device.type
    autocast = torch.is_autocast_enabled(dev)
    if not autocast and q.dtype not in _EXACT_BELOW:
        return _products(q, k, v, scale)
    low = torch.get_autocast_dtype(dev) if autocast else q.dtype
    emulated = low == torch.bfloat16 and _bf16.emulated()  # (kernels/cpu/bf16.py): fp32 products directly then
    sums = _low_precision_products(q, k, v) if dev == "cpu" and not emulated else None
    if sums is not None and math.frexp(scale)[0] == 0.5:
        return sums * scale  # exact integers times a power of two: exact, and the fp32 result's value
    if sums is None:
        with torch.autocast(dev, enabled=False):
            sums = _products(q.float(), k.float(), v.float(), 1.0)
    out = sums.float() * scale
    return out if autocast else out.to(q.dtype)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    *lead, N, C = x.shape
    return x.view(*lead, N, heads, C // heads).transpose(-3, -2)


def _native_ok(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> bool:
    return (q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16) and q.dim() >= 2
            and q.shape == k.shape == v.shape and q.dtype == k.dtype == v.dtype and q.numel() > 0
            and q.shape[-1] % heads == 0 and q.shape[-1] // heads in _native.ATTENTION_HEAD_DIMS
            and q.is_contiguous() and k.is_contiguous() and v.is_contiguous() and _native.library() is not None)


def token_spike_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, scale: float,
                          fast: bool = False) -> torch.Tensor:
    """:func:`spike_attention` over ``heads`` heads of tokens ``[..., N, C]`` (head ``h`` = channels
    ``h*C/heads`` onwards), returning ``[..., N, C]`` with the heads concatenated in the same order.

    Under autocast, for bf16 tokens or with ``fast`` (:func:`spikeformer.layers.use_fast_kernels`) on CPU, one
    compiled kernel computes every head in the token layout (no head transposes; fp32 sums: for 0/1 spikes the
    reference's values bit for bit, returned in fp32 under autocast); gradients equal the reference's up to fp32
    summation order. Otherwise (the exact fp32 path, other devices, head dims without a compiled kernel, no
    compiler) the heads are split and merged around :func:`spike_attention`."""
    autocast = torch.is_autocast_enabled(q.device.type)
    gpu = kernels.registered(kernels.ATTENTION, q)  # a device's own kernel (Triton on CUDA)
    if gpu is not None:
        out = gpu(q, k, v, heads, scale)
        return out if autocast or q.dtype == torch.float32 else out.to(q.dtype)
    if (fast or autocast or q.dtype == torch.bfloat16) and _native_ok(q, k, v, heads):
        out = _native.NativeSpikeAttention.apply(q, k, v, heads, scale)
        return out if autocast or q.dtype == torch.float32 else out.to(q.dtype)
    out = spike_attention(_split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads), scale)
    return out.transpose(-3, -2).flatten(-2)
