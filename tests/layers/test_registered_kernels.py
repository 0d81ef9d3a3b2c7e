"""A kernel registered for a device type (how the Triton kernels serve CUDA) is what the shared layers run there:
BatchNorm + neuron and the token spike attention look it up before their CPU paths. Registered here for "cpu" with
the reference implementations behind a call counter, so the outputs must equal the unregistered layers' outputs."""

import copy

import pytest
import torch

from spikeformer import kernels
from spikeformer.kernels.torch import attention as ref_attention
from spikeformer.kernels.torch import bn_neuron as ref_bn_neuron
from spikeformer.layers.attention import token_spike_attention
from spikeformer.layers.fused_bn import bn_neuron
from spikeformer.layers.norm import TokenBN
from spikeformer.neurons import LIF


@pytest.fixture
def counted(request):
    op, fn = request.param
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    kernels.register(op, "cpu", spy)
    yield calls
    kernels.unregister(op, "cpu")


@pytest.mark.parametrize("counted", [(kernels.BN_NEURON, ref_bn_neuron.bn_neuron)], indirect=True)
@pytest.mark.parametrize("training", [True, False])
def test_bn_neuron_runs_the_registered_kernel(counted, training):
    torch.manual_seed(0)
    bn, lif = TokenBN(16), LIF(tau=2.0, detach_reset=True)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    bn.train(training)
    x = torch.randn(4, 3, 10, 16) * 2
    plain_bn = copy.deepcopy(bn)
    kernels.unregister(kernels.BN_NEURON, "cpu")
    expected = lif(plain_bn(x))  # the unfused layers
    kernels.register(kernels.BN_NEURON, "cpu", lambda *a, **k: counted.append(1) or ref_bn_neuron.bn_neuron(*a, **k))
    got = bn_neuron(bn, lif, x)
    assert len(counted) == 1
    assert (got != expected).float().mean() < 1e-3  # spikes at the threshold may flip with the sum order
    torch.testing.assert_close(bn.running_mean, plain_bn.running_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(bn.running_var, plain_bn.running_var, rtol=1e-6, atol=1e-7)
    assert int(bn.num_batches_tracked) == int(plain_bn.num_batches_tracked)


@pytest.mark.parametrize("counted", [(kernels.ATTENTION, ref_attention.attention)], indirect=True)
def test_token_attention_runs_the_registered_kernel(counted):
    torch.manual_seed(1)
    q, k, v = ((torch.rand(2, 3, 12, 32) < 0.3).float() for _ in range(3))
    got = token_spike_attention(q, k, v, heads=4, scale=0.125)
    assert len(counted) == 1
    kernels.unregister(kernels.ATTENTION, "cpu")
    expected = token_spike_attention(q, k, v, heads=4, scale=0.125)
    assert torch.equal(got, expected)
