"""Winograd 3x3 convolutions (``kernels/cpu/winograd.py``), the data gradient and the forward, against a float64
direct convolution: every shape rule (maps not a multiple of 4, channels not a multiple of the 16-channel block,
several chunks of tiles and a short last one, a bias), the autograd function for dense inputs, the lookup
convolution's Winograd forward, and the cases that keep oneDNN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spikeformer.kernels import cpu
from spikeformer.kernels.cpu import sparse as cpu_sparse
from spikeformer.kernels.cpu import lut as cpu_lut
from spikeformer.kernels.cpu import bf16, weights, winograd
from spikeformer.layers import blocks

pytestmark = pytest.mark.skipif(not cpu.available(), reason="compiled CPU kernels unavailable")

# F(4x4, 3x3) in fp32: the transforms' 1/6, 1/24 and 4, 5, 8 coefficients cost about 10x the direct convolution's
# rounding error, 1e-5 of the gradient's largest value at 384 channels (measured 1.0e-5 - 1.4e-5 at Spikformer's and
# SDT's stem shapes, direct: 1e-6 - 3e-6)
REL_TOL = 4e-5


def _use_limits(monkeypatch, kind: str) -> None:
    for name, value in winograd.limits(kind).items():
        monkeypatch.setattr(winograd, name, value)


@pytest.fixture(autouse=True)
def avx2_limits(monkeypatch):
    """The tests of the kernels and routes below use the AVX2 CPUs' limits, whatever this CPU is (the limits of both
    kinds are tested in test_limits_from_the_measured_shapes)."""
    _use_limits(monkeypatch, "avx2")


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
    # bf16 products on a CPU with bf16 instructions: oneDNN's data-gradient convolution
    calls.clear()
    with bf16.emulation(False):
        got16 = cpu_sparse.conv3x3_input_grad(g.bfloat16(), shape, w.bfloat16())
    assert calls == [] and got16.dtype == torch.bfloat16
    # bf16 products emulated: Winograd in fp32 on the bf16 values, rounded to bf16
    with bf16.emulation(True):
        got16 = cpu_sparse.conv3x3_input_grad(g.bfloat16(), shape, w.bfloat16())
    assert calls == [g.shape] and got16.dtype == torch.bfloat16
    ref16 = _ref(shape, w.bfloat16().double(), g.bfloat16().double())
    assert (got16.double() - ref16).abs().max().item() / ref16.abs().max().item() < 2 ** -8


@pytest.mark.parametrize("N,Cin,Cout,H,W,why", [
    (8, 3, 32, 32, 32, "3 input channels"),
    (8, 64, 32, 32, 32, "32 output channels"),
    (8, 128, 128, 8, 8, "32 tiles"),
    (64, 64, 64, 4, 4, "4x4 maps of 64 frames: 64 tiles"),
    (128, 64, 64, 2, 2, "2x2 maps"),
])
def test_where_it_does_not_pay_the_direct_convolution_stays(N, Cin, Cout, H, W, why):
    g, w = _case(N, Cin, Cout, H, W, 5)
    assert winograd.conv3x3_input_grad(g, torch.Size((N, Cin, H, W)), w) is None, why
    assert winograd.conv3x3_input_grad(g.bfloat16(), torch.Size((N, Cin, H, W)), w.bfloat16()) is None


@pytest.mark.parametrize("forward", ["winograd", "onednn"])
def test_dense_input_convolution_gradients_match_torch(monkeypatch, forward):
    if forward == "onednn":
        monkeypatch.setattr(winograd, "FWD_MIN_CHANNELS", 10 ** 6)
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
    if forward == "onednn":
        assert torch.equal(y0, y1)  # the forward is the same convolution
        assert torch.equal(gw0, gw1) and torch.equal(gb0, gb1)  # and so are the parameter gradients (oneDNN's)
    else:
        assert not torch.equal(y0, y1) and not torch.equal(gw0, gw1)  # Winograd's own rounding: it did run
        ref = torch.nn.functional.conv2d(x0.double(), conv.weight.double(), conv.bias.double(), padding=1)
        assert (y1.double() - ref).abs().max() <= REL_TOL * ref.abs().max()
        ref_w = torch.nn.grad.conv2d_weight(x0.double(), conv.weight.shape, gy.double(), padding=1)
        assert (gw1.double() - ref_w).abs().max() <= REL_TOL * ref_w.abs().max()
        assert torch.allclose(gb1, gb0, rtol=1e-5, atol=1e-5 * gb0.abs().max().item())
    assert (gx1 - gx0).abs().max() <= REL_TOL * gx0.abs().max()


@pytest.mark.parametrize("N,Cin,Cout,H,W,bias", [
    (8, 48, 64, 16, 16, True),
    (3, 53, 49, 13, 10, True),  # neither maps nor channels a multiple of 4 / 16
    (4, 64, 48, 9, 31, False),
])
def test_forward_equals_the_direct_convolution(N, Cin, Cout, H, W, bias):
    x = torch.randn(N, Cin, H, W, generator=_gen(Cin)).contiguous(memory_format=torch.channels_last)
    w = torch.randn(Cout, Cin, 3, 3, generator=_gen(Cout)) / (3 * Cin ** 0.5)
    b = torch.randn(Cout, generator=_gen(1)) if bias else None
    u = weights.make(w, torch.float32, "winograd")
    assert u.shape == (36, Cin, Cout)
    got = winograd.conv3x3_forward(x, u, b)
    assert got.shape == (N, Cout, H, W) and got.is_contiguous(memory_format=torch.channels_last)
    ref = torch.nn.functional.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=1)
    assert (got.double() - ref).abs().max().item() <= REL_TOL * ref.abs().max().item()


def test_forward_chunks_cover_every_tile_once(monkeypatch):
    x = torch.randn(5, 48, 12, 20, generator=_gen(2)).contiguous(memory_format=torch.channels_last)  # 75 tiles
    u = weights.make(torch.randn(48, 48, 3, 3, generator=_gen(3)), torch.float32, "winograd")
    whole = winograd.conv3x3_forward(x, u, None)
    monkeypatch.setattr(winograd, "CHUNK_BYTES", 36 * 4 * 48 * 16)
    monkeypatch.setattr(winograd, "MIN_TILES", 16)  # chunks of 16 tiles: four and a last one of 11
    assert torch.equal(whole, winograd.conv3x3_forward(x, u, None))


def test_limits_from_the_measured_shapes(monkeypatch):
    """The AVX512 limits (measured on a Zen 5): the data gradient keeps oneDNN's where Winograd measured slower."""
    _use_limits(monkeypatch, "avx512")

    def data(N, H, cin, cout):
        return winograd.applies(N, H, H, torch.empty(cout, cin, 3, 3), torch.float32)

    assert data(128, 32, 96, 192) and data(128, 16, 192, 384) and data(128, 8, 384, 384)  # Spikformer: 1.2-1.5x
    assert data(128, 32, 64, 128) and data(128, 16, 256, 512)  # SDT: 1.2x, 1.1x
    assert not data(128, 32, 48, 96)  # Spikformer's first stage: 0.79x
    assert not (data(128, 16, 48, 96) or data(128, 8, 96, 192) or data(128, 4, 192, 384))  # QKFormer: 0.62-0.77x
    assert winograd.forward_pays(128, 32, 32, 64, 128) and not winograd.forward_pays(128, 32, 32, 48, 96)  # 1.13, 0.74x
    assert winograd.forward_pays(128, 32, 32, 128, 256, spikes=True)  # against the lookups from 128 channels
    assert not winograd.forward_pays(128, 32, 32, 96, 192, spikes=True)  # 0.72x
    assert not winograd.spike_weight_grad_pays(32, 32, 512, 512)  # the lookups' weight gradient everywhere
    _use_limits(monkeypatch, "avx2")  # AVX2 (a Zen 3): from 48 channels and 128 tiles
    assert data(128, 32, 48, 96) and data(128, 8, 96, 192) and data(128, 4, 192, 384)
    assert winograd.spike_weight_grad_pays(16, 16, 96, 192) and not winograd.spike_weight_grad_pays(8, 8, 96, 192)
    assert not winograd.forward_pays(128, 32, 32, 48, 96, spikes=True)  # the lookups from 48 to 95 channels
    _use_limits(monkeypatch, "avx512_intel")  # an Intel Xeon: Winograd wherever measured from 48 channels
    assert data(128, 32, 48, 96) and data(128, 16, 48, 96) and data(128, 4, 192, 384)  # 1.41x, 1.32x, 2.83x
    assert winograd.forward_pays(128, 32, 32, 48, 96, spikes=True)  # 1.31x against the lookups
    assert winograd.spike_weight_grad_pays(32, 32, 96, 192) and not winograd.spike_weight_grad_pays(32, 32, 48, 96)
    with pytest.raises(ValueError, match="unknown CPU kind"):
        winograd.limits("avx1024")


