"""Weights in the layouts the compiled products read, kept across calls while they cannot have changed.

The listed products read a Linear weight as ``W^T [K, N]``, and the listed and lookup 3x3 convolutions read theirs
as ``[3, 3, Cin, Cout]``, in the compute dtype: a copy per call, made by ``weights.cpp`` (PyTorch's strided copy of
these permutations took 0.2-1.8 ms per weight here, 4 % of a QKFormer 10-384 training step at 32x32). In inference
(gradients off) that copy is kept for the weight until its memory, version counter (bumped by in-place changes:
``load_state_dict``, an EMA update, a foreach optimizer step), shape or dtype changes, and until the next step of any
``torch.optim`` optimizer: the fused optimizers (``AdamW(fused=True)``, the engine's default) write the weights
without bumping their version counters (torch 2.14), and an evaluation after such a step had read the previous
evaluation's copies. Changes through ``weight.data`` are not seen either (``.data`` has a version counter of its
own): call :func:`clear` after them. The entry goes with the weight. With gradients on, nothing is kept (a training
step changes every weight) and a stale entry is dropped, so training holds no second copy of the weights.
"""

from __future__ import annotations

import weakref

import ctypes

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from . import build
from .build import ptr, threads

_vp, _i64, _ci = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
build.declare(sf_permute_cba=(None, [_i64, _i64, _i64, _vp, _vp, _ci, _ci, _ci]))

TILE = 16  # outputs per tile of the tiled layouts (the lookup products', kernels/cpu/lut.cpp)
_cache: dict[tuple, tuple] = {}  # (id(weight), kind) -> (weakref, key, layout)


def clear() -> None:
    """Drops every kept layout (after changing weights in a way their version counters do not record)."""
    _cache.clear()


def _after_optimizer_step(optimizer, args, kwargs) -> None:
    clear()


register_optimizer_step_post_hook(_after_optimizer_step)


def make(weight: torch.Tensor, dtype: torch.dtype, kind: str) -> torch.Tensor:
    """``weight`` (detached, in ``dtype``) in the layout ``kind``, a new copy."""
    return _make(weight.detach().to(dtype), kind)


def _make(w: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "winograd":  # [Cout, Cin, 3, 3] -> the transformed filters [36, Cin, Cout] (fp32)
        from .winograd import forward_filters
        return forward_filters(_make(w.float(), "conv3x3"))
    if kind == "split":  # [N, K] fp32 -> its three bf16 pieces [3, N, K], smallest first (split.py)
        from .split import pieces
        return pieces(w)
    base, tiled = (kind[:-len("_tiles")], True) if kind.endswith("_tiles") else (kind, False)
    if base == "linear":  # [N, K] -> [K, N]
        A, B, C = w.shape[0], 1, w.shape[1]
    elif base == "conv3x3":  # [Cout, Cin, 3, 3] -> [3, 3, Cin, Cout]
        A, B, C = w.shape[0], w.shape[1], w.shape[2] * w.shape[3]
    else:
        raise ValueError(f"unknown weight layout {kind!r}: 'linear', 'conv3x3', 'winograd', 'split', "
                         "'linear_tiles' or 'conv3x3_tiles'")
    if tiled and A % TILE:
        raise ValueError(f"layout {kind!r} needs a multiple of {TILE} outputs, got {A}")
    shape = (C, A) if base == "linear" else (*w.shape[2:], B, A)
    if tiled:  # the same with each run of TILE outputs contiguous: [A / TILE, ..., TILE]
        shape = (A // TILE, *shape[:-1], TILE)
    if w.dtype in (torch.float32, torch.bfloat16) and w.device.type == "cpu" and build.available():
        src = w.contiguous()  # kept referenced across the call
        out = torch.empty(shape, dtype=w.dtype)
        build.library().sf_permute_cba(A, B, C, ptr(src), ptr(out), int(w.dtype == torch.bfloat16), int(tiled),
                                       threads())
        return out
    out = w.t().contiguous() if base == "linear" else w.permute(2, 3, 1, 0).contiguous()
    if tiled:
        out = out.view(*out.shape[:-1], A // TILE, TILE).movedim(-2, 0).contiguous()
    return out


def layout(weight: torch.Tensor, dtype: torch.dtype, kind: str) -> torch.Tensor:
    """``weight`` (detached, in ``dtype``) in the layout ``kind`` (``"linear"``: ``W^T``; ``"conv3x3"``:
    ``[3, 3, Cin, Cout]``; ``"winograd"``: a 3x3 convolution's transformed filters ``[36, Cin, Cout]``, fp32;
    ``"linear_tiles"`` / ``"conv3x3_tiles"``: the first two with each run of 16 outputs contiguous, ``[N / 16, K,
    16]`` / ``[Cout / 16, 3, 3, Cin, 16]``, the lookup products' layout; ``"split"``: a Linear weight's three bf16
    pieces ``[3, N, K]``, the split products' layout, ``kernels/cpu/split.py``),
    contiguous; the same tensor again on later calls in inference while ``weight`` is unchanged (one entry per
    weight and kind: a convolution whose input density moves across the listing / Winograd boundary keeps both).
    Call it where the caller's gradient mode holds (not inside an autograd Function's forward, which always runs
    without gradients) and pass the result in."""
    w = weight.detach()
    slot = (id(weight), kind)
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        _cache.pop(slot, None)
        return make(weight, dtype, kind)
    key = (w.data_ptr(), w._version, tuple(w.shape), w.dtype, dtype)
    entry = _cache.get(slot)
    if entry is not None and entry[0]() is weight and entry[1] == key:
        return entry[2]
    out = make(weight, dtype, kind)
    ref = weakref.ref(weight, lambda _r, slot=slot: _cache.pop(slot, None) if _cache.get(slot, (None,))[0] is _r else None)
    _cache[slot] = (ref, key, out)
    return out
