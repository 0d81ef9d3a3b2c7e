"""Spike attention on tokens, in PyTorch: the reference of the attention operation and its fallback.

``(Q K^T V) * scale`` per head on tokens ``[..., N, C]`` (head ``h`` = channels ``h*d:(h+1)*d``, ``d = C / heads``),
returned in fp32 with the heads concatenated as in the input. Products run in fp32, so 0/1 spikes give exact
integer sums whichever product comes first; the cheaper association order is taken (``K^T V`` first when tokens
outnumber the head dim).
"""

from __future__ import annotations

import torch


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    *lead, N, C = x.shape
    return x.view(*lead, N, heads, C // heads).transpose(-3, -2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    """``(Q K^T V) * scale`` over ``heads`` heads of ``[..., N, C]`` tokens, fp32 ``[..., N, C]``."""
    with torch.autocast(q.device.type, enabled=False):
        qh, kh, vh = (_split_heads(t.float(), heads) for t in (q, k, v))
        if qh.shape[-2] > qh.shape[-1]:
            out = (qh @ (kh.transpose(-2, -1) @ vh)) * scale
        else:
            out = ((qh @ kh.transpose(-2, -1)) @ vh) * scale
    return out.transpose(-3, -2).flatten(-2)
