"""Binding of the compiled products of binary spikes by table lookup (``lut.cpp``): a Linear layer and a 3x3
convolution (stride 1, padding 1) whose input is 0/1 spikes, in fp32, at any firing rate.

Four spikes form a 4-bit code and one addition of a precomputed subset sum of four weight rows replaces four
multiply-adds; the weight gradient does the same with four rows of the output gradient. The input gradient
``g @ W`` is dense and stays a GEMM (``linear.mm``: the BLAS, or oneDNN where that is faster; for the convolution
oneDNN's data-gradient convolution or Winograd). Sums are fp32 in another order than a dense GEMM's, so results
differ from it by rounding only (exactly equal on integer-valued data).

A Linear input may also hold spike counts (Spikformer's residual stream of summed spikes): it is split into its
0/1 indicator, which takes the lookups, and the rest ``x - indicator``, nonzero only where a count exceeds 1,
which takes the products over listed nonzeros, added inside the same kernel. One pass packs both
(:func:`pack_counts`). When that rest is not sparse (real-valued input) the operation gives up and returns ``None``:
the caller's dense product runs.
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from . import bf16, build, linear, weights, winograd
from .build import is_bf16, ptr, threads
from .sparse import conv3x3_input_grad

_vp, _i64, _ci = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
build.declare(
    sf_lut_pack=(_ci, [_i64, _i64, _vp, _ci, _vp, _vp, _ci]),
    sf_lut_pack_counts=(_i64, [_i64, _i64, _vp, _i64] + [_vp] * 6 + [_ci]),
    sf_lut_pack_conv3x3=(_ci, [_i64] * 4 + [_vp, _ci, _vp, _vp, _vp, _ci]),
    sf_lut_linear=(None, [_i64, _i64, _i64] + [_vp] * 8 + [_ci, _ci]),
    sf_lut_linear_wgrad=(None, [_i64, _i64, _i64] + [_vp] * 7 + [_ci, _ci]),
)
TILE = weights.TILE  # output columns per table entry (the tiled weights'): the number of outputs must be a multiple
REST_MAX_DENSITY = 0.1  # the counts above 1 of a Linear input, listed; denser: give up


def pack(x2d: torch.Tensor, transposed: bool = True) -> Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """The 4-bit codes of the nonzeros of ``x2d`` ``[R, K]`` (contiguous fp32 or bf16): ``codes [R, ceil(K/4)]``
    (four consecutive columns of a row) and ``codesT [ceil(R/4), K]`` (four consecutive rows of a column; ``None``
    unless ``transposed``: only the weight gradient reads them), or ``None`` when some value is neither 0 nor 1."""
    R, K = x2d.shape
    codes = torch.empty(R, (K + 3) // 4, dtype=torch.uint8)
    codes_t = torch.empty((R + 3) // 4, K, dtype=torch.uint8) if transposed else None
    bad = build.library().sf_lut_pack(R, K, ptr(x2d), is_bf16(x2d), ptr(codes), ptr(codes_t), threads())
    return None if bad else (codes, codes_t)


def pack_counts(x2d: torch.Tensor, transposed: bool = True, max_density: Optional[float] = None):
    """Spike counts ``x2d`` ``[R, K]`` (contiguous fp32) in one pass: ``((codes, codesT), rest)``, the codes of the 0/1
    indicator ``x != 0`` (as :func:`pack`) and ``rest``, the listed entries ``x - 1`` where ``x`` is neither 0 nor 1
    (``sparse.sparse_rows``' layout; ``None`` when there are none: ``x2d`` is binary), or ``None`` when more than
    ``max_density`` (default :data:`REST_MAX_DENSITY`) of the entries are neither 0 nor 1."""
    R, K = x2d.shape
    cap = max(int((REST_MAX_DENSITY if max_density is None else max_density) * R * K), 1)
    codes = torch.empty(R, (K + 3) // 4, dtype=torch.uint8)
    codes_t = torch.empty((R + 3) // 4, K, dtype=torch.uint8) if transposed else None
    rs, re = torch.empty(R, dtype=torch.int64), torch.empty(R, dtype=torch.int64)
    col, val = torch.empty(cap, dtype=torch.int32), torch.empty(cap, dtype=torch.float32)
    n = build.library().sf_lut_pack_counts(R, K, ptr(x2d), cap, ptr(codes), ptr(codes_t), ptr(rs), ptr(re), ptr(col),
                                           ptr(val), threads())
    if n < 0:
        return None
    return (codes, codes_t), (None if n == 0 else (rs, re, col, val))


def pack_conv3x3(x: torch.Tensor, transposed: bool = True,
                 forward: bool = True) -> Optional[tuple[Optional[torch.Tensor], Optional[torch.Tensor]]]:
    """The codes of a 3x3 convolution's input ``x`` ``[M, C, H, W]`` (channels-last, ``C`` a multiple of 4) over
    its 9 taps: ``codes [M*H*W, 9*C/4]`` (``None`` unless ``forward``) and ``codesT [ceil(M*H*W/4), 9*C]``
    (``None`` unless ``transposed``), or ``None`` unless every value is 0 or 1."""
    M, C, H, W = x.shape
    P = M * H * W
    bits = torch.empty(P, C, dtype=torch.uint8)
    codes = torch.empty(P, 9 * C // 4, dtype=torch.uint8) if forward else None
    codes_t = torch.empty((P + 3) // 4, 9 * C, dtype=torch.uint8) if transposed else None
    bad = build.library().sf_lut_pack_conv3x3(M, H, W, C, ptr(x), is_bf16(x), ptr(bits), ptr(codes), ptr(codes_t),
                                              threads())
    return None if bad else (codes, codes_t)


def _rest_ptrs(rest) -> list:
    return [None] * 4 if rest is None else [ptr(t) for t in rest]


def _products(R: int, K: int, codes: torch.Tensor, wt: torch.Tensor, bias: Optional[torch.Tensor],
              out: torch.Tensor, rest=None, stream: bool = False) -> None:
    """``out = bias + x @ W^T`` for ``x`` given as its codes plus the listed ``rest`` (or ``None``), the weights
    ``wt`` tiled (``weights.layout`` ``"linear_tiles"`` / ``"conv3x3_tiles"``: ``[N / 16, ..., 16]``). ``stream``:
    write ``out`` past the caches (``lut.cpp`` ``lut_fwd``: it pays in inference only)."""
    N = wt.shape[0] * wt.shape[-1]
    build.library().sf_lut_linear(R, K, N, ptr(codes), ptr(wt), None if bias is None else ptr(bias),
                                  *_rest_ptrs(rest), ptr(out), int(stream), threads())


def _wgrad(R: int, K: int, codes_t: torch.Tensor, g: torch.Tensor, rest=None, nk: bool = False) -> torch.Tensor:
    """``sum_r x[r]^T g[r]`` as ``[K, N]`` fp32, or with ``nk`` its transpose ``[N, K]`` (a Linear's weight
    gradient, written so by the kernel: no transposed copy)."""
    N = g.shape[-1]
    dwt = torch.empty((N, K) if nk else (K, N), dtype=torch.float32)
    build.library().sf_lut_linear_wgrad(R, K, N, ptr(codes_t), ptr(g), *_rest_ptrs(rest), ptr(dwt), int(nk),
                                        threads())
    return dwt


class NativeLutLinear(torch.autograd.Function):
    """``x @ weight^T + bias`` in fp32 for ``x [R, K]`` given as the codes of its 0/1 indicator (:func:`pack`) plus,
    optionally, the listed nonzeros of the rest (``sparse.sparse_rows``: counts above 1). Backward: ``dL/dx = g @ W``
    dense, ``dL/dW`` by lookups (plus the rest's products), ``dL/db = sum g``. Saves the codes, not ``x``."""

    @staticmethod
    def forward(ctx, x2d, weight, bias, packed, rest, wt):
        # wt: weights.layout(weight, torch.float32, "linear_tiles") [N / 16, K, 16], made by the caller (kept in
        # inference)
        R, K = x2d.shape
        codes, codes_t = packed
        w = weight.detach()
        out = torch.empty(R, w.shape[0], dtype=torch.float32)
        # no weight gradient to form (inference): the output written past the caches
        _products(R, K, codes, wt, None if bias is None else bias.detach().contiguous(), out, rest,
                  stream=codes_t is None)
        ctx.codes_t, ctx.rest, ctx.shape, ctx.has_bias = codes_t, rest, x2d.shape, bias is not None
        ctx.save_for_backward(w)
        return out

    @staticmethod
    @bf16.autocast_free
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        g = g.float().contiguous()
        gx = linear.mm(g, w) if ctx.needs_input_grad[0] else None
        gw = gb = None
        if ctx.needs_input_grad[1]:
            R, K = ctx.shape
            gw = _wgrad(R, K, ctx.codes_t, g, ctx.rest, nk=True)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return gx, gw, gb, None, None, None


class NativeLutConv3x3(torch.autograd.Function):
    """A 3x3 convolution, stride 1, padding 1, no groups, in fp32, of channels-last 0/1 frames ``x [M, Cin, H, W]``
    given as their codes (:func:`pack_conv3x3`); output channels-last. Forward by lookups, or by Winograd when its
    transformed filters ``u`` are given (``winograd.forward_pays``; the forward codes are then not needed).
    Backward: ``dL/dx`` by Winograd or oneDNN's data-gradient convolution, ``dL/dW`` by lookups. Saves the codes,
    not ``x``."""

    @staticmethod
    def forward(ctx, x, weight, bias, packed, wt, u):
        # wt: weights.layout(weight, torch.float32, "conv3x3_tiles") [Cout / 16, 3, 3, Cin, 16], made by the caller
        # (or u: weights.layout(weight, torch.float32, "winograd"))
        M, Cin, H, W = x.shape
        codes, codes_t = packed
        w = weight.detach()
        Cout = w.shape[0]
        b = None if bias is None else bias.detach().contiguous()
        if u is not None:
            out = winograd.conv3x3_forward(x, u, b)
        else:
            out = torch.empty((M, Cout, H, W), dtype=torch.float32, memory_format=torch.channels_last)
            _products(M * H * W, 9 * Cin, codes, wt, b, out)
        ctx.codes_t, ctx.shape, ctx.has_bias = codes_t, x.shape, bias is not None
        ctx.save_for_backward(w)
        return out

    @staticmethod
    @bf16.autocast_free
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        M, Cin, H, W = ctx.shape
        Cout = w.shape[0]
        g = g.float().contiguous(memory_format=torch.channels_last)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = conv3x3_input_grad(g, ctx.shape, w)
        if ctx.needs_input_grad[1]:
            dwt = _wgrad(M * H * W, 9 * Cin, ctx.codes_t, g.permute(0, 2, 3, 1))
            gw = dwt.view(3, 3, Cin, Cout).permute(3, 2, 0, 1).contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum((0, 2, 3))
        return gx, gw, gb, None, None, None


def supports_linear(x2d: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> bool:
    return (dtype == torch.float32 and x2d.device.type == "cpu" and x2d.dtype == torch.float32 and x2d.dim() == 2
            and x2d.numel() > 0 and x2d.is_contiguous() and weight.device.type == "cpu"
            and weight.dtype == torch.float32 and weight.dim() == 2 and x2d.shape[1] == weight.shape[1]
            and weight.shape[0] % TILE == 0 and build.available())


def supports_conv3x3(x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> bool:
    return (dtype == torch.float32 and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and x.numel() > 0 and x.shape[1] % 4 == 0 and x.is_contiguous(memory_format=torch.channels_last)
            and weight.device.type == "cpu" and weight.dtype == torch.float32
            and tuple(weight.shape[1:]) == (x.shape[1], 3, 3) and weight.shape[0] % TILE == 0
            and build.available())


def lut_linear(x2d: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
               dtype: torch.dtype) -> Optional[torch.Tensor]:
    """``x2d @ weight^T + bias`` (fp32) by table lookup for spikes or spike counts, or ``None`` where it does not
    apply (see :func:`supports_linear`; real-valued input; bf16). While ``torch.compile`` traces: ``None``."""
    if torch.compiler.is_compiling() or not supports_linear(x2d, weight, dtype):
        return None
    found = _codes_of(x2d, _wants_weight_grad(weight))
    if found is None:
        return None
    packed, rest = found
    wt = weights.layout(weight, torch.float32, "linear_tiles")
    return NativeLutLinear.apply(x2d, weight, bias, packed, rest, wt)


# The codes of the last Linear input: attention's q, k and v read the same tokens, which are then packed once
_last = build.LastInput()


def _wants_weight_grad(weight: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and weight.requires_grad


def _codes_of(x2d: torch.Tensor, transposed: bool):
    """``(codes, rest)`` of ``x2d``, or ``None`` when it is not spikes or sparse enough spike counts."""
    # spikes, or counts: the 0/1 indicator by lookups, the rest listed
    return _last.get(x2d, lambda: pack_counts(x2d, transposed), transposed)


def lut_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                dtype: torch.dtype) -> Optional[torch.Tensor]:
    """The 3x3 convolution (stride 1, padding 1) of 0/1 channels-last frames by table lookup, or ``None`` where it
    does not apply (:func:`supports_conv3x3`, or some input neither 0 nor 1). Where Winograd's forward pays
    (``winograd.forward_pays``) the forward is Winograd's, and the lookups form only the weight gradient; where
    there is no weight gradient to form, or Winograd's pays too (``winograd.spike_weight_grad_pays``), the whole
    convolution is Winograd's (``winograd.Conv3x3Winograd``), for any input values."""
    if torch.compiler.is_compiling() or not supports_conv3x3(x, weight, dtype):
        return None
    M, Cin, H, W = x.shape
    wgrad = _wants_weight_grad(weight)
    u = None
    fp32_bias = bias is None or bias.dtype == torch.float32
    if fp32_bias and winograd.forward_pays(M, H, W, Cin, weight.shape[0], spikes=True):
        u = weights.layout(weight, torch.float32, "winograd")
        if not wgrad or winograd.spike_weight_grad_pays(H, W, Cin, weight.shape[0]):
            return winograd.convolve(x, weight, bias, u)
    packed = pack_conv3x3(x, wgrad, forward=u is None)
    if packed is None:
        return None
    wt = weights.layout(weight, torch.float32, "conv3x3_tiles") if u is None else None
    return NativeLutConv3x3.apply(x, weight, bias, packed, wt, u)
