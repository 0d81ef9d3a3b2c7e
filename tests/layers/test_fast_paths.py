"""Every fast path against the reference path: the fused neuron kernel, activation checkpointing, bf16 autocast."""

import pytest
import torch

import spikeformer
from spikeformer.data import build_dataset
from spikeformer.neurons import ATan, LIF, Sigmoid
from spikeformer.neurons import _kernels
from spikeformer.neurons import functional as F
from spikeformer.neurons.nodes import BaseNode
from spikeformer.errors import SpikeformerError
from spikeformer.models.spikformer import Spikformer

CASES = [
    (kind, v_reset, sur, detach, decay, tau)
    for kind in ("lif", "if", "plif")
    for v_reset in (0.0, None, -0.3)
    for sur in ("sigmoid", "atan")
    for detach in (False, True)
    for decay in ((True, False) if kind != "if" else (True,))
    for tau in ((2.0, 1.7) if kind == "lif" else (2.0,))
]


def _spec_and_rate(kind, v_reset, detach, decay, tau):
    if kind == "if":
        return F.NeuronSpec(0.8, v_reset, detach, True, False, None), None
    if kind == "plif":
        return F.NeuronSpec(0.8, v_reset, detach, decay, True, None), torch.tensor(0.3).sigmoid().requires_grad_()
    return F.NeuronSpec(0.8, v_reset, detach, decay, True, tau), None


@pytest.mark.parametrize("fast", ["native", "torch"])
@pytest.mark.parametrize("kind,v_reset,sur,detach,decay,tau", CASES)
def test_fused_kernel_matches_reference(kind, v_reset, sur, detach, decay, tau, fast):
    torch.manual_seed(len(CASES) + CASES.index((kind, v_reset, sur, detach, decay, tau)))
    surrogate = Sigmoid(4.0) if sur == "sigmoid" else ATan(2.0)
    spec, k = _spec_and_rate(kind, v_reset, detach, decay, tau)
    x = (torch.randn(6, 4, 33) * 1.5 + 0.4).requires_grad_()
    v0 = (torch.randn(4, 33) * 0.3).requires_grad_()
    gs, gv = torch.randn(6, 4, 33), torch.randn(4, 33)
    out = {}
    for impl in ("reference", fast):
        leaves = [x, v0] + ([k] if k is not None else [])
        s, v = F.multi_step(x, spec, surrogate, k, v0, impl=impl)
        grads = torch.autograd.grad((s * gs).sum() + (v * gv).sum(), leaves)
        out[impl] = (s, v, grads)
    (s_ref, v_ref, g_ref), (s, v, g) = out["reference"], out[fast]
    assert 0.05 < s_ref.mean().item() < 0.95
    torch.testing.assert_close(s, s_ref, atol=0, rtol=0)  # spikes: bit-identical
    torch.testing.assert_close(v, v_ref, atol=0, rtol=0)  # final membrane: bit-identical
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind,v_reset,sur,detach,decay,tau", CASES)
def test_no_grad_kernel_matches_reference(monkeypatch, kind, v_reset, sur, detach, decay, tau):
    # under no_grad the fused kernel runs without the saved H and without an autograd node: same bits
    torch.manual_seed(2 * len(CASES) + CASES.index((kind, v_reset, sur, detach, decay, tau)))
    surrogate = Sigmoid(4.0) if sur == "sigmoid" else ATan(2.0)
    spec, k = _spec_and_rate(kind, v_reset, detach, decay, tau)
    x = torch.randn(6, 4, 33) * 1.5 + 0.4
    v0 = torch.randn(4, 33) * 0.3
    s_ref, v_ref = F.multi_step(x, spec, surrogate, k, v0, impl="reference")
    calls = []
    no_grad_fwd = _kernels.forward_no_grad
    monkeypatch.setattr(_kernels, "forward_no_grad", lambda *a: calls.append(1) or no_grad_fwd(*a))
    with torch.no_grad():
        s, v = F.multi_step(x, spec, surrogate, k, v0)
    assert calls == [1] and s.grad_fn is None and v.grad_fn is None
    F.multi_step(x.requires_grad_(), spec, surrogate, k, v0)  # with grad: the autograd kernel
    assert calls == [1]
    assert 0.05 < s_ref.mean().item() < 0.95
    torch.testing.assert_close(s, s_ref.detach(), atol=0, rtol=0)
    torch.testing.assert_close(v, v_ref.detach(), atol=0, rtol=0)
    # v0 is not modified in place
    assert v is not v0


