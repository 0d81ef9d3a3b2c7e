"""The bf16 3x3 convolution whose weight gradient is one GEMM over the unfolded input (kernels/cpu/im2col.py) against
autocast's convolution: the same output bit for bit, the same input gradient, the weight and bias gradients within
bf16 rounding; the unfolding against ``F.unfold``; where it applies; a block on it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikeformer.kernels.cpu import bf16 as kbf16
from spikeformer.kernels.cpu import im2col

CL = torch.channels_last


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def test_unfold_matches_torch_unfold():
    x = torch.randn(3, 5, 4, 6).contiguous(memory_format=CL)
    cols = im2col.unfold3x3(x)  # [N*H*W, 9*C], taps outer, channels inner
    ref = F.unfold(x, 3, padding=1)  # [N, C*9, H*W], channels outer, taps inner
    ref = ref.view(3, 5, 9, 24).permute(0, 3, 2, 1).reshape(3 * 24, 9 * 5)
    assert torch.equal(cols, ref)


@pytest.mark.skipif(not (kbf16.native() and kbf16.amx()), reason="the GEMM weight gradient is chosen on AMX CPUs")
@pytest.mark.parametrize("bias", [False, True])
def test_matches_autocast_convolution(bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(48, 40, 3, padding=1, bias=bias)
    x0 = (torch.rand(16, 48, 8, 8) < 0.2).float().contiguous(memory_format=CL)
    gy = torch.randn(16, 40, 8, 8).contiguous(memory_format=CL)

    def run(fn):
        x = x0.clone().requires_grad_()
        conv.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert im2col.supports(conv, x)
            y = fn(x)
        (y.float() * gy).sum().backward()
        return y.detach(), x.grad, conv.weight.grad.clone(), None if conv.bias is None else conv.bias.grad.clone()

    y1, gx1, gw1, gb1 = run(lambda x: im2col.conv3x3(conv, x))
    y2, gx2, gw2, gb2 = run(conv)
    assert y1.dtype == torch.bfloat16 and torch.equal(y1, y2)
    assert _rel(gx1, gx2) < 1e-2
    assert gw1.dtype == torch.float32 and gw1.is_contiguous() and _rel(gw1, gw2) < 1e-2
    if bias:
        assert _rel(gb1, gb2) < 1e-2


def test_where_it_applies():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    small = torch.rand(2, 8, 8, 8).contiguous(memory_format=CL).requires_grad_()
    large = torch.rand(2, 8, 16, 16).contiguous(memory_format=CL).requires_grad_()
    assert not im2col.supports(conv, small)  # no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert im2col.supports(conv, small) == (kbf16.native() and kbf16.amx())
        assert not im2col.supports(conv, large)  # 16x16: oneDNN's weight gradient is faster there
        assert not im2col.supports(nn.Conv2d(8, 8, 3, padding=1, stride=2), small)
        assert not im2col.supports(conv, small.contiguous())  # NCHW
        with torch.no_grad():
            assert not im2col.supports(conv, small)
