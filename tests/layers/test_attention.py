"""The compiled spike attention on tokens (``token_spike_attention``, ``sf_attn_*`` in neurons/neuron_cpu.cpp)
against ``spike_attention`` on split heads: forward values bit for bit, gradients, the fallbacks, and Spikformer's
fast path calling it."""

from __future__ import annotations

import pytest
import torch

from spikeformer.layers import attention as A
from spikeformer.layers.attention import spike_attention, token_spike_attention
from spikeformer.neurons import _native

from helpers import exact_then_fast

pytestmark = pytest.mark.skipif(_native.library() is None, reason="no C++ compiler: the compiled kernel is off")
BF16 = torch.bfloat16


def _spikes(shape, p, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < p).float()


def _reference(q, k, v, heads, scale):
    split = [t.view(*t.shape[:-1], heads, t.shape[-1] // heads).transpose(-3, -2) for t in (q, k, v)]
    return spike_attention(*split, scale).transpose(-3, -2).flatten(-2)


@pytest.fixture
def native_calls(monkeypatch):
    calls = []
    real = _native.NativeSpikeAttention.apply
    monkeypatch.setattr(_native.NativeSpikeAttention, "apply", lambda *a: calls.append(a[3]) or real(*a))
    return calls


# (T, B, N, C, heads): head dims 32 (CIFAR Spikformer), 16 (digits), 64; token counts that are not multiples of 4;
# heads with at most half as many tokens as channels, which go through Q K^T (QKFormer's last stage at 32x32: 4 tokens,
# head dim 64; 8 tokens of 16)
CASES = [(2, 3, 64, 384, 12), (1, 2, 17, 64, 4), (2, 2, 50, 128, 2), (2, 3, 4, 384, 6), (1, 2, 8, 64, 4)]


@pytest.mark.parametrize("shape", CASES, ids=lambda s: f"N{s[2]}-C{s[3]}-h{s[4]}")
@pytest.mark.parametrize("p", [0.1, 0.8], ids=["sparse", "dense"])
def test_forward_bit_for_bit_and_exact_gradients(native_calls, shape, p):
    T, B, N, C, H = shape
    q, k, v = (_spikes((T, B, N, C), p, s) for s in range(3))
    g = _spikes((T, B, N, C), 0.5, 9)  # 0/1 upstream gradient: every gradient is an exact integer in fp32
    ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = _reference(*ref_in, H, 1.0)
    (ref * g).sum().backward()
    if p == 0.8 and N >= 50:
        assert ref.max() > 256  # beyond bf16's exact integers
    for dtype in (torch.float32, BF16):
        ins = [t.to(dtype, copy=True).requires_grad_() for t in (q, k, v)]
        with torch.autocast("cpu", dtype=BF16, enabled=dtype == BF16):
            out = token_spike_attention(*ins, H, 1.0, fast=True)
        assert out.dtype == torch.float32
        assert torch.equal(out, ref.detach())
        (out * g).sum().backward()
        for a, r in zip(ins, ref_in):
            assert a.grad.dtype == dtype
            assert torch.equal(a.grad, r.grad.to(dtype))  # exact integers, rounded once to the input's dtype
    assert native_calls == [H, H]


def test_scale_and_real_valued_inputs(native_calls):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 33, 64) for _ in range(3))
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    out = token_spike_attention(*ins, 4, 0.125, fast=True)
    refs = [t.double().requires_grad_() for t in (q, k, v)]
    ref = _reference(*refs, 4, 0.125)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(q)
    (out * g).sum().backward()
    (ref * g.double()).sum().backward()
    for a, r in zip(ins, refs):
        torch.testing.assert_close(a.grad.double(), r.grad, rtol=1e-4, atol=1e-4)
    assert native_calls == [4]


def test_bf16_without_autocast_returns_bf16(native_calls):
    q, k, v = (_spikes((1, 2, 48, 64), 0.8, s + 10).to(BF16) for s in range(3))
    out = token_spike_attention(q, k, v, 2, 0.25)
    assert out.dtype == BF16
    torch.testing.assert_close(out, _reference(q.float(), k.float(), v.float(), 2, 0.25).to(BF16), rtol=0, atol=0)
    assert native_calls == [2]


def test_fallbacks(native_calls):
    q, k, v = (_spikes((2, 2, 20, 48), 0.5, s) for s in range(3))
    ref = _reference(q, k, v, 2, 0.125)
    assert torch.equal(token_spike_attention(q, k, v, 2, 0.125), ref)  # the exact fp32 path: heads split as before
    assert torch.equal(token_spike_attention(q, k, v, 2, 0.125, fast=True), ref)  # head dim 24: no compiled kernel
    assert torch.equal(token_spike_attention(q, k, v, 3, 0.125, fast=True), _reference(q, k, v, 3, 0.125))  # 16
    assert native_calls == [3]
    nc = q.transpose(-1, -2).contiguous().transpose(-1, -2)  # not contiguous: split heads
    assert not A._native_ok(nc, k, v, 3)


def test_spikformer_fast_path_uses_it(native_calls):
    from spikeformer.models.spikformer import Spikformer

    torch.manual_seed(0)
    m = Spikformer("cifar", num_classes=10, embed_dim=64, depth=2, num_heads=4, T=2)
    ref, exact_calls, out = exact_then_fast(m, torch.randn(2, 3, 32, 32), native_calls)
    assert exact_calls == []  # exact fp32 path
    assert native_calls == [4, 4]
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