def test_no_grad_kernel_bf16_and_default_membrane():
    torch.manual_seed(6)
    spec, sur = F.NeuronSpec(1.0, 0.0, True, True, True, 2.0), Sigmoid(4.0)
    x = (torch.randn(5, 3, 64) + 0.8).bfloat16()
    s_ref, v_ref = F.multi_step(x.clone().requires_grad_(), spec, sur, impl="reference")
    with torch.no_grad():
        s, v = F.multi_step(x, spec, sur)
    assert s.dtype == torch.bfloat16 and v.dtype == torch.float32
    torch.testing.assert_close(s, s_ref.detach(), atol=0, rtol=0)
    torch.testing.assert_close(v, v_ref.detach(), atol=0, rtol=0)


def test_model_no_grad_logits_equal_grad_mode():
    torch.manual_seed(7)
    model = spikeformer.create_model("spikformer_digits_1_64", numerics="exact").eval()
    x = torch.randn(3, 1, 16, 16) * 2
    out_grad = model(x)
    assert out_grad.grad_fn is not None
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, out_grad.detach(), atol=0, rtol=0)


def test_fused_kernel_without_state_grads_and_long_T():
    torch.manual_seed(1)
    spec, sur = F.NeuronSpec(1.0, 0.0, True, True, True, 2.0), Sigmoid(4.0)
    x = (torch.randn(16, 2, 50) + 0.8).requires_grad_()
    gs = torch.randn(16, 2, 50)
    grads = []
    for impl in ("reference", None):
        s, _ = F.multi_step(x, spec, sur, impl=impl)
        grads.append((s, torch.autograd.grad((s * gs).sum(), x)[0]))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=0, rtol=0)
    torch.testing.assert_close(grads[1][1], grads[0][1], atol=1e-6, rtol=1e-5)


def test_fused_kernel_bf16_input_integrates_in_fp32():
    torch.manual_seed(2)
    spec, sur = F.NeuronSpec(1.0, 0.0, True, True, True, 2.0), Sigmoid(4.0)
    x = (torch.randn(4, 3, 64) + 0.8).bfloat16().requires_grad_()
    res = []
    for impl in ("reference", None):
        s, v = F.multi_step(x, spec, sur, impl=impl)
        (g,) = torch.autograd.grad(s.float().sum(), x)
        res.append((s, v, g))
    assert res[1][0].dtype == torch.bfloat16 and res[1][1].dtype == torch.float32 and res[1][2].dtype == torch.bfloat16
    for a, b in zip(res[1], res[0]):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_unknown_impl_is_a_user_error():
    with pytest.raises(SpikeformerError, match="impl"):
        F.multi_step(torch.zeros(2, 3), F.NeuronSpec(), Sigmoid(), impl="cupy")


def test_dispatch_point_takes_a_registered_kernel(monkeypatch):
    calls = []

    def fake(x_seq, k, v0, spec, surrogate):
        calls.append(x_seq.shape)
        return _kernels.TorchMultiStep.apply(x_seq, k, v0, spec, surrogate)

    monkeypatch.setitem(_kernels._KERNELS, "cpu", fake)
    LIF()(torch.randn(3, 2, 5))
    assert calls == [(3, 2, 5)]


def _reference_kernel(x_seq, k, v0, spec, surrogate):
    return F._MultiStepNeuron.apply(x_seq, k, v0, spec, surrogate)


def _step_grads(model, x, y):
    model.zero_grad(set_to_none=True)
    out = model(x)
    torch.nn.functional.cross_entropy(out, y).backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("neuron", ["lif", "plif"])
def test_model_fused_vs_reference_kernel(monkeypatch, neuron):
    torch.manual_seed(3)
    model = spikeformer.create_model("spikformer_digits_1_64", neuron=neuron, numerics="exact")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(2, 1, 16, 16) * 2, torch.randint(0, 10, (2,))
    out_fast, g_fast = _step_grads(model, x, y)
    model.load_state_dict(state)
    monkeypatch.setitem(_kernels._KERNELS, "cpu", _reference_kernel)
    out_ref, g_ref = _step_grads(model, x, y)
    torch.testing.assert_close(out_fast, out_ref, atol=1e-6, rtol=1e-5)
    assert g_fast.keys() == g_ref.keys() and len(g_ref) == len(list(model.parameters()))
    for n in g_ref:
        torch.testing.assert_close(g_fast[n], g_ref[n], atol=1e-6, rtol=1e-4, msg=n)