def test_cpu_kind_reads_the_vendor(monkeypatch):
    from spikeformer.kernels.cpu import build

    for avx512, vendor, want in ((True, "GenuineIntel", "avx512_intel"), (True, "AuthenticAMD", "avx512"),
                                 (False, "GenuineIntel", "avx2"), (False, "AuthenticAMD", "avx2")):
        monkeypatch.setattr(winograd, "AVX512", avx512)
        monkeypatch.setattr(build, "cpu_vendor", lambda vendor=vendor: vendor)
        assert winograd.cpu_kind() == want


def test_forward_pays_from_the_measured_shapes():
    assert winograd.forward_pays(128, 16, 16, 192, 384)  # Spikformer's stem
    assert winograd.forward_pays(16, 8, 8, 48, 96)  # 64 tiles, 48 channels: the smallest that pays
    assert not winograd.forward_pays(16, 8, 8, 48, 96, spikes=True)  # against the lookups: from 96 channels
    assert winograd.forward_pays(16, 8, 8, 96, 96, spikes=True)
    assert not winograd.forward_pays(16, 8, 8, 32, 96)  # 32 input channels
    assert not winograd.forward_pays(15, 8, 8, 48, 96)  # 60 tiles
    assert winograd.forward_pays(128, 4, 4, 192, 384)  # 4x4 maps of 128 frames: 128 tiles
    assert not winograd.forward_pays(128, 2, 2, 384, 384)  # 2x2 maps: one 6x6 tile for 4 pixels


