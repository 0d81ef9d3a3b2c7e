"""Energy of integer-valued neurons (I-LIF / MultiSpike / NI-LIF): value-weighted spike events, the binary-expanded
model (D binary sub-steps per integer, the same next-layer input), and an integer Meta-SpikeFormer trained on the
embedded digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikeformer
from spikeformer import SpikeformerError
from spikeformer.analysis.energy import binary_expanded, energy_report, get_convention
from spikeformer.neurons import IntegerLIF, MultiSpike, NILIF, expand_integer_spikes, sum_substeps

torch.set_num_threads(1)

# the neuron's input, chosen so that MultiSpike (round(clip(x, 0, 4))) gives the counts [[0, 1, 3], [2, 0, 0]]
X = torch.tensor([[[[-0.7, 0.9, 3.2], [2.4, 0.1, -3.0]]]])  # [T=1, B=1, N=2, C=3]
COUNTS = torch.tensor([[[[0.0, 1.0, 3.0], [2.0, 0.0, 0.0]]]])


class NeuronThenLinear(nn.Module):
    T = 1

    def __init__(self, neuron):
        super().__init__()
        self.sn = neuron
        self.fc = nn.Linear(3, 2, bias=True)
        with torch.no_grad():  # dyadic weights: every sum is exact, whatever the order
            self.fc.weight.copy_(torch.tensor([[0.5, -0.25, 1.0], [0.125, 2.0, -0.5]]))
            self.fc.bias.copy_(torch.tensor([0.25, -0.5]))

    def forward(self, x):
        return self.fc(self.sn(x))


@pytest.mark.parametrize("neuron", [MultiSpike(D=4), NILIF(D=4)])
def test_integer_activations_count_as_value_weighted_events(neuron):
    model = NeuronThenLinear(neuron)
    rep = energy_report(model, X, batch_size=1)
    (row,) = rep.layers
    # hand count: events 0+1+3+2+0+0 = 6, each reaching the 2 outputs -> 12 synaptic operations, no MAC
    assert row.inputs == "int" and row.flops == 2 * 3 * 2
    assert row.rate == 1.0  # 6 events over 6 inputs in one step
    assert rep.sops == 12 and rep.macs == 0
    assert rep.total_mj == pytest.approx(0.9e-9 * 12)
    assert get_convention("generic", count="exact") and \
        energy_report(model, X, convention=get_convention("generic", count="exact"), batch_size=1).sops == 12
    (n,) = rep.neurons
    assert n.spikes == 6 and n.neurons == 6 and n.rates == [1.0]  # events per neuron per step


def test_a_conv_counts_each_event_times_its_fan_out():
    class Net(nn.Module):
        T = 1

        def __init__(self):
            super().__init__()
            self.sn = MultiSpike(D=4)
            self.conv = nn.Conv2d(1, 2, 1, bias=False)

        def forward(self, x):
            return self.conv(self.sn(x)[0])

    x = torch.tensor([[[[[3.0, 0.0], [1.0, 4.0]]]]])  # [T, B, 1, 2, 2] -> 8 events, fan-out 2 channels
    assert energy_report(Net(), x, batch_size=1).sops == 16


def test_binary_expansion_gives_the_same_next_layer_input():
    counts = MultiSpike(D=4)(torch.randn(3, 2, 5, 7) * 3)
    binary = expand_integer_spikes(counts, 4)
    assert binary.shape == (12, 2, 5, 7) and set(binary.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(sum_substeps(binary, 4), counts)
    for neuron in (MultiSpike(D=4), NILIF(D=4), IntegerLIF(D=4, decay=0.25)):
        model = NeuronThenLinear(neuron)
        with torch.no_grad():
            ref = model(X)
            with binary_expanded(model):
                got = model(X)
        assert torch.equal(got, ref)  # exact: dyadic weights, so the order of the D sums does not matter
    # the energy of the binary model: binary inputs at T x D sub-steps, the same synaptic events
    model = NeuronThenLinear(MultiSpike(D=4))
    rep = energy_report(model, X, binary=True, batch_size=1)
    (row,) = rep.layers
    assert row.inputs == "spike" and row.steps == 4 and row.rate == 0.25 and row.flops == 12
    assert rep.sops == 12 and rep.macs == 0
    with pytest.raises(SpikeformerError, match="no integer neurons"):
        energy_report(NeuronThenLinear(nn.Identity()), COUNTS, binary=True, batch_size=1)


def test_integer_meta_spikeformer_binary_model_matches():
    torch.manual_seed(0)
    model = spikeformer.create_model("sdt_v2_digits", neuron="ilif", T=2)
    x = torch.randn(4, 1, 16, 16)
    for m in model.modules():  # BatchNorm statistics of this batch, so the untrained model fires at useful rates
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    rep = energy_report(model, x)
    kinds = {r.name: r.inputs for r in rep.layers}
    assert kinds["downsample1_1.encode_conv"] == "real" and kinds["head"] == "int"
    assert kinds["block3.0.mlp.conv1d0"] == "int" and kinds["ConvBlock1_1.0.conv1"] == "int"
    assert rep.layers[0].macs > 0 and rep.sops > 0
    binary = energy_report(model, x, binary=True)
    assert binary.sops == pytest.approx(rep.sops, rel=1e-9)
    # convolutions and linears read binary spikes; a matmul of two integer tensors expands one operand
    assert all("int" not in r.inputs for r in binary.layers if r.op != "matmul")
    assert all("spike" in r.inputs for r in binary.layers if r.op == "matmul")
    with torch.no_grad():
        ref = model(x)
        with binary_expanded(model):
            got = model(x)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)


def _digits_accuracy(name: str, **model_kw) -> float:
    """Held-out top-1 on the embedded digits after 8 epochs of Adam (5e-3, cosine per step, batch 32), seed 0."""
    from torch.utils.data import DataLoader

    from spikeformer.data import build_dataset

    torch.manual_seed(0)
    train, test = build_dataset("digits", "train"), build_dataset("digits", "test")
    model = spikeformer.create_model(name, **model_kw)
    epochs, bs = 8, 32
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * ((len(train) + bs - 1) // bs))
    loader = DataLoader(train, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(0))
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        x, y = test.tensors
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.slow
def test_integer_meta_spikeformer_trains_on_digits():
    """sdt_v2_digits as registered (stride-1 stem) with I-LIF (D=4, decay 0.25, T=1). One thread per process (as
    ``make test`` runs): 97.2-98.6 % held-out top-1 over seeds 0-3 with this code on an AVX512 machine, 97.8 % at
    seed 0 on an AVX2 one, 96.7 % at seed 0 with the AVX2 kernels forced on the AVX512 machine: this small model sits
    at about 97.5 % and float rounding moves it by a point, so the bar here is that it trains (95 %; chance is 10 %).
    The 97 % bar is the digits Spikformer's with I-LIF (tests/neurons/test_integer.py; 99.2-99.7 % at seeds 0-3 with
    this function's recipe)."""
    acc = _digits_accuracy("sdt_v2_digits", neuron="ilif")
    assert acc >= 0.95, f"digits test accuracy {acc:.3f}"

