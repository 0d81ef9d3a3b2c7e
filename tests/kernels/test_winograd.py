"""The Winograd data gradient of 3x3 convolutions (``kernels/cpu/winograd.py``) against a float64 direct
convolution: every shape rule (maps not a multiple of 4, channels not a multiple of the 16-channel block, several
chunks of tiles and a short last one), the autograd function for dense inputs, and the cases that keep oneDNN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spikeformer.kernels import cpu
from spikeformer.kernels.cpu import sparse as cpu_sparse
from spikeformer.kernels.cpu import winograd
from spikeformer.layers import blocks

pytestmark = pytest.mark.skipif(not cpu.available(), reason="compiled CPU kernels unavailable")

# F(4x4, 3x3) in fp32: the transforms' 1/6, 1/24 and 4, 5, 8 coefficients cost about 10x the direct convolution's
# rounding error, 1e-5 of the gradient's largest value at 384 channels (measured 1.0e-5 - 1.4e-5 at Spikformer's and
# SDT's stem shapes, direct: 1e-6 - 3e-6)
REL_TOL = 4e-5


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _case(N, Cin, Cout, H, W, seed):
    g = torch.randn(N, Cout, H, W, generator=_gen(seed)).contiguous(memory_format=torch.channels_last)
    w = torch.randn(Cout, Cin, 3, 3, generator=_gen(seed + 1)) / (3 * Cin ** 0.5)
    return g, w


def _ref(shape, w, g):
    return torch.nn.grad.conv2d_input(shape, w.double(), g.double(), padding=1)


@pytest.mark.parametrize("N,Cin,Cout,H,W", [
    (8, 32, 48, 16, 16),  # maps a multiple of 4
    (3, 37, 53, 13, 10),  # neither maps nor channels a multiple of 4 / 16: partial tiles and channel blocks
    (2, 40, 33, 9, 31),
    (16, 64, 32, 8, 8),
])
def test_input_gradient_equals_the_direct_convolution(monkeypatch, N, Cin, Cout, H, W):
    monkeypatch.setattr(winograd, "MIN_TILES", 1)
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    g, w = _case(N, Cin, Cout, H, W, N + Cin)
    shape = torch.Size((N, Cin, H, W))
    got = winograd.conv3x3_input_grad(g, shape, w)
    assert got is not None and got.dtype == torch.float32 and got.shape == shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    ref = _ref(shape, w, g)
    err = (got.double() - ref).abs().max().item() / ref.abs().max().item()
    assert err < REL_TOL, err
    # the bound is not loose for the direct convolution either (it is about 10x inside it)
    direct = torch.ops.aten.convolution_backward(g, torch.empty(shape), w, None, [1, 1], [1, 1], [1, 1], False,
                                                 [0, 0], 1, [True, False, False])[0]
    assert (direct.double() - ref).abs().max().item() / ref.abs().max().item() < REL_TOL


def test_chunks_of_tiles_cover_every_tile_once(monkeypatch):
    N, Cin, Cout, H, W = 5, 32, 32, 12, 20  # 5 * 3 * 5 = 75 tiles
    g, w = _case(N, Cin, Cout, H, W, 7)
    shape = torch.Size((N, Cin, H, W))
    monkeypatch.setattr(winograd, "MIN_TILES", 1)
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    whole = winograd.conv3x3_input_grad(g, shape, w)
    # 36 * 4 bytes * 32 channels * 16 tiles per chunk: four full chunks and a last one of 11 tiles
    monkeypatch.setattr(winograd, "CHUNK_BYTES", 36 * 4 * 32 * 16)
    monkeypatch.setattr(winograd, "MIN_TILES", 16)
    chunked = winograd.conv3x3_input_grad(g, shape, w)
    assert torch.equal(whole, chunked)  # per tile the same arithmetic, whatever the chunk


def test_filter_transform_is_exact_for_a_centre_tap():
    # a filter with only the centre tap makes dL/dx = g scaled: the transformed filter and the two tile transforms
    # must reproduce g up to rounding of the 1/6 and 1/24 coefficients
    w = torch.zeros(48, 48, 3, 3)
    w[torch.arange(48), torch.arange(48), 1, 1] = 1.0
    g = torch.randn(8, 48, 16, 16, generator=_gen(3)).contiguous(memory_format=torch.channels_last)
    got = winograd.conv3x3_input_grad(g, g.shape, w)
    assert got is not None
    assert torch.allclose(got, g, rtol=0, atol=1e-5 * g.abs().max().item())


def test_the_sparse_and_lookup_convolutions_use_it_in_fp32(monkeypatch):
    calls = []
    real = winograd.conv3x3_input_grad
    monkeypatch.setattr(winograd, "conv3x3_input_grad", lambda *a: calls.append(a[0].shape) or real(*a))
    g, w = _case(16, 48, 64, 16, 16, 11)
    shape = torch.Size((16, 48, 16, 16))
    got = cpu_sparse.conv3x3_input_grad(g, shape, w)
    assert calls == [g.shape]
    ref = _ref(shape, w, g)
    assert (got.double() - ref).abs().max().item() / ref.abs().max().item() < REL_TOL
    # bf16 keeps oneDNN's data-gradient convolution
    calls.clear()
    got16 = cpu_sparse.conv3x3_input_grad(g.bfloat16(), shape, w.bfloat16())
    assert calls == [] and got16.dtype == torch.bfloat16


@pytest.mark.parametrize("N,Cin,Cout,H,W,why", [
    (8, 3, 32, 32, 32, "3 input channels"),
    (8, 64, 32, 32, 32, "32 output channels"),
    (8, 128, 128, 8, 8, "32 tiles"),
    (64, 64, 64, 4, 4, "4x4 maps"),
])
def test_where_it_does_not_pay_the_direct_convolution_stays(N, Cin, Cout, H, W, why):
    g, w = _case(N, Cin, Cout, H, W, 5)
    assert winograd.conv3x3_input_grad(g, torch.Size((N, Cin, H, W)), w) is None, why
    assert winograd.conv3x3_input_grad(g.bfloat16(), torch.Size((N, Cin, H, W)), w.bfloat16()) is None


def test_dense_input_convolution_gradients_match_torch():
    torch.manual_seed(0)
    conv = nn.Conv2d(48, 64, 3, padding=1)
    x0 = torch.randn(16, 48, 16, 16).contiguous(memory_format=torch.channels_last)
    gy = torch.randn(16, 64, 16, 16)
    grads = {}
    for impl in ("torch", "winograd"):
        x = x0.clone().requires_grad_()
        conv.zero_grad()
        y = conv(x) if impl == "torch" else winograd.conv3x3(conv, x)
        assert y is not None
        (y * gy).sum().backward()
        grads[impl] = (y.detach(), x.grad, conv.weight.grad.clone(), conv.bias.grad.clone())
    (y0, gx0, gw0, gb0), (y1, gx1, gw1, gb1) = grads["torch"], grads["winograd"]
    assert torch.equal(y0, y1)  # the forward is the same convolution
    assert torch.equal(gw0, gw1) and torch.equal(gb0, gb1)  # so are the parameter gradients
    assert (gx1 - gx0).abs().max() <= REL_TOL * gx0.abs().max()


def test_dense_input_convolution_declines_without_a_gradient_or_in_other_cases():
    conv = nn.Conv2d(48, 64, 3, padding=1)
    x = torch.randn(16, 48, 16, 16).contiguous(memory_format=torch.channels_last)
    assert winograd.conv3x3(conv, x) is None  # the input needs no gradient (e.g. the image)
    xg = x.clone().requires_grad_()
    with torch.no_grad():
        assert winograd.conv3x3(conv, xg) is None
    assert winograd.conv3x3(nn.Conv2d(48, 64, 3, padding=1, stride=2), xg) is None
    assert winograd.conv3x3(nn.Conv2d(48, 64, 3, padding=1, groups=2), xg) is None
    assert winograd.conv3x3(conv, xg.contiguous()) is None  # NCHW
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert winograd.conv3x3(conv, xg) is None
    assert winograd.conv3x3(conv, xg) is not None


def test_dense_input_convolution_declines_while_torch_compile_traces(monkeypatch):
    # a compiled graph keeps the plain convolution rather than break on the compiled kernels
    conv = nn.Conv2d(48, 64, 3, padding=1)
    xg = torch.randn(16, 48, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert winograd.conv3x3(conv, xg) is None


def test_fast_conv_frames_route_dense_inputs_through_it(monkeypatch):
    calls = []
    real = winograd.conv3x3

    def spy(c, x):
        out = real(c, x)
        calls.append((x.shape, out is not None))
        return out

    monkeypatch.setattr(winograd, "conv3x3", spy)
    conv = nn.Conv2d(48, 64, 3, padding=1)
    x = torch.randn(2, 8, 48, 16, 16).requires_grad_()
    y = blocks.conv_frames(conv, x, fast=True)
    assert calls == [(torch.Size((16, 48, 16, 16)), True)] and y.shape == (2, 8, 64, 16, 16)
    want = conv(x.detach().flatten(0, 1)).unflatten(0, (2, 8))
    assert torch.allclose(y, want, rtol=0, atol=1e-5)
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    calls.clear()
    blocks.conv_frames(conv, x, fast=False)  # exact: the official operation only
    assert calls == []
