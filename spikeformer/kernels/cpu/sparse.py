"""Binding of the compiled products over nonzero spikes (``sparse.cpp``): a Linear layer and a 3x3 convolution
whose input is listed as its nonzeros (:func:`sparse_rows`), so the products skip the zeros.

Sums are fp32 and start from the bias; weight and bias are rounded to the compute dtype first (as autocast's GEMM
sees them), and the output is rounded to it. For spikes the output differs from a dense product's only by the order
of the sums (``kernels/torch/sparse.py`` is the dense reference).
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from ..torch import sparse as torch_sparse
from . import bf16, build, linear, weights, winograd
from .build import is_bf16, ptr, threads

_vp, _i64, _ci = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
build.declare(
    sf_count_nonzero_rows=(_i64, [_i64, _i64, _vp, _ci, _i64]),
    sf_sparse_rows=(_i64, [_i64, _i64, _vp, _ci, _i64, _vp, _vp, _vp, _vp, _ci]),
    sf_sparse_linear=(None, [_i64, _i64, _vp, _vp, _vp, _vp, _vp, _vp, _vp, _ci, _ci]),
    sf_sparse_linear_wgrad=(None, [_i64, _i64, _i64, _vp, _vp, _vp, _vp, _vp, _ci, _vp, _ci]),
    sf_sparse_conv3x3=(None, [_i64] * 5 + [_vp] * 7 + [_ci, _ci]),
    sf_sparse_conv3x3_wgrad=(None, [_i64] * 5 + [_vp] * 5 + [_ci, _vp, _ci]),
)
_DTYPES = (torch.float32, torch.bfloat16)


def count_nonzero_rows(x2d: torch.Tensor, step: int = 1) -> int:
    """How many entries of the rows ``0, step, 2 step, ...`` of ``x2d`` ``[R, K]`` (contiguous fp32 or bf16) are
    nonzero (``-0`` counts as zero): one compiled pass over those rows."""
    R, K = x2d.shape
    return int(build.library().sf_count_nonzero_rows(R, K, ptr(x2d), is_bf16(x2d), step))


def sparse_rows(x2d: torch.Tensor, max_density: float) -> Optional[tuple[torch.Tensor, ...]]:
    """The nonzeros of ``x2d`` ``[R, K]`` (contiguous fp32 or bf16) row by row: ``(rs, re, col, val)``, row ``r``'s
    entries being ``col[rs[r]:re[r]]`` (int32 column) and ``val[...]`` (fp32 value). ``None`` when more than about
    ``max_density`` of the entries are nonzero (then a dense product is faster), and always while ``torch.compile``
    traces: how many entries are nonzero is known only at run time, so a compiled graph takes the dense product
    rather than break there (``ops.py``)."""
    if torch.compiler.is_compiling():
        return None
    R, K = x2d.shape
    cap = max(int(max_density * R * K), 1)
    rs = torch.empty(R, dtype=torch.int64)
    re = torch.empty(R, dtype=torch.int64)
    col = torch.empty(cap, dtype=torch.int32)
    val = torch.empty(cap, dtype=torch.float32)
    n = build.library().sf_sparse_rows(R, K, ptr(x2d), is_bf16(x2d), cap, ptr(rs), ptr(re), ptr(col), ptr(val),
                                 threads())
    return None if n < 0 else (rs, re, col, val)


def _compute_weights(weight, bias, dtype):
    """The weight in the compute dtype (what autocast's GEMM would see) and the bias rounded to it, as fp32."""
    b = None if bias is None else bias.detach().to(dtype).float().contiguous()
    return weight.detach().to(dtype), b


class NativeSparseLinear(torch.autograd.Function):
    """``x @ weight^T + bias`` for ``x [R, K]`` given as its nonzeros (:func:`sparse_rows`): the products skip the
    zeros. ``weight`` and ``bias`` are fp32 parameters; ``dtype`` is the compute dtype (bf16 under autocast: weight
    and bias are rounded to it first, as autocast's GEMM sees them, and the output is rounded to it). Sums are fp32
    and start from the bias, so for spikes the output differs from a dense GEMM's only by the order of the sums.
    Backward: ``dL/dx = g @ weight`` dense (``linear.mm``, in ``dtype``; fp32 sums of the bf16 values where bf16
    products are emulated, :mod:`.bf16`), ``dL/dW = g^T x`` over the nonzeros and ``dL/db = sum g``, both fp32.
    Saves the nonzeros, not ``x``."""

    @staticmethod
    def forward(ctx, x2d, weight, bias, rows, dtype, wt):
        # wt: weights.layout(weight, dtype, "linear"), [K, Nout] in dtype, made by the caller (kept in inference)
        R, Nout = x2d.shape[0], weight.shape[0]
        w, b = _compute_weights(weight, bias, dtype)
        out = torch.empty(R, Nout, dtype=dtype)
        build.library().sf_sparse_linear(R, Nout, *(ptr(t) for t in rows), ptr(wt), None if b is None else ptr(b),
                                   ptr(out), int(dtype == torch.bfloat16), threads())
        ctx.rows, ctx.shape, ctx.dtype, ctx.has_bias = rows, x2d.shape, dtype, bias is not None
        ctx.save_for_backward(w)
        return out

    @staticmethod
    @bf16.autocast_free
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        g = g.to(ctx.dtype).contiguous()
        gx = linear.mm(g, w) if ctx.needs_input_grad[0] else None
        gw = gb = None
        if ctx.needs_input_grad[1]:
            R, K = ctx.shape
            gw = torch.empty(w.shape[0], K, dtype=torch.float32)
            build.library().sf_sparse_linear_wgrad(R, K, w.shape[0], *(ptr(t) for t in ctx.rows), ptr(g), is_bf16(g),
                                             ptr(gw), threads())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0, dtype=torch.float32)
        return gx, gw, gb, None, None, None


