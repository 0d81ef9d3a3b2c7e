"""Binding of the Winograd data gradient of a 3x3 convolution (``winograd.cpp``): ``dL/dx`` for stride 1, padding 1,
fp32, channels-last, as F(4x4, 3x3) tiles and 36 GEMMs by the BLAS. 4x fewer multiply-adds than the direct
convolution (oneDNN's), which is what dominates the data gradients of the spiking stems: the gradient through a
surrogate is dense, so listing nonzeros and table lookups do not apply to it. Results differ from the direct
convolution by fp32 rounding (about 1e-6 of the gradient's scale); cuDNN picks the same algorithm for backward-data
convolutions on GPUs.
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from . import build
from .build import ptr, threads

_vp, _i64, _ci = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
build.declare(
    sf_wino_input=(None, [_i64] * 6 + [_vp, _vp, _ci]),
    sf_wino_output=(None, [_i64] * 6 + [_vp, _vp, _ci]),
)

# The filter transform G of F(4x4, 3x3) (Lavin & Gray, 2016); B^T and A^T are written out in winograd.cpp.
_G = torch.tensor([[1 / 4, 0, 0],
                   [-1 / 6, -1 / 6, -1 / 6],
                   [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6],
                   [1 / 24, -1 / 12, 1 / 6],
                   [0, 0, 1]], dtype=torch.float64)
_GG = torch.kron(_G, _G).float()  # [36, 9]
CHUNK_BYTES = 4 << 20  # transformed gradient per chunk of tiles: the transform's output is read back from cache
# Where the direct convolution stays (python benchmarks/bench_winograd.py): fewer than MIN_TILES 4x4 tiles per call
# (the 36 GEMMs too small: 0.9x at 32 tiles), fewer than MIN_CHANNELS input or output channels (0.6x at 16, 0.7-0.9x
# at 32, 1.5x at 64 on 8 frames of 16x16), maps under MIN_SIDE pixels (a 4x4 map pads its one 6x6 tile: 0.4x). At
# the stems of Spikformer and SDT (batch 32, T=4) it is 1.4-2.1x.
MIN_TILES = 128
MIN_CHANNELS = 48
MIN_SIDE = 8


def filter_transform(w: torch.Tensor) -> torch.Tensor:
    """``U [36, Cout, Cin]`` for a forward weight ``w [Cout, Cin, 3, 3]``: the transformed filters of the data
    gradient (``w`` flipped in space, input and output channels swapped), ``U[6a+b] = sum_kl G[a,k] G[b,l] w[kl]``
    as one product with the Kronecker square of ``G`` (fp32; within 1.2e-7 of float64)."""
    cout, cin = w.shape[:2]
    taps = w.detach().flip(2, 3).reshape(cout * cin, 9).t()  # [9, Cout*Cin]
    return (_GG @ taps).view(36, cout, cin)


def applies(N: int, H: int, W: int, w: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether the Winograd data gradient serves ``N`` frames of ``H x W`` pixels with weight ``w`` (3x3) in
    ``dtype``: fp32, enough tiles, channels and pixels (see :data:`MIN_TILES`), the kernels built."""
    if dtype != torch.float32 or w.dtype != torch.float32 or w.dim() != 4 or tuple(w.shape[2:]) != (3, 3):
        return False
    return (N * ((H + 3) // 4) * ((W + 3) // 4) >= MIN_TILES and min(w.shape[0], w.shape[1]) >= MIN_CHANNELS
            and min(H, W) >= MIN_SIDE and build.library() is not None)


def conv3x3_input_grad(g: torch.Tensor, shape: torch.Size, w: torch.Tensor) -> Optional[torch.Tensor]:
    """``dL/dx`` (channels-last ``shape`` ``[N, Cin, H, W]``, fp32) of a 3x3 convolution, stride 1, padding 1,
    weight ``w [Cout, Cin, 3, 3]``, for the output gradient ``g [N, Cout, H, W]``; ``None`` when it does not apply
    (see :func:`applies`)."""
    N, Cout, H, W = g.shape
    if not applies(N, H, W, w, g.dtype):
        return None
    lib = build.library()
    Cin = w.shape[1]
    g = g.contiguous(memory_format=torch.channels_last)
    u = filter_transform(w)
    P = N * ((H + 3) // 4) * ((W + 3) // 4)
    chunk = max(MIN_TILES, min(P, CHUNK_BYTES // (36 * 4 * max(Cout, Cin))))
    v = torch.empty(36, chunk, Cout)
    m = torch.empty(36, chunk, Cin)
    dx = torch.empty(shape, dtype=torch.float32, memory_format=torch.channels_last)
    nt = threads()
    for p0 in range(0, P, chunk):
        n = min(chunk, P - p0)
        vv, mm = (v, m) if n == chunk else (torch.empty(36, n, Cout), torch.empty(36, n, Cin))
        lib.sf_wino_input(N, H, W, Cout, p0, n, ptr(g), ptr(vv), nt)
        torch.bmm(vv, u, out=mm)
        lib.sf_wino_output(N, H, W, Cin, p0, n, ptr(mm), ptr(dx), nt)
    return dx


def _dense_grads(g: torch.Tensor, x: torch.Tensor, w: torch.Tensor, bias: bool, mask_x: bool):
    return torch.ops.aten.convolution_backward(g, x, w, [w.shape[0]] if bias else None, [1, 1], [1, 1], [1, 1],
                                               False, [0, 0], 1, [mask_x, True, bias])


class Conv3x3WinogradGrad(torch.autograd.Function):
    """``conv2d(x, weight, bias, padding=1)`` (3x3, stride 1, fp32, channels-last ``x``) whose backward forms
    ``dL/dx`` by Winograd (:func:`conv3x3_input_grad`) and the weight and bias gradients with oneDNN, as the plain
    convolution does. For a dense input (a real-valued feature map) on the fast path: the forward is unchanged."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.nn.functional.conv2d(x, weight, bias, padding=1)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        g = g.contiguous(memory_format=torch.channels_last)
        gx = conv3x3_input_grad(g, x.shape, w) if ctx.needs_input_grad[0] else None
        need_w, need_b = ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]
        gw = gb = None
        if need_w or need_b or (gx is None and ctx.needs_input_grad[0]):
            dx, gw, gb = _dense_grads(g, x, w, ctx.has_bias, gx is None and ctx.needs_input_grad[0])
            gx = dx if gx is None else gx
        return gx, gw, (gb if need_b else None)


def same_padded_3x3(conv: torch.nn.Module) -> bool:
    """A plain ``nn.Conv2d`` 3x3, stride 1, zero padding 1, no dilation or groups: the convolution the compiled 3x3
    kernels (Winograd, listed nonzeros, table lookups) compute."""
    return (type(conv) is torch.nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def conv3x3(conv: torch.nn.Conv2d, x: torch.Tensor) -> Optional[torch.Tensor]:
    """``conv(x)`` with the Winograd data gradient, for channels-last fp32 frames ``x [N, C, H, W]`` that need a
    gradient; ``None`` when that does not apply (another convolution, no gradient to form, too small a shape)."""
    w = conv.weight
    if torch.compiler.is_compiling():  # a compiled graph keeps the plain convolution (no break on the C kernels)
        return None
    if not (same_padded_3x3(conv) and x.dim() == 4 and x.device.type == "cpu"
            and x.dtype == torch.float32 and w.dtype == torch.float32 and w.device.type == "cpu"
            and x.requires_grad and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
            and x.is_contiguous(memory_format=torch.channels_last)):
        return None
    N, _, H, W = x.shape
    if not applies(N, H, W, w, x.dtype):
        return None
    return Conv3x3WinogradGrad.apply(x, w, conv.bias)
