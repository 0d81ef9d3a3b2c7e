"""Token projections + BatchNorm + neuron as one autograd Function (kernels/cpu/linear_bn.py, layers.fused_bn
.linear_bn_neurons) against the composed path (autocast's Linear without its bias, then the fused BatchNorm + neuron
kernel): spikes and running statistics bit for bit, gradients within bf16 rounding, the residual's gradient through the
kept input; where it falls back; and Spikformer's bf16 training step on it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from spikeformer.kernels.cpu import bf16 as kbf16
from spikeformer.kernels.cpu import linear_bn as KLB
from spikeformer.layers import TokenBN, TokenLinear
from spikeformer.layers import fused_bn as BNN
from spikeformer.layers.blocks import linear_bn_neurons
from spikeformer.neurons import _native
from spikeformer.neurons.nodes import LIF
from spikeformer.neurons.surrogate import ATan

pytestmark = [
    pytest.mark.skipif(_native.library() is None, reason="no C++ compiler: the compiled kernel is off"),
    pytest.mark.skipif(not kbf16.native(), reason="the Function runs only where bf16 GEMMs are native"),
]


def _branches(n: int, K: int, C: int, seed: int = 0, bias: bool = True):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        lin = TokenLinear(K, C, bias=bias)
        bn = TokenBN(C)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(C, K, generator=g) * K ** -0.5)
            if bias:
                lin.bias.copy_(torch.randn(C, generator=g) * 0.1)
            bn.weight.copy_(torch.rand(C, generator=g) + 0.5)
            bn.bias.copy_(torch.rand(C, generator=g) * 0.6 - 0.3)
        neuron = LIF(tau=2.0, detach_reset=True) if i % 2 == 0 else LIF(tau=2.0, surrogate=ATan(), v_threshold=0.5)
        out.append((lin, bn, neuron))
    return out


def _tokens(shape, seed, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < 0.3).to(torch.float32).add(torch.rand(shape, generator=g) < 0.1).to(dtype)


def _composed(branches, x):
    """The path the Function replaces: autocast's bias-free Linear, then the fused BatchNorm + neuron kernel."""
    return [BNN._fused(bn, neuron, F.linear(x, lin.weight), lin.bias) for lin, bn, neuron in branches]


def _loss(spikes, kept, seed):
    g = torch.Generator().manual_seed(seed)
    total = sum((s.float() * torch.randn(s.shape, generator=g)).sum() for s in spikes)
    if kept is not None:
        total = total + (kept.float() * torch.randn(kept.shape, generator=g)).sum()
    return total


def _run(branches, x0, fused: bool, keep_input: bool):
    branches = copy.deepcopy(branches)
    x = x0.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if fused:
            out = BNN.linear_bn_neurons(branches, x, keep_input)
            assert out is not None
            spikes, kept = (out[:-1], out[-1]) if keep_input else (out, None)
        else:
            spikes, kept = _composed(branches, x), (x if keep_input else None)
        _loss(spikes, kept, 7).backward()
    return [s.detach() for s in spikes], x.grad, branches


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("n,K,C,keep,bias", [(3, 32, 32, True, True), (1, 32, 96, True, True), (1, 96, 32, False, True),
                                            (2, 48, 40, False, True), (3, 32, 32, True, False)])
def test_function_matches_composed_path(n, K, C, keep, bias):
    branches = _branches(n, K, C, seed=n + K, bias=bias)
    x0 = _tokens((4, 3, 20, K), seed=C)
    s_f, gx_f, br_f = _run(branches, x0, True, keep)
    s_c, gx_c, br_c = _run(branches, x0, False, keep)
    for a, b in zip(s_f, s_c):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b)  # the same GEMM, the same kernel
        assert 0.0 < a.float().mean().item() < 1.0
    assert gx_f.dtype == x0.dtype and _rel(gx_f, gx_c) < 2e-2  # one rounding to bf16 instead of n + keep
    for (lf, bf_, _), (lc, bc, _) in zip(br_f, br_c):
        assert lf.weight.grad.dtype == torch.float32 and lf.weight.grad.is_contiguous()
        assert _rel(lf.weight.grad, lc.weight.grad) < 1e-2
        assert _rel(bf_.weight.grad, bc.weight.grad) < 1e-3 and _rel(bf_.bias.grad, bc.bias.grad) < 1e-3
        if bias:
            assert torch.count_nonzero(lf.bias.grad) == 0 and torch.count_nonzero(lc.bias.grad) == 0
        assert torch.equal(bf_.running_mean, bc.running_mean) and torch.equal(bf_.running_var, bc.running_var)
        assert int(bf_.num_batches_tracked) == int(bc.num_batches_tracked) == 1


