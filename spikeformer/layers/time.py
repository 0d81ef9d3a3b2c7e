"""Time handling: spike tensors are ``[T, B, ...]``; layers that ignore time fold T into the batch in one place."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SpikeformerError


def seq_apply(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a time-agnostic module to ``[T, B, ...]`` by folding T into the batch (BN statistics then cover
    the merged T*B batch, as in every official implementation)."""
    T, B = x.shape[:2]
    y = module(x.flatten(0, 1))
    return y.unflatten(0, (T, B))


def expand_time(x: torch.Tensor, T: int, channels: int | None = None) -> torch.Tensor:
    """Direct encoding: a static batch ``[B, C, H, W]`` is repeated over T (a view, no copy); a ``[T, B, C, H, W]``
    sequence (event frames) is passed through unchanged."""
    if x.dim() == 4:
        x = x.unsqueeze(0).expand(T, *x.shape)
    elif x.dim() != 5:
        raise SpikeformerError(
            f"expected images [B, C, H, W] or frame sequences [T, B, C, H, W]; got shape {tuple(x.shape)}"
        )
    if channels is not None and x.shape[2] != channels:
        raise SpikeformerError(
            f"the model expects {channels} input channels but the input has {x.shape[2]} "
            f"(shape {tuple(x.shape)}); check --data or pass in_chans={x.shape[2]} to the model"
        )
    return x
