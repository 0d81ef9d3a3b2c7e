"""3x3 convolutions on small channels-last maps under bf16 autocast with AMX: the weight gradient as one GEMM over the
unfolded input (im2col) instead of oneDNN's backward-weights primitive.

On an Intel Xeon with AMX (2 threads, torch 2.14, bf16, batch of 128 frames) oneDNN's weight gradient of a 3x3
convolution on 8x8 and 4x4 maps ran at a fraction of its forward's speed, while the same product as a GEMM
``cols^T @ dL/dy`` (``cols``: the nine shifted copies of the input, ``[frames * H * W, 9 * C_in]``) runs at the GEMM's
speed. Weight gradient, oneDNN against unfold + GEMM (``python benchmarks/bench_im2col.py``): 384 -> 384 channels at
8x8 29.2 ms against 21.7 ms, 192 -> 384 at 8x8 14.5 against 8.8, 256 -> 256 at 8x8 12.6 against 8.7, 512 -> 512 at 4x4
36.6 against 7.9; 128 -> 128 at 8x8 even (3.7 against 3.6); at 16x16 (192 -> 384) 26 against 47, so larger maps keep
oneDNN. The forward and the input gradient stay oneDNN's.

Numerics: the product sums the same bf16 products in fp32 as oneDNN's primitive, in another order, and rounds the
result to bf16 as the autocast convolution's weight gradient is; the forward is autocast's convolution itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import bf16

# maps of at most this many pixels per frame (8x8) take the GEMM weight gradient
MAX_PIXELS = 64


def supports(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`conv3x3` runs ``conv`` on channels-last frames ``x [N, C, H, W]`` here: a 3x3, stride 1, padding 1,
    ungrouped, zero-padded convolution of a small map under native bf16 autocast on a CPU with AMX, with gradients."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and conv.weight.dtype == torch.float32
            and x.dim() == 4 and x.shape[1] == conv.in_channels and x.shape[-2] * x.shape[-1] <= MAX_PIXELS
            and x.is_contiguous(memory_format=torch.channels_last) and x.device.type == "cpu"
            and torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad)
            and bf16.native_autocast(x) and bf16.amx() and not torch.compiler.is_compiling())


def unfold3x3(x: torch.Tensor) -> torch.Tensor:
    """``[N * H * W, 9 * C]``: for every pixel of channels-last ``x [N, C, H, W]`` its zero-padded 3x3 neighbourhood,
    taps in row-major order, channels innermost."""
    N, C, H, W = x.shape
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # [N, H + 2, W + 2, C]
    return torch.cat([xp[:, i:i + H, j:j + W, :] for i in range(3) for j in range(3)], dim=-1).view(N * H * W, 9 * C)


class Conv3x3GemmWgrad(torch.autograd.Function):
    """Autocast's bf16 3x3 convolution; backward: oneDNN's input gradient, the weight gradient as ``cols^T @ dL/dy``."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        xb, wb = x.to(torch.bfloat16), weight.to(torch.bfloat16)
        bb = None if bias is None else bias.to(torch.bfloat16)
        with torch.autocast("cpu", enabled=False):
            y = F.conv2d(xb, wb, bb, padding=1)
        ctx.save_for_backward(xb, wb)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return y.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, gy):
        xb, wb = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        gy = gy.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(gy, xb, wb, None, (1, 1), (1, 1), (1, 1), False, (0, 0), 1,
                                                     (True, False, False))[0].to(x_dtype)
        Co, C = wb.shape[:2]
        g2d = gy.permute(0, 2, 3, 1).reshape(-1, Co)  # channels-last: a view
        if ctx.needs_input_grad[1]:
            g = torch.mm(unfold3x3(xb).t(), g2d)  # [9 C, Co], (tap, channel) rows: the longer side as rows
            gw = g.view(3, 3, C, Co).permute(3, 2, 0, 1).to(w_dtype).contiguous()
        if ctx.needs_input_grad[2]:
            gb = g2d.float().sum(0).to(b_dtype)
        return gx, gw, gb


def conv3x3(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for frames where :func:`supports` holds (channels-last bf16 output)."""
    return Conv3x3GemmWgrad.apply(x, conv.weight, conv.bias)
