"""Linear layers and 3x3 convolutions over nonzero spikes (layers/sparse.py, sparse_* in neurons/neuron_cpu.cpp)
against F.linear / nn.Conv2d: the nonzero lists, forward values, input/weight/bias gradients in fp32 and under bf16
autocast, the density cut-over and the fallbacks, and the Spikformer layers that use them."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikeformer.kernels.cpu import bf16
from spikeformer.layers import fused_bn as BNN
from spikeformer.layers import sparse as SL
from spikeformer.neurons import _native
from spikeformer.neurons.nodes import LIF

pytestmark = pytest.mark.skipif(_native.library() is None, reason="no C++ compiler: the compiled kernel is off")


@pytest.fixture(autouse=True)
def _list_at_any_size(request, monkeypatch):
    """These tests check the kernels on small inputs: the size below which the dense product is used
    (``MIN_LIST_*``) is off, except in the test of that rule."""
    if "keep_size_rule" not in request.keywords:
        for name in ("MIN_LIST_ROWS", "MIN_LIST_MACS", "MIN_LIST_ROWS_AMX", "MIN_LIST_IN_AMX"):
            monkeypatch.setattr(SL, name, 0)
        monkeypatch.setattr(SL, "MAX_LIST_WIDENING_AMX", float("inf"))


def _spikes(shape, density, seed, dtype=torch.float32, counts=False):
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(shape, generator=g) < density).float()
    if counts:  # summed spikes of a residual stream: 0, 1, 2, 3
        s = s * torch.randint(1, 4, shape, generator=g).float()
    return s.to(dtype)


def _int_linear(K, N, seed, bias=True):
    # integer weights: every sum is exact in fp32 (and in bf16 below 256), in any order
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(K, N, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randint(-4, 5, (N, K), generator=g).float())
        if bias:
            lin.bias.copy_(torch.randint(-8, 9, (N,), generator=g).float())
    return lin


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("K", [384, 37, 16])
def test_sparse_rows_lists_every_nonzero(dtype, K):
    x = _spikes((50, K), 0.2, 0, dtype, counts=True)
    x[3] = 0.0
    x[4, : K // 2] = -0.0  # negative zero is zero
    x[5, -1] = -2.5  # any value, negative too
    x[6, 1] = float("nan")  # NaN is listed (a dense product would propagate it)
    rows = _native.sparse_rows(x, 1.0)
    rs, re, col, val = rows
    row6 = col[rs[6]:re[6]].tolist()
    assert 1 in row6 and torch.isnan(val[rs[6] + row6.index(1)])
    val[rs[6] + row6.index(1)] = 7.0
    x[6, 1] = 7.0
    dense = torch.zeros(50, K)
    for r in range(50):
        idx = col[rs[r]:re[r]].long()
        assert torch.all(idx[1:] > idx[:-1])  # column order
        dense[r, idx] = val[rs[r]:re[r]]
    assert torch.equal(dense, x.float())
    assert re[3] == rs[3]
    assert int(sum((re - rs).tolist())) == int((x != 0).sum())


def test_sparse_rows_gives_up_when_too_dense():
    x = _spikes((64, 128), 0.3, 1)
    assert _native.sparse_rows(x, 0.1) is None
    assert _native.sparse_rows(x, 0.5) is not None
    # above MAX_DENSITY listing does not pay; fp32 0/1 spikes then take the table lookups, real values the dense GEMM
    lin = nn.Linear(128, 32)
    x = _spikes((512, 128), 0.3, 1)
    torch.testing.assert_close(SL.spike_linear(lin, x), F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
    assert SL.spike_linear(lin, x * torch.rand_like(x)) is None
    assert SL.spike_linear(lin, x[:64]) is None  # too few rows for the lookups' tables to pay


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,step", [((1100, 37), 17), ((64, 100), 1), ((35, 96), 17)])
def test_compiled_nonzero_count_of_sampled_rows_equals_torch(dtype, shape, step):
    # counts, -0 (zero), NaN (nonzero); rows not a multiple of the step, columns off the 16/32-lane vectors
    x = _spikes(shape, 0.3, 5, dtype, counts=True)
    x[0, 0], x[0, 1], x[step, 3] = -0.0, float("nan"), 2.0
    sample = x[::step]
    want = float(torch.count_nonzero(sample)) / sample.numel()
    assert SL._fraction_nonzero(x, step) == want
    assert SL._fraction_nonzero(x.t().contiguous().t(), step) == want  # non-contiguous: PyTorch's count


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("N", [384, 100])  # full 64-column tiles, and a narrower last tile
def test_forward_and_gradients_equal_f_linear_fp32(bias, N):
    lin = _int_linear(96, N, 2, bias)
    x = _spikes((3, 40, 96), 0.05, 3, counts=True)
    g = torch.randint(-3, 4, (3, 40, N)).float()
    outs = []
    for sparse in (True, False):
        m = copy.deepcopy(lin)
        xi = x.clone().requires_grad_()
        y = SL.spike_linear(m, xi) if sparse else F.linear(xi, m.weight, m.bias)
        assert y is not None
        (y * g).sum().backward()
        outs.append((y.detach(), xi.grad, m.weight.grad, None if m.bias is None else m.bias.grad))
    (y, gx, gw, gb), (y2, gx2, gw2, gb2) = outs
    assert y.dtype == torch.float32 and y.shape == (3, 40, N)
    assert torch.equal(y, y2)  # integer data: exact in any summation order
    assert torch.equal(gx, gx2)
    assert torch.equal(gw, gw2)
    assert (gb is None and gb2 is None) or torch.equal(gb, gb2)


def test_random_weights_fp32_within_rounding():
    torch.manual_seed(5)
    lin = nn.Linear(200, 72)
    x = _spikes((2, 64, 200), 0.05, 6).requires_grad_()
    y = SL.spike_linear(lin, x)
    torch.testing.assert_close(y, F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    ref = g.reshape(-1, 72).t() @ x.detach().reshape(-1, 200)
    torch.testing.assert_close(lin.weight.grad, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float32], ids=["bf16-spikes", "fp32-spikes"])
def test_bf16_autocast_as_the_dense_gemm_sees_it(x_dtype):
    """Under bf16 autocast: weights and bias rounded to bf16, fp32 sums, bf16 output. With bf16-exact integer data the
    output equals autocast's F.linear bit for bit; the weight gradient is fp32 (the dense path's is rounded to bf16)."""
    lin = _int_linear(192, 128, 7)
    x = _spikes((4, 30, 192), 0.06, 8, x_dtype)
    g = torch.randint(-2, 3, (4, 30, 128)).to(torch.bfloat16)
    res = []
    for sparse in (True, False):
        m = copy.deepcopy(lin)
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            # 6 % nonzeros: above the bf16 bound of CPUs with AMX (sparse.max_density), so the bound is given
            y = SL.spike_linear(m, xi, max_density=0.1) if sparse else F.linear(xi, m.weight, m.bias)
        assert y is not None
        (y.float() * g.float()).sum().backward()
        res.append((y.detach(), xi.grad, m.weight.grad, m.bias.grad))
    (y, gx, gw, gb), (y2, gx2, gw2, gb2) = res
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, y2)
    assert gx.dtype == x_dtype and torch.equal(gx, gx2)
    assert gw.dtype == torch.float32 and torch.equal(gw, gw2)  # integer sums below 256: exact in both
    assert torch.equal(gb, gb2)
    # random weights: the same bf16 output up to one rounding of a differently ordered fp32 sum
    torch.manual_seed(9)
    lin = nn.Linear(192, 128)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = SL.spike_linear(lin, x, max_density=0.1), F.linear(x, lin.weight, lin.bias)
    ulp = b.float().abs().clamp_min(1e-3) * 2 ** -7
    assert torch.all((a.float() - b.float()).abs() <= ulp)


def test_bf16_bound_follows_the_cpu():
    """bf16 listing pays below 8 % nonzeros with AVX512-BF16 GEMMs, 2.5 % (1 % in inference) with AMX tiles, 30 % where
    bf16 products are emulated in fp32 (benchmarks/bench_sparse.py)."""
    from spikeformer.kernels.cpu import bf16

    got = (SL.max_density(torch.bfloat16), SL.max_density(torch.bfloat16, forward_only=True))
    if not bf16.native():
        assert got == (SL.MAX_DENSITY_EMULATED_BF16,) * 2
    elif bf16.amx():
        assert got == (SL.MAX_DENSITY_AMX, SL.MAX_DENSITY_AMX_FORWARD) and got[1] < got[0] < SL.MAX_DENSITY
    else:
        assert got == (SL.MAX_DENSITY,) * 2
    assert SL.max_density(torch.float32) == SL.MAX_DENSITY_FP32


def test_fallbacks():
    lin = nn.Linear(64, 32)
    x = _spikes((10, 64), 0.05, 10)
    assert SL.spike_linear(lin, x) is not None
    assert SL.spike_linear(lin, x.to(torch.bfloat16)) is None  # bf16 input, fp32 weight, no autocast: F.linear's error
    assert SL.spike_linear(lin, x.t().contiguous().t()) is None  # not contiguous
    assert SL.spike_linear(lin, x.double()) is None
    with torch.autocast("cpu", dtype=torch.float16):
        assert SL.spike_linear(lin, x) is None  # fp16 autocast: not compiled
    half = copy.deepcopy(lin).to(torch.bfloat16)
    assert SL.spike_linear(half, x.to(torch.bfloat16)) is None  # a bf16 model's weights


def _mlp_step(m, x, y, dtype):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss = F.cross_entropy(m(x).float(), y)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in m.named_parameters()}


@pytest.fixture
def sparse_calls(monkeypatch):
    calls = []
    real = BNN.spike_linear

    def spy(linear, x, *a, **k):
        out = real(linear, x, *a, **k)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(BNN, "spike_linear", spy)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32-fast", "bf16"])
def test_spikformer_runs_its_spike_inputs_on_the_nonzeros(sparse_calls, monkeypatch, dtype):
    """A training step of a small Spikformer: its token projections (q, k, v and fc1 read the residual stream of
    summed spikes, proj and fc2 spikes) and its stem convolutions after the first (inputs: spikes) are offered the
    sparse products on the fast path; loss and gradients equal the dense step's within rounding."""
    import spikeformer
    from spikeformer.models import spikformer as SFM

    conv_calls = []
    from spikeformer.layers import blocks as BLK

    real_conv = BLK.spike_conv3x3

    def conv_spy(conv, x, *a, **k):
        out = real_conv(conv, x, *a, max_density=1.0)  # the small model's stem fires more than 8 %
        conv_calls.append(out is not None)
        return out

    monkeypatch.setattr(BLK, "spike_conv3x3", conv_spy)
    torch.manual_seed(0)
    m = SFM.Spikformer("cifar", num_classes=10, embed_dim=64, depth=2, num_heads=4, T=2)
    spikeformer.layers.use_fast_kernels(m)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    m_dense = copy.deepcopy(m)
    l1, g1 = _mlp_step(m, x, y, dtype)
    used = sum(sparse_calls)
    assert len(sparse_calls) == 12 and used >= 2  # six projections of both blocks offered; sparse where sparse
    assert conv_calls == [True, True, True, True]  # stem stages 2-4 (the first sees images) and the rpe conv
    monkeypatch.setattr(BNN, "spike_linear", lambda *a, **k: None)
    monkeypatch.setattr(BLK, "spike_conv3x3", lambda *a, **k: None)
    l2, g2 = _mlp_step(m_dense, x, y, dtype)
    if dtype == torch.float32:
        assert abs(l1 - l2) < 1e-4
        top = max(g.abs().max().item() for g in g2.values())
        for n in g1:
            torch.testing.assert_close(g1[n], g2[n], rtol=1e-3, atol=1e-4 * top, msg=n)
    else:  # bf16: a few pre-activations round differently and flip spikes; the step is the same to ~1 %
        assert abs(l1 - l2) < 0.02 * abs(l2)


