"""Attention products shared by the spike-driven families."""

from __future__ import annotations

import torch


def spike_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """``Q K^T V * scale`` over ``[..., N, d]``.

    With binary Q, K, V every partial sum is a small integer, exact in fp32, so both association orders give the
    same bits; take the cheaper one (K^T V first when tokens outnumber the head dim).
    """
    if q.shape[-2] > q.shape[-1]:
        return (q @ (k.transpose(-2, -1) @ v)) * scale
    return ((q @ k.transpose(-2, -1)) @ v) * scale
