"""The fused BatchNorm + neuron kernel (layers/fused_bn.py, neurons/neuron_cpu.cpp) against BatchNorm then the
neuron (the unfused modules, themselves checked against the reference elsewhere): spikes, gradients of the input,
weight and bias, running statistics; the fallbacks; and the Spikformer blocks that use it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from spikeformer.layers import TokenBN
from spikeformer.layers import fused_bn as BNN
from spikeformer.layers.fused_bn import bn_neuron, can_fuse
from spikeformer.neurons import _native
from spikeformer.neurons.nodes import IF, LIF, PLIF

from helpers import exact_then_fast

pytestmark = pytest.mark.skipif(_native.library() is None, reason="no C++ compiler: the compiled kernel is off")


def _frames(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, x.shape[:2])


def _make(kind: str, C: int, seed: int = 0) -> nn.Module:
    bn = TokenBN(C) if kind == "tokens" else nn.BatchNorm2d(C)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(C, generator=g) + 0.5)
        bn.bias.copy_(torch.rand(C, generator=g) * 0.6 - 0.3)
        bn.running_mean.copy_(torch.rand(C, generator=g) - 0.5)
        bn.running_var.copy_(torch.rand(C, generator=g) + 0.5)
    return bn


def _input(kind: str, shape, dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 1.5 + 0.3
    return (_frames(x) if kind == "frames" else x).to(dtype)


def _run(bn, neuron, x0, grad, fuse):
    bn = copy.deepcopy(bn)
    x = x0.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    s = bn_neuron(bn, neuron, x, fuse)
    (s.float() * grad.float()).sum().backward()
    return s.detach(), x.grad, bn.weight.grad, bn.bias.grad, bn


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


SHAPES = {"tokens": (4, 6, 20, 24), "frames": (3, 4, 16, 9, 7)}  # C = 24 / 16; 480 / 252 rows per step


@pytest.mark.parametrize("kind", ["tokens", "frames"])
@pytest.mark.parametrize("neuron", [
    LIF(tau=2.0, detach_reset=True),  # Spikformer's neuron (sigmoid surrogate)
    LIF(tau=3.0, decay_input=False, v_reset=None, surrogate="atan"),  # soft reset, reset in the graph, ATan
    IF(v_threshold=0.5),
], ids=["lif", "lif-soft-atan", "if"])
def test_fp32_training_matches_unfused(kind, neuron):
    shape = SHAPES[kind]
    C = shape[-1] if kind == "tokens" else shape[2]
    bn = _make(kind, C)
    x = _input(kind, shape, torch.float32, 1)
    grad = _input(kind, shape, torch.float32, 2)
    assert can_fuse(bn, neuron, x.requires_grad_())
    ref = _run(bn, neuron, x, grad, fuse=False)
    out = _run(bn, neuron, x, grad, fuse=True)
    assert out[0].shape == ref[0].shape and out[0].stride() == ref[0].stride()
    assert torch.equal(out[0], ref[0])  # the statistics differ by rounding only: no spike flips on this data
    assert ref[0].mean().item() > 0.02  # the neurons do fire
    assert _rel(out[1], ref[1]) < 1e-5
    assert _rel(out[2], ref[2]) < 1e-5
    assert _rel(out[3], ref[3]) < 1e-5
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(out[4], name), getattr(ref[4], name), rtol=1e-6, atol=1e-6)
    assert out[4].num_batches_tracked.item() == ref[4].num_batches_tracked.item() == 1


@pytest.mark.parametrize("kind", ["tokens", "frames"])
def test_bf16_training_matches_unfused(kind):
    shape = (4, 16, 32, 48) if kind == "tokens" else (4, 8, 48, 8, 8)
    C = 48
    bn = _make(kind, C)
    neuron = LIF(tau=2.0, detach_reset=True)
    x = _input(kind, shape, torch.bfloat16, 3)
    grad = _input(kind, shape, torch.bfloat16, 4)
    ref = _run(bn, neuron, x, grad, fuse=False)
    out = _run(bn, neuron, x, grad, fuse=True)
    assert out[0].dtype == out[1].dtype == torch.bfloat16
    assert (out[0] != ref[0]).float().mean().item() < 1e-3
    assert _rel(out[2], ref[2]) < 2e-2 and _rel(out[3], ref[3]) < 2e-2
    agree = (out[0] == ref[0]).flatten(1).all(0)  # neurons whose spikes agree at every step
    d = (out[1].float() - ref[1].float()).flatten(1)[:, agree]
    assert d.abs().max().item() < 3e-2 * ref[1].float().abs().max().item()
    torch.testing.assert_close(out[4].running_mean, ref[4].running_mean, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["tokens", "frames"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eval_running_stats(kind, dtype):
    shape = SHAPES[kind]
    C = shape[-1] if kind == "tokens" else shape[2]
    bn = _make(kind, C).eval()
    neuron = LIF(tau=2.0, detach_reset=True)
    x = _input(kind, shape, dtype, 5)
    with torch.no_grad():
        ref = bn_neuron(bn, neuron, x, fuse=False)
        out = bn_neuron(bn, neuron, x, fuse=True)
    assert torch.equal(out, ref) and ref.sum().item() > 0
    assert bn.num_batches_tracked.item() == 0


def test_momentum_none_and_zero():
    x = _input("tokens", SHAPES["tokens"], torch.float32, 6)
    neuron = LIF()
    for momentum in (None, 0.0):
        bn = _make("tokens", 24)
        bn.momentum = momentum
        bn.num_batches_tracked.fill_(3)
        ref = copy.deepcopy(bn)
        bn_neuron(ref, neuron, x, fuse=False)
        before = bn.running_mean.clone()
        bn_neuron(bn, neuron, x, fuse=True)
        torch.testing.assert_close(bn.running_mean, ref.running_mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(bn.running_var, ref.running_var, rtol=1e-6, atol=1e-6)
        assert bn.num_batches_tracked.item() == 4
        if momentum == 0.0:  # recomputation under checkpoint_blocks: running statistics untouched, bit for bit
            assert torch.equal(bn.running_mean, before)


def test_fallbacks(monkeypatch):
    x = _input("tokens", SHAPES["tokens"], torch.float32, 7).requires_grad_()
    bn = _make("tokens", 24)
    assert can_fuse(bn, LIF(), x)
    assert not can_fuse(bn, PLIF(), x)  # learnable decay: the unfused modules
    assert not can_fuse(nn.BatchNorm1d(24), LIF(), x)  # plain BatchNorm1d normalises dim 1, not the last
    assert not can_fuse(bn, LIF(), x.transpose(1, 2))  # channel not innermost in memory
    frames = _input("frames", SHAPES["frames"], torch.float32, 8)
    bn2 = _make("frames", 16)
    assert can_fuse(bn2, LIF(), frames)
    assert not can_fuse(bn2, LIF(), frames.contiguous())  # NCHW frames
    bn.eval()
    assert not can_fuse(bn, LIF(), x)  # eval statistics but gradients wanted
    with torch.no_grad():
        assert can_fuse(bn, LIF(), x)
    monkeypatch.setattr(_native, "enabled", lambda: False)
    with torch.no_grad():
        assert not can_fuse(bn, LIF(), x)


def test_fallback_gives_the_unfused_result():
    # PLIF cannot fuse: bn_neuron must still compute neuron(bn(x)), gradients included
    x = _input("tokens", SHAPES["tokens"], torch.float32, 9)
    grad = _input("tokens", SHAPES["tokens"], torch.float32, 10)
    bn = _make("tokens", 24)
    neuron = PLIF()
    out = _run(bn, neuron, x, grad, fuse=True)
    b2 = copy.deepcopy(bn)
    x2 = x.clone().requires_grad_()
    s = neuron(b2(x2))
    (s * grad).sum().backward()
    assert torch.equal(out[0], s.detach()) and torch.equal(out[1], x2.grad)


@pytest.fixture
def fused_calls(monkeypatch):
    """A list that gets one entry per training-mode call of the fused kernel (at every block size: the small-block
    rule of layers/blocks.py is off)."""
    import spikeformer.layers.blocks as blocks

    monkeypatch.setattr(blocks, "MIN_FAST_BLOCK_ELEMENTS", 0)
    calls = []
    real = BNN._native.NativeBNNeuron.apply
    monkeypatch.setattr(BNN._native.NativeBNNeuron, "apply", lambda *a: calls.append(1) or real(*a))
    # ... or per branch of the token projections' Function that calls the kernel itself (kernels/cpu/linear_bn.py)
    real_group = BNN._linear_bn.apply
    monkeypatch.setattr(BNN._linear_bn, "apply", lambda x, br, *a: calls.extend([1] * len(br)) or real_group(x, br, *a))
    return calls


def test_exact_path_never_fuses(fused_calls):
    # fp32 without fast kernels must give the official code's bits: the fused kernel is not called
    import spikeformer.layers

    calls = fused_calls
    from spikeformer.models.spikformer import Spikformer

    torch.manual_seed(0)
    m = Spikformer("cifar", num_classes=10, embed_dim=64, depth=1, num_heads=4, T=2)
    spikeformer.layers.use_exact_kernels(m)
    m(torch.randn(2, 3, 32, 32)).sum().backward()
    assert calls == []
    spikeformer.layers.use_fast_kernels(m)
    m(torch.randn(8, 3, 32, 32)).sum().backward()  # 16 frames: the 8x8 maps are channels-last (blocks.py)
    assert len(calls) == 5 + 6  # the SPS stem's five BN -> LIF, and six in the block


def test_spikformer_fast_step_matches_unfused(monkeypatch):
    """A training step of the fast model with and without fusion: same loss, same gradients within rounding."""
    import spikeformer
    from spikeformer.models.spikformer import Spikformer

    torch.manual_seed(0)
    m = Spikformer("cifar", num_classes=10, embed_dim=64, depth=1, num_heads=4, T=2)
    spikeformer.layers.use_fast_kernels(m)
    x = torch.randn(4, 3, 32, 32)
    y = torch.randint(0, 10, (4,))
    results = []
    for fuse in (True, False):
        mm = copy.deepcopy(m)
        if not fuse:
            monkeypatch.setattr(BNN, "can_fuse", lambda *a: False)
        loss = torch.nn.functional.cross_entropy(mm(x), y)
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in mm.named_parameters()},
                        {n: b.clone() for n, b in mm.named_buffers()}))
    (l1, g1, b1), (l2, g2, b2) = results
    assert abs(l1 - l2) < 1e-5
    top = max(g.abs().max().item() for g in g2.values())
    for n in g1:  # (a Linear bias before BatchNorm has a zero gradient up to rounding: hence the atol)
        torch.testing.assert_close(g1[n], g2[n], rtol=1e-3, atol=1e-5 * top, msg=n)
    for n in b1:
        torch.testing.assert_close(b1[n], b2[n], rtol=1e-5, atol=1e-6)


def test_hooks_see_every_neuron_call():
    # energy reports and user tools observe neurons with hooks: a hooked module is never fused away
    x = _input("tokens", SHAPES["tokens"], torch.bfloat16, 11)
    bn, neuron = _make("tokens", 24), LIF()
    assert can_fuse(bn, neuron, x)
    seen = []
    h = neuron.register_forward_hook(lambda m, i, o: seen.append(o.sum().item()))
    try:
        assert not can_fuse(bn, neuron, x)
        s = bn_neuron(bn, neuron, x, fuse=True)
    finally:
        h.remove()
    assert seen == [s.sum().item()]
    h = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        assert not can_fuse(bn, neuron, x)
    finally:
        h.remove()
    assert can_fuse(bn, neuron, x)


def test_spikingformer_qkv_fuse_on_the_fast_path(fused_calls):
    from spikeformer.models.spikingformer import Spikingformer

    torch.manual_seed(0)
    m = Spikingformer("cifar", num_classes=10, embed_dim=64, depth=1, num_heads=4, T=2)
    ref, exact_calls, out = exact_then_fast(m, torch.randn(2, 3, 32, 32), fused_calls)
    assert exact_calls == []  # exact fp32 path
    assert len(fused_calls) == 4 + 3 + 1  # the tokenizer's four BN -> LIF, q, k, v, and the MLP's hidden BN -> LIF
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)


def _linear_run(linear, bn, neuron, x0, grad, fused: bool, dtype=None):
    linear, bn = copy.deepcopy(linear), copy.deepcopy(bn)
    x = x0.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        if fused:
            s = BNN.linear_bn_neuron(linear, bn, neuron, x, fuse=True)
        else:
            s = neuron(bn(linear(x)))
    (s.float() * grad).sum().backward()
    return s.detach(), x.grad, linear, bn


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("onednn", [False, True], ids=["linear", "onednn"])
def test_linear_bias_left_to_the_batch_mean(fused_calls, dtype, onednn):
    """linear_bn_neuron in training leaves the Linear's bias out of the GEMM (BatchNorm's batch mean absorbs it):
    spikes, gradients and running statistics as Linear -> BatchNorm -> LIF; the bias's gradient is exactly zero,
    the unfused one zero up to rounding."""
    from spikeformer.layers import OneDNNLinear

    torch.manual_seed(3)
    linear = nn.Linear(16, 24)
    with torch.no_grad():
        linear.bias.uniform_(-2, 2)  # large, so that a bias lost from the running mean would show
    if onednn:
        linear.__class__ = OneDNNLinear
    bn, neuron = _make("tokens", 24), LIF(tau=2.0, detach_reset=True)
    x = torch.randn(4, 6, 20, 16)
    grad = torch.randn(4, 6, 20, 24)
    s, gx, lin, b = _linear_run(linear, bn, neuron, x, grad, True, dtype)
    assert len(fused_calls) == 1
    s2, gx2, lin2, b2 = _linear_run(linear, bn, neuron, x, grad, False, dtype)
    assert (s != s2).float().mean().item() <= (2e-3 if dtype == torch.bfloat16 else 1e-6)
    tol = dict(rtol=0.05, atol=0.02) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-5)
    if dtype == torch.float32:  # (in bf16 a few flipped spikes move these by more than rounding)
        torch.testing.assert_close(gx, gx2, **tol)
        torch.testing.assert_close(lin.weight.grad, lin2.weight.grad, **tol)
        torch.testing.assert_close(b.weight.grad, b2.weight.grad, **tol)
    assert torch.equal(lin.bias.grad, torch.zeros(24))
    noise = 1e-2 if dtype == torch.bfloat16 else 1e-4  # the unfused bias gradient: zero up to the dtype's rounding
    assert lin2.bias.grad.abs().max() <= noise * lin2.weight.grad.abs().max()
    torch.testing.assert_close(b.running_mean, b2.running_mean, rtol=1e-5, atol=1e-5 if dtype == torch.float32 else 2e-3)
    torch.testing.assert_close(b.running_var, b2.running_var, rtol=1e-4, atol=1e-5 if dtype == torch.float32 else 2e-3)
    assert b.num_batches_tracked.item() == 1


def test_linear_bn_neuron_keeps_the_bias_where_it_matters(fused_calls):
    torch.manual_seed(4)
    linear, bn, neuron = nn.Linear(16, 24), _make("tokens", 24), LIF()
    x = torch.randn(4, 6, 20, 16)
    # eval mode (running statistics): the bias is part of the input
    bn.eval()
    with torch.no_grad():
        ref = neuron(bn(linear(x)))
        assert torch.equal(BNN.linear_bn_neuron(linear, bn, neuron, x, fuse=True), ref)
    bn.train()
    # a hook on the Linear must see its usual call and output
    seen = []
    h = linear.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        b1, b2 = copy.deepcopy(bn), copy.deepcopy(bn)
        out = BNN.linear_bn_neuron(linear, b1, neuron, x, fuse=True)
        assert torch.equal(seen[0], F.linear(x, linear.weight, linear.bias))
        assert torch.equal(out, BNN.bn_neuron(b2, neuron, seen[0], fuse=True))
    finally:
        h.remove()
    # the exact path (fuse=False) is Linear -> BatchNorm -> LIF, bit for bit
    b1, b2 = copy.deepcopy(bn), copy.deepcopy(bn)
    assert torch.equal(BNN.linear_bn_neuron(linear, b1, neuron, x, fuse=False), neuron(b2(linear(x))))
    assert torch.equal(b1.running_mean, b2.running_mean)
    assert len(fused_calls) == 2  # the hooked-Linear call and its reference (BatchNorm+LIF fused, bias in the GEMM)


def test_small_conv_blocks_take_the_exact_operations_on_the_fast_path(monkeypatch):
    """Below MIN_FAST_BLOCK_ELEMENTS output elements a fast Conv-BN-neuron block runs the exact operations (their
    fixed per-call costs lose there, benchmarks/bench_blocks.py): the official bits, no fused kernel; above, it fuses."""
    import spikeformer.layers.blocks as blocks
    from spikeformer.layers import set_numerics
    from spikeformer.models.spiking_convnet import IF_DEFAULTS, ConvBlock
    from spikeformer.neurons import neuron_factory

    calls = []
    real = BNN._native.NativeBNNeuron.apply
    monkeypatch.setattr(BNN._native.NativeBNNeuron, "apply", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    exact = ConvBlock(16, 32, neuron_factory("if", **IF_DEFAULTS), spikes_in=True)
    fast = copy.deepcopy(exact)
    set_numerics(exact, "exact")
    set_numerics(fast, "fast")
    for side, tb, fuses in ((8, 8, False), (16, 32, True)):
        n = tb * 32 * side * side
        assert (n >= blocks.MIN_FAST_BLOCK_ELEMENTS) == fuses
        x = (torch.rand(2, tb // 2, 16, side, side) < 0.2).float()
        calls.clear()
        ye, yf = exact(x), fast(x)
        assert bool(calls) == fuses
        if not fuses:
            assert torch.equal(yf, ye)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_call_kernels_equal_the_composed_calls(dtype):
    """sf_bn_train_forward / sf_bn_train_backward (statistics, scale and shift, spikes; BPTT, BatchNorm's sums, the
    input gradient, in one call each) give the bits of the separate calls and float64 tensor arithmetic they
    replace (channel_stats, bn_scale_shift, sf_bn_forward; bn_backward)."""
    import ctypes

    from spikeformer.kernels.cpu import bn_neuron as K
    from spikeformer.kernels.cpu.build import is_bf16, ptr

    lif = LIF(tau=2.0, detach_reset=True)
    spec, sur = lif.spec(), lif.surrogate
    g = torch.Generator().manual_seed(0)
    C = 96
    x = (torch.randn(4, 8, 10, C, generator=g) * 3 + 1).to(dtype)
    w, b = torch.randn(C, generator=g), torch.randn(C, generator=g)
    eps = 1e-5
    mean64, var64 = K.channel_stats(x, C)
    invstd64 = (var64 + eps).rsqrt()
    a, sh = K.bn_scale_shift(w, b, mean64, invstd64)
    s_ref = torch.empty_like(x)
    p = K._params(x, None, spec, sur)
    K.build.library().sf_bn_forward(ctypes.byref(p), C, ptr(a), ptr(sh), ptr(x), is_bf16(x), ptr(s_ref))
    xg, wg, bg = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
    s, mean, var = K.BNNeuronFunction.apply(xg, wg, bg, None, C, eps, spec, sur)
    assert torch.equal(s, s_ref) and 0 < s.float().mean() < 1
    assert torch.equal(mean, mean64) and torch.equal(var, var64)
    gs = torch.randn(x.shape, generator=g).to(dtype)
    gx, gw, gb = torch.autograd.grad(s, [xg, wg, bg], gs)
    gx_ref, gw_ref, gb_ref = K.bn_backward(gs, x, w, a, sh, mean64, invstd64, K._params(x, None, spec, sur))
    assert torch.equal(gx, gx_ref) and torch.equal(gw, gw_ref) and torch.equal(gb, gb_ref)


@pytest.mark.parametrize("C", [16, 100])
def test_running_update_in_one_call_equals_tensor_operations(C):
    from spikeformer.kernels.cpu.bn_neuron import running_update

    g = torch.Generator().manual_seed(C)
    rm, rv = torch.randn(C, generator=g), torch.rand(C, generator=g) + 0.5
    mean = torch.randn(C, generator=g, dtype=torch.float64)
    var = torch.rand(C, generator=g, dtype=torch.float64)
    shift = torch.randn(C, generator=g, dtype=torch.float64)
    n = 1234
    for f in (0.1, 1 / 3):
        for sh in (None, shift):
            a, b = rm.clone(), rv.clone()
            assert running_update(a, b, mean, var, sh, f, n / (n - 1))
            m = mean if sh is None else mean + sh
            assert torch.equal(a, rm.clone().mul_(1.0 - f).add_(m.to(torch.float32), alpha=f))
            assert torch.equal(b, rv.clone().mul_(1.0 - f).add_((var * (n / (n - 1))).to(torch.float32), alpha=f))
    assert not running_update(rm.double(), rv.double(), mean, var, None, 0.1, 1.0)  # float64 statistics: not taken


@pytest.mark.parametrize("frames", ["channels_last", "nchw"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bn_frames_gets_its_gradient_in_the_frames_layout(frames, dtype):
    """The fast path's BatchNorm over frames hands PyTorch's BatchNorm backward the output gradient in the frames'
    memory format (a gradient in the other one takes its slow path); values as the official ``seq_apply``."""
    torch.manual_seed(0)
    T, B, C, H, W = 2, 3, 16, 5, 4
    base = torch.randn(T, B, H, W, C) if frames == "channels_last" else torch.randn(T, B, C, H, W)
    x = (base.permute(0, 1, 4, 2, 3) if frames == "channels_last" else base).to(dtype)
    other = torch.randn(T, B, C, H, W).to(dtype)  # a gradient in the other layout
    if frames == "channels_last":
        other = other.contiguous()
    else:
        other = other.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    seen = []

    def record(grad):
        seen.append(grad)

    bn = nn.BatchNorm2d(C)
    ref_bn = copy.deepcopy(bn)
    xa, xr = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    y = BNN.bn_frames(bn, xa)
    y_ref = torch.nn.modules.batchnorm.BatchNorm2d.forward(ref_bn, xr.flatten(0, 1)).unflatten(0, (T, B))
    assert torch.equal(y, y_ref)
    y.register_hook(record)

    class BackwardArgs(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ == "native_batch_norm_backward":
                seen.append(args[:2])  # (grad_out, input)
            return func(*args, **(kwargs or {}))

    with BackwardArgs():
        (ga,) = torch.autograd.grad((y * other).sum(), xa)
    (gr,) = torch.autograd.grad((y_ref * other).sum(), xr)
    # bf16: the two layouts' kernels round the cancelling sum g - mean(g) - xhat mean(g xhat) differently
    tol = 1e-5 if dtype == torch.float32 else 2 ** -6
    torch.testing.assert_close(ga.float(), gr.float(), rtol=tol, atol=tol * gr.float().abs().max().item())
    flat = ga.flatten(0, 1)
    assert flat.is_contiguous(memory_format=torch.channels_last) == (frames == "channels_last")
    assert torch.equal(seen[0], other)  # the gradient arrived in the other layout and was relaid out inside
    grad_out, inp = seen[1]
    assert grad_out.stride() == inp.stride() and torch.equal(grad_out, other.flatten(0, 1))
    assert torch.equal(bn.running_mean, ref_bn.running_mean) and torch.equal(bn.running_var, ref_bn.running_var)


def test_bf16_spikes_of_fp32_input():
    """The training kernel's bf16 spikes of an fp32 input (the last fp32 stem stage handing its spikes to a bf16 one):
    the fp32 spikes' values, and the gradient read in bf16 gives the gradients of the same values read in fp32, bit
    for bit."""
    from spikeformer.kernels.cpu import bn_neuron as K
    from spikeformer.kernels.cpu.neuron import _params

    bn, neuron = _make("frames", 16), LIF(tau=2.0, detach_reset=True)
    x = _input("frames", SHAPES["frames"], torch.float32, seed=5)
    p = _params(x, None, neuron.spec(), neuron.surrogate)
    s32, w, ab, chan = K.train_forward(x, bn.weight, bn.bias, bn.eps, p)
    s16, w2, ab2, chan2 = K.train_forward(x, bn.weight, bn.bias, bn.eps, p, torch.bfloat16)
    assert s16.dtype == torch.bfloat16 and s16.stride() == x.stride() and torch.equal(s16.float(), s32)
    assert 0.0 < s32.mean().item() < 1.0 and torch.equal(ab, ab2) and torch.equal(chan, chan2)
    g16 = _input("frames", SHAPES["frames"], torch.bfloat16, seed=6)
    got = K.train_backward(g16, x, w, ab, chan, p, torch.float32)
    ref = K.train_backward(g16.float(), x, w, ab, chan, p, torch.float32)
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)
    # through the module path: bn_neuron hands back bf16 spikes only where the fused training kernel runs
    xr = x.clone().requires_grad_()
    out = bn_neuron(copy.deepcopy(bn), neuron, xr, fuse=True, spikes_dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16 and torch.equal(out.float(), s32)
    (out.float() * g16.float()).sum().backward()
    assert xr.grad.dtype == torch.float32 and torch.equal(xr.grad, ref[0])
    with torch.no_grad():
        assert bn_neuron(copy.deepcopy(bn).eval(), neuron, x, fuse=True, spikes_dtype=torch.bfloat16).dtype == torch.float32