def test_exact_path_and_hooks_keep_the_dense_linear(sparse_calls):
    from spikeformer.layers import TokenBN

    lin, bn, neuron = nn.Linear(32, 24), TokenBN(24), LIF()
    bn.numerics = "exact"
    x = _spikes((2, 3, 10, 32), 0.05, 12)
    ref = neuron(copy.deepcopy(bn)(lin(x)))
    assert torch.equal(BNN.linear_bn_neuron(lin, copy.deepcopy(bn), neuron, x, sparse=True), ref)  # exact fp32
    assert sparse_calls == []
    seen = []
    h = lin.register_forward_hook(lambda mod, i, o: seen.append(o))
    try:
        BNN.linear_bn_neuron(lin, copy.deepcopy(bn), neuron, x, fuse=True, sparse=True)
    finally:
        h.remove()
    assert len(seen) == 1 and sparse_calls == []
    # eval mode on the fast path: the sparse product with the bias inside, then BatchNorm+LIF
    bn.eval()
    with torch.no_grad():
        out = BNN.linear_bn_neuron(lin, bn, neuron, x, fuse=True, sparse=True)
        assert sparse_calls == [True]
        z = F.linear(x, lin.weight, lin.bias)
        torch.testing.assert_close(SL.spike_linear(lin, x), z, rtol=1e-5, atol=1e-5)
        assert (out != BNN.bn_neuron(bn, neuron, z, fuse=True)).float().mean() < 0.01