def conv3x3_input_grad(g: torch.Tensor, shape: torch.Size, w: torch.Tensor) -> torch.Tensor:
    """``dL/dx`` of a 3x3 convolution (stride 1, padding 1) with weight ``w`` for the output gradient ``g`` (both
    channels-last, in ``w``'s dtype), channels-last ``shape``: Winograd F(4x4, 3x3) in fp32 where it pays
    (``winograd.py``), else oneDNN's data-gradient convolution. bf16 where bf16 products are emulated
    (:mod:`.bf16`): the same in fp32 on the bf16 values, rounded to bf16."""
    if g.dtype == torch.bfloat16 and w.dtype == torch.bfloat16 and bf16.emulated():
        return conv3x3_input_grad(g.float(), shape, w.float()).to(torch.bfloat16)
    if g.dtype == torch.float32:
        gx = winograd.conv3x3_input_grad(g, shape, w)
        if gx is not None:
            return gx
    # the input only gives its shape and layout to the data-gradient convolution (never read)
    like = torch.empty(shape, dtype=w.dtype, memory_format=torch.channels_last)
    return torch.ops.aten.convolution_backward(g, like, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                               [True, False, False])[0]


class NativeSparseConv3x3(torch.autograd.Function):
    """A 3x3 convolution, stride 1, padding 1, no groups, of channels-last frames ``x [M, Cin, H, W]`` given as
    their pixels' nonzeros (:func:`sparse_rows` of the ``[M * H * W, Cin]`` view); output channels-last
    ``[M, Cout, H, W]`` in ``dtype``. As :class:`NativeSparseLinear`: weight (and bias) rounded to ``dtype``, fp32
    sums; backward: ``dL/dx`` dense (oneDNN's convolution data gradient, in ``dtype``), ``dL/dW`` over the nonzeros
    in fp32. Saves the nonzeros, not ``x``."""

    @staticmethod
    def forward(ctx, x, weight, bias, rows, dtype, wt):
        # wt: weights.layout(weight, dtype, "conv3x3"), [3, 3, Cin, Cout] in dtype, made by the caller
        M, Cin, H, W = x.shape
        Cout = weight.shape[0]
        w, b = _compute_weights(weight, bias, dtype)
        out = torch.empty((M, Cout, H, W), dtype=dtype, memory_format=torch.channels_last)
        build.library().sf_sparse_conv3x3(M, H, W, Cin, Cout, *(ptr(t) for t in rows), ptr(wt),
                                    None if b is None else ptr(b), ptr(out), int(dtype == torch.bfloat16),
                                    threads())
        ctx.rows, ctx.shape, ctx.dtype, ctx.has_bias = rows, x.shape, dtype, bias is not None
        ctx.save_for_backward(w)
        return out

    @staticmethod
    @bf16.autocast_free
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        M, Cin, H, W = ctx.shape
        Cout = w.shape[0]
        g = g.to(ctx.dtype).contiguous(memory_format=torch.channels_last)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = conv3x3_input_grad(g, ctx.shape, w)
        if ctx.needs_input_grad[1]:
            gw = torch.empty(Cout, Cin, 3, 3, dtype=torch.float32)
            build.library().sf_sparse_conv3x3_wgrad(M, H, W, Cin, Cout, *(ptr(t) for t in ctx.rows), ptr(g), is_bf16(g),
                                              ptr(gw), threads())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum((0, 2, 3), dtype=torch.float32)
        return gx, gw, gb, None, None, None


