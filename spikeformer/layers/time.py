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


def time_invariant(x: torch.Tensor) -> bool:
    """Whether ``x`` ``[T, B, ...]`` repeats one tensor over its T > 1 steps as a view (stride 0 over time), as
    :func:`expand_time` gives for a static batch: what is computed per frame without state is then the same at
    every step."""
    return x.dim() >= 2 and x.shape[0] > 1 and x.stride(0) == 0


def frame_map(fn, x: torch.Tensor) -> torch.Tensor:
    """``fn`` (a map of a batch of frames ``[N, ...]`` in which no frame depends on another: a convolution, a
    max-pool; not BatchNorm in training) over frames ``[T, B, ...]``. On a :func:`time_invariant` input it runs once
    on ``x[0]`` and the result is expanded over T (a view): T times less work and memory."""
    if time_invariant(x):
        return fn(shared_step(x)).unsqueeze(0).expand(x.shape[0], *([-1] * (x.dim() - 1)))
    return seq_apply(fn, x)


def materialize(x: torch.Tensor) -> torch.Tensor:
    """A :func:`time_invariant` ``x`` written out as ``[T, B, ...]`` frames, each laid out as ``x[0]`` is
    (channels-last frames stay channels-last); any other ``x`` as it is."""
    if not time_invariant(x):
        return x
    fmt = (torch.channels_last if x.dim() == 5 and x[0].is_contiguous(memory_format=torch.channels_last)
           else torch.contiguous_format)
    out = torch.empty((x.shape[0] * x.shape[1], *x.shape[2:]), dtype=x.dtype, device=x.device, memory_format=fmt)
    return out.unflatten(0, x.shape[:2]).copy_(x)


def shared_step(x: torch.Tensor) -> torch.Tensor:
    """The tensor ``[B, ...]`` that a :func:`time_invariant` ``x`` repeats over T. Where ``x`` is its view base
    expanded, that base itself: autograd then hands the gradient straight to it, where indexing ``x[0]`` would
    make a zero-filled ``[T, B, ...]`` gradient for the expansion to sum up again (the same sums: adding zeros is
    exact). Under ``torch.compile``, which traces views by their own rules, ``x[0]``."""
    if torch.compiler.is_compiling():
        return x[0]
    b = x._base
    if (b is not None and b.shape == x.shape[1:] and b.stride() == x.stride()[1:] and b.dtype == x.dtype
            and b.storage_offset() == x.storage_offset()):
        return b
    return x[0]


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