def _int_conv(Cin, Cout, seed, bias=False):
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(Cin, Cout, 3, 1, 1, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(torch.randint(-3, 4, conv.weight.shape, generator=g).float())
        if bias:
            conv.bias.copy_(torch.randint(-5, 6, (Cout,), generator=g).float())
    return conv


def _frames(shape, density, seed, dtype=torch.float32):
    return _spikes(shape, density, seed, dtype, counts=True).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("Cin,Cout,bias", [(8, 16, False), (5, 20, True), (24, 200, False), (3, 7, True)])
def test_spike_conv_equals_conv2d(dtype, Cin, Cout, bias):
    """Forward, input, weight and bias gradients equal nn.Conv2d's (integer data: exact in any summation order),
    borders (padding) included, for full 16-wide column vectors, vector counts above 12 and single columns. bf16:
    PyTorch's own bf16 products on both sides (the route of a CPU with bf16 instructions; see
    test_spike_conv_emulated_bf16_rounds_fp32_sums for the emulated one)."""
    conv = _int_conv(Cin, Cout, 13, bias)
    x = _frames((3, Cin, 7, 5), 0.06, 14)
    g = torch.randint(-2, 3, (3, Cout, 7, 5)).float().contiguous(memory_format=torch.channels_last)
    res = []
    for sparse in (True, False):
        c = copy.deepcopy(conv)
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16), bf16.emulation(False):
            y = SL.spike_conv3x3(c, xi, max_density=1.0) if sparse else c(xi)
            assert y is not None
            (y.float() * g).sum().backward()
        res.append((y.detach(), xi.grad, c.weight.grad, None if c.bias is None else c.bias.grad))
    (y, gx, gw, gb), (y2, gx2, gw2, gb2) = res
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, y2)
    assert torch.equal(gx, gx2)
    assert gw.dtype == torch.float32 and torch.equal(gw, gw2)
    assert (gb is None and gb2 is None) or torch.equal(gb, gb2)


