"""fp32 products of spikes on AMX tiles, as sums of exact bf16 products (``split.cpp``).

On a CPU with AMX tiles a bf16 GEMM with fp32 sums runs 5-15x faster than the fp32 GEMM (2 cores of an Intel Xeon:
``[8192, 384] x [384, 384]`` in 1.3 ms against 8.4 ms). An fp32 product whose one operand is spikes or spike counts
can use it without losing fp32's precision: the counts are bf16 exactly, and each fp32 value of the other operand is
the exact sum of three bf16 pieces (``split.cpp``), so ``x @ W^T = x @ W_lo^T + x @ W_mid^T + x @ W_hi^T``, three
bf16 GEMMs whose every product is exact, summed into one fp32 output. The result differs from the fp32 GEMM
by the order of the fp32 sums only, as the table lookups' (``lut.py``) do. The weight gradient ``g^T x`` splits the
gradient likewise (three GEMMs into one fp32 sum). The input gradient ``g @ W`` has two dense fp32 operands and stays
the fp32 GEMM (``linear.mm``).

The GEMM is MKL's ``cblas_gemm_bf16bf16f32`` (bf16 operands, fp32 output; PyTorch's own bf16 GEMMs round their
output to bf16), which PyTorch's x86 builds carry; it runs on AMX where the CPU has it. Elsewhere (no AMX: on
AVX512-BF16 alone a bf16 GEMM is only about 2x the fp32 one, so three of them lose; no MKL in the build) nothing here
runs (:func:`available`) and the table lookups take these products. The choice is a rule on the CPU, and MKL's sums
run in a fixed order (the same bits on every call, with 1 or 2 threads: the tests), so a seeded run gives the same
weights in every process on one machine. ``layers/sparse.py`` routes fp32 Linear layers over spike counts here from
4096 rows and 384 inputs (its ``SPLIT_MIN_ROWS``, ``SPLIT_MIN_IN``: measured training steps); 0/1 spikes keep the
lookups, which were as fast on this CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from typing import Iterator, Optional

import torch

from . import bf16, build, linear, weights
from .build import ptr, threads

_vp, _i64, _ci = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
build.declare(
    sf_split_pack=(_ci, [_i64, _i64, _vp, _i64, _vp, _ci, _ci]),
    sf_split3=(None, [_i64, _i64, _vp, _i64, _vp, _i64, _i64, _ci]),
)
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
PIECES = 3
_forced: Optional[bool] = None


@functools.lru_cache(maxsize=None)
def _mkl_gemm():
    """MKL's ``cblas_gemm_bf16bf16f32`` from PyTorch's CPU library, or ``None`` where the build has none."""
    lib = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        fn = ctypes.CDLL(lib).cblas_gemm_bf16bf16f32
    except (OSError, AttributeError):
        return None
    ci, cf = ctypes.c_int, ctypes.c_float
    fn.restype = None
    fn.argtypes = [ci, ci, ci, ci, ci, ci, cf, _vp, ci, _vp, ci, cf, _vp, ci]
    return fn


def available() -> bool:
    """Whether fp32 spike products take this route here: a CPU with AMX tiles, MKL's bf16 GEMM in PyTorch's build,
    the compiled kernels (or as :func:`use` forces it)."""
    if _forced is not None:
        return _forced and _mkl_gemm() is not None and build.available()
    return bf16.amx() and _mkl_gemm() is not None and build.available()


@contextlib.contextmanager
def use(on: bool) -> Iterator[None]:
    """Within the block the split products run (``on=True``, where MKL's bf16 GEMM exists, on any CPU: slower
    without AMX, but the same values) or not, whatever the CPU has (tests)."""
    global _forced
    saved, _forced = _forced, on
    try:
        yield
    finally:
        _forced = saved


def gemm(m: int, n: int, k: int, a: torch.Tensor, lda: int, trans_a: bool, b: torch.Tensor, ldb: int,
         trans_b: bool, c: torch.Tensor, ldc: int, accumulate: bool = False) -> None:
    """``c [m, n] (+)= op(a) @ op(b)`` for bf16 ``a``, ``b`` and fp32 ``c`` (row-major, leading dimensions given;
    ``op`` transposes where asked). The tensors must stay alive across the call (they are the caller's)."""
    _mkl_gemm()(_ROW_MAJOR, _TRANS if trans_a else _NO_TRANS, _TRANS if trans_b else _NO_TRANS, m, n, k, 1.0,
                a.data_ptr(), lda, b.data_ptr(), ldb, 1.0 if accumulate else 0.0, c.data_ptr(), ldc)


def pack(x2d: torch.Tensor) -> Optional[tuple[torch.Tensor, bool]]:
    """fp32 ``x2d [R, K]`` (unit column stride) as bf16 ``[R, K]`` and whether it holds values other than 0 and 1
    (spike counts), or ``None`` when some value of it is not a bf16 exactly (not spikes or spike counts)."""
    R, K = x2d.shape
    out = torch.empty(R, K, dtype=torch.bfloat16)
    found = build.library().sf_split_pack(R, K, ptr(x2d), x2d.stride(0), ptr(out), 1, threads())
    return None if found == 1 else (out, found == 2)


def pieces(t: torch.Tensor) -> torch.Tensor:
    """fp32 ``t [R, C]`` (unit column stride; a weight, a gradient) as its three bf16 pieces ``[3, R, C]``, smallest
    first: ``t_lo + t_mid + t_hi = t`` exactly (``weights.layout`` kind ``"split"`` for a weight)."""
    if t.stride(1) != 1 or t.dtype != torch.float32:
        t = t.float().contiguous()
    R, C = t.shape
    out = torch.empty(PIECES, R, C, dtype=torch.bfloat16)
    # split.cpp writes hi, mid, lo at out + 0, + R*C, + 2*R*C: given the last piece's address and a negative step,
    # the pieces land smallest first
    lib = build.library()
    lib.sf_split3(R, C, ptr(t), t.stride(0), ctypes.c_void_p(out[2].data_ptr()), C, -R * C, threads())
    return out


def products(xs: torch.Tensor, w3: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``x @ W^T (+ bias)`` in fp32 from :func:`pack`'s ``xs [R, K]`` and the weight's :func:`pieces` ``w3 [3, N,
    K]``: one bf16 GEMM per piece, smallest first, summed into the fp32 output."""
    R, K = xs.shape
    N = w3.shape[1]
    out = torch.empty(R, N, dtype=torch.float32)
    if bias is not None:
        out.copy_(bias.detach().float().expand(R, N))
    for p in range(PIECES):
        gemm(R, N, K, xs, K, False, w3[p], K, True, out, N, accumulate=p > 0 or bias is not None)
    return out


def weight_grad(g: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """``g^T x`` ``[N, K]`` in fp32 for a gradient ``g [R, N]`` (fp32) and :func:`pack`'s ``xs [R, K]``: the
    gradient's three pieces, one GEMM each, summed into one fp32 result."""
    R, N = g.shape
    K = xs.shape[1]
    gs = pieces(g)
    dw = torch.empty(N, K, dtype=torch.float32)
    for p in range(PIECES):
        gemm(N, K, R, gs[p], N, True, xs, K, False, dw, K, accumulate=p > 0)
    return dw


class SplitLinear(torch.autograd.Function):
    """``x @ weight^T + bias`` in fp32 for spikes or spike counts ``x [R, K]``, given packed (:func:`pack`), with
    the weight's pieces ``w3`` (:func:`pieces`, made by the caller). Backward: ``dL/dx = g @ W`` by the fp32 GEMM,
    ``dL/dW`` by :func:`weight_grad`, ``dL/db = sum g``. Saves the packed bf16 input, not ``x``."""

    @staticmethod
    def forward(ctx, x2d, weight, bias, xs, w3):
        out = products(xs, w3, bias)
        ctx.shape, ctx.has_bias = x2d.shape, bias is not None
        ctx.xs = xs if weight.requires_grad else None
        ctx.save_for_backward(weight.detach())
        return out

    @staticmethod
    @bf16.autocast_free
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        g = g.float().contiguous()
        gx = linear.mm(g, w) if ctx.needs_input_grad[0] else None
        gw = weight_grad(g, ctx.xs) if ctx.needs_input_grad[1] else None
        gb = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None, None


def supports(x2d: torch.Tensor, weight: torch.Tensor) -> bool:
    return (available() and x2d.device.type == "cpu" and x2d.dtype == torch.float32 and x2d.dim() == 2
            and x2d.numel() > 0 and x2d.stride(1) == 1 and weight.device.type == "cpu"
            and weight.dtype == torch.float32 and weight.dim() == 2 and x2d.shape[1] == weight.shape[1]
            and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cpu"))


# The packed input of the last call: attention's q, k and v read the same tokens, which are then packed once
_last = build.LastInput()


def forget() -> None:
    """Drops the kept packed input (tests; freeing its memory)."""
    _last.clear()


def split_linear(x2d: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 spikes: bool = True) -> Optional[torch.Tensor]:
    """``x2d @ weight^T + bias`` (fp32) by the split products, or ``None`` where they do not apply (see
    :func:`supports`), ``x2d`` holds a value that is not a bf16 exactly (real-valued input), or, with
    ``spikes=False``, where it holds 0/1 spikes only (the caller has a faster product for those)."""
    if not supports(x2d, weight):
        return None
    found = _last.get(x2d, lambda: pack(x2d))
    if found is None or not (spikes or found[1]):
        return None
    xs = found[0]
    w3 = weights.layout(weight, torch.float32, "split")
    return SplitLinear.apply(x2d, weight, bias, xs, w3)
