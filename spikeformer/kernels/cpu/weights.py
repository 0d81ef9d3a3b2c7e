"""Weights in the layouts the compiled products read, kept across calls while they cannot have changed.

The listed and lookup products read a Linear weight as ``W^T [K, N]`` and a 3x3 convolution's as
``[3, 3, Cin, Cout]``, in the compute dtype: a copy per call (0.2-1.8 ms per weight here, about 1.5 % of a Spikformer
inference step). In inference (gradients off) that copy is kept for the weight until its memory, version counter
(bumped by every in-place change: an optimizer step, ``load_state_dict``, an EMA update), shape or dtype changes; the
entry goes with the weight. With gradients on, nothing is kept (a training step changes every weight) and a stale
entry is dropped, so training holds no second copy of the weights.
"""

from __future__ import annotations

import weakref

import torch

_cache: dict[int, tuple] = {}  # id(weight) -> (weakref, key, layout)


def make(weight: torch.Tensor, dtype: torch.dtype, kind: str) -> torch.Tensor:
    """``weight`` (detached, in ``dtype``) in the layout ``kind``, a new copy."""
    return _make(weight.detach().to(dtype), kind)


def _make(w: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "linear":
        return w.t().contiguous()  # [K, N]
    if kind == "conv3x3":
        return w.permute(2, 3, 1, 0).contiguous()  # [3, 3, Cin, Cout]
    raise ValueError(f"unknown weight layout {kind!r}: 'linear' or 'conv3x3'")


def layout(weight: torch.Tensor, dtype: torch.dtype, kind: str) -> torch.Tensor:
    """``weight`` (detached, in ``dtype``) in the layout ``kind`` (``"linear"``: ``W^T``; ``"conv3x3"``:
    ``[3, 3, Cin, Cout]``), contiguous; the same tensor again on later calls in inference while ``weight`` is
    unchanged. Call it where the caller's gradient mode holds (not inside an autograd Function's forward, which
    always runs without gradients) and pass the result in."""
    w = weight.detach()
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        _cache.pop(id(weight), None)
        return _make(w.to(dtype), kind)
    key = (w.data_ptr(), w._version, tuple(w.shape), w.dtype, dtype, kind)
    entry = _cache.get(id(weight))
    if entry is not None and entry[0]() is weight and entry[1] == key:
        return entry[2]
    out = _make(w.to(dtype), kind)
    wid = id(weight)
    ref = weakref.ref(weight, lambda _r, wid=wid: _cache.pop(wid, None) if _cache.get(wid, (None,))[0] is _r else None)
    _cache[wid] = (ref, key, out)
    return out
