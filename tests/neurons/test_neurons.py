"""Our neurons against SpikingJelly 2.0 (the numerical oracle): spikes and input gradients."""

import zlib

import pytest
import torch

from spikeformer.neurons import ATan, IF, LIF, PLIF, Sigmoid, neuron_factory
from spikeformer.errors import SpikeformerError

sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
sj_surrogate = pytest.importorskip("spikingjelly.activation_based.surrogate")

RESETS = [0.0, None, -0.3]
SURROGATES = [("sigmoid", 4.0), ("atan", 2.0)]


def _pair(kind, v_reset, sur, alpha, detach, decay_input):
    ours_sur = Sigmoid(alpha) if sur == "sigmoid" else ATan(alpha)
    sj_sur = sj_surrogate.Sigmoid(alpha=alpha) if sur == "sigmoid" else sj_surrogate.ATan(alpha=alpha)
    common = dict(v_threshold=0.8, v_reset=v_reset, detach_reset=detach)
    if kind == "lif":
        ours = LIF(tau=1.7, decay_input=decay_input, surrogate=ours_sur, **common)
        ref = sj_neuron.LIFNode(tau=1.7, decay_input=decay_input, surrogate_function=sj_sur, step_mode="m", **common)
    elif kind == "plif":
        ours = PLIF(init_tau=2.5, decay_input=decay_input, surrogate=ours_sur, **common)
        ref = sj_neuron.ParametricLIFNode(
            init_tau=2.5, decay_input=decay_input, surrogate_function=sj_sur, step_mode="m", **common
        )
        with torch.no_grad():  # move w off its init so the test exercises a non-trivial rate
            ours.w.fill_(0.3)
            ref.w.fill_(0.3)
    else:
        ours = IF(surrogate=ours_sur, **common)
        ref = sj_neuron.IFNode(surrogate_function=sj_sur, step_mode="m", **common)
    return ours, ref


CASES = [
    (kind, v_reset, sur, alpha, detach, decay)
    for kind in ("lif", "if", "plif")
    for v_reset in RESETS
    for (sur, alpha) in SURROGATES
    for detach in (False, True)
    for decay in ((True, False) if kind != "if" else (True,))
]


@pytest.mark.parametrize("kind,v_reset,sur,alpha,detach,decay", CASES)
def test_matches_spikingjelly(kind, v_reset, sur, alpha, detach, decay):
    # a seed per case that is the same in every run (Python's hash() of strings is randomised per process)
    torch.manual_seed(zlib.crc32(repr((kind, v_reset, sur, detach, decay)).encode()))
    ours, ref = _pair(kind, v_reset, sur, alpha, detach, decay)
    x = (torch.randn(8, 3, 5, 7) * 1.5 + 0.4).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    s = ours(x)
    s_ref = ref(x_ref)
    assert s.shape == s_ref.shape
    assert 0.05 < s.mean().item() < 0.95, "the test input should make the neuron fire sometimes"
    torch.testing.assert_close(s, s_ref, atol=0, rtol=0)
    g = torch.randn_like(s)
    (s * g).sum().backward()
    (s_ref * g).sum().backward()
    # fp32 rounding of gradients up to ~3 (the kernel's surrogate exponential is a polynomial): a few ulps
    assert (x.grad - x_ref.grad).abs().max().item() <= 1e-6 * max(1.0, x_ref.grad.abs().max().item())
    if kind == "plif":
        assert abs(ours.w.grad.item() - ref.w.grad.item()) <= 1e-5 * max(1.0, abs(ref.w.grad.item()))


def test_state_does_not_leak_between_calls():
    lif = LIF(tau=2.0)
    x = torch.rand(4, 2, 10) * 2
    torch.testing.assert_close(lif(x), lif(x))


@pytest.mark.parametrize("neuron", [LIF(tau=2.0, v_reset=None), IF(), PLIF(init_tau=3.0, detach_reset=True)])
def test_streaming_equals_multi_step(neuron):
    x = torch.randn(12, 4, 6) + 0.5
    want = neuron(x)
    state = neuron.init_state(x[0])
    got = []
    for t in range(x.shape[0]):
        s, state = neuron.step(x[t], state)
        got.append(s)
    torch.testing.assert_close(torch.stack(got), want)


def test_streaming_gradients_equal_multi_step():
    neuron = LIF(tau=2.0, surrogate=ATan(2.0))
    x = (torch.randn(6, 3, 4) + 0.5).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    neuron(x).sum().backward()
    state = neuron.init_state(x2[0])
    total = 0
    for t in range(6):
        s, state = neuron.step(x2[t], state)
        total = total + s.sum()
    total.backward()
    assert (x.grad - x2.grad).abs().max().item() <= 1e-6


def test_backward_saves_one_sequence_tensor():
    # BPTT memory: the custom function keeps H[t] only (one [T, ...] tensor) plus small scalars.
    x = torch.randn(4, 8, 16, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        LIF()(x).sum()
    big = [t for t in saved if t.numel() == x.numel()]
    assert len(big) == 1


def test_factory_and_errors():
    make = neuron_factory({"type": "plif", "tau": 2.0, "detach_reset": True})
    n = make(v_threshold=0.5)
    assert isinstance(n, PLIF) and n.v_threshold == 0.5 and abs(n.tau - 2.0) < 1e-6
    assert isinstance(neuron_factory("if")(tau=2.0), IF)
    with pytest.raises(SpikeformerError, match="tau > 1"):
        LIF(tau=0.5)
    with pytest.raises(SpikeformerError, match="unknown neuron"):
        neuron_factory("lifx")
    with pytest.raises(SpikeformerError, match=r"\[T, \.\.\.\]"):
        LIF()(torch.tensor(1.0))