def test_dense_input_convolution_in_inference_and_where_it_declines(monkeypatch):
    conv = nn.Conv2d(48, 64, 3, padding=1)
    x = torch.randn(16, 48, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = winograd.conv3x3(conv, x)  # no gradient: the forward alone, by Winograd
        ref = conv(x)
    assert y is not None and not y.requires_grad
    assert (y - ref).abs().max() <= REL_TOL * ref.abs().max()
    # the transformed filters are kept while the weight is unchanged
    with torch.no_grad():
        u0 = weights.layout(conv.weight, torch.float32, "winograd")
        assert weights.layout(conv.weight, torch.float32, "winograd") is u0
        conv.weight.mul_(2)
        assert weights.layout(conv.weight, torch.float32, "winograd") is not u0
    monkeypatch.setattr(winograd, "FWD_MIN_CHANNELS", 10 ** 6)  # the forward no longer pays:
    assert winograd.conv3x3(conv, x) is None  # no gradient for the input (e.g. the image) -> the plain convolution
    xg = x.clone().requires_grad_()
    with torch.no_grad():
        assert winograd.conv3x3(conv, xg) is None
    assert winograd.conv3x3(nn.Conv2d(48, 64, 3, padding=1, stride=2), xg) is None
    assert winograd.conv3x3(nn.Conv2d(48, 64, 3, padding=1, groups=2), xg) is None
    assert winograd.conv3x3(conv, xg.contiguous()) is None  # NCHW
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert winograd.conv3x3(conv, xg) is None
    assert winograd.conv3x3(conv, xg) is not None  # the data gradient still pays


@pytest.mark.parametrize("cin,side,route", [(48, 16, "lookups only"), (96, 8, "lookups' weight gradient"),
                                             (96, 16, "winograd only")])
@pytest.mark.parametrize("train", [True, False])
def test_lookup_convolution_takes_winograd_where_it_pays(monkeypatch, train, cin, side, route):
    calls = []
    real_fwd, real_pack, real_wg = winograd.conv3x3_forward, cpu_lut.pack_conv3x3, winograd.conv3x3_weight_grad
    monkeypatch.setattr(winograd, "conv3x3_forward", lambda *a: calls.append("wino") or real_fwd(*a))
    monkeypatch.setattr(cpu_lut, "pack_conv3x3", lambda *a, **k: calls.append(("pack", a[1:], k)) or real_pack(*a, **k))
    monkeypatch.setattr(winograd, "conv3x3_weight_grad", lambda *a: calls.append("wino wgrad") or real_wg(*a))
    torch.manual_seed(1)
    conv = nn.Conv2d(cin, 96, 3, padding=1, bias=False).requires_grad_(train)
    x = (torch.rand(16, cin, side, side) < 0.3).float().contiguous(memory_format=torch.channels_last)
    y = cpu_lut.lut_conv3x3(x, conv.weight, None, torch.float32)
    ref = torch.nn.functional.conv2d(x.double(), conv.weight.double(), padding=1)
    assert (y.double() - ref).abs().max() <= REL_TOL * ref.abs().max()
    if route == "lookups only":  # 48 channels: the lookups' forward (spikes at 48 and 64 channels do not pay)
        assert calls == [("pack", (train,), {"forward": True})]
    elif not train:  # no weight gradient: no codes at all
        assert calls == ["wino"]
    elif route == "lookups' weight gradient":
        assert calls == [("pack", (True,), {"forward": False}), "wino"]  # only the weight gradient's codes
    else:
        assert calls == ["wino"]  # Winograd's weight gradient needs no codes
    if not train:
        return
    gy = torch.randn(y.shape, generator=_gen(4))
    (y * gy).sum().backward()
    assert ("wino wgrad" in calls) == (route == "winograd only")
    want = torch.nn.grad.conv2d_weight(x.double(), conv.weight.shape, gy.double(), padding=1)
    assert (conv.weight.grad.double() - want).abs().max() <= 1e-5 * want.abs().max()


@pytest.mark.parametrize("N,Cin,Cout,H,W", [(8, 48, 64, 16, 16), (3, 53, 49, 13, 10), (2, 40, 33, 9, 31)])
def test_weight_gradient_equals_the_direct_convolution(N, Cin, Cout, H, W):
    x = torch.randn(N, Cin, H, W, generator=_gen(Cin)).contiguous(memory_format=torch.channels_last)
    g = torch.randn(N, Cout, H, W, generator=_gen(Cout)).contiguous(memory_format=torch.channels_last)
    got = winograd.conv3x3_weight_grad(x, g)
    assert got.shape == (Cout, Cin, 3, 3) and got.is_contiguous()
    ref = torch.nn.grad.conv2d_weight(x.double(), (Cout, Cin, 3, 3), g.double(), padding=1)
    assert (got.double() - ref).abs().max().item() <= REL_TOL * ref.abs().max().item()


def test_weight_gradient_chunks_sum_every_tile_once(monkeypatch):
    x = torch.randn(5, 48, 12, 20, generator=_gen(5)).contiguous(memory_format=torch.channels_last)  # 75 tiles
    g = torch.randn(5, 32, 12, 20, generator=_gen(6)).contiguous(memory_format=torch.channels_last)
    whole = winograd.conv3x3_weight_grad(x, g)
    monkeypatch.setattr(winograd, "CHUNK_BYTES", 36 * 4 * 48 * 16)
    monkeypatch.setattr(winograd, "MIN_TILES", 16)  # chunks of 16 tiles: four and a last one of 11
    chunked = winograd.conv3x3_weight_grad(x, g)
    assert (chunked - whole).abs().max() <= 1e-5 * whole.abs().max()  # the same terms, summed in another order
    ref = torch.nn.grad.conv2d_weight(x.double(), (32, 48, 3, 3), g.double(), padding=1)
    assert (chunked.double() - ref).abs().max() <= REL_TOL * ref.abs().max()


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
    assert (y - want).abs().max() <= REL_TOL * want.abs().max()
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    calls.clear()
    blocks.conv_frames(conv, x, fast=False)  # exact: the official operation only
    assert calls == []


def test_disabled_keeps_the_direct_convolutions():
    w = torch.randn(64, 48, 3, 3)
    assert winograd.enabled() and winograd.forward_pays(16, 16, 16, 48, 64) and winograd.applies(16, 16, 16, w,
                                                                                                  torch.float32)
    conv = nn.Conv2d(48, 64, 3, padding=1)
    x = torch.randn(16, 48, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_()
    with winograd.disabled():
        assert not winograd.enabled()
        assert not winograd.forward_pays(16, 16, 16, 48, 64) and not winograd.applies(16, 16, 16, w, torch.float32)
        assert winograd.conv3x3(conv, x) is None
        xs = (torch.rand(16, 48, 16, 16) < 0.3).float().contiguous(memory_format=torch.channels_last)
        with torch.no_grad():  # the lookups, which only reorder the sums
            y = cpu_lut.lut_conv3x3(xs, conv.weight, None, torch.float32)
            assert (y - torch.nn.functional.conv2d(xs, conv.weight, padding=1)).abs().max() <= 1e-5
    assert winograd.enabled() and winograd.conv3x3(conv, x) is not None