@pytest.mark.parametrize("density", [0.06, 0.3], ids=["listed", "lookups"])
def test_spike_conv_emulated_bf16_rounds_fp32_sums(density, monkeypatch):
    """Where bf16 products are emulated (a CPU without bf16 instructions), the convolution under bf16 autocast is
    the fp32 one (exact integer sums here) rounded to bf16: output, input gradient, and the weight and bias
    gradients rounded to bf16 and back, as autocast's casts round them; sums above 256 do round."""
    conv = _int_conv(24, 192, 13, True)
    x = _frames((16, 24, 8, 8), density, 14)
    x = (x > 0).float().contiguous(memory_format=torch.channels_last)  # 0/1: the lookups' input (1024 rows)
    g = torch.randint(-2, 3, (16, 192, 8, 8)).float().contiguous(memory_format=torch.channels_last)
    c32, c16 = copy.deepcopy(conv), copy.deepcopy(conv)
    x32, x16 = x.clone().requires_grad_(), x.clone().requires_grad_()
    routes = []
    for name in ("lut_conv3x3",):
        real = getattr(SL._lut, name)
        monkeypatch.setattr(SL._lut, name, lambda *a, real=real: routes.append(a[0].dtype) or real(*a))
    y32 = F.conv2d(x32, c32.weight, c32.bias, padding=1)
    (y32 * g).sum().backward()
    with torch.autocast("cpu", dtype=torch.bfloat16), bf16.emulation(True):
        y16 = SL.spike_conv3x3(c16, x16)
        assert y16 is not None
        (y16.float() * g).sum().backward()
    assert routes == ([torch.float32] if density > 0.12 else [])  # the fp32 lookups on the bf16 values
    assert y16.dtype == torch.bfloat16 and torch.equal(y16, y32.detach().bfloat16())
    assert x32.grad.abs().max() > 256  # some input gradients are rounded
    assert torch.equal(x16.grad, x32.grad.bfloat16().float())
    assert torch.equal(c16.weight.grad, c32.weight.grad.bfloat16().float())
    assert torch.equal(c16.bias.grad, c32.bias.grad.bfloat16().float())