def test_kept_input_carries_the_residual_gradient_only():
    """With no branch gradient the input's gradient is the residual's; with no residual the branches' alone."""
    branches = _branches(2, 32, 32, seed=3)
    x = _tokens((2, 4, 10, 32), seed=1).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b, kept = BNN.linear_bn_neurons(branches, x, keep_input=True)
    r = torch.randn(kept.shape, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    (kept.float() * r.float()).sum().backward()
    assert torch.equal(x.grad, r)


def test_weight_gradient_orientation():
    """Both orientations of the weight-gradient product give the same values as the plain product."""
    g = torch.Generator().manual_seed(0)
    for C, K in ((48, 16), (16, 48)):
        gz = torch.randn(300, C, generator=g).to(torch.bfloat16)
        x = torch.randn(300, K, generator=g).to(torch.bfloat16)
        got = KLB._weight_grad(gz, x, C, K, torch.float32)
        ref = (gz.float().t() @ x.float())
        assert got.shape == (C, K) and got.is_contiguous() and _rel(got, ref) < 1e-2


def test_falls_back_where_it_does_not_apply():
    branches = _branches(2, 32, 32)
    x = _tokens((2, 4, 10, 32), seed=0).requires_grad_()
    assert BNN.linear_bn_neurons(branches, x) is None  # no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            assert BNN.linear_bn_neurons(branches, x) is None  # no gradients: the inference kernels
        branches[1][1].eval()
        assert BNN.linear_bn_neurons(branches, x) is None  # running statistics
        branches[1][1].train()
        h = branches[0][2].register_forward_hook(lambda *a: None)
        assert BNN.linear_bn_neurons(branches, x) is None  # a hook must see its module's call
        # ... and the block helper then runs the branches one by one, handing back x itself
        out = linear_bn_neurons(branches, x, keep_input=True)
        assert len(out) == 3 and out[-1] is x
        h.remove()
        assert BNN.linear_bn_neurons(branches, x) is not None


def test_spikformer_bf16_step_equals_composed_path(monkeypatch):
    """A bf16 training step of Spikformer: the logits equal the composed path's bit for bit (every token projection
    that the Function takes), the parameter gradients agree within bf16 rounding."""
    from spikeformer.models.spikformer import Spikformer

    torch.manual_seed(0)
    model = Spikformer("cifar", num_classes=10, embed_dim=64, depth=2, num_heads=2, T=2)
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # 1024 tokens: too dense to list
    calls = []
    real = KLB.LinearBNNeuronFunction.apply

    def counted(*a):
        calls.append(len(a[1]))
        return real(*a)

    def step(m):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
        out.float().square().mean().backward()
        return out.detach(), {k: p.grad for k, p in m.named_parameters() if p.grad is not None}

    m1 = copy.deepcopy(model)
    monkeypatch.setattr(KLB.LinearBNNeuronFunction, "apply", counted)
    out1, g1 = step(m1)
    assert 3 in calls and 1 in calls  # q/k/v together, fc1 with the residual (and the dense single ones)
    monkeypatch.setattr(BNN, "linear_bn_neurons", lambda *a, **k: None)
    n = len(calls)
    out2, g2 = step(copy.deepcopy(model))
    assert len(calls) == n  # the composed path did not use it
    assert torch.equal(out1, out2)
    assert g1.keys() == g2.keys()
    worst = max(_rel(g1[k], g2[k]) for k in g1 if g2[k].abs().max() > 0)
    assert worst < 0.03, worst