def _nonzeros(x2d: torch.Tensor, dtype: torch.dtype, max_density: float):
    """:func:`sparse_rows` with the values as ``dtype`` has them (fp32 inputs under bf16 autocast: the values the
    GEMM would see), or ``None`` above ``max_density``."""
    rows = sparse_rows(x2d, max_density)
    if rows is not None and dtype != x2d.dtype:
        rows[3].copy_(rows[3].to(dtype))
    return rows


def _weights_ok(weight: torch.Tensor, dtype: torch.dtype) -> bool:
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and dtype in _DTYPES


def supports_linear(x2d: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> bool:
    return (x2d.device.type == "cpu" and x2d.dtype in _DTYPES and x2d.dim() == 2 and x2d.numel() > 0
            and x2d.shape[1] == weight.shape[1] and x2d.is_contiguous() and _weights_ok(weight, dtype)
            and build.available())


def supports_conv3x3(x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> bool:
    return (x.device.type == "cpu" and x.dtype in _DTYPES and x.dim() == 4 and x.numel() > 0
            and tuple(weight.shape[1:]) == (x.shape[1], 3, 3) and max(x.shape[2:]) < 2 ** 15
            and x.is_contiguous(memory_format=torch.channels_last) and _weights_ok(weight, dtype)
            and build.available())


def sparse_linear(x2d: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dtype: torch.dtype,
                  max_density: float = 1.0) -> Optional[torch.Tensor]:
    """The sparse linear operation on CPU (signature of ``kernels.torch.sparse.sparse_linear``): ``None`` when
    more than ``max_density`` of ``x2d`` is nonzero (the caller's dense product is then faster). While
    ``torch.compile`` traces, the dense reference (see :func:`sparse_rows`)."""
    if torch.compiler.is_compiling() or not supports_linear(x2d, weight, dtype):
        return torch_sparse.sparse_linear(x2d, weight, bias, dtype, max_density)
    rows = _nonzeros(x2d, dtype, max_density)
    return None if rows is None else NativeSparseLinear.apply(
        x2d, weight, bias, rows, dtype, weights.layout(weight, dtype, "linear"))


def sparse_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dtype: torch.dtype,
                   max_density: float = 1.0) -> Optional[torch.Tensor]:
    """The sparse 3x3 convolution on CPU (signature of ``kernels.torch.sparse.sparse_conv3x3``), ``None`` as in
    :func:`sparse_linear`."""
    if torch.compiler.is_compiling() or not supports_conv3x3(x, weight, dtype):
        return torch_sparse.sparse_conv3x3(x, weight, bias, dtype, max_density)
    M, C, H, W = x.shape
    rows = _nonzeros(x.permute(0, 2, 3, 1).view(M * H * W, C), dtype, max_density)
    return None if rows is None else NativeSparseConv3x3.apply(
        x, weight, bias, rows, dtype, weights.layout(weight, dtype, "conv3x3"))