def test_spike_conv_random_weights_within_rounding():
    torch.manual_seed(15)
    conv = nn.Conv2d(16, 32, 3, 1, 1, bias=False)
    x = _frames((4, 16, 9, 9), 0.05, 16).requires_grad_()
    y = SL.spike_conv3x3(conv, x)
    torch.testing.assert_close(y, conv(x), rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    ref = torch.nn.grad.conv2d_weight(x.detach(), conv.weight.shape, g, padding=1)
    torch.testing.assert_close(conv.weight.grad, ref, rtol=1e-4, atol=1e-4)


def test_spike_conv_fallbacks():
    x = _frames((2, 8, 6, 6), 0.05, 17)
    assert SL.spike_conv3x3(_int_conv(8, 16, 0), x) is not None
    assert SL.spike_conv3x3(_int_conv(8, 16, 0), x.contiguous()) is None  # NCHW frames
    assert SL.spike_conv3x3(_int_conv(8, 16, 0), _frames((2, 8, 6, 6), 0.3, 18)) is None  # too dense
    for conv in (nn.Conv2d(8, 16, 3, 2, 1), nn.Conv2d(8, 16, 1), nn.Conv2d(8, 16, 3, 1, 1, groups=2),
                 nn.Conv2d(8, 16, 3, 1, 2, dilation=2), nn.Conv2d(8, 16, 3, 1, 1, padding_mode="reflect"),
                 nn.Conv2d(8, 16, 3, 1, 0)):
        assert SL.spike_conv3x3(conv, x) is None


def test_stem_keeps_a_hooked_convolution_dense(monkeypatch):
    from spikeformer.layers import blocks as BLK

    calls = []
    real = BLK.spike_conv3x3
    monkeypatch.setattr(BLK, "spike_conv3x3", lambda *a, **k: calls.append(1) or real(*a, **k))
    conv = _int_conv(8, 16, 0)
    x = _frames((6, 8, 6, 6), 0.05, 19).unflatten(0, (2, 3))  # [T, B, C, H, W], channels-last frames
    out = BLK.conv_frames(conv, x, fast=True, spikes_in=True)
    assert calls == [1] and out.shape == (2, 3, 16, 6, 6)
    assert torch.equal(out, conv(x.flatten(0, 1)).unflatten(0, (2, 3)))
    h = conv.register_forward_hook(lambda *a: None)
    try:  # hooks (energy reports, firing rates) see the convolution's call: the dense module runs
        assert torch.equal(BLK.conv_frames(conv, x, fast=True, spikes_in=True), out) and calls == [1]
    finally:
        h.remove()


@pytest.mark.parametrize("spikes_in", [False, True])
def test_small_pointwise_convolutions_run_as_one_gemm(monkeypatch, spikes_in):
    """A 1x1 convolution over frames of at most POINTWISE_GEMM_MAX_ROWS pixels runs on the fast path as a product on
    the channel-last view (no convolution primitive: its fixed cost loses there); values and gradients equal the
    convolution's within fp32 rounding, the output is channels-last frames. Larger dense frames keep the
    convolution."""
    from spikeformer.layers import blocks as BLK

    convs = []
    real = nn.Conv2d._conv_forward
    monkeypatch.setattr(nn.Conv2d, "_conv_forward", lambda self, *a: convs.append(1) or real(self, *a))
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 40, 1)
    for side, gemm in ((4, True), (16, False)):
        T, B = 2, 4
        assert (T * B * side * side <= BLK.POINTWISE_GEMM_MAX_ROWS) == gemm
        x = _spikes((T, B, 24, side, side), 0.1, 3) if spikes_in else torch.randn(T, B, 24, side, side)
        xf, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
        convs.clear()
        y = BLK.conv_frames(conv, xf, fast=True, spikes_in=spikes_in)
        assert bool(convs) == (not gemm and not spikes_in)  # larger spikes: listed (1x1 over nonzeros) as before
        assert BLK._is_channels_last_frames(y) and y.shape == (T, B, 40, side, side)
        ref = conv(xe.flatten(0, 1)).unflatten(0, (T, B))
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
        g = torch.randn_like(ref)
        gx, gw, gb = torch.autograd.grad(y, (xf, conv.weight, conv.bias), g)
        rx, rw, rb = torch.autograd.grad(ref, (xe, conv.weight, conv.bias), g)
        for a, b in ((gx, rx), (gw, rw), (gb, rb)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel,bias", [(3, True), (5, False)])
def test_same_convolutions_on_1x1_maps_run_their_centre_tap(monkeypatch, kernel, bias):
    """A stride-1 'same' convolution of 1x1 maps sees only padding off its centre tap: pointwise_gemm and the fast
    conv_frames run it as the centre tap's product (no convolution call, any number of frames), values and input and
    bias gradients the convolution's within rounding, the weight gradient the convolution's at the centre and exactly
    zero elsewhere; under bf16 autocast bf16 out and fp32 parameter gradients, as the convolution gives. Larger maps
    and other strides, paddings or groups keep the convolution."""
    from spikeformer.layers import blocks as BLK

    convs = []
    real = nn.Conv2d._conv_forward
    monkeypatch.setattr(nn.Conv2d, "_conv_forward", lambda self, *a: convs.append(1) or real(self, *a))
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 40, kernel, padding=kernel // 2, bias=bias)
    params = [conv.weight] + ([conv.bias] if bias else [])
    c = kernel // 2
    for T, B in ((2, 3), (4, BLK.POINTWISE_GEMM_MAX_ROWS // 2)):  # the second: more frames than the 1x1 row limit
        x = _spikes((T, B, 24, 1, 1), 0.3, 9)
        for run in (lambda xf: BLK.pointwise_gemm(conv, xf), lambda xf: BLK.conv_frames(conv, xf, fast=True)):
            for autocast in (False, True):
                xf, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
                convs.clear()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), bf16.emulation(False):
                    y = run(xf)
                    assert not convs
                    ref = conv(xe.flatten(0, 1)).unflatten(0, (T, B))
                assert y.shape == ref.shape == (T, B, 40, 1, 1) and y.dtype == ref.dtype
                tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(y, ref, **tol)
                g = torch.randn(ref.shape).to(ref.dtype)
                got = torch.autograd.grad(y, [xf] + params, g)
                want = torch.autograd.grad(ref, [xe] + params, g)
                gtol = dict(rtol=2e-2, atol=5e-2) if autocast else dict(rtol=1e-4, atol=1e-4)
                for a, b in zip(got, want):
                    assert a.dtype == b.dtype
                    torch.testing.assert_close(a, b, **gtol)
                off = torch.ones(kernel, kernel, dtype=torch.bool)
                off[c, c] = False
                assert got[1][:, :, off].abs().sum() == 0 and got[1][:, :, c, c].abs().sum() > 0
    x = _spikes((2, 3, 24, 2, 2), 0.3, 10)
    assert BLK.pointwise_gemm(conv, x) is None  # 2x2 maps: the other taps see pixels
    x1 = _spikes((2, 3, 24, 1, 1), 0.3, 11)
    for other in (nn.Conv2d(24, 40, 3, padding=1, stride=2), nn.Conv2d(24, 40, 3, padding=0),
                  nn.Conv2d(24, 40, 3, padding=1, groups=2), nn.Conv2d(24, 40, 3, padding=1, padding_mode="circular"),
                  nn.Conv2d(24, 40, (3, 2), padding=(1, 1))):
        assert BLK.pointwise_gemm(other, x1) is None


@pytest.mark.keep_size_rule
def test_small_products_stay_dense():
    """Below MIN_LIST_ROWS rows or MIN_LIST_MACS multiply-adds spike_linear leaves the product to the dense GEMM (its
    fixed costs lose there), and may_list says so; at the threshold it lists; an explicit max_density still lists."""
    lin = nn.Linear(384, 384)
    rows = max(SL.MIN_LIST_ROWS, -(-SL.MIN_LIST_MACS // (384 * 384)))
    x = _spikes((rows, 384), 0.02, 5)
    assert SL.spike_linear(lin, x) is not None and SL.may_list(x, lin.weight)
    small = x[: rows // 2].contiguous()
    assert SL.spike_linear(lin, small) is None and not SL.may_list(small, lin.weight)
    narrow = nn.Linear(64, 64)  # enough rows, too few multiply-adds
    xn = _spikes((SL.MIN_LIST_ROWS * 2, 64), 0.02, 6)
    assert SL.spike_linear(narrow, xn) is None
    torch.testing.assert_close(SL.spike_linear(lin, small, max_density=0.5), F.linear(small, lin.weight, lin.bias),
                               rtol=1e-5, atol=1e-5)
    # bf16 on AMX tiles: from MIN_LIST_ROWS_AMX rows, and only layers that do not widen from MIN_LIST_IN_AMX inputs
    if bf16.amx():
        xa = _spikes((SL.MIN_LIST_ROWS_AMX, 384), 0.01, 7)
        with torch.autocast("cpu", dtype=torch.bfloat16), bf16.emulation(False):
            assert SL.spike_linear(lin, xa) is not None
            assert SL.spike_linear(lin, xa[: SL.MIN_LIST_ROWS_AMX // 2].contiguous()) is None
            assert SL.spike_linear(nn.Linear(384, 1536), xa) is None


def test_pointwise_gemm_keeps_the_frames_layout():
    """blocks.pointwise_gemm (fast blocks that keep NCHW frames): a small 1x1 convolution as one GEMM, NCHW frames in
    and out (channels-last in, channels-last out), values and gradients the convolution's within rounding; None for
    another kernel, too many pixels or a hooked module."""
    from spikeformer.layers import blocks as BLK

    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 1, bias=False)
    x = _spikes((2, 3, 16, 4, 4), 0.2, 8)
    for frames, contiguous in ((x, True), (BLK.channels_last(x), False)):
        xf, xe = frames.clone().requires_grad_(), x.clone().requires_grad_()
        y = BLK.pointwise_gemm(conv, xf)
        assert y.is_contiguous() == contiguous and BLK._is_channels_last_frames(y) != contiguous
        ref = conv(xe.flatten(0, 1)).unflatten(0, (2, 3))
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
        g = torch.randn_like(ref)
        for a, b in zip(torch.autograd.grad(y, (xf, conv.weight), g), torch.autograd.grad(ref, (xe, conv.weight), g)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert BLK.pointwise_gemm(nn.Conv2d(16, 24, 3, padding=1), x) is None
    side = int((BLK.POINTWISE_GEMM_MAX_ROWS // 6) ** 0.5) + 1
    assert BLK.pointwise_gemm(conv, torch.zeros(2, 3, 16, side, side)) is None
    h = conv.register_forward_hook(lambda *a: None)
    try:
        assert BLK.pointwise_gemm(conv, x) is None
    finally:
        h.remove()
