"""Attention products shared by the spike-driven families."""

from __future__ import annotations

import math

import torch

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
    limit they are recomputed in fp32 on the exactly upcast 0/1 spikes; on other devices they run in fp32 directly.
    Checked sums times a power-of-two scale (0.125, 0.25) are exact and stay in the low precision, as before the
    check; otherwise the sums are scaled in fp32 and the result stays fp32 under autocast (the attention neuron
    integrates in fp32 anyway) or is cast back to the inputs' dtype without it. The fp32 path without autocast is
    untouched.
    """
    dev = q.device.type
    autocast = torch.is_autocast_enabled(dev)
    if not autocast and q.dtype not in _EXACT_BELOW:
        return _products(q, k, v, scale)
    sums = _low_precision_products(q, k, v) if dev == "cpu" else None
    if sums is not None and math.frexp(scale)[0] == 0.5:
        return sums * scale  # exact integers times a power of two: exact, and the fp32 result's value
    if sums is None:
        with torch.autocast(dev, enabled=False):
            sums = _products(q.float(), k.float(), v.float(), 1.0)
    out = sums.float() * scale
    return out if autocast else out.to(q.dtype)