def test_checkpoint_blocks_same_result_and_bn_stats():
    torch.manual_seed(4)
    kw = dict(embed_dim=64, num_heads=4, depth=2, num_classes=10)
    a = Spikformer("cifar", **kw)
    b = Spikformer("cifar", checkpoint_blocks=True, **kw)
    b.load_state_dict(a.state_dict())
    assert a.state_dict().keys() == b.state_dict().keys()
    x, y = torch.randn(2, 3, 16, 16) * 2, torch.randint(0, 10, (2,))
    out_a, g_a = _step_grads(a, x, y)
    out_b, g_b = _step_grads(b, x, y)
    torch.testing.assert_close(out_b, out_a, atol=0, rtol=0)
    assert g_a.keys() == g_b.keys()
    for n in g_a:
        torch.testing.assert_close(g_b[n], g_a[n], atol=1e-7, rtol=1e-6, msg=n)
    # the recomputation in backward must not move BatchNorm running statistics a second time
    sa, sb = a.state_dict(), b.state_dict()
    for n in sa:
        torch.testing.assert_close(sb[n], sa[n], atol=0, rtol=0, msg=n)
    assert int(sb["block.0.mlp.fc1_bn.num_batches_tracked"]) == 1


def test_bf16_autocast_spikes_agree_with_fp32_on_digits():
    torch.manual_seed(5)
    model = spikeformer.create_model("spikformer_digits_1_64", numerics="exact").train()  # batch statistics: a lively network
    ds = build_dataset("digits", "test")
    x = torch.stack([ds[i][0] for i in range(64)])
    spikes = {}

    def record(tag):
        def hook(mod, inp, out):
            spikes.setdefault(tag, []).append(out.detach().float())
        return hook

    neurons = [m for m in model.modules() if isinstance(m, BaseNode)]
    assert len(neurons) == 4 + 1 + 5 + 2  # SPS 4 + RPE, attention q/k/v/attn/proj, MLP 2
    for tag, ctx in (("fp32", torch.autocast("cpu", enabled=False)), ("bf16", torch.autocast("cpu", torch.bfloat16))):
        handles = [m.register_forward_hook(record(tag)) for m in neurons]
        with torch.no_grad(), ctx:
            logits = model(x)
        for h in handles:
            h.remove()
        if tag == "bf16":
            assert logits.dtype == torch.bfloat16
    fp32 = torch.cat([s.flatten() for s in spikes["fp32"]])
    bf16 = torch.cat([s.flatten() for s in spikes["bf16"]])
    assert fp32.numel() == bf16.numel() > 100_000
    assert 0.02 < fp32.mean().item() < 0.5  # the network is active
    agree = (fp32 == bf16).float().mean().item()
    # Measured 0.989 on these untrained weights (0.980 before the first two SPS stages stayed fp32 under autocast):
    # flips start at the bf16 rounding of conv/linear outputs near the threshold and cascade with depth. The 99 %
    # bar of the issue is for trained weights (benchmarks/bench_bf16_agreement.py: 99.5 %); this bar catches a
    # broken autocast path (independent spikes at these rates would agree ~0.93).
    assert agree >= 0.985, agree


def test_token_bn_transposed_low_precision_takes_the_flat_kernel():
    # fp32: the transposed option runs BatchNorm1d on the transposed view, bit for bit (official CIFAR Spikformer);
    # bf16 (autocast): the flat vectorised kernel, same statistics up to bf16 rounding, running stats updated alike
    from spikeformer.layers import TokenBN

    torch.manual_seed(8)
    x = torch.randn(2, 3, 16, 24) * 2 + 0.5
    ref = torch.nn.BatchNorm1d(24)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
    init = {k: v.clone() for k, v in ref.state_dict().items()}
    tr = TokenBN(24, transposed=True)
    tr.numerics = "exact"
    tr.load_state_dict(init)
    y_ref = ref(x.reshape(6, 16, 24).transpose(1, 2)).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(tr(x), y_ref, atol=0, rtol=0)
    xb = x.bfloat16()
    tr2, flat2 = TokenBN(24, transposed=True), TokenBN(24)
    tr2.load_state_dict(init)
    flat2.load_state_dict(init)
    yb = tr2(xb)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb, flat2(xb), atol=0, rtol=0)
    torch.testing.assert_close(yb.float(), y_ref, atol=0.05, rtol=0.02)
    torch.testing.assert_close(tr2.running_mean, flat2.running_mean, atol=0, rtol=0)
    torch.testing.assert_close(tr.running_var, ref.running_var, atol=0, rtol=0)
    torch.testing.assert_close(tr2.running_mean, ref.running_mean, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(tr2.running_var, ref.running_var, atol=1e-2, rtol=1e-2)
